"""Record Stable Diffusion's cross-attention maps without changing a single output bit.

Each ``attn2`` layer of the U-Net lets every latent position attend to the 77 text-token embeddings:

    A = softmax(Q Kᵀ · d^-1/2),  Q = W_q h  (B, heads, N, d),  K = W_k c  (B, heads, 77, d)

(Vaswani et al. 2017, eq. 1; Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models",
eq. 3 and Fig. 3). Row ``A[b, head, n, :]`` says which words latent position ``n`` listens to. Following DAAM
(Tang et al. 2023, "What the DAAM: Interpreting Stable Diffusion Using Cross Attention"), the maps of all layers,
heads and steps are aggregated into one heat map per word in :mod:`explain.maps.aggregation`.

:class:`AttentionRecorder` swaps a capturing processor onto the ``attn2`` layers through the U-Net's public
``set_attn_processor`` and restores the original processors on exit, also when generation raises. The capturing
processor lets the original processor compute the layer output (so images are bit-identical with capture on or
off) and computes A separately, for the recorded classifier-free-guidance branch only.

Example:
    >>> view = tokenize_prompt(pipe.tokenizer, prompt)
    >>> with AttentionRecorder(pipe, token_count=view.n_used) as rec:
    ...     image = pipe(prompt, callback_on_step_end=rec.callback_on_step_end).images[0]
    >>> captured = rec.result()   # maps[layer]: (steps, batch, tokens, h, w) float16
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from explain.capture.bulk import grouped_probs
from explain.capture.op import attend, explicit_probs, layer_mask, mirrors, probs_from_qk, project
from explain.capture.swap import Branch, CrossAttentionSwap, cond_rows
from explain.diffusion.geometry import Geometry, positions_hw
from explain.diffusion.steps import StepPlan

__all__ = ["CapturedAttention", "AttentionRecorder"]


@dataclass(frozen=True, eq=False)  # holds tensors: compare fields explicitly
class CapturedAttention:
    """Cross-attention maps of one generation.

    Attributes:
        maps: Per layer (diffusers module path, U-Net execution order) a float16 CPU tensor
            ``(steps, batch, tokens, h, w)``, or ``(steps, batch, heads, tokens, h, w)`` when recorded per head.
            Token ``j`` is slot ``j`` of the tokenizer output (0 = BOS).
        layer_resolutions: Per layer the native (h, w) of its feature map (stored maps may be pooled smaller).
        latent_hw: (h, w) of the latent.
        image_hw: (H, W) of the image in pixels.
        timesteps: Scheduler timestep of each step (NaN where unknown).
        calls_per_step: U-Net calls averaged into each step (2 for Heun-type schedulers).
        token_count: Token columns kept.
        branch: The recorded guidance branch.
        per_head: Whether heads were kept.
        layer_heads: Per layer its number of attention heads (read from the module, not from tensor shapes).
        guided: Whether the U-Net batch was classifier-free-guidance halves ``[negative, positive]`` (None: unknown);
            the stored batch is the recorded ``branch``'s half only.
    """

    maps: dict[str, torch.Tensor]
    layer_resolutions: dict[str, tuple[int, int]]
    latent_hw: tuple[int, int]
    image_hw: tuple[int, int]
    timesteps: tuple[float, ...]
    calls_per_step: tuple[int, ...]
    token_count: int
    branch: Branch
    per_head: bool
    layer_heads: dict[str, int] = field(default_factory=dict)
    guided: bool | None = None

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(self.maps)

    @property
    def n_steps(self) -> int:
        return len(self.timesteps)

    @property
    def batch_size(self) -> int:
        return next(iter(self.maps.values())).shape[1]

    @property
    def unet_batch_size(self) -> int:
        """The batch the U-Net ran on: the stored batch, twice that when guided (``[negative, positive]`` halves)."""
        return self.batch_size * (2 if self.guided else 1)

    @property
    def shared_heads(self) -> int:
        """Heads every recorded layer has (the fewest of ``layer_heads``): head indices valid in all layers."""
        return min(self.layer_heads.values())

    @property
    def nbytes(self) -> int:
        """Bytes held by all maps."""
        return sum(m.numel() * m.element_size() for m in self.maps.values())


@dataclass(frozen=True, eq=False)
class _Deferred:
    """One call's recorded rows of Q (B, heads, N, d) and K (B, heads, T, d), turned into maps later in bulk."""

    q: torch.Tensor
    k: torch.Tensor
    scale: float

    @property
    def nbytes(self) -> int:  # the storage kept alive (q and k are views into the layer's full-batch tensors)
        return self.q.untyped_storage().nbytes() + self.k.untyped_storage().nbytes()


