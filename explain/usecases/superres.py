"""Super-resolution: the low-resolution image enters the U-Net as extra input channels.

The SD x4 upscaler's design (Rombach et al. 2022, Sec. 4.4 "super-resolution by concatenation"; diffusers
``StableDiffusionUpscalePipeline``): the low-res RGB image, at *latent* size (the VAE decoder later upsamples by its
own factor, 4 for the embedded model, 4 for the real x4 upscaler), is itself noised to ``noise_level`` by a second
scheduler (``q(x_t | x_0)`` on pixels, "noise conditioning augmentation", Ho et al. 2022 "Cascaded Diffusion
Models") and concatenated to the noisy latent: ``sample = [x_t (4) | low-res image (3)]``. The noise level enters as
the U-Net's class label. Sampling starts from pure noise x_T; the content comes from the concatenated channels and
the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionUpscalePipeline
from PIL import Image

from explain.diffusion.geometry import Geometry
from explain.diffusion.noising import ForwardSchedule, strength_to_start_step
from explain.engine.requests import RunSettings, prompt_text
from explain.usecases.inputs import resize, to_rgb
from explain.usecases.run import TaskResult, run_recorded

__all__ = ["UpscaleResult", "upscale", "low_res_size", "back_project", "average_images"]


@dataclass(frozen=True, eq=False)
class UpscaleResult(TaskResult):
    """:class:`~explain.usecases.run.TaskResult` plus the super-resolution specifics.

    Attributes:
        low_res: The image the U-Net was conditioned on (RGB, at latent size).
        bicubic: ``low_res`` enlarged bicubically to the output size: the classical baseline.
        noise_level: Noise level the low-res image was noised to (the U-Net's class label).
        low_res_alpha_bar: ᾱ of the low-res scheduler at ``noise_level``: the low-res channels are
            sqrt(ᾱ) · image + sqrt(1 − ᾱ) · noise.
        samples: The individual samples (``image`` is their average when there are several).
        back_projection: Back-projection iterations applied to ``image`` (0: the model's output as is).
    """

    low_res: Image.Image
    bicubic: Image.Image
    noise_level: int
    low_res_alpha_bar: float
    samples: tuple[Image.Image, ...]
    back_projection: int


def low_res_size(pipe, size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the low-res input the U-Net expects, from ``unet.config.sample_size``.

    The U-Net runs at latent size, and the low-res image *is* at latent size, so it is ``sample_size`` along the
    longer side; the shorter side keeps the aspect ratio, rounded to a multiple of the U-Net's own downsampling
    ``2^(down blocks − 1)``.
    """
    geometry = Geometry.from_pipeline(pipe, layers=False)
    side, multiple = max(geometry.sample_hw), geometry.unet_downsampling
    width, height = size
    scale = side / max(width, height)
    short = max(multiple, int(round(min(width, height) * scale / multiple)) * multiple)
    return (side, short) if width >= height else (short, side)


def _unit(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) float64 in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float64) / 255.0).permute(2, 0, 1)[None]


