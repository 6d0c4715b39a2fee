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
changes are recomputed with the explicit op of :mod:`explain.capture.op` (softmax(Q Kᵀ · scale) in float32, edit,
``A @ V``) and spliced in. An inactive
edit (weight 1, a step outside its range, ``k = 0``) therefore leaves images bit-identical to plain generation.

The experiments built on these edits (baseline vs steered image from the same noise, re-weight / swap / drop,
a guidance sweep) are in :mod:`explain.steering.experiments`.

Example:
    >>> with AttentionSteering(pipe, Reweight(token_indices=(5,), weight=0.0)):
    ...     image = pipe("a ginormous red cube").images[0]   # "red" faded
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from explain.capture.op import explicit_output, explicit_probs, project
from explain.capture.recorder import CapturedAttention
from explain.capture.swap import CrossAttentionSwap, cond_rows
from explain.clip.tokens import tokenize_prompt
from explain.diffusion.steps import StepPlan
from explain.engine.requests import quoted

__all__ = [
    "MAX_WEIGHT",
    "Reweight",
    "Replace",
    "AttentionSteering",
    "word_token_indices",
    "replace_word",
    "remove_word",
    "effective_attention",
    "Edit",
    "require_cross_attention",
]

MAX_WEIGHT = 3.0  # upper end of the re-weighting range offered by the helpers (p2p's examples use up to ~5)


# -- edits ---------------------------------------------------------------------------------------------------------
def require_cross_attention(pipe, what: str) -> None:
    """Raise a ValueError that says why ``what`` does not apply when ``pipe`` has no U-Net cross-attention.

    Prompt-to-prompt (Hertz et al. 2022) edits the maps softmax(QKᵀ/√d) of cross-attention, where image queries
    meet text keys alone. SD3 / Flux (MMDiT) have joint attention instead: image and text tokens share one softmax
    and the text tokens attend to the image too, so "a word's map" is one block of a larger matrix and scaling it is
    not the edit the paper defines.
    """
    if getattr(pipe, "unet", None) is None:
        raise ValueError(
            f"{what} needs a U-Net's cross-attention (prompt-to-prompt); this model ({type(pipe).__name__}) has "
            "joint attention instead (text and image tokens share one softmax), so it does not apply here. "
            "Deleting the word from the text and the guidance sweep work on every model."
        )


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

        with torch.no_grad():  # the explicit op (explain.capture.op) on the conditional half, edited probabilities
            projected = project(
                attn, hidden_states[cond], encoder_hidden_states[cond], None if temb is None else temb[cond]
            )
            probs = explicit_probs(attn, projected, None if attention_mask is None else attention_mask[cond])
            for edit in active:
                probs = edit.apply(probs)  # (n_cond, heads, N, T)
            edited = explicit_output(attn, probs, projected, out_rows)
        index = torch.tensor([cond.start + r for r in out_rows], device=out.device)
        return out.index_copy(0, index, edited.to(out.dtype))


class AttentionSteering:
    """Context manager applying prompt-to-prompt edits to the cross-attention layers of a pipeline's U-Net.

    Pass ``steering.callback_on_step_end`` to the pipeline (chain others with
    :func:`explain.capture.recorder.compose_callbacks`): it advances the step counter, so step-ranged edits and
    :class:`Replace` know the denoising step (:class:`explain.diffusion.steps.StepPlan`, as
    :class:`~explain.capture.recorder.AttentionRecorder` counts, so step ``s`` here is step ``s`` of a recording). Edits
    without a step range work without it. Use one ``with`` block per pipeline call (the counter starts at 0 on
    entry). PNDM's PLMS warm-up call belongs to the first step, so ``num_inference_steps=n`` gives ``n`` steps.

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
        require_cross_attention(pipe, "steering attention")
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
        """Pipeline callback: the next U-Net call belongs to step ``StepPlan.step_of(step_index + 1)``."""
        self._step = StepPlan.of(pipe.scheduler).step_of(step_index + 1)
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

    :class:`~explain.capture.recorder.AttentionRecorder` records softmax(Q Kᵀ · scale) of each layer's inputs, i.e. the
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


# -- words -----------------------------------------------------------------------------------------------------------
def word_token_indices(tokenizer, prompt: str, word: str, field: str = "word") -> tuple[int, ...]:
    """Token slots of every occurrence of ``word`` (one word or a phrase such as ``"on the left"``) in ``prompt``.

    Matching is on CLIP's words (:func:`explain.clip.tokens.tokenize_prompt`), so it is case-insensitive and covers all
    BPE sub-tokens of a word.

    Args:
        field: What the word is called in messages (the UI's label: ``"word to drop"``, ``"old word"``).

    Raises:
        ValueError: ``word`` is empty or not among the prompt's words (the message names ``field`` and lists the
            prompt's words; long values are echoed cut short).
    """
    query = [w.text for w in tokenize_prompt(tokenizer, word).words]
    if not query:
        raise ValueError(f"The {field} is empty: type a word of the prompt (got {quoted(word)}).")
    view = tokenize_prompt(tokenizer, prompt)
    texts = [w.text for w in view.words]
    starts = [i for i in range(len(texts) - len(query) + 1) if texts[i : i + len(query)] == query]
    if not starts:
        listed = ", ".join(repr(w.text) for w in view.words if not w.is_punctuation) or "none"
        cut = f"; the prompt was cut after {view.n_prompt_tokens} tokens" if view.truncated else ""
        raise ValueError(
            f"The {field} {quoted(word)} is not a word of the prompt {quoted(prompt)}; its words are: {listed}{cut}"
        )
    return tuple(sorted({j for i in starts for w in view.words[i : i + len(query)] for j in w.token_indices}))


def _word_pattern(word: str) -> re.Pattern:
    parts = word.split()
    if not parts:
        raise ValueError(f"no word given (got {quoted(word)})")
    return re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, parts)) + r"(?!\w)", re.IGNORECASE)


def replace_word(prompt: str, old_word: str, new_word: str) -> str:
    """``prompt`` with every whole-word occurrence of ``old_word`` replaced by ``new_word`` (case-insensitive)."""
    new_prompt, count = _word_pattern(old_word).subn(new_word.strip(), prompt)
    if not count:
        raise ValueError(f"{quoted(old_word)} is not a word of the prompt {quoted(prompt)}")
    return new_prompt


def remove_word(prompt: str, word: str) -> str:
    """``prompt`` without ``word`` (every whole-word occurrence), whitespace collapsed."""
    new_prompt, count = _word_pattern(word).subn(" ", prompt)
    if not count:
        raise ValueError(f"{quoted(word)} is not a word of the prompt {quoted(prompt)}")
    return re.sub(r"\s+([,.;:!?])", r"\1", " ".join(new_prompt.split()))
