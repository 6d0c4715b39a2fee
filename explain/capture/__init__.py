"""Capture: record what the U-Net computes, through diffusers' public extension points only.

- :mod:`.op`: the one explicit cross-attention op (diffusers' ``AttnProcessor2_0`` written out, handing back Q, K
  and optionally editing the probabilities), the processor swap and the guidance-branch rows.
- :mod:`.recorder`: :class:`~explain.capture.recorder.AttentionRecorder`, softmax(Q Kᵀ · scale) per layer and step.
- :mod:`.film`: :class:`~explain.capture.film.FilmRecorder`, x_t and the predicted clean image x̂₀ per step.
"""
