"""Scoped capture of the joint-attention layers of SD3 / SD3.5 and Flux through their ``set_processor``.

:class:`JointCapture` is a context manager that puts a capturing processor on every joint-attention layer of
``pipe.transformer`` (SD3 ``transformer_blocks.*.attn``; Flux ``transformer_blocks.*.attn`` and
``single_transformer_blocks.*.attn``; SD3.5's image-only ``attn2`` is left alone) and sets the original processors back
on exit, also when the body raises (:class:`explain.capture.swap.ProcessorSwap`, one walk of the module tree and
each layer's public ``set_processor``). The capturing processor computes the layer output with the op-for-op copy of
the original (:mod:`explain.joint.processors`), so the image is bitwise the same, and hands a :class:`JointCall` to
each *sink* (:class:`~explain.joint.attention_maps.JointAttentionRecorder`,
:class:`~explain.joint.concepts.ConceptAttentionRecorder`). A processor it cannot mirror (IP-Adapter, masks,
subclasses) computes the output itself and the capture is recomputed on the side.

Calls and steps: a transformer call starts when a layer runs that does not come after the previous one (so also
when skip-layer guidance skips the first block). Its timestep is read from the running pipeline
(``pipe.current_timestep``, else ``scheduler.timesteps[scheduler.step_index]``); a call with the same timestep as the
previous one is an extra guidance pass of the same step (Flux true-CFG's negative pass, SD3.5 skip-layer guidance)
and is not recorded. Rows: SD3 runs classifier-free guidance as ``[negative, positive]`` batch halves;
the recorded branch's half is selected explicitly (:func:`explain.capture.swap.cond_rows`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

from explain.capture.swap import Branch, ProcessorSwap, cond_rows
from explain.joint.processors import JointTensors, flux_joint, mirrors, sd3_joint

__all__ = ["Family", "LayerKind", "JointCall", "JointCapture", "family_of", "grid_hw", "joint_layers", "Branch"]


class Family(enum.Enum):
    """Which joint-attention transformer a pipeline runs."""

    SD3 = "sd3"
    FLUX = "flux"


class LayerKind(enum.Enum):
    """JOINT: separate text and image weights, one softmax (SD3 blocks, Flux double-stream). SINGLE: Flux
    single-stream blocks, one set of weights over the concatenated [text, image] sequence."""

    JOINT = "joint"
    SINGLE = "single"


def family_of(pipe) -> Family:
    transformer = getattr(pipe, "transformer", None)
    if isinstance(transformer, SD3Transformer2DModel):
        return Family.SD3
    if isinstance(transformer, FluxTransformer2DModel):
        return Family.FLUX
    raise ValueError(f"not a joint-attention pipeline (SD3 or Flux transformer): {type(transformer).__name__}")


def _kind_of(module, family: Family) -> LayerKind | None:
    if getattr(module, "added_kv_proj_dim", None) is not None:
        return LayerKind.JOINT
    if family is Family.FLUX and getattr(module, "pre_only", False):
        return LayerKind.SINGLE
    return None


def layer_kind(transformer, family: Family, name: str) -> LayerKind | None:
    """JOINT, SINGLE or None (not a joint-attention layer: SD3.5's image-only ``attn2``) for module path ``name``."""
    return _kind_of(transformer.get_submodule(name), family)


def _joint_modules(transformer, family: Family) -> dict[str, tuple[torch.nn.Module, LayerKind]]:
    """Joint-attention modules in execution order (one walk of the tree): path -> (module, kind)."""
    found = {}
    for name, module in transformer.named_modules():
        if hasattr(
            type(module), "get_processor"
        ):  # the modules with diffusers' processor API, as ProcessorSwap picks them
            kind = _kind_of(module, family)
            if kind is not None:
                found[name] = (module, kind)
    return found


def joint_layers(pipe) -> dict[str, LayerKind]:
    """Every joint-attention layer of ``pipe.transformer`` in execution order: module path -> kind (what
    :class:`JointCapture` records; SD3.5's image-only ``attn2`` is left out)."""
    return {name: kind for name, (_, kind) in _joint_modules(pipe.transformer, family_of(pipe)).items()}


def grid_hw(pipe, height: int, width: int) -> tuple[int, int]:
    """(h, w) of the image-token grid for an image of ``height`` x ``width`` pixels.

    One image token covers ``image_processor.vae_scale_factor`` x ``transformer.config.patch_size`` pixels a side:
    8 x 2 on SD3 (VAE x patch embedding), 16 x 1 on Flux (VAE x the pipeline's 2x2 packing).
    """
    side = pipe.image_processor.config.vae_scale_factor * pipe.transformer.config.patch_size
    if height % side or width % side:
        raise ValueError(f"height and width must be multiples of {side} pixels, got {height}x{width}")
    return height // side, width // side


@dataclass(frozen=True, eq=False)  # holds tensors
class JointCall:
    """One joint-attention layer call, for the recorded rows only.

    Attributes:
        name: Module path of the attention layer (e.g. ``transformer_blocks.3.attn``).
        index: Position of the layer in execution order among the captured layers.
        kind: JOINT or SINGLE.
        step: Recorded step (0-based count of recorded transformer calls).
        tensors: Q, K, V (B', heads, L, d) and head outputs (B', L, heads*d) of the recorded rows B'.
        image: Image-token positions in the sequence.
        text: Text-token positions in the sequence.
        attn: The attention module.
    """

    name: str
    index: int
    kind: LayerKind
    step: int
    tensors: JointTensors
    image: slice
    text: slice
    attn: torch.nn.Module


def _rows(tensors: JointTensors, rows: slice) -> JointTensors:
    if rows == slice(0, tensors.query.shape[0]):
        return tensors
    return JointTensors(
        tensors.query[rows],
        tensors.key[rows],
        tensors.value[rows],
        tensors.heads_out[rows],
        tensors.image,
        tensors.text,
    )


class _CaptureProcessor:
    """Computes the layer output as the original processor does and hands the call to the capture's sinks."""

    def __init__(self, original, name: str, index: int, kind: LayerKind, capture: JointCapture):
        self.original = original
        self.name = name
        self.index = index  # position among the captured layers, in execution order
        self.kind = kind
        self.capture = capture
        self._sd3 = capture.family is Family.SD3
        self._mirrored = mirrors(original, None, {})  # the exact default class: its op-for-op copy runs instead
        self._backend = getattr(original, "_attention_backend", None)  # Flux: dispatch_attention_fn's arguments
        self._parallel = getattr(original, "_parallel_config", None)

    def _run(self, attn, hidden_states, encoder_hidden_states, image_rotary_emb):
        if self._sd3:
            return sd3_joint(attn, hidden_states, encoder_hidden_states)
        return flux_joint(
            attn,
            hidden_states,
            encoder_hidden_states,
            image_rotary_emb,
            backend=self._backend,
            parallel=self._parallel,
        )

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if self._mirrored and attention_mask is None:
            out, tensors = self._run(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        else:  # the original computes the output; the capture is recomputed on the side
            extra = {} if self._sd3 else {"image_rotary_emb": image_rotary_emb}
            out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, **extra)
            with torch.no_grad():
                _, tensors = self._run(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        self.capture._dispatch(self, attn, hidden_states, tensors)
        return out


class JointCapture:
    """Context manager: capture every joint-attention layer of ``pipe.transformer`` for ``sinks`` while open.

    Args:
        pipe: A ``StableDiffusion3Pipeline`` or ``FluxPipeline`` (or any pipeline with those transformers).
        sinks: Recorders: objects with ``bind(capture)`` (called on entry), ``on_transformer_call(step, timestep,
            rows)`` (a recorded transformer call starts) and ``on_call(call: JointCall)`` (a layer ran).
        branch: Guidance branch to record. SD3 with guidance on runs ``[negative, positive]`` halves; Flux runs
            the positive prompt (its optional true-CFG negative pass is a second call, not recorded), so only
            ``COND`` is available there.
    """

    def __init__(self, pipe, *sinks, branch: Branch = Branch.COND):
        self.pipe = pipe
        self.family = family_of(pipe)
        self.branch = Branch(branch)
        if self.family is Family.FLUX and self.branch is not Branch.COND:
            raise ValueError("Flux records the positive-prompt call only (Branch.COND)")
        self.sinks = sinks
        self.transformer = pipe.transformer
        self._swap: ProcessorSwap | None = None
        self._layers: dict[str, tuple[int, LayerKind]] = {}
        self._step = -1
        self._last_timestep: float | None = None
        self._recording = False
        self._rows = slice(None)
        self._n_text: int | None = None  # text length of the current call, from its joint layers
        self.timesteps: list[float] = []

    def __enter__(self) -> JointCapture:
        if self._swap is not None:
            raise RuntimeError("this joint capture is already active")
        modules = _joint_modules(self.transformer, self.family)  # execution order: joint, then single blocks
        self._layers = {name: (index, kind) for index, (name, (_, kind)) in enumerate(modules.items())}

        def wrap(name: str, original):
            return _CaptureProcessor(original, name, *self._layers[name], self)

        swap = ProcessorSwap(
            self.transformer,
            lambda name, _: name in self._layers,
            wrap,
            "the transformer has no joint-attention layers",
            modules={name: module for name, (module, _) in modules.items()},  # one walk of the tree, not two
        )
        swap.__enter__()
        self._swap = swap
        self._last_index = len(self._layers)  # index of the last layer that ran: the next call starts below it
        try:
            for sink in self.sinks:
                sink.bind(self)  # sinks read the layer table, so they bind once it is filled
        except BaseException:
            self.restore()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.restore()

    def restore(self) -> None:
        """Set the original processors back (what :meth:`__exit__` does)."""
        if self._swap is not None:
            self._swap.restore()
            self._swap = None

    @property
    def layers(self) -> dict[str, tuple[int, LayerKind]]:
        """Captured layers in execution order: name -> (index, kind)."""
        return dict(self._layers)

    def current_timestep(self) -> torch.Tensor:
        """The timestep of the running denoising step, as the pipeline's loop holds it."""
        t = getattr(self.pipe, "current_timestep", None)
        if t is None:
            scheduler = self.pipe.scheduler
            index = scheduler.step_index
            if index is None:
                index = scheduler.begin_index or 0
            t = scheduler.timesteps[index]
        return torch.as_tensor(t)

    def _start_call(self, batch: int) -> None:
        t = self.current_timestep()
        timestep = float(t)
        self._recording = timestep != self._last_timestep
        if not self._recording:
            return
        self._last_timestep = timestep
        self._step += 1
        self.timesteps.append(timestep)
        if self.family is Family.SD3:
            self._rows = cond_rows(self.pipe, batch, self.branch)
        else:
            self._rows = slice(0, batch)
        for sink in self.sinks:
            sink.on_transformer_call(self._step, t, self._rows)

    def _dispatch(self, layer: _CaptureProcessor, attn, hidden_states, tensors: JointTensors) -> None:
        if layer.index <= self._last_index:  # layers run in order, so a repeat means a new transformer call
            self._start_call(hidden_states.shape[0])
        self._last_index = layer.index
        if not self._recording:
            return
        if layer.kind is LayerKind.JOINT:
            image, text = tensors.image, tensors.text
            self._n_text = text.stop - text.start
        else:
            if self._n_text is None:
                raise RuntimeError("a single-stream layer ran before any joint layer: its text length is unknown")
            length = hidden_states.shape[1]
            image, text = slice(self._n_text, length), slice(0, self._n_text)
        call = JointCall(
            layer.name, layer.index, layer.kind, self._step, _rows(tensors, self._rows), image, text, attn
        )
        for sink in self.sinks:
            sink.on_call(call)
