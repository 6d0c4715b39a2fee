"""Steer with words: prompt-to-prompt cross-attention control (Hertz et al. 2022).

Every ``attn2`` layer mixes the text-token values with the attention probabilities

    out = A V,   A = softmax(Q Kᵀ · d^-1/2)  (B, heads, N, 77),

so column ``j`` of ``A`` is *where* token ``j`` acts on the image. Hertz et al. 2022, "Prompt-to-Prompt Image
Editing with Cross Attention Control", edit images by editing ``A`` during sampling:

- **Re-weighting** (their ``AttentionReweight``, Sec. 3.2 "Fader control"): ``A[..., j] ← w · A[..., j]`` for the
  word's sub-token columns, after the softmax and without renormalising: ``w < 1`` fades the word, ``w > 1``
  amplifies it. :class:`Reweight`.
- **Word swap** (their ``AttentionReplace``, Sec. 3.2 "Word swap"): source and target prompt are sampled from the
  same noise in one batch; for the first ``k`` steps the target's maps are *replaced* by the source's,
  ``A_target ← A_source``, so the target keeps the source's layout (maps are decided early) while its values
  ``V_target`` bring the new word's content; afterwards the target's own attention acts. :class:`Replace`.

Edits act on the cross-attention layers only and on the conditional branch only: with classifier-free guidance
the pipelines run the U-Net on ``[negative, positive]`` halves and the negative half is left untouched; without
guidance (``guidance_scale <= 1``) the whole batch is conditional. :class:`AttentionSteering` installs the
editing processors through ``unet.set_attn_processor`` and restores the originals on exit, also on error.

Exactness: for each layer call the original processor computes the output; only the rows an *active* edit
changes are recomputed explicitly (softmax(Q Kᵀ · scale) in float32, edit, ``A @ V``) and spliced in. An inactive
edit (weight 1, a step outside its range, ``k = 0``) therefore leaves images bit-identical to plain generation.

Example:
    >>> result = steer_reweight(pipe, "a red circle on the left", "red", weight=0.0, seed=0, steps=20)
    >>> result.mean_abs_difference   # how much fading "red" changed the image
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from explain.attention import AttentionRecorder, CapturedAttention, compose_callbacks
from explain.cross_attention import CrossAttentionSwap, attention_probs, cond_rows, prepare_inputs, split_heads
from explain.film import initial_noise
from explain.tokens import tokenize_prompt

__all__ = [
    "MAX_WEIGHT",
    "Reweight",
    "Replace",
    "AttentionSteering",
    "SteerResult",
    "word_token_indices",
    "replace_word",
    "remove_word",
    "effective_attention",
    "steer_reweight",
    "steer_swap",
    "steer_drop",
    "guidance_sweep",
]

MAX_WEIGHT = 3.0  # upper end of the re-weighting range offered by the helpers (p2p's examples use up to ~5)


# -- edits ---------------------------------------------------------------------------------------------------------
def _in_range(step: int, step_range: tuple[int, int] | None) -> bool:
    return step_range is None or step_range[0] <= step < step_range[1]


@dataclass(frozen=True)
class Reweight:
    """p2p attention re-weighting: ``A[..., j] ← weight · A[..., j]`` for ``j`` in ``token_indices``.

    Attributes:
        token_indices: Token slots (0 = BOS) whose columns are scaled, e.g. all sub-tokens of one word.
        weight: Factor ``w >= 0``; post-softmax, no renormalisation (rows no longer sum to 1 unless ``w = 1``).
        step_range: Denoising steps ``[start, stop)`` where the edit acts; ``None``: all steps.
        rows: Rows of the conditional half to edit (one per image); ``None``: all.
    """

    token_indices: tuple[int, ...]
    weight: float
    step_range: tuple[int, int] | None = None
    rows: tuple[int, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "token_indices", tuple(int(j) for j in self.token_indices))
        if self.rows is not None:
            object.__setattr__(self, "rows", tuple(int(r) for r in self.rows))
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {self.weight}")
        if self.step_range is not None and not 0 <= self.step_range[0] <= self.step_range[1]:
            raise ValueError(f"step_range must be (start, stop) with 0 <= start <= stop, got {self.step_range}")

    @property
    def step_dependent(self) -> bool:
        return self.step_range is not None

    def active(self, step: int) -> bool:
        return self.weight != 1.0 and bool(self.token_indices) and _in_range(step, self.step_range)

    def edited_rows(self, n_rows: int) -> tuple[int, ...]:
        return tuple(range(n_rows)) if self.rows is None else self.rows

    def apply(self, probs: torch.Tensor) -> torch.Tensor:
        """Edit (rows, [heads,] N, T) probabilities of the conditional half; returns a new tensor."""
        rows = list(self.edited_rows(probs.shape[0]))
        scale = torch.ones(probs.shape[-1], dtype=probs.dtype, device=probs.device)  # (T,)
        scale[[j for j in self.token_indices if j < probs.shape[-1]]] = self.weight
        out = probs.clone()
        out[rows] = probs[rows] * scale
        return out


@dataclass(frozen=True)
class Replace:
    """p2p ``AttentionReplace``: the target row uses the source row's maps for steps ``[0, k_steps)``.

    Both prompts must have the same token layout (same number of tokens: column ``j`` of the source is column
    ``j`` of the target). p2p aligns prompts of different token counts with a token mapper; not implemented here.

    Attributes:
        k_steps: Steps during which ``A_target ← A_source`` (all 77 columns, every head).
        source: Source row in the conditional half.
        target: Target row in the conditional half.
    """

    k_steps: int
    source: int = 0
    target: int = 1

    def __post_init__(self):
        if self.k_steps < 0:
            raise ValueError(f"k_steps must be >= 0, got {self.k_steps}")
        if self.source == self.target:
            raise ValueError("source and target rows must differ")

    @property
    def step_dependent(self) -> bool:
        return True

    def active(self, step: int) -> bool:
        return step < self.k_steps

    def edited_rows(self, n_rows: int) -> tuple[int, ...]:
        return (self.target,)

    def apply(self, probs: torch.Tensor) -> torch.Tensor:
        out = probs.clone()
        out[self.target] = probs[self.source]
        return out


Edit = Reweight | Replace


# -- processor and context -----------------------------------------------------------------------------------------
def _explicit_attention(attn, hidden_states, context, attention_mask, temb, edit_fn, out_rows):
    """``AttnProcessor2_0`` written out with the probabilities explicit, for the conditional rows given.

    Args:
        hidden_states, context, attention_mask, temb: The layer inputs, already restricted to conditional rows.
        edit_fn: (rows, heads, N, T) float32 probabilities -> edited probabilities.
        out_rows: Rows (of the restricted batch) whose output is returned.

    Returns:
        The layer output of ``out_rows``, shaped like the layer's own output.
    """
    residual = hidden_states[out_rows]
    prepared = prepare_inputs(attn, hidden_states, context, temb)
    probs = edit_fn(attention_probs(attn, prepared.hidden_states, prepared.context, attention_mask))  # (B, h, N, T)
    v = split_heads(attn.to_v(prepared.context[out_rows]), attn.heads)  # (R, heads, T, d)
    n, head_dim = prepared.hidden_states.shape[1], v.shape[-1]
    out = (probs[out_rows] @ v.float()).to(v.dtype)  # (R, heads, N, d)
    out = out.transpose(1, 2).reshape(len(out_rows), n, attn.heads * head_dim)  # (R, N, heads*d)
    out = attn.to_out[1](attn.to_out[0](out))  # linear projection, dropout
    if prepared.spatial is not None:
        out = out.transpose(-1, -2).reshape(len(out_rows), *prepared.spatial)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class _SteerProcessor:
    """Original processor for the output; rows changed by an active edit recomputed with edited probabilities."""

    def __init__(self, original, steering: AttentionSteering):
        self.original = original
        self.steering = steering

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if temb is not None:
            kwargs["temb"] = temb
        out = self.original(
            attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **kwargs
        )
        active = self.steering._active_edits(self)
        if not active or encoder_hidden_states is None:
            return out
        cond = cond_rows(self.steering.pipe, hidden_states.shape[0])
        n_cond = cond.stop - cond.start
        for edit in active:
            used = edit.edited_rows(n_cond) + ((edit.source,) if isinstance(edit, Replace) else ())
            if used and max(used) >= n_cond:
                raise ValueError(f"{edit} addresses row {max(used)} but the conditional half has {n_cond} rows")
        out_rows = sorted({r for edit in active for r in edit.edited_rows(n_cond)})
        if not out_rows:
            return out

        def edit_fn(probs):
            for edit in active:
                probs = edit.apply(probs)
            return probs

        with torch.no_grad():
            edited = _explicit_attention(
                attn,
                hidden_states[cond],
                encoder_hidden_states[cond],
                None if attention_mask is None else attention_mask[cond],
                None if temb is None else temb[cond],
                edit_fn,
                out_rows,
            )
        index = torch.tensor([cond.start + r for r in out_rows], device=out.device)
        return out.index_copy(0, index, edited.to(out.dtype))


class AttentionSteering:
    """Context manager applying prompt-to-prompt edits to the cross-attention layers of a pipeline's U-Net.

    Pass ``steering.callback_on_step_end`` to the pipeline (chain others with
    :func:`explain.attention.compose_callbacks`): it advances the step counter, so step-ranged edits and
    :class:`Replace` know the denoising step (``step_index // scheduler.order``, as
    :class:`~explain.attention.AttentionRecorder` counts, so step ``s`` here is step ``s`` of a recording). Edits
    without a step range work without it. Use one ``with`` block per pipeline call (the counter starts at 0 on
    entry). PNDM (PLMS) repeats its second timestep, so ``num_inference_steps=n`` gives ``n + 1`` counted steps.

    Rows: edits address rows of the *conditional* half of the U-Net batch, one per image (prompt ``i`` with one
    image per prompt is row ``i``). With guidance the batch is ``[negative, positive]`` and the negative half is
    never edited; with ``guidance_scale <= 1`` the batch is all conditional. Several edits apply in order.

    Custom processors: rows an active edit changes are computed by the explicit ``AttnProcessor2_0`` path, so any
    extra behaviour of a non-standard original processor (IP-Adapter, ...) is absent from those rows.

    Args:
        pipe: A Stable Diffusion (XL) pipeline.
        *edits: :class:`Reweight` / :class:`Replace` edits.
    """

    def __init__(self, pipe, *edits: Edit):
        for edit in edits:
            if not isinstance(edit, Reweight | Replace):
                raise TypeError(f"expected Reweight or Replace edits, got {type(edit).__name__}")
        self.pipe = pipe
        self.edits = edits
        self._swap = CrossAttentionSwap(pipe.unet, lambda name, original: _SteerProcessor(original, self))
        self._step = 0
        self._calls_since_callback: dict[int, int] = {}

    def __enter__(self) -> AttentionSteering:
        self._step, self._calls_since_callback = 0, {}
        self._swap.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._swap.__exit__(*exc_info)

    @property
    def step(self) -> int:
        """Denoising step the next U-Net call belongs to."""
        return self._step

    def callback_on_step_end(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        """Pipeline callback: the next U-Net call belongs to step ``(step_index + 1) // scheduler.order``."""
        self._step = (step_index + 1) // getattr(pipe.scheduler, "order", 1)
        self._calls_since_callback = {}
        return callback_kwargs

    def _active_edits(self, processor: _SteerProcessor) -> list[Edit]:
        calls = self._calls_since_callback.get(id(processor), 0) + 1
        self._calls_since_callback[id(processor)] = calls
        if calls > 1 and any(edit.step_dependent for edit in self.edits):
            raise RuntimeError(
                "a cross-attention layer ran twice without a step callback: pass "
                "steering.callback_on_step_end to the pipeline (step-ranged edits need the step index)"
            )
        return [edit for edit in self.edits if edit.active(self._step)]


