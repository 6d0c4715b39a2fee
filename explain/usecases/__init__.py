"""Use cases: the U-Net stays the engine, the conditioning changes.

=================  =========================================  =======================  ===========================
task               what conditions the U-Net                  where the chain starts   function
=================  =========================================  =======================  ===========================
super-resolution   low-res image as 3 extra input channels,   pure noise x_T           :func:`upscale`
                   its noise level as class label, text
style transfer     text with style words (cross-attention)    part-way: ``strength``   :func:`stylize`
(img2img, SDEdit)                                             (content image noised)
inpainting         9-ch: mask + masked-image latent channels; pure noise in the hole   :func:`inpaint`
                   blend: known latents written back per step
outpainting        inpainting of a new border                 pure noise in the border :func:`outpaint`
=================  =========================================  =======================  ===========================

Every function returns a frozen dataclass (:class:`TaskResult` subclasses) with the image, the U-Net input table
read from the real tensors (:class:`UNetInputChannel` rows), where the sampler started on the forward chain
(:class:`explain.diffusion.noising.StrengthStart`), and the same cross-attention views as text-to-image (captured maps, DAAM
word maps, film). Pipelines come from :func:`load_task_pipeline` (embedded model + task U-Nets, or real checkpoints).

Modules: :mod:`.models` (pipelines), :mod:`.inputs` (image/mask conversion and sizes), :mod:`.layout` (U-Net input
table), :mod:`.run` (recorded pipeline call), :mod:`.superres`, :mod:`.sdedit` (style transfer), :mod:`.inpainting`
(inpainting and outpainting), :mod:`.metrics` (PSNR, SSIM), :mod:`.export` (files for the command line). The
argparse glue of the four subcommands is :mod:`explain.cli.usecase_args` (the CLI imports the library, never the
other way round).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "inpainting": ("InpaintResult", "OutpaintResult", "inpaint", "outpaint", "paste_unmasked"),
    "layout": ("UNetInputChannel", "UNetInputRecorder", "input_layout", "input_layout_figure"),
    "metrics": ("psnr", "ssim"),
    "models": ("TASK_MODEL_DIR", "load_task_pipeline", "task_models_available"),
    "run": ("TaskResult",),
    "sdedit": (
        "STYLE_WORDS",
        "StyleGuess",
        "StyleReader",
        "StylizeResult",
        "compose_prompt",
        "style_from_image",
        "stylize",
    ),
    "superres": ("UpscaleResult", "back_project", "upscale"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    """Import on first use (PEP 562): the command line builds its parser without loading torch."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"explain.usecases.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
