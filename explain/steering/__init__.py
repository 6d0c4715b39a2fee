"""Steering: prompt-to-prompt attention edits (Hertz et al. 2022) and the experiments built on them.

- :mod:`.edits`: :class:`~explain.steering.edits.Reweight`, :class:`~explain.steering.edits.Replace`,
  :class:`~explain.steering.edits.AttentionSteering` and word helpers.
- :mod:`.experiments`: baseline vs steered image from the same noise; re-weight, swap, drop; guidance sweep.
- :mod:`.causal`: delete a word and compare where the image changed with the word's map.
"""