def effective_attention(captured: CapturedAttention, edits: Sequence[Edit]) -> CapturedAttention:
    """The maps the layers actually used: ``edits`` applied to maps recorded during the edited run.

    :class:`~explain.attention.AttentionRecorder` records softmax(Q Kᵀ · scale) of each layer's inputs, i.e. the
    probabilities *before* an edit. Both edits commute with what the recorder does afterwards (mean over heads,
    average pooling, averaging the calls of a step are linear; a row copy is a row copy), so applying them to the
    recorded maps gives exactly the probabilities the edited layers multiplied ``V`` by (up to float16 storage).

    Args:
        captured: Conditional-branch recording of the edited run (batch rows = conditional rows).
        edits: The edits that were active in that run.
    """
    maps = {}
    for name, stored in captured.maps.items():  # (steps, B, [heads,] T, h, w)
        work = stored
        for edit in edits:
            steps = [s for s in range(work.shape[0]) if edit.active(s)]
            if not steps:
                continue
            work = work.to(torch.float32, copy=True)  # the recording itself stays untouched
            moved = work[steps].movedim(-3, -1).movedim(0, 1)  # (B, S, [heads,] h, w, T): rows first, tokens last
            work[steps] = edit.apply(moved).movedim(0, 1).movedim(-1, -3)
        maps[name] = work.to(stored.dtype)
    return dataclasses.replace(captured, maps=maps)


