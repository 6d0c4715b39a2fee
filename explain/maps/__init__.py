"""Maps: from recorded cross-attention to per-word heat maps (DAAM, Tang et al. 2023) and the views of a result.

- :mod:`.aggregation`: aggregation over steps, layers and heads, normalisations, thresholds, overlays.
- :mod:`.views`: a generation's filtered word maps and one layer's Q/K/V shapes.
- :mod:`.score`: IoU of a word's thresholded map with a painted (and a true) mask; a session leaderboard.
"""
