"""Inpainting and outpainting: fill a masked region; the rest of the image is kept exactly.

Two ways to make a U-Net respect the known pixels (``StableDiffusionInpaintPipeline`` does both; which one depends on
``unet.config.in_channels``):

- **9-channel inpainting U-Net** (``mode="unet"``; Rombach et al. 2022, the SD-inpainting design): the U-Net *sees*
  the known content: ``sample = [x_t (4) | mask (1) | VAE latent of the masked image (4)]``; it was fine-tuned
  with random masks to fill the hole consistently with the surroundings.
- **4-channel blending** (``mode="blend"``; RePaint-style replacement, Lugmayr et al. 2022, without resampling;
  diffusers' ``num_channels_unet == 4`` branch): any text-to-image U-Net denoises the whole latent, and after every
  step the pipeline overwrites the keep region with the image's own latent noised to the next step's level,
  ``x_{t-1} ← (1 − m) · q(x_{t-1} | x_0) + m · x_{t-1}``. The U-Net never sees the mask.

Both decode the *whole* latent with the VAE, so even kept pixels come back slightly changed (the VAE is lossy, and
the mask is coarse at latent resolution). The original pixels outside the mask are therefore pasted back exactly
(what diffusers' ``VaeImageProcessor.apply_overlay`` does for ``padding_mask_crop``; done here with the binarised
mask, so kept pixels are bit-identical).

Outpainting is inpainting of a new border: the canvas is extended (or the content shrunk, "zoom out"), the new area
masked, and the same machinery fills it, steered by the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from explain.diffusion.noising import strength_to_start_step
from explain.engine.requests import RunSettings, prompt_text
from explain.usecases.inputs import native_size, resize, size_multiple, to_mask, to_rgb, working_size
from explain.usecases.run import TaskResult, run_recorded

__all__ = ["InpaintResult", "OutpaintResult", "inpaint", "outpaint", "paste_unmasked", "inpaint_mode"]


@dataclass(frozen=True, eq=False)
class InpaintResult(TaskResult):
    """:class:`~explain.usecases.run.TaskResult` plus the inpainting specifics.

    Attributes:
        source: The image whose unmasked pixels are kept (RGB, original size).
        mask: (H, W) bool, True = filled in.
        mode: ``"unet"`` (9-channel U-Net) or ``"blend"`` (4-channel U-Net, latent blending).
        raw: The pipeline's decoded output before pasting back (at the size it ran at).
    """

    source: Image.Image
    mask: np.ndarray
    mode: str
    raw: Image.Image


@dataclass(frozen=True, eq=False)
class OutpaintResult(InpaintResult):
    """:class:`InpaintResult` of the extended canvas.

    Attributes:
        original: The input image before extension.
        box: (x0, y0, x1, y1) where the (possibly shrunk) original sits in the output, end-exclusive.
        zoom_out: The zoom-out factor used (1: none).
    """

    original: Image.Image
    box: tuple[int, int, int, int]
    zoom_out: float


def inpaint_mode(pipe) -> str:
    """``"unet"`` for a U-Net with latent + mask + masked-image channels, ``"blend"`` for a plain latent U-Net."""
    latent = pipe.vae.config.latent_channels
    channels = pipe.unet.config.in_channels
    if channels == 2 * latent + 1:
        return "unet"
    if channels == latent:
        return "blend"
    raise ValueError(f"a {channels}-channel U-Net is neither an inpainting (9) nor a text-to-image (4) U-Net")


def paste_unmasked(generated: Image.Image, source: Image.Image, mask: np.ndarray) -> Image.Image:
    """``source`` where ``mask`` is False, ``generated`` where True; all three the same size. Exact (no blending)."""
    gen = np.asarray(generated.convert("RGB"))
    src = np.asarray(source.convert("RGB"))
    if gen.shape != src.shape or mask.shape != src.shape[:2]:
        raise ValueError(f"sizes differ: generated {gen.shape}, source {src.shape}, mask {mask.shape}")
    return Image.fromarray(np.where(mask[..., None], gen, src))


def _inpaint(pipe, source: Image.Image, mask: np.ndarray, prompt: str, notes: list[str], task: str, **options) -> dict:
    """Run the pipeline at a size it accepts, paste kept pixels back at the source size; fields of the result."""
    mode = inpaint_mode(pipe)
    steps, strength = options["steps"], options["strength"]
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    start = strength_to_start_step(strength, steps, pipe.scheduler)  # ValueError outside [0, 1]
    if start.denoising_steps == 0:
        raise ValueError(
            f"strength {strength:g} x {steps} steps rounds down to 0 denoising steps: "
            f"use strength >= {1 / steps:.3g} or more steps"
        )
    size, size_notes = working_size(pipe, source.size)
    notes += size_notes
    work_image = resize(source, size)
    work_mask = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
    if not np.asarray(work_mask).any():
        raise ValueError(f"the mask vanishes at the {size[0]}x{size[1]} working size: mark a larger region")
    call = dict(
        prompt=prompt,
        image=work_image,
        mask_image=work_mask,
        height=size[1],
        width=size[0],
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=options["guidance"],
        negative_prompt=options["negative_prompt"],
    )
    rec = run_recorded(
        pipe,
        call,
        seed=options["seed"],
        capture=options["capture"],
        film_decode=options["film_decode"],
        preview=options["preview"],
        lock=options["lock"],
    )
    generated = rec.image
    if generated.size != source.size:
        notes.append(f"output resized {generated.width}x{generated.height} -> {source.width}x{source.height}")
        generated = generated.resize(source.size, Image.Resampling.BICUBIC)
    return dict(
        task=task,
        image=paste_unmasked(generated, source, mask),
        prompt=prompt,
        negative_prompt=options["negative_prompt"],
        seed=options["seed"],
        steps=steps,
        guidance=options["guidance"],
        start=start,
        notes=tuple(notes),
        pipeline=type(pipe).__name__,
        **rec.task_fields(),
        source=source,
        mask=mask,
        mode=mode,
        raw=rec.image,
    )


def inpaint(
    image,
    mask,
    prompt: str,
    *,
    pipe,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 3.0,
    strength: float = 1.0,
    negative_prompt: str | None = None,
    capture: bool = True,
    film_decode: str = "auto",
    preview=None,
    lock=None,
) -> InpaintResult:
    """Fill the white region of ``mask`` in ``image``, steered by ``prompt``; other pixels are kept exactly.

    Args:
        image: The image (PIL, array or path; RGBA/grayscale/16-bit converted, with notes).
        mask: Mask image, white = fill; resized (nearest) when it has the image's aspect ratio but another size.
        prompt: What should appear (for the shapes world, the caption of the whole intended image works best).
        pipe: An inpainting pipeline (:func:`~explain.usecases.models.load_task_pipeline` ``("inpaint", mode=...)``);
            its U-Net decides the mode (9 channels: ``"unet"``, 4: ``"blend"``).
        seed: Seed of the CPU generator.
        steps: Sampler steps (for strength 1).
        guidance: Classifier-free guidance scale. The default 3 was chosen on a development set of the evaluation
            (``training.evaluate_tasks``, seed 31 000): the named colour appeared in the mask in 95-98 % of cases for
            guidance 2-4, 70-73 % at 7.5 and 33-38 % at 12 (strong guidance over-saturates and shifts colours).
        strength: 1 = start the fill from pure noise; lower keeps some of what is under the mask.
        negative_prompt: Prompt of the unconditional branch.
        capture: Record cross-attention and the film.
        film_decode: ``"preview"`` or ``"vae"``.
        preview: A fitted :class:`~explain.capture.film.LatentPreview` to reuse.
        lock: Held for the pipeline call (the app's model lock; see :func:`explain.engine.run.recorded_run`).

    Raises:
        ValueError: Empty mask, mask of another aspect ratio, zero denoising steps, a prompt longer than the
            text encoder reads, unreadable inputs.
    """
    RunSettings(seed, steps, guidance).validate()
    prompt_text(pipe.tokenizer, "prompt", prompt, required=False)  # refused, not cut, beyond the text encoder's slots
    prompt_text(pipe.tokenizer, "negative prompt", negative_prompt, required=False)
    source, notes = to_rgb(image)
    binary, mask_notes = to_mask(mask, source.size)
    options = dict(
        seed=seed,
        steps=steps,
        guidance=guidance,
        strength=strength,
        negative_prompt=negative_prompt,
        capture=capture,
        film_decode=film_decode,
        preview=preview,
        lock=lock,
    )
    return InpaintResult(**_inpaint(pipe, source, binary, prompt, list(notes + mask_notes), "inpaint", **options))


def _grow_to_multiple(before: int, after: int, length: int, multiple: int) -> tuple[int, int]:
    """Widen the extended sides of one axis so the total length becomes a multiple (extra split between them)."""
    total = length + before + after
    extra = -total % multiple
    if not extra or not (before or after):
        return before, after
    if before and after:
        return before + extra // 2, after + extra - extra // 2
    return (before + extra, after) if before else (before, after + extra)


def _zoomed_out(image: Image.Image, zoom_out: float) -> tuple[Image.Image, tuple[int, int]]:
    """``image`` shrunk by ``zoom_out`` (box filter) and its offset when centred on a canvas of the original size."""
    if zoom_out == 1:
        return image, (0, 0)
    width, height = image.size
    inner = (round(width / zoom_out), round(height / zoom_out))
    if min(inner) < 1:
        raise ValueError(f"zoom_out {zoom_out:g} shrinks the {width}x{height} image to nothing")
    return image.resize(inner, Image.Resampling.BOX), ((width - inner[0]) // 2, (height - inner[1]) // 2)


def _edge_canvas(content: Image.Image, canvas_size: tuple[int, int], at: tuple[int, int]):
    """``content`` placed at ``at`` on a canvas of its edge-replicated pixels: (canvas, fill mask (H, W), box).

    The box is where the kept content lies; the mask is True everywhere else (the border to fill).
    """
    x0, y0 = at
    box = (x0, y0, x0 + content.width, y0 + content.height)
    pad = ((box[1], canvas_size[1] - box[3]), (box[0], canvas_size[0] - box[2]), (0, 0))
    canvas = Image.fromarray(np.pad(np.asarray(content), pad, mode="edge"))
    mask = np.ones((canvas_size[1], canvas_size[0]), bool)
    mask[box[1] : box[3], box[0] : box[2]] = False
    return canvas, mask, box


def outpaint(
    image,
    prompt: str,
    *,
    pipe,
    left: int = 0,
    right: int = 0,
    top: int = 0,
    bottom: int = 0,
    zoom_out: float = 1.0,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 3.0,
    negative_prompt: str | None = None,
    capture: bool = True,
    film_decode: str = "auto",
    preview=None,
    lock=None,
) -> OutpaintResult:
    """Extend the canvas and fill the new border with the inpainting machinery.

    Two ways to make room, combinable (zoom-out first):

    - ``zoom_out`` > 1: the content is shrunk by that factor and centred on a canvas of the *same* size; the frame
      around it is filled. The output stays at the input's size, so the embedded model keeps running at its native
      64x64, the only size it was trained at.
    - ``left``/``right``/``top``/``bottom`` pixels: the canvas grows and the pipeline runs at the new size (the U-Net
      is convolutional). Sides grow further until the canvas is a multiple of :func:`size_multiple`
      (``vae_scale_factor × 2^(down blocks − 1)``, 16 px for the embedded model), with a note. Far beyond the
      native size :func:`~explain.usecases.inputs.working_size` runs it scaled down and enlarges the fill.

    The new border starts as the replicated edge pixels (it only matters for the blend mode's keep-region latent
    at strength < 1; at strength 1 the fill starts from noise) and is masked; the kept content is pasted back
    exactly.

    Raises:
        ValueError: Nothing to extend, negative sides, a zoom-out leaving no content, a too long prompt, bad inputs.
    """
    RunSettings(seed, steps, guidance).validate()
    prompt_text(pipe.tokenizer, "prompt", prompt, required=False)
    prompt_text(pipe.tokenizer, "negative prompt", negative_prompt, required=False)
    original, notes = to_rgb(image)
    notes = list(notes)
    sides = {"left": left, "right": right, "top": top, "bottom": bottom}
    if any(v < 0 for v in sides.values()):
        raise ValueError(f"sides must be >= 0 pixels, got {sides}")
    if zoom_out < 1:
        raise ValueError(f"zoom_out must be >= 1 (1 = no zoom-out), got {zoom_out:g}")
    if zoom_out == 1 and not any(sides.values()):
        raise ValueError("nothing to outpaint: extend a side (left/right/top/bottom > 0) or zoom out (> 1)")
    width, height = original.size
    content, (cx0, cy0) = _zoomed_out(original, zoom_out)
    multiple = size_multiple(pipe)
    left, right = _grow_to_multiple(left, right, width, multiple)
    top, bottom = _grow_to_multiple(top, bottom, height, multiple)
    grown = {"left": left, "right": right, "top": top, "bottom": bottom}
    if grown != sides:
        notes.append(f"sides grown from {sides} to {grown} so the canvas is a multiple of {multiple} px")
    canvas_size = (width + left + right, height + top + bottom)
    native = native_size(pipe)
    if any(c > n for c, n in zip(canvas_size, native, strict=True)):
        notes.append(
            f"canvas {canvas_size[0]}x{canvas_size[1]} is larger than the model's native {native[0]}x{native[1]}: "
            "the U-Net runs at the new size, beyond what it was trained on (zoom_out keeps the native size)"
        )
    canvas, mask, box = _edge_canvas(content, canvas_size, (left + cx0, top + cy0))
    options = dict(
        seed=seed,
        steps=steps,
        guidance=guidance,
        strength=1.0,
        negative_prompt=negative_prompt,
        capture=capture,
        film_decode=film_decode,
        preview=preview,
        lock=lock,
    )
    fields = _inpaint(pipe, canvas, mask, prompt, notes, "outpaint", **options)
    return OutpaintResult(**fields, original=original, box=box, zoom_out=float(zoom_out))