def _rows_of(captured: CapturedAttention, row: int) -> CapturedAttention:
    return dataclasses.replace(captured, maps={name: m[:, row : row + 1] for name, m in captured.maps.items()})


# -- words -----------------------------------------------------------------------------------------------------------
def word_token_indices(tokenizer, prompt: str, word: str) -> tuple[int, ...]:
    """Token slots of every occurrence of ``word`` (one word or a phrase such as ``"on the left"``) in ``prompt``.

    Matching is on CLIP's words (:func:`explain.tokens.tokenize_prompt`), so it is case-insensitive and covers all
    BPE sub-tokens of a word.

    Raises:
        ValueError: ``word`` is empty or not among the prompt's words (the message lists them).
    """
    query = [w.text for w in tokenize_prompt(tokenizer, word).words]
    if not query:
        raise ValueError(f"no word given (got {word!r})")
    view = tokenize_prompt(tokenizer, prompt)
    texts = [w.text for w in view.words]
    starts = [i for i in range(len(texts) - len(query) + 1) if texts[i : i + len(query)] == query]
    if not starts:
        listed = ", ".join(repr(w.text) for w in view.words if not w.is_punctuation) or "none"
        cut = f"; the prompt was cut after {view.n_prompt_tokens} tokens" if view.truncated else ""
        raise ValueError(f"{word!r} is not a word of the prompt {prompt!r}; its words are: {listed}{cut}")
    return tuple(sorted({j for i in starts for w in view.words[i : i + len(query)] for j in w.token_indices}))


