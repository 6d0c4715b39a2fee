"""Steering experiments: a baseline and its steered counterpart from the same noise, and what differs.

Built on :mod:`explain.steering.edits` (prompt-to-prompt attention edits, Hertz et al. 2022): :func:`steer_reweight` fades or
amplifies a word (Fader control), :func:`steer_swap` swaps a word keeping the source's maps for the first k steps
(Word swap), :func:`steer_drop` removes a word from the prompt or zeroes its attention, and :func:`guidance_sweep`
shows the same seed at several classifier-free guidance scales (Ho & Salimans 2022). Each returns images in
uint8 and, when asked, the attention the edited layers actually used.

Example:
    >>> result = steer_reweight(pipe, "a red circle on the left", "red", weight=0.0, seed=0, steps=20)
    >>> result.mean_abs_difference   # how much fading "red" changed the image
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from explain.capture.recorder import CapturedAttention
from explain.clip.tokens import tokenize_prompt
from explain.engine.requests import RunSettings, quoted
from explain.engine.run import Capture, recorded_run
from explain.maps.aggregation import aggregate, overlay
from explain.steering.edits import (
    MAX_WEIGHT,
    AttentionSteering,
    Edit,
    Replace,
    Reweight,
    effective_attention,
    remove_word,
    replace_word,
    require_cross_attention,
    word_token_indices,
)

__all__ = [
    "SteerResult",
    "WordOverlays",
    "steer_reweight",
    "steer_swap",
    "steer_drop",
    "guidance_sweep",
    "word_overlays",
]


def _rows_of(captured: CapturedAttention, row: int) -> CapturedAttention:
    """Image ``row`` of a batch capture, as a batch of one."""
    return dataclasses.replace(captured, maps={name: m[:, row : row + 1] for name, m in captured.maps.items()})


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields explicitly
class SteerResult:
    """A baseline image, its steered counterpart and what differs.

    Attributes:
        baseline: (H, W, 3) uint8, the unedited generation (same seed).
        edited: (H, W, 3) uint8, the steered generation.
        difference: (H, W, 3) uint8, ``|edited - baseline|`` per channel, not amplified.
        mean_abs_difference: Mean of ``|edited - baseline|`` over pixels and channels, images in [0, 1] (float
            outputs, before quantisation).
        token_indices: Token slots of the word in ``baseline_prompt`` (0 = BOS).
        baseline_prompt: Prompt of the baseline.
        edited_prompt: Prompt of the edited image (differs for a word swap and for ``steer_drop(mode="remove")``).
        edits: Attention edits applied to the edited image (empty when only the prompt changed).
        baseline_attention: Conditional-branch maps of the baseline (batch 1), when captured.
        edited_attention: Maps the edited layers actually used (:func:`effective_attention`, batch 1), when
            captured; token slots follow ``edited_prompt``.
    """

    baseline: np.ndarray
    edited: np.ndarray
    difference: np.ndarray
    mean_abs_difference: float
    token_indices: tuple[int, ...]
    baseline_prompt: str
    edited_prompt: str
    edits: tuple[Edit, ...]
    baseline_attention: CapturedAttention | None = None
    edited_attention: CapturedAttention | None = None

    def amplified_difference(self, gain: float) -> np.ndarray:
        """``difference`` × ``gain``, clipped to 0..255: (H, W, 3) uint8 (faint differences made visible)."""
        return np.clip(self.difference.astype(np.int32) * gain, 0, 255).astype(np.uint8)


@dataclass(frozen=True, eq=False)  # holds arrays
class WordOverlays:
    """A steered word's attention over each image: its sub-tokens' summed DAAM map, blended on top.

    Attributes:
        before: (H, W, 3) uint8, the word's map over the baseline; None without captured attention.
        after: (H, W, 3) uint8, the (new) word's map over the edited image; None when the edited prompt does not
            contain it (a deleted word) or without captured attention.
    """

    before: np.ndarray | None
    after: np.ndarray | None


def _span_overlay(captured: CapturedAttention, token_indices, image: np.ndarray) -> np.ndarray:
    """The summed maps of ``token_indices`` (:meth:`TokenMaps.span_map`) over ``image`` (H, W, 3)."""
    maps = aggregate(captured, None, image_size=image.shape[:2])
    return overlay(image, maps.span_map(token_indices).numpy())


def word_overlays(result: SteerResult, tokenizer, edited_word: str) -> WordOverlays:
    """The steered word before (``result.token_indices`` on the baseline) and ``edited_word`` after the edit.

    Args:
        result: A steering result with captured attention (``capture=True``).
        tokenizer: The pipeline's tokenizer (finds ``edited_word``'s slots in ``result.edited_prompt``).
        edited_word: The word shown on the edited image: the same word for a re-weight or a drop, the new word for
            a swap.
    """
    if result.baseline_attention is None:
        return WordOverlays(None, None)
    before = _span_overlay(result.baseline_attention, result.token_indices, result.baseline)
    try:
        after_indices = word_token_indices(tokenizer, result.edited_prompt, edited_word)
    except ValueError:  # not in the edited prompt (a deleted word)
        after_indices = ()
    after = None
    if after_indices and result.edited_attention is not None:
        after = _span_overlay(result.edited_attention, after_indices, result.edited)
    return WordOverlays(before, after)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _token_count(pipe, prompts: Sequence[str]) -> int:
    return max(tokenize_prompt(pipe.tokenizer, p).n_used for p in prompts)


def _generate(pipe, prompts, seed, steps, guidance, edits=(), capture=False, negative_prompt=None, **kwargs):
    """Images (B, H, W, 3) float in [0, 1] of ``prompts`` from one shared x_T (the engine's seed policy), and the
    conditional-branch attention (effective maps, :func:`effective_attention`) when ``capture``, else None.

    ``kwargs``: ``height``, ``width`` and ``lock`` (held for the pipeline call).
    """
    lock = kwargs.pop("lock", None)
    call = dict(
        prompt=list(prompts),
        negative_prompt=None if negative_prompt is None else [negative_prompt] * len(prompts),
        num_inference_steps=steps,
        guidance_scale=guidance,
        output_type="np",
        **kwargs,
    )
    run = recorded_run(
        pipe,
        call,
        seed=seed,
        capture=Capture(attention=capture, film=False),
        contexts=[AttentionSteering(pipe, *edits)] if edits else [],
        lock=lock,
    )
    if run.captured is None:
        return run.images, None
    return run.images, effective_attention(run.captured, edits)


def _result(base, edit, base_att, edit_att, indices, base_prompt, edit_prompt, edits) -> SteerResult:
    diff = np.abs(edit.astype(np.float32) - base.astype(np.float32))
    return SteerResult(
        baseline=_to_uint8(base),
        edited=_to_uint8(edit),
        difference=np.abs(_to_uint8(edit).astype(np.int16) - _to_uint8(base).astype(np.int16)).astype(np.uint8),
        mean_abs_difference=float(diff.mean()),
        token_indices=indices,
        baseline_prompt=base_prompt,
        edited_prompt=edit_prompt,
        edits=tuple(edits),
        baseline_attention=base_att,
        edited_attention=edit_att,
    )


def _counted_steps(pipe, steps: int) -> int:
    """Steps as :class:`AttentionSteering` counts them for ``num_inference_steps=steps``.

    Usually ``steps``; PNDM's PLMS warm-up repeats one timestep and so counts ``steps + 1``. Read from a fresh
    copy of the scheduler (the pipeline's own is left alone).
    """
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    return math.ceil(len(scheduler.timesteps) / getattr(scheduler, "order", 1))


def steer_reweight(
    pipe,
    prompt: str,
    word: str,
    weight: float,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 7.5,
    *,
    step_range: tuple[int, int] | None = None,
    capture: bool = False,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    lock=None,
) -> SteerResult:
    """Scale the cross-attention of ``word`` (all its sub-tokens) by ``weight`` (p2p re-weighting).

    Args:
        pipe: A Stable Diffusion (XL) pipeline.
        prompt: The prompt.
        word: A word or phrase of the prompt (every occurrence is scaled).
        weight: In ``[0, MAX_WEIGHT]``; 1 leaves the image bit-identical, 0 removes the word's direct influence.
        seed: Seed of the initial noise (shared by baseline and edit).
        steps: Denoising steps.
        guidance: Classifier-free guidance scale (``<= 1``: no guidance; the edit still applies).
        step_range: Steps ``[start, stop)`` to edit, counted from 0; ``stop >= steps`` runs to the end.
            ``None``: all.
        capture: Also record cross-attention (baseline: as generated; edited: the effective maps).
        height: Image height in pixels (default: the U-Net's native size).
        width: Image width in pixels.
        negative_prompt: Negative prompt for both images.
        lock: Held for each pipeline call (the app's model lock).
    """
    RunSettings(seed, steps, guidance).validate()
    require_cross_attention(pipe, "re-weighting a word")
    if not 0.0 <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight must lie in [0, {MAX_WEIGHT}], got {weight}")
    indices = word_token_indices(pipe.tokenizer, prompt, word)
    if step_range is not None and step_range[1] >= steps:  # "to the end", PNDM's extra step included
        step_range = (step_range[0], max(step_range[1], _counted_steps(pipe, steps)))
    edit = Reweight(indices, float(weight), step_range)
    kwargs = dict(height=height, width=width, negative_prompt=negative_prompt, lock=lock)
    base, base_att = _generate(pipe, [prompt], seed, steps, guidance, capture=capture, **kwargs)
    out, out_att = _generate(pipe, [prompt], seed, steps, guidance, (edit,), capture, **kwargs)
    return _result(base[0], out[0], base_att, out_att, indices, prompt, prompt, (edit,))


def steer_swap(
    pipe,
    prompt: str,
    old_word: str,
    new_word: str,
    k_steps: int,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 7.5,
    *,
    capture: bool = False,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    lock=None,
) -> SteerResult:
    """p2p word swap: the target prompt keeps the source's attention maps for the first ``k_steps`` steps.

    Source (``prompt``) and target (``old_word`` → ``new_word``) are generated in one batch from the same noise;
    ``k_steps = 0`` is plain generation of both, ``k_steps >= steps`` injects the source's maps throughout
    (PNDM's extra warm-up step included).
    The baseline is the source image, the edited one the target image.

    Raises:
        ValueError: ``old_word`` not in the prompt, or the two prompts tokenise to different lengths (then column
            ``j`` of one is not column ``j`` of the other; p2p's token alignment for that case is not implemented:
            pick a word with the same number of BPE tokens).
    """
    RunSettings(seed, steps, guidance).validate()
    require_cross_attention(pipe, "the word swap (the old prompt's maps injected into the new one)")
    indices = word_token_indices(pipe.tokenizer, prompt, old_word, field="old word")
    target = replace_word(prompt, old_word, new_word)
    source_view, target_view = tokenize_prompt(pipe.tokenizer, prompt), tokenize_prompt(pipe.tokenizer, target)
    if source_view.n_prompt_tokens != target_view.n_prompt_tokens:
        old_n = len(tokenize_prompt(pipe.tokenizer, old_word).used_tokens) - 2
        new_n = len(tokenize_prompt(pipe.tokenizer, new_word).used_tokens) - 2
        raise ValueError(
            f"word swap needs prompts of equal token length: {quoted(old_word)} is {old_n} BPE token(s), "
            f"the new word {quoted(new_word)} is "
            f"{new_n} ({source_view.n_prompt_tokens} vs {target_view.n_prompt_tokens} prompt tokens); "
            "choose a replacement with the same token count"
        )
    edit = Replace(max(k_steps, _counted_steps(pipe, steps)) if k_steps >= steps else k_steps)
    images, captured = _generate(
        pipe,
        [prompt, target],
        seed,
        steps,
        guidance,
        (edit,),
        capture,
        height=height,
        width=width,
        negative_prompt=negative_prompt,
        lock=lock,
    )
    base_att = _rows_of(captured, 0) if captured else None
    out_att = _rows_of(captured, 1) if captured else None
    return _result(images[0], images[1], base_att, out_att, indices, prompt, target, (edit,))


def steer_drop(
    pipe,
    prompt: str,
    word: str,
    mode: str = "remove",
    seed: int = 0,
    steps: int = 20,
    guidance: float = 7.5,
    *,
    capture: bool = False,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    lock=None,
) -> SteerResult:
    """Drop a word, two ways that answer different questions.

    - ``mode="remove"``: delete the word from the text and generate again from the same noise. The text encoder
      sees a different sentence: every later token's embedding changes (CLIP's text transformer is causal, so
      later tokens, EOS and the padding slots all summarise the words before them), and positions shift.
    - ``mode="zero"``: keep the text, re-weight the word's attention to 0 (:class:`Reweight` with ``w = 0``).
      Only the word's *own columns* are cut from the U-Net; its meaning still reaches the image through the
      other tokens' contextualised embeddings (notably EOS/padding), so the effect is often weaker.

    The gap between the two shows how much of a word is carried by other token slots.
    """
    RunSettings(seed, steps, guidance).validate()
    if mode not in ("remove", "zero"):
        raise ValueError(f"mode must be 'remove' or 'zero', got {mode!r}")
    indices = word_token_indices(pipe.tokenizer, prompt, word, field="word to drop")
    kwargs = dict(capture=capture, height=height, width=width, negative_prompt=negative_prompt, lock=lock)
    if mode == "zero":
        return steer_reweight(pipe, prompt, word, 0.0, seed, steps, guidance, **kwargs)
    edited_prompt = remove_word(prompt, word)
    base, base_att = _generate(pipe, [prompt], seed, steps, guidance, **kwargs)
    out, out_att = _generate(pipe, [edited_prompt], seed, steps, guidance, **kwargs)
    return _result(base[0], out[0], base_att, out_att, indices, prompt, edited_prompt, ())


def guidance_sweep(
    pipe,
    prompt: str,
    seed: int = 0,
    scales: Sequence[float] = (1, 3, 5, 7.5, 10),
    steps: int = 20,
    *,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    lock=None,
) -> list[tuple[float, np.ndarray]]:
    """The same prompt and noise under several classifier-free guidance scales (Ho & Salimans 2022).

    ``ε̂ = ε(x, ∅) + s · (ε(x, c) − ε(x, ∅))``: ``s = 1`` is the plain conditional model (no guidance), larger ``s``
    pushes further from the unconditional prediction.

    Returns:
        ``[(scale, (H, W, 3) uint8 image), ...]`` in the order of ``scales``.
    """
    for scale in scales:
        RunSettings(seed, steps, scale).validate()
    out = []
    for scale in scales:
        images, _ = _generate(
            pipe,
            [prompt],
            seed,
            steps,
            float(scale),
            height=height,
            width=width,
            negative_prompt=negative_prompt,
            lock=lock,
        )
        out.append((float(scale), _to_uint8(images[0])))
    return out
