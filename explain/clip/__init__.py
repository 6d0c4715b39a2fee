"""CLIP: the text side of Stable Diffusion and the contrastive model behind it.

- :mod:`.tokens`: tokenisation view (77 slots, BOS/EOS/padding, truncation, word <-> token spans).
- :mod:`.model`: load the embedded model's full open_clip CLIP.
- :mod:`.contrastive`: the CLIP paper's pseudocode on an open_clip model, every intermediate returned.
- :mod:`.live`: train a tiny CLIP live on world pairs with that loss, frame by frame (:mod:`.projection`: its
  2-D PCA picture of the joint space).
"""