def _word_pattern(word: str) -> re.Pattern:
    parts = word.split()
    if not parts:
        raise ValueError(f"no word given (got {word!r})")
    return re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, parts)) + r"(?!\w)", re.IGNORECASE)


def replace_word(prompt: str, old_word: str, new_word: str) -> str:
    """``prompt`` with every whole-word occurrence of ``old_word`` replaced by ``new_word`` (case-insensitive)."""
    new_prompt, count = _word_pattern(old_word).subn(new_word.strip(), prompt)
    if not count:
        raise ValueError(f"{old_word!r} is not a word of the prompt {prompt!r}")
    return new_prompt


def remove_word(prompt: str, word: str) -> str:
    """``prompt`` without ``word`` (every whole-word occurrence), whitespace collapsed."""
    new_prompt, count = _word_pattern(word).subn(" ", prompt)
    if not count:
        raise ValueError(f"{word!r} is not a word of the prompt {prompt!r}")
    return re.sub(r"\s+([,.;:!?])", r"\1", " ".join(new_prompt.split()))


# -- results and helpers -----------------------------------------------------------------------------------------
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


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _image_size(pipe, height: int | None, width: int | None) -> tuple[int, int]:
    sample = pipe.unet.config.sample_size
    sample_hw = (sample, sample) if isinstance(sample, int) else tuple(sample)
    return (height or sample_hw[0] * pipe.vae_scale_factor, width or sample_hw[1] * pipe.vae_scale_factor)


def _token_count(pipe, prompts: Sequence[str]) -> int:
    return max(tokenize_prompt(pipe.tokenizer, p).n_used for p in prompts)


def _generate(pipe, prompts, noise, steps, guidance, edits=(), capture=False, negative_prompt=None, **kwargs):
    """Images (B, H, W, 3) float in [0, 1] of ``prompts`` from one shared x_T, and the conditional-branch
    attention (effective maps, :func:`effective_attention`) when ``capture``, else None."""
    with contextlib.ExitStack() as stack:  # exits innermost first: each context restores what it found
        steering = stack.enter_context(AttentionSteering(pipe, *edits)) if edits else None
        recorder = None
        if capture:
            recorder = stack.enter_context(AttentionRecorder(pipe, token_count=_token_count(pipe, prompts)))
        images = pipe(
            list(prompts),
            negative_prompt=None if negative_prompt is None else [negative_prompt] * len(prompts),
            num_inference_steps=steps,
            guidance_scale=guidance,
            latents=noise.expand(len(prompts), *noise.shape[1:]).clone(),  # (B, C, h, w): the same x_T
            output_type="np",
            callback_on_step_end=compose_callbacks(
                steering and steering.callback_on_step_end, recorder and recorder.callback_on_step_end
            ),
            **kwargs,
        ).images
    if recorder is None:
        return images, None
    return images, effective_attention(recorder.result(), edits)


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