class _CaptureProcessor:
    """Computes the layer output exactly as the original processor; records softmax(Q Kᵀ · scale) on the side.

    For diffusers' default ``AttnProcessor2_0`` the output comes from :func:`explain.capture.op.attend` (the same
    ops, so the same bits) and the recorded rows' Q and K are kept; the probabilities of many calls are then
    computed in one batched product (:meth:`AttentionRecorder._materialize`), which on small layers costs a fraction
    of one product per call. Any other processor runs itself and the probabilities are computed from the layer's
    inputs at once.
    """

    def __init__(self, original, name: str, recorder: AttentionRecorder):
        self.original = original
        self.name = name
        self.recorder = recorder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        rows = cond_rows(self.recorder.pipe, hidden_states.shape[0], self.recorder.branch)
        self.recorder._guided = rows.stop - rows.start < hidden_states.shape[0]
        if mirrors(self.original, kwargs):
            out, projected = attend(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
            query, key = projected.query[rows].detach(), projected.key[rows].detach()
            if attention_mask is None:
                self.recorder._defer(self.name, attn, query, key)
            else:
                mask = layer_mask(attn, attention_mask, projected)[rows]
                self.recorder._store(self.name, probs_from_qk(query, key, attn.scale, mask))
            return out
        if temb is not None:
            kwargs["temb"] = temb
        out = self.original(
            attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **kwargs
        )
        self.recorder._record(self.name, attn, rows, hidden_states, encoder_hidden_states, attention_mask, temb)
        return out


class AttentionRecorder:
    """Context manager recording cross-attention probabilities per layer and denoising step.

    Pass ``rec.callback_on_step_end`` to the pipeline (chain others with :func:`compose_callbacks`): it marks
    step boundaries (U-Net calls are grouped into steps by :class:`~explain.diffusion.steps.StepPlan`: the two calls
    of a Heun step, and PNDM's warm-up call with its first step, are averaged into one) and reads the latent shape, so non-square images need no hints. Without it,
    every U-Net call is one step and the latent size comes from ``height``/``width`` or the U-Net default.

    Memory: only ``token_count`` columns are kept, heads are averaged unless ``per_head``, maps are float16 on the
    CPU and optionally pooled to ``max_resolution``; unpooled float32 work is held for one step at most.

    Args:
        pipe: A Stable Diffusion (XL) pipeline.
        branch: Guidance branch to record; ``UNCOND`` needs guidance on (``pipe.do_classifier_free_guidance``).
        per_head: Keep every head instead of their mean.
        store_dtype: dtype of stored maps.
        max_resolution: Average-pool maps whose longer side exceeds this.
        token_count: Keep token columns ``[0, token_count)``: BOS..EOS is ``tokenize_prompt(...).n_used``
            (use the largest over a batch of prompts). ``None`` keeps all key columns.
        height: Image height hint in pixels (used only without the callback).
        width: Image width hint in pixels (used only without the callback).
        work_bytes: Q/K of closed steps are turned into maps once the probabilities they make would exceed this
            many bytes (and at :meth:`result`): a whole small-model run at once, about a step at a time for SD.
    """

    def __init__(
        self,
        pipe,
        branch: Branch = Branch.COND,
        per_head: bool = False,
        store_dtype: torch.dtype = torch.float16,
        max_resolution: int | None = None,
        token_count: int | None = None,
        height: int | None = None,
        width: int | None = None,
        work_bytes: int = 64 * 2**20,
    ):
        self.pipe = pipe
        self.work_bytes = work_bytes
        self.branch = Branch(branch)
        self.per_head = per_head
        self.store_dtype = store_dtype
        self.max_resolution = max_resolution
        self.token_count = token_count
        self.geometry = Geometry.from_pipeline(pipe)
        hints = (height, width) if height is not None and width is not None else (None, None)
        self._latent_hw: tuple[int, int] = self.geometry.latent_hw(*hints)
        self._guided: bool | None = None  # whether the U-Net batch was [negative, positive] halves (seen in a call)
        self._swap = CrossAttentionSwap(pipe.unet, lambda name, original: _CaptureProcessor(original, name, self))
        self._layers: list[str] = []  # attn2 layer names, filled on first use, execution order
        # A call is a flat (B, [H,] T, N) map or a _Deferred Q/K pair.
        self._pending: dict[str, list[torch.Tensor | _Deferred]] = {}  # calls since the last callback
        self._open: dict[str, list[torch.Tensor | _Deferred]] = {}  # calls of the step not yet closed
        self._closed: dict[str, list[list[torch.Tensor | _Deferred]]] = {}  # closed steps' calls, not yet maps
        self._closed_work = 0  # bytes the probabilities of the _Deferred calls in _closed will take
        self._open_step: int | None = None
        self._open_timestep = math.nan
        self._saw_callback = False
        self._steps: dict[str, list[torch.Tensor]] = {}  # stored maps, chunks of (steps, B, [H,] T, h, w)
        self._resolutions: dict[str, tuple[int, int]] = {}
        self._timesteps: list[float] = []
        self._calls: list[int] = []
        self._result: CapturedAttention | None = None

    # -- context manager ---------------------------------------------------------------------------------------
    def __enter__(self) -> AttentionRecorder:
        self._swap.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._swap.__exit__(*exc_info)

    # -- capture -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _record(self, name, attn, rows, hidden_states, encoder_hidden_states, attention_mask, temb) -> None:
        """softmax(Q Kᵀ · scale) of the recorded branch's ``rows``, from the layer inputs (:mod:`explain.capture.op`)."""
        projected = project(
            attn, hidden_states[rows], encoder_hidden_states[rows], None if temb is None else temb[rows]
        )
        mask = None if attention_mask is None else attention_mask[rows]
        self._store(name, explicit_probs(attn, projected, mask))

    def _columns(self, t: int) -> int:
        tokens = t if self.token_count is None else self.token_count
        if tokens > t:
            raise ValueError(f"token_count={tokens} but the layer has only {t} keys")
        return tokens

    def _flatten(self, probs: torch.Tensor) -> torch.Tensor:
        """(..., heads, N, T) probabilities -> (..., [heads,] tokens, N): token columns kept, heads averaged."""
        probs = probs[..., : self._columns(probs.shape[-1])]  # (..., heads, N, tokens)
        if not self.per_head:
            probs = probs.mean(dim=-3)  # (..., N, tokens)
        return probs.transpose(-1, -2)

    def _add_call(self, name: str, call: torch.Tensor | _Deferred) -> None:
        if name not in self._pending:
            self._pending[name] = []
            if name not in self._layers:
                self._layers.append(name)
        self._pending[name].append(call)
        self._result = None

    @torch.no_grad()
    def _store(self, name: str, probs: torch.Tensor) -> None:
        """Keep the token columns of ``probs`` (B, heads, N, T), head-averaged unless per head, until the step closes."""
        self._add_call(name, self._flatten(probs).to("cpu", self.store_dtype))  # (B, [heads,] tokens, N)

    def _defer(self, name: str, attn, q: torch.Tensor, k: torch.Tensor) -> None:
        """Keep one call's Q (B, heads, N, d) and K (B, heads, T, d); maps are made in bulk later."""
        self._columns(k.shape[-2])  # a bad token_count fails now, not at the end
        self._add_call(name, _Deferred(q, k, attn.scale))

    def callback_on_step_end(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        """Pipeline callback: closes the U-Net calls of step :meth:`~explain.diffusion.steps.StepPlan.step_of`."""
        latents = callback_kwargs.get("latents")
        if latents is not None:
            self._latent_hw = tuple(latents.shape[-2:])
        self._saw_callback = True
        step = StepPlan.of(pipe.scheduler).step_of(step_index)  # Heun: 2 calls a step; PNDM: 1 warm-up call
        if self._open_step is not None and step != self._open_step:
            self._close_step()
        if self._open_step is None:
            self._open_step = step
            self._open_timestep = float(timestep)
        for name, calls in self._pending.items():
            self._open.setdefault(name, []).extend(calls)
        self._pending = {}
        return callback_kwargs

    def _close_step(self) -> None:
        """Move the open step's calls to the closed steps; turn them into maps when enough have gathered."""
        if not self._open:
            self._open_step = None
            return
        n_calls = {len(calls) for calls in self._open.values()}
        for name, calls in self._open.items():
            self._closed.setdefault(name, []).append(calls)
            for call in calls:
                if isinstance(call, _Deferred):
                    b, heads, n, _ = call.q.shape
                    self._closed_work += 4 * b * heads * n * call.k.shape[-2] + call.nbytes
        self._timesteps.append(self._open_timestep)
        self._calls.append(max(n_calls))
        self._open, self._open_step, self._open_timestep = {}, None, math.nan
        if self._closed_work > self.work_bytes:
            self._materialize()

    @torch.no_grad()
    def _materialize(self) -> None:
        """Closed steps -> stored maps: deferred calls as softmax(Q Kᵀ · scale) in one batched product per group of
        equally shaped layers (:func:`explain.capture.bulk.grouped_probs`), then each step's calls averaged, reshaped
        to (h, w), pooled and stored. Layers with one deferred call per step (all of a plain run) are reshaped and
        stored group-wise as well: a few large ops instead of many small ones."""
        single = {
            name: [step[0] for step in steps]
            for name, steps in self._closed.items()
            if all(len(step) == 1 and isinstance(step[0], _Deferred) for step in steps)
        }
        chunks = grouped_probs(single, lambda probs: self._grid(self._flatten(probs)))  # (S, B, [heads,] T, h, w)
        for name, chunk in chunks.items():
            self._keep(name, chunk, single[name][0].q.shape[-2])
        rest = {name: steps for name, steps in self._closed.items() if name not in single}
        qk = {
            name: [call for step in steps for call in step if isinstance(call, _Deferred)]
            for name, steps in rest.items()
        }
        flats = grouped_probs(qk, self._flatten)  # per layer (M, B, [heads,] tokens, N)
        for name, steps in rest.items():
            calls = [call for step in steps for call in step]
            deferred = [i for i, call in enumerate(calls) if isinstance(call, _Deferred)]
            for j, i in enumerate(deferred):
                calls[i] = flats[name][j]  # (B, [heads,] tokens, N)
            counts = {len(step) for step in steps}
            if len(counts) == 1:  # e.g. Heun: the same number of calls in every step
                per_step = torch.stack([c.float() for c in calls]).unflatten(0, (len(steps), counts.pop())).mean(1)
            else:
                at, means = 0, []
                for step in steps:
                    means.append(torch.stack([c.float() for c in calls[at : at + len(step)]]).mean(0))
                    at += len(step)
                per_step = torch.stack(means)  # (S, B, [heads,] tokens, N)
            self._keep(name, self._grid(per_step), per_step.shape[-1])
        self._closed, self._closed_work = {}, 0

    def _grid(self, per_step: torch.Tensor) -> torch.Tensor:
        """(..., N) maps -> (..., h, w) in ``store_dtype``, average-pooled to ``max_resolution`` when larger."""
        h, w = positions_hw(self._latent_hw, per_step.shape[-1])
        grid = per_step.float().unflatten(-1, (h, w))  # (..., h, w)
        if self.max_resolution is not None and max(h, w) > self.max_resolution:
            ratio = self.max_resolution / max(h, w)
            size = (max(1, round(h * ratio)), max(1, round(w * ratio)))
            grid = F.adaptive_avg_pool2d(grid.flatten(0, -3), size).unflatten(0, grid.shape[:-2])
        return grid.to("cpu", self.store_dtype, memory_format=torch.contiguous_format)

    def _keep(self, name: str, chunk: torch.Tensor, n_positions: int) -> None:
        """Store a layer's chunk of steps (S, B, [heads,] tokens, h', w') of a feature map with ``n_positions``."""
        self._resolutions[name] = positions_hw(self._latent_hw, n_positions)
        self._steps.setdefault(name, []).append(chunk)

    @property
    def nbytes(self) -> int:
        """Bytes held so far (stored steps plus buffered calls and Q/K)."""
        calls = [c for group in (self._open, self._pending) for cs in group.values() for c in cs]
        calls += [c for steps in self._closed.values() for step in steps for c in step]
        held = [t for ts in self._steps.values() for t in ts]
        return sum(t.numel() * t.element_size() for t in held) + sum(
            c.nbytes if isinstance(c, _Deferred) else c.numel() * c.element_size() for c in calls
        )

    def result(self) -> CapturedAttention:
        """Close the last step and return the maps (computed once, cached)."""
        if self._result is not None:
            return self._result
        self._close_step()
        if self._pending and self._saw_callback:  # calls after the last callback (interrupted run): one step
            self._open, self._pending = self._pending, {}
            self._close_step()
        elif self._pending:  # no callback at all: every U-Net call is a step
            for i in range(max(len(calls) for calls in self._pending.values())):
                self._open = {name: calls[i : i + 1] for name, calls in self._pending.items() if len(calls) > i}
                self._close_step()
            self._pending = {}
        self._materialize()
        if not self._steps:
            raise RuntimeError("nothing was recorded: run the pipeline inside the `with AttentionRecorder(...)` block")
        chunks = {name: self._steps[name] for name in self._layers}
        maps = {
            name: c[0] if len(c) == 1 else torch.cat(c) for name, c in chunks.items()
        }  # (steps, B, [heads,] T, h, w)
        self._steps = {name: [maps[name]] for name in self._layers}  # no second copy kept
        self._result = CapturedAttention(
            maps=maps,
            layer_resolutions={name: self._resolutions[name] for name in self._layers},
            latent_hw=self._latent_hw,
            image_hw=self.geometry.image_hw(self._latent_hw),
            timesteps=tuple(self._timesteps),
            calls_per_step=tuple(self._calls),
            token_count=next(iter(maps.values())).shape[-3],
            branch=self.branch,
            per_head=self.per_head,
            layer_heads={layer.name: layer.heads for layer in self.geometry.layers if layer.name in maps},
            guided=self._guided,
        )
        return self._result
