"""Delete the word: does the image change where the word's attention map says the word acts?

A cross-attention map is a *correlational* claim ("these pixels listen to 'square'"). The intervention test asks
the causal question: generate twice from the same seed and settings, once with the word and once without it
(:func:`explain.steering.experiments.steer_drop`: removed from the text, or its attention columns zeroed,
prompt-to-prompt re-weighting with w = 0, Hertz et al. 2022), and compare *where* the image changed with the
word's DAAM map (Tang et al. 2023) on the baseline:

    Δ(x, y) = mean over channels of |edited − baseline|           (images in [0, 1])
    r = Pearson(Δ, D_word)                                         over pixels
    inside = Σ_{M} Δ / Σ Δ,   M = {D_word > τ after min-max}       (DAAM's mask, τ = 0.4)

``inside`` far above the mask's area share means the change is concentrated where the map points: the map is
faithful to what the word does. Removing a word changes the whole sentence the text encoder reads (later tokens and
end-of-text summarise it), so some change outside the mask is expected; zeroing only cuts the word's own columns.

Example:
    >>> result = delete_word(pipe, "a red circle on the left and a blue square on the right", "square", steps=10)
    >>> result.share_inside, result.mask_area, result.correlation
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from explain.maps.aggregation import aggregate, overlay, threshold_mask
from explain.maps.score import DAAM_TAU
from explain.steering.edits import require_cross_attention
from explain.steering.experiments import SteerResult, steer_drop

__all__ = ["DeletionResult", "delete_word", "pearson", "share_inside"]

UINT8_MAX = np.iinfo(np.uint8).max


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's correlation coefficient of two same-shape arrays over all their elements; None if one is constant."""
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"arrays differ in size: {np.shape(a)} vs {np.shape(b)}")
    x, y = x - x.mean(), y - y.mean()
    norm = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / norm) if norm > 0 else None


def share_inside(change: np.ndarray, mask: np.ndarray) -> float | None:
    """``Σ_mask change / Σ change``: the share of the total change that lies inside ``mask``; None for no change."""
    total = float(np.asarray(change, np.float64).sum())
    return float(np.asarray(change, np.float64)[mask].sum()) / total if total > 0 else None


@dataclass(frozen=True, eq=False)  # holds arrays
class DeletionResult:
    """The same generation with and without a word, and where it changed against the word's map.

    Attributes:
        word: The word deleted.
        mode: ``"remove"`` (from the text) or ``"zero"`` (its attention columns set to 0).
        baseline_prompt: The prompt.
        edited_prompt: The prompt of the edited image (the same text for ``"zero"``).
        baseline: (H, W, 3) uint8, the image with the word.
        edited: (H, W, 3) uint8, the image without it.
        change: (H, W) float32 in [0, 1], mean over channels of ``|edited - baseline|``.
        word_map: (H, W) float32, the word's DAAM map on the baseline (its sub-tokens summed), not normalised.
        word_mask: (H, W) bool, ``word_map`` after min-max normalisation above ``tau``.
        tau: The threshold.
        correlation: Pearson ``r(change, word_map)`` over pixels (None when either is constant).
        share_inside: Share of the total change inside ``word_mask`` (None when nothing changed).
        mask_area: Share of the pixels inside ``word_mask``.
        steering: The underlying experiment (attention of both runs, edits, token slots).
    """

    word: str
    mode: str
    baseline_prompt: str
    edited_prompt: str
    baseline: np.ndarray
    edited: np.ndarray
    change: np.ndarray
    word_map: np.ndarray
    word_mask: np.ndarray
    tau: float
    correlation: float | None
    share_inside: float | None
    mask_area: float
    steering: SteerResult

    @property
    def share_outside(self) -> float | None:
        """Share of the total change outside the mask."""
        return None if self.share_inside is None else 1.0 - self.share_inside

    @property
    def concentration(self) -> float | None:
        """``share_inside / mask_area``: 1 when the change ignores the mask, above 1 when it gathers inside."""
        if self.share_inside is None or self.mask_area == 0:
            return None
        return self.share_inside / self.mask_area

    def change_image(self) -> np.ndarray:
        """(H, W) uint8: ``change`` stretched so its largest value is white (all black when nothing changed)."""
        peak = float(self.change.max())
        scaled = self.change / peak if peak > 0 else self.change
        return (scaled * UINT8_MAX).round().astype(np.uint8)

    def map_overlay(self) -> np.ndarray:
        """(H, W, 3) uint8: the word's map over the baseline (:func:`~explain.maps.aggregation.overlay`)."""
        return overlay(self.baseline, self.word_map)

    def change_overlay(self) -> np.ndarray:
        """(H, W, 3) uint8: the change over the baseline, for side-by-side comparison with :meth:`map_overlay`."""
        return overlay(self.baseline, self.change)


def delete_word(
    pipe,
    prompt: str,
    word: str,
    mode: str = "remove",
    seed: int = 0,
    steps: int = 20,
    guidance: float = 7.5,
    *,
    tau: float | None = None,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    lock=None,
) -> DeletionResult:
    """Generate with and without ``word`` from one seed; compare the change with the word's map (module docstring).

    Args:
        pipe: A Stable Diffusion (XL) pipeline.
        prompt: The prompt.
        word: A word (or phrase) of the prompt.
        mode: ``"remove"`` or ``"zero"`` (see :func:`explain.steering.experiments.steer_drop`).
        seed: Seed of both runs.
        steps: Denoising steps.
        guidance: Classifier-free guidance scale.
        tau: Threshold of the word's mask (None: :data:`explain.maps.score.DAAM_TAU`).
        height: Image height in pixels (default: the model's).
        width: Image width in pixels.
        negative_prompt: Negative prompt of both runs.
        lock: Held for each pipeline call.

    Raises:
        ValueError: bad settings, or ``word`` not in the prompt (messages from ``steer_drop``).
    """
    require_cross_attention(pipe, "the causal check (the change against the word's map)")
    tau = DAAM_TAU if tau is None else float(tau)
    steered = steer_drop(
        pipe,
        prompt,
        word,
        mode,
        seed,
        steps,
        guidance,
        capture=True,
        height=height,
        width=width,
        negative_prompt=negative_prompt,
        lock=lock,
    )
    base = steered.baseline.astype(np.float32) / UINT8_MAX  # (H, W, 3) in [0, 1]
    change = np.abs(steered.edited.astype(np.float32) / UINT8_MAX - base).mean(axis=-1)  # (H, W)
    maps = aggregate(steered.baseline_attention, None, image_size=change.shape)
    heat = maps.span_map(steered.token_indices)  # (H, W): the word's sub-token maps summed
    mask = threshold_mask(heat, tau).numpy()
    return DeletionResult(
        word=word,
        mode=mode,
        baseline_prompt=steered.baseline_prompt,
        edited_prompt=steered.edited_prompt,
        baseline=steered.baseline,
        edited=steered.edited,
        change=change.astype(np.float32),
        word_map=heat.to(torch.float32).numpy(),
        word_mask=mask,
        tau=tau,
        correlation=pearson(change, heat.numpy()),
        share_inside=share_inside(change, mask),
        mask_area=float(mask.mean()),
        steering=steered,
    )
