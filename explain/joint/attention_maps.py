"""Token maps of SD3 / SD3.5 and Flux: the image-query x text-key block of the joint attention.

These models have no cross-attention: text and image tokens attend jointly (:mod:`explain.joint.processors`). The
word maps are the image-query x text-key block of that one softmax, per layer (SD3 joint blocks, Flux double- *and*
single-stream blocks), head and step, in the two normalisations of :mod:`explain.joint.scores`:
``Normalization.JOINT`` (the model's own weights, share of the whole joint softmax) and ``Normalization.TEXT``
(renormalised over the text tokens, like a cross-attention map).

Memory law. Accumulated on the fly (sums over steps unless ``per_step``, means over heads unless ``per_head``), in
float32 on the model's device until :meth:`JointAttentionRecorder.result`:

    held bytes = 4 · n_layers · S' · B' · H' · N · (2K + 1)      S' = steps or 1, H' = heads or 1

with B' recorded rows (the positive half under CFG), N image tokens, K kept text columns (share and text maps, plus
the text mass). On top, transiently: at most ``work_bytes`` of deferred Q/K (references to tensors the model made;
calls are turned into maps in stacks, a few layers at a time), their stacked copy, and ``work_bytes`` of float32
scores per chunk of image queries. Full attention tensors (L x L per head) are never stored.

Example:
    >>> layout = text_layout(pipe, prompt)
    >>> with JointAttentionRecorder(pipe, columns=layout.used_columns, height=1024, width=1024) as rec:
    ...     image = pipe(prompt, height=1024, width=1024).images[0]
    >>> maps = rec.result()
    >>> heat = maps.word_map(layout.word("cat"), Normalization.TEXT)   # (B, h, w)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from explain.joint.capture import Branch, JointCall, JointCapture, LayerKind, grid_hw
from explain.joint.scores import text_scores

__all__ = ["Normalization", "JointAttentionMaps", "JointAttentionRecorder", "held_bytes"]


def held_bytes(n_layers: int, n_image: int, n_columns: int, *, steps: int = 1, heads: int = 1, batch: int = 1) -> int:
    """The memory law above: float32 bytes a :class:`JointAttentionRecorder` holds (and its result stores).

    Args:
        n_layers: Recorded layers.
        n_image: Image tokens N.
        n_columns: Kept text columns K.
        steps: S' (the step count with ``per_step``, else 1).
        heads: H' (the head count with ``per_head``, else 1).
        batch: Recorded rows B'.
    """
    return 4 * n_layers * steps * batch * heads * n_image * (2 * n_columns + 1)


class Normalization(enum.Enum):
    """JOINT: share of the whole joint softmax (the model's weights). TEXT: renormalised over the text tokens."""

    JOINT = "joint"
    TEXT = "text"


@dataclass(frozen=True, eq=False)  # holds tensors: compare fields explicitly
class JointAttentionMaps:
    """Joint-attention token maps of one generation.

    Attributes:
        share: Per layer (module path, execution order) float32 CPU ``(S', B, H', K, h, w)``: joint-softmax weights
            of the kept text columns. S' = steps if ``per_step`` else 1 (the mean over steps), H' likewise heads.
        text: The same renormalised over all text tokens (sums to 1 over the T text tokens when all are kept).
        mass: Per layer ``(S', B, H', h, w)``: Σ over all text tokens of the joint-softmax weights.
        kinds: Per layer JOINT (SD3 block, Flux double-stream) or SINGLE (Flux single-stream).
        columns: Text column (position in the model's text sequence) of each kept column K.
        n_text: Text tokens T in the model's sequence.
        grid_hw: (h, w) of the image-token grid.
        image_hw: (H, W) of the image in pixels.
        timesteps: Timestep of each recorded step.
        per_step: Whether steps are kept.
        per_head: Whether heads are kept.
        branch: Recorded guidance branch.
    """

    share: dict[str, torch.Tensor]
    text: dict[str, torch.Tensor]
    mass: dict[str, torch.Tensor]
    kinds: dict[str, LayerKind]
    columns: tuple[int, ...]
    n_text: int
    grid_hw: tuple[int, int]
    image_hw: tuple[int, int]
    timesteps: tuple[float, ...]
    per_step: bool
    per_head: bool
    branch: Branch

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(self.share)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.share, self.text, self.mass) for t in d.values())

    def column_maps(self, normalization: Normalization = Normalization.TEXT, layers=None) -> torch.Tensor:
        """(B, K, h, w): mean over the chosen layers (default all), steps and heads."""
        source = self.share if Normalization(normalization) is Normalization.JOINT else self.text
        names = self.layer_names if layers is None else tuple(layers)
        stacked = torch.stack([source[name].mean(dim=(0, 2)) for name in names])  # (layers, B, K, h, w)
        return stacked.mean(dim=0)

    def word_map(self, word, normalization: Normalization = Normalization.TEXT, layers=None) -> torch.Tensor:
        """(B, h, w): the summed maps of a word's text columns (a ``JointWord`` or a sequence of columns)."""
        columns: Sequence[int] = getattr(word, "columns", word)
        if not columns:
            raise ValueError(f"{word!r} has no text columns (is it in the prompt, and did it fit?)")
        kept = {c: i for i, c in enumerate(self.columns)}
        missing = [c for c in columns if c not in kept]
        if missing:
            raise ValueError(f"text columns {missing} were not kept; pass them in JointAttentionRecorder(columns=...)")
        maps = self.column_maps(normalization, layers)  # (B, K, h, w)
        return maps[:, [kept[c] for c in columns]].sum(dim=1)