def _noise(pipe, seed: int, height: int | None, width: int | None) -> torch.Tensor:
    h, w = _image_size(pipe, height, width)
    return initial_noise(pipe, 1, h, w, torch.Generator().manual_seed(seed))  # (1, C, h/f, w/f)


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
    """
    if not 0.0 <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight must lie in [0, {MAX_WEIGHT}], got {weight}")
    indices = word_token_indices(pipe.tokenizer, prompt, word)
    if step_range is not None and step_range[1] >= steps:  # "to the end", PNDM's extra step included
        step_range = (step_range[0], max(step_range[1], _counted_steps(pipe, steps)))
    edit = Reweight(indices, float(weight), step_range)
    noise = _noise(pipe, seed, height, width)
    kwargs = dict(height=height, width=width, negative_prompt=negative_prompt)
    base, base_att = _generate(pipe, [prompt], noise, steps, guidance, capture=capture, **kwargs)
    out, out_att = _generate(pipe, [prompt], noise, steps, guidance, (edit,), capture, **kwargs)
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
    indices = word_token_indices(pipe.tokenizer, prompt, old_word)
    target = replace_word(prompt, old_word, new_word)
    source_view, target_view = tokenize_prompt(pipe.tokenizer, prompt), tokenize_prompt(pipe.tokenizer, target)
    if source_view.n_prompt_tokens != target_view.n_prompt_tokens:
        old_n = len(tokenize_prompt(pipe.tokenizer, old_word).used_tokens) - 2
        new_n = len(tokenize_prompt(pipe.tokenizer, new_word).used_tokens) - 2
        raise ValueError(
            f"word swap needs prompts of equal token length: {old_word!r} is {old_n} BPE token(s), {new_word!r} is "
            f"{new_n} ({source_view.n_prompt_tokens} vs {target_view.n_prompt_tokens} prompt tokens); "
            "choose a replacement with the same token count"
        )
    edit = Replace(max(k_steps, _counted_steps(pipe, steps)) if k_steps >= steps else k_steps)
    images, captured = _generate(
        pipe,
        [prompt, target],
        _noise(pipe, seed, height, width),
        steps,
        guidance,
        (edit,),
        capture,
        height=height,
        width=width,
        negative_prompt=negative_prompt,
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
    if mode not in ("remove", "zero"):
        raise ValueError(f"mode must be 'remove' or 'zero', got {mode!r}")
    kwargs = dict(capture=capture, height=height, width=width, negative_prompt=negative_prompt)
    if mode == "zero":
        return steer_reweight(pipe, prompt, word, 0.0, seed, steps, guidance, **kwargs)
    indices = word_token_indices(pipe.tokenizer, prompt, word)
    edited_prompt = remove_word(prompt, word)
    noise = _noise(pipe, seed, height, width)
    base, base_att = _generate(pipe, [prompt], noise, steps, guidance, **kwargs)
    out, out_att = _generate(pipe, [edited_prompt], noise, steps, guidance, **kwargs)
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
) -> list[tuple[float, np.ndarray]]:
    """The same prompt and noise under several classifier-free guidance scales (Ho & Salimans 2022).

    ``ε̂ = ε(x, ∅) + s · (ε(x, c) − ε(x, ∅))``: ``s = 1`` is the plain conditional model (no guidance), larger ``s``
    pushes further from the unconditional prediction.

    Returns:
        ``[(scale, (H, W, 3) uint8 image), ...]`` in the order of ``scales``.
    """
    noise = _noise(pipe, seed, height, width)
    out = []
    for scale in scales:
        images, _ = _generate(
            pipe, [prompt], noise, steps, float(scale), height=height, width=width, negative_prompt=negative_prompt
        )
        out.append((float(scale), _to_uint8(images[0])))
    return out
