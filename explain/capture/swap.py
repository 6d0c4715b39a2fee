"""Scoped, reversible access to a U-Net's cross-attention layers and the guidance batch layout.

- :class:`ProcessorSwap`: wraps the attention processors a predicate picks through the model's public
  ``set_attn_processor`` and restores the originals on exit, also when the body raises (U-Nets and the SD3 / Flux
  transformers alike); :class:`CrossAttentionSwap` is the one for a U-Net's cross-attention (``attn2``) layers.
- :class:`Branch` / :func:`cond_rows`: which rows of the U-Net batch belong to a classifier-free-guidance branch
  (diffusers' SD pipelines concatenate ``[negative, positive]`` when ``pipe.do_classifier_free_guidance``).
- :func:`compose_callbacks`: chain ``callback_on_step_end`` functions.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

__all__ = ["Branch", "cond_rows", "ProcessorSwap", "CrossAttentionSwap", "SideProcessor", "compose_callbacks"]


class Branch(enum.Enum):
    """Which half of a classifier-free-guidance batch to use.

    With guidance on, diffusers' SD pipelines run the U-Net on ``[negative, positive]`` halves; ``COND`` is the
    prompt's half, ``UNCOND`` the negative (or empty) prompt's. Without guidance the whole batch is ``COND``.
    """

    COND = "cond"
    UNCOND = "uncond"


def cond_rows(pipe, batch: int, branch: Branch = Branch.COND) -> slice:
    """Rows of a U-Net batch of size ``batch`` that belong to ``branch`` (read while the pipeline runs)."""
    try:
        guided = pipe.do_classifier_free_guidance
    except AttributeError as err:
        raise RuntimeError("read the guidance branch while the pipeline runs (inside its call)") from err
    if not guided:
        if branch is Branch.UNCOND:
            raise ValueError("Branch.UNCOND needs classifier-free guidance (guidance_scale > 1)")
        return slice(0, batch)
    if batch % 2:
        raise ValueError(f"guidance is on but the U-Net batch ({batch}) is not [negative, positive] halves")
    half = batch // 2
    return slice(0, half) if branch is Branch.UNCOND else slice(half, batch)


class ProcessorSwap:
    """Wrap the attention processors of ``model`` that ``select`` picks with ``factory(name, original)``.

    ``model`` is anything whose attention modules have diffusers' public processor API (``get_processor`` /
    ``set_processor``, what ``attn_processors`` / ``set_attn_processor`` use): a U-Net or a transformer. ``select(name, module)`` sees each attention module by its dotted name, in the model's
    execution order; the rest keep their processor. On exit (also on error) the originals are set back. ``modules``
    (name -> module, in execution order) spares the walk of the tree when the caller has made it.
    """

    def __init__(
        self,
        model,
        select: Callable[[str, object], bool],
        factory: Callable[[str, object], object],
        empty_message: str = "the model has no attention layers to wrap",
        modules: dict[str, object] | None = None,
    ):
        self.model = model
        self.select = select
        self.factory = factory
        self.empty_message = empty_message
        self.modules = modules  # the attention modules by name, when the caller has walked the tree already
        self._originals: dict | None = None

    def __enter__(self) -> ProcessorSwap:
        if self._originals is not None:
            raise RuntimeError("this attention-processor swap is already active")
        # One walk of the tree, then each layer's own public set_processor: what set_attn_processor does per layer,
        # without its further walks (about 1-2 ms per generation, which shows on tiny models). The layers are the
        # modules attn_processors lists (those with get_processor), in the same (execution) order.
        walked = self.model.named_modules() if self.modules is None else self.modules.items()
        chosen = [
            (name, module)
            for name, module in walked
            if hasattr(type(module), "get_processor") and self.select(name, module)
        ]
        if not chosen:
            raise ValueError(self.empty_message)
        self._originals = {name: (module, module.get_processor()) for name, module in chosen}
        try:
            for name, (module, original) in self._originals.items():
                module.set_processor(self.factory(name, original))
        except BaseException:
            self.restore()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.restore()

    def restore(self) -> None:
        """Set the original processors back (what leaving the context does)."""
        if self._originals is not None:
            for module, original in self._originals.values():
                module.set_processor(original)
            self._originals = None


class CrossAttentionSwap(ProcessorSwap):
    """Wrap each cross-attention processor of ``unet`` with ``factory(name, original)`` while the context is open.

    Only layers whose attention module has ``is_cross_attention`` are wrapped (a :class:`ProcessorSwap`).
    """

    def __init__(self, unet, factory: Callable[[str, object], object]):
        super().__init__(unet, _is_cross_attention, factory, "the U-Net has no cross-attention layers")
        self.unet = unet


class SideProcessor:
    """A processor that lets the installed one compute the output, then records on the side.

    Subclasses implement ``record(attn, rows, hidden_states, encoder_hidden_states, temb)``; ``rows`` are the batch
    rows of ``recorder.branch`` (:func:`cond_rows`). The output is the original processor's, untouched, so the image
    is bit for bit the one without the recorder.
    """

    def __init__(self, original, name: str, recorder):
        self.original = original
        self.name = name
        self.recorder = recorder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if temb is not None:
            kwargs["temb"] = temb
        out = self.original(
            attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **kwargs
        )
        rows = cond_rows(self.recorder.pipe, hidden_states.shape[0], self.recorder.branch)
        self.record(attn, rows, hidden_states, encoder_hidden_states, temb)
        return out

    def record(self, attn, rows: slice, hidden_states, encoder_hidden_states, temb) -> None:
        raise NotImplementedError


def _is_cross_attention(name: str, module) -> bool:
    return bool(getattr(module, "is_cross_attention", False))


def compose_callbacks(*callbacks: Callable | None) -> Callable:
    """Chain ``callback_on_step_end`` functions: each gets the kwargs the previous one returned.

    Returns:
        ``callback(pipe, step_index, timestep, callback_kwargs) -> callback_kwargs``.
    """
    active = [cb for cb in callbacks if cb is not None]

    def callback(pipe, step_index, timestep, callback_kwargs):
        for cb in active:
            callback_kwargs = cb(pipe, step_index, timestep, callback_kwargs)
        return callback_kwargs

    return callback