@dataclass(frozen=True, eq=False)  # holds tensors
class _Pending:
    """A deferred layer call: references to its Q_img and K, and where its scores go."""

    layer: int  # row of the accumulators
    slot: int  # step (``per_step``) or 0
    query: torch.Tensor  # (B', heads, N, d)
    key: torch.Tensor  # (B', heads, L, d)
    text: slice
    scale: float


class JointAttentionRecorder:
    """Context manager recording the image x text block of every joint-attention layer (both normalisations).

    Args:
        pipe: ``StableDiffusion3Pipeline`` or ``FluxPipeline``.
        columns: Text columns to keep (e.g. ``text_layout(pipe, prompt).used_columns``); None keeps all T.
        per_step: Keep steps instead of their mean.
        per_head: Keep heads instead of their mean.
        height: Image height in pixels (default: the pipeline's default size).
        width: Image width in pixels.
        branch: Guidance branch (``COND``; ``UNCOND`` for SD3 under CFG).
        layers: Module paths of the layers to record (default: every joint and single-stream layer).
        work_bytes: Bound on deferred Q/K and on one chunk of float32 scores.
    """

    def __init__(
        self,
        pipe,
        *,
        columns: Sequence[int] | None = None,
        per_step: bool = False,
        per_head: bool = False,
        height: int | None = None,
        width: int | None = None,
        branch: Branch = Branch.COND,
        layers: Sequence[str] | None = None,
        work_bytes: int = 64 * 2**20,
    ):
        self.pipe = pipe
        self.columns = None if columns is None else tuple(int(c) for c in columns)
        self.per_step = per_step
        self.per_head = per_head
        default = pipe.default_sample_size * pipe.vae_scale_factor
        self.image_hw = (height or default, width or default)
        self.grid_hw = grid_hw(pipe, *self.image_hw)
        self._n_image = self.grid_hw[0] * self.grid_hw[1]
        self.work_bytes = work_bytes
        self.layers = None if layers is None else tuple(layers)
        self._slot_of: dict[str, int] = {}  # recorded layer -> row of the accumulators
        self.capture = JointCapture(pipe, self, branch=branch)
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._acc: dict[int, torch.Tensor] = {}  # slot -> (layers, B, H', 2K + 1, N): [share | text | mass] sums
        self._counts: dict[int, list[int]] = {}  # slot -> calls added per layer
        self._n_text: int | None = None
        self._column_index: torch.Tensor | None = None

    def __enter__(self) -> JointAttentionRecorder:
        self.capture.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.capture.__exit__(*exc_info)

    def bind(self, capture: JointCapture) -> None:
        """Record through ``capture`` (a :class:`JointCapture` shared with other recorders)."""
        names = tuple(capture.layers) if self.layers is None else self.layers
        unknown = [name for name in names if name not in capture.layers]
        if unknown:
            raise ValueError(f"not joint-attention layers: {unknown} (layers: {list(capture.layers)})")
        self.capture = capture
        self._slot_of = {name: i for i, name in enumerate(n for n in capture.layers if n in names)}

    # -- sink interface (called by JointCapture) ------------------------------------------------------------------
    def on_transformer_call(self, step: int, timestep, rows: slice) -> None:
        """Nothing to do per call: steps are read from each layer call."""

    def on_call(self, call: JointCall) -> None:
        slot = self._slot_of.get(call.name)
        if slot is None:
            return
        image, text, tensors = call.image, call.text, call.tensors
        n_image = image.stop - image.start
        if n_image != self._n_image:
            raise ValueError(
                f"{call.name} has {n_image} image tokens, not the {self.grid_hw} grid of a {self.image_hw} image: "
                "pass the generation's height and width to the recorder"
            )
        q, k = tensors.query[:, :, image], tensors.key  # (B', heads, N, d), (B', heads, L, d): references only
        self._pending.append(_Pending(slot, call.step if self.per_step else 0, q, k, text, tensors.scale))
        b, heads, length, d = k.shape
        self._pending_bytes += 2 * b * heads * length * d * k.element_size()  # the Q and K they keep alive
        if self._pending_bytes > self.work_bytes:
            self._flush()

    # -- accumulation ---------------------------------------------------------------------------------------------
    def _columns_for(self, n_text: int, device) -> torch.Tensor | None:
        if self._n_text is None:
            self._n_text = n_text
            if self.columns is not None:
                bad = [c for c in self.columns if not 0 <= c < n_text]
                if bad:
                    raise ValueError(f"columns {bad} are outside the {n_text} text tokens")
                self._column_index = torch.tensor(self.columns, device=device)
        elif n_text != self._n_text:
            raise ValueError(f"text length changed during the capture ({self._n_text} -> {n_text})")
        return self._column_index

    @torch.no_grad()
    def _flush(self) -> None:
        """Pending calls -> accumulators: one batched score computation per group of equal shapes."""
        groups: dict[tuple, list[_Pending]] = {}
        for call in self._pending:
            groups.setdefault((call.query.shape, call.key.shape, call.text.start, call.text.stop), []).append(call)
        self._pending, self._pending_bytes = [], 0
        for calls in groups.values():
            self._add(calls)

    def _add(self, calls: list[_Pending]) -> None:
        """Scores of calls of one shape, added to the accumulators of their steps (or of the one mean slot)."""
        first = calls[0]
        columns = self._columns_for(first.text.stop - first.text.start, first.query.device)
        q = torch.stack([c.query for c in calls])  # (M, B, heads, N, d)
        k = torch.stack([c.key for c in calls])  # (M, B, heads, L, d)
        packed = text_scores(q, k, first.text, columns, first.scale, self.work_bytes).packed
        if not self.per_head:
            packed = packed.mean(dim=2, keepdim=True)  # (M, B, 1, N, 2K + 1)
        packed = packed.transpose(-1, -2)  # (M, B, H', 2K + 1, N): [share | text | mass] rows
        n_layers = len(self._slot_of)
        for slot in sorted({c.slot for c in calls}):
            rows = [i for i, c in enumerate(calls) if c.slot == slot]
            if slot not in self._acc:
                self._acc[slot] = packed.new_zeros((n_layers, *packed.shape[1:]))  # (layers, B, H', 2K + 1, N)
                self._counts[slot] = [0] * n_layers
            layers = [calls[i].layer for i in rows]
            source = packed if len(rows) == len(calls) else packed[rows]  # the common case needs no gather
            self._acc[slot].index_add_(0, torch.tensor(layers, device=packed.device), source)
            for layer in layers:
                self._counts[slot][layer] += 1

    def result(self) -> JointAttentionMaps:
        """Turn what is pending into maps and return means over the calls of each step (or of all steps)."""
        self._flush()
        if not self._acc:
            raise RuntimeError("nothing was recorded: run the pipeline inside the `with JointAttentionRecorder(...)`")
        slots = sorted(self._acc)
        stacked = torch.stack([self._acc[s] for s in slots], dim=1).cpu()  # (layers, S', B, H', 2K + 1, N)
        counts = torch.tensor([[self._counts[s][i] for s in slots] for i in range(len(self._slot_of))])
        mean = stacked / counts.clamp(min=1).view(*counts.shape, 1, 1, 1, 1).to(stacked.dtype)
        grid = mean.unflatten(-1, self.grid_hw)  # (layers, S', B, H', 2K + 1, h, w)
        n_kept = (grid.shape[4] - 1) // 2
        fields = {
            "share": grid[:, :, :, :, :n_kept].contiguous(),  # (layers, S', B, H', K, h, w)
            "text": grid[:, :, :, :, n_kept:-1].contiguous(),
            "mass": grid[:, :, :, :, -1].contiguous(),  # (layers, S', B, H', h, w)
        }
        out = {field: {name: t[index] for name, index in self._slot_of.items()} for field, t in fields.items()}
        n_text, layers = self._n_text, self.capture.layers
        return JointAttentionMaps(
            share=out["share"],
            text=out["text"],
            mass=out["mass"],
            kinds={name: layers[name][1] for name in self._slot_of},
            columns=self.columns if self.columns is not None else tuple(range(n_text)),
            n_text=n_text,
            grid_hw=self.grid_hw,
            image_hw=self.image_hw,
            timesteps=tuple(self.capture.timesteps),
            per_step=self.per_step,
            per_head=self.per_head,
            branch=self.capture.branch,
        )