def _pil(x: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [0, 1] -> PIL RGB."""
    return Image.fromarray((x[0].permute(1, 2, 0).clamp(0, 1) * 255.0).round().to(torch.uint8).numpy())


def average_images(images) -> Image.Image:
    """Pixel mean of several samples: a Monte-Carlo estimate of the posterior mean E[x | low-res, prompt], the
    estimator that minimises the expected squared error (so it maximises expected PSNR), at the price of sharpness
    (Blau & Michaeli 2018, "The Perception-Distortion Tradeoff")."""
    return _pil(torch.cat([_unit(im) for im in images]).mean(dim=0, keepdim=True))


def back_project(image: Image.Image, low_res: Image.Image, iterations: int = 5) -> Image.Image:
    """Iterative back-projection (Irani & Peleg 1991): make the output consistent with the low-res input.

    ``x ← clip(x + bicubic↑(y − area↓(x)))`` where ``y`` is the low-res image and ``area↓`` the downsampling that
    made it; each iteration removes the low-frequency disagreement and keeps the generated high frequencies.
    """
    x, y = _unit(image), _unit(low_res)
    for _ in range(iterations):
        residual = y - F.interpolate(x, size=y.shape[-2:], mode="area")  # (1, 3, h, w)
        x = (x + F.interpolate(residual, size=x.shape[-2:], mode="bicubic", align_corners=False)).clamp(0, 1)
    return _pil(x)


def _check_upscale(pipe, prompts: tuple, noise_level: int, samples: int, back_projection: int) -> None:
    """ValueError unless ``pipe`` upscales, the text encoder reads the (prompt, negative prompt) whole (refused, not
    cut) and the noise level, sample count and back-projection are allowed."""
    if not isinstance(pipe, StableDiffusionUpscalePipeline):
        raise ValueError(f"upscale needs a StableDiffusionUpscalePipeline, got {type(pipe).__name__}")
    max_level = int(pipe.config.max_noise_level)
    if not 0 <= noise_level <= max_level:
        raise ValueError(f"noise_level must lie in 0..{max_level} (the pipeline's max_noise_level), got {noise_level}")
    if samples < 1 or back_projection < 0:
        raise ValueError(f"samples must be >= 1 and back_projection >= 0, got {samples} and {back_projection}")
    for field, text in zip(("prompt", "negative prompt"), prompts, strict=True):
        prompt_text(pipe.tokenizer, field, text, required=False)


def _low_res_input(pipe, image) -> tuple[Image.Image, list[str]]:
    """The image as the U-Net's low-res input (:func:`low_res_size`), with notes on each conversion."""
    rgb, notes = to_rgb(image)
    notes = list(notes)
    size = low_res_size(pipe, rgb.size)
    if rgb.size != size:
        notes.append(f"image resized {rgb.width}x{rgb.height} -> {size[0]}x{size[1]}, the U-Net's low-res input size")
    return resize(rgb, size), notes


def upscale(
    image,
    prompt: str = "",
    *,
    pipe,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 3.0,
    noise_level: int = 20,
    negative_prompt: str | None = None,
    samples: int = 1,
    back_projection: int = 0,
    capture: bool = True,
    film_decode: str = "auto",
    preview=None,
    lock=None,
) -> UpscaleResult:
    """Upscale ``image`` ``vae_scale_factor`` times with a super-resolution pipeline.

    Any input is first brought to the low-res size the U-Net expects (:func:`low_res_size`; area-averaged when
    shrinking, bicubic when enlarging), so e.g. a 64x64 world image becomes 16x16 and comes back as 64x64.

    Args:
        image: The low-resolution image (PIL, array or path; converted to RGB).
        prompt: Text describing the image (the embedded upscaler leans on it heavily; "" works but worse).
        pipe: A ``StableDiffusionUpscalePipeline`` (:func:`~explain.usecases.models.load_task_pipeline`).
        seed: Seed of the CPU generator (noise for x_T and for the low-res image).
        steps: Sampler steps.
        guidance: Classifier-free guidance scale (≤ 1: off).
        noise_level: Noise added to the low-res image, ``0 .. pipe.config.max_noise_level``.
        negative_prompt: Prompt of the unconditional branch.
        samples: Draw this many samples in one batch and return their average (:func:`average_images`);
            attention and film are those of the first sample.
        back_projection: Iterations of :func:`back_project` applied to the output (0: none).
        capture: Record cross-attention and the film.
        film_decode: ``"preview"`` or ``"vae"``.
        preview: A fitted :class:`~explain.capture.film.LatentPreview` to reuse.
        lock: Held for the pipeline call (the app's model lock; see :func:`explain.engine.run.recorded_run`).

    Raises:
        ValueError: Not an upscaling pipeline, bad noise level or step count, a prompt longer than the text
            encoder reads, unreadable image.
    """
    RunSettings(seed, steps, guidance).validate()
    _check_upscale(pipe, (prompt, negative_prompt), noise_level, samples, back_projection)
    low, notes = _low_res_input(pipe, image)
    call = dict(
        prompt=prompt,
        image=low,
        num_inference_steps=steps,
        guidance_scale=guidance,
        noise_level=noise_level,
        negative_prompt=negative_prompt,
        num_images_per_prompt=samples,
    )
    rec = run_recorded(pipe, call, seed=seed, capture=capture, film_decode=film_decode, preview=preview, lock=lock)
    output = average_images(rec.images) if samples > 1 else rec.image
    if back_projection:
        output = back_project(output, low, back_projection)
    abar = float(ForwardSchedule.from_scheduler(pipe.low_res_scheduler).alpha_bars[noise_level])
    return UpscaleResult(
        task="upscale",
        image=output,
        prompt=prompt,
        negative_prompt=negative_prompt,
        seed=seed,
        steps=steps,
        guidance=guidance,
        start=strength_to_start_step(1.0, steps, pipe.scheduler),
        notes=tuple(notes),
        pipeline=type(pipe).__name__,
        **rec.task_fields(),
        low_res=low,
        bicubic=low.resize(rec.image.size, Image.Resampling.BICUBIC),
        noise_level=noise_level,
        low_res_alpha_bar=abar,
        samples=rec.images,
        back_projection=back_projection,
    )
