"""Run a task pipeline with everything recorded: U-Net inputs, cross-attention, the denoising film.

One function for all tasks (:func:`run_recorded`), so every use case is explained with the same views as
text-to-image: :class:`~explain.attention.AttentionRecorder` (per-word DAAM maps via :mod:`explain.heatmap`),
:class:`~explain.film.FilmRecorder` (x̂₀ per step) and :class:`~explain.usecases.layout.UNetInputRecorder`.

Two pipeline differences are bridged here, without touching the pipelines:

- ``StableDiffusionUpscalePipeline`` has only the legacy ``callback(step, t, latents)``: it is adapted to the
  ``callback_on_step_end(pipe, i, t, {"latents": ...})`` the recorders expect.
- it has no ``do_classifier_free_guidance`` attribute (it decides ``guidance_scale > 1`` locally), which the
  attention recorder reads to find the prompt-conditioned half of the batch: the recorder is given a small view of
  the pipeline that states it explicitly.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from PIL import Image

from explain.attention import AttentionRecorder, CapturedAttention, compose_callbacks
from explain.film import FilmFrame, FilmRecorder, LatentPreview
from explain.heatmap import TokenMaps, aggregate
from explain.noising import StrengthStart
from explain.tokens import TokenView, tokenize_prompt
from explain.usecases.layout import UNetInputChannel, UNetInputRecorder, input_layout

__all__ = ["TaskResult", "Recorded", "run_recorded"]


@dataclass(frozen=True, eq=False)  # holds tensors and images: compare fields explicitly
class TaskResult:
    """What every use case returns (task-specific results add fields).

    Attributes:
        task: ``"upscale"``, ``"stylize"``, ``"inpaint"`` or ``"outpaint"``.
        image: The output image (RGB).
        prompt: The prompt the U-Net attended to.
        negative_prompt: The unconditional branch's prompt (None: empty).
        seed: Seed of the CPU generator.
        steps: ``num_inference_steps`` asked for.
        guidance: Classifier-free guidance scale (≤ 1: off).
        inputs: The U-Net input table, from the observed tensors (:func:`~explain.usecases.layout.input_layout`).
        input_sample: (B, C_in, h, w) float32, the U-Net ``sample`` of the first call.
        start: Where the sampler starts on the forward chain (``strength`` 1: pure noise x_T).
        timesteps_run: Timesteps the U-Net was called at, in order (observed).
        view: Tokenisation of ``prompt``.
        captured: Cross-attention maps (None without capture).
        maps: DAAM per-token and per-word maps at the output size the pipeline ran at (None without capture).
        film: Frames of x̂₀ per step (empty without capture).
        notes: One line per conversion or adjustment made to the inputs.
        pipeline: Pipeline class name.
        seconds: Wall time of the pipeline call.
    """

    task: str
    image: Image.Image
    prompt: str
    negative_prompt: str | None
    seed: int
    steps: int
    guidance: float
    inputs: tuple[UNetInputChannel, ...]
    input_sample: torch.Tensor
    start: StrengthStart
    timesteps_run: tuple[int, ...]
    view: TokenView
    captured: CapturedAttention | None
    maps: TokenMaps | None
    film: tuple[FilmFrame, ...]
    notes: tuple[str, ...]
    pipeline: str
    seconds: float

    @property
    def in_channels(self) -> int:
        """Channels of the U-Net ``sample`` (sum over the table's sample rows)."""
        return sum(row.channels for row in self.inputs if row.argument == "sample")


@dataclass(frozen=True)
class _GuidanceView:
    """The parts of a pipeline :class:`AttentionRecorder` reads, with the guidance flag stated explicitly."""

    unet: torch.nn.Module
    vae_scale_factor: int
    do_classifier_free_guidance: bool


@dataclass(frozen=True, eq=False)
class Recorded:
    """Raw output of :func:`run_recorded`: ``image`` is ``images[0]``."""

    image: Image.Image
    images: tuple[Image.Image, ...]
    inputs: tuple[UNetInputChannel, ...]
    input_sample: torch.Tensor
    timesteps_run: tuple[int, ...]
    view: TokenView
    captured: CapturedAttention | None
    maps: TokenMaps | None
    film: tuple[FilmFrame, ...]
    seconds: float

    def task_fields(self) -> dict:
        """The :class:`TaskResult` fields every task takes unchanged from its recorded run."""
        names = ("inputs", "input_sample", "timesteps_run", "view", "captured", "maps", "film", "seconds")
        return {name: getattr(self, name) for name in names}


def _legacy_callback(pipe, callback_on_step_end):
    """``callback(step, t, latents)`` -> ``callback_on_step_end(pipe, i, t, {"latents": latents})``.

    The legacy callback runs once per full solver step with ``step = i // order``; the last U-Net call of that step
    has index ``step * order + order - 1``, which is what ``callback_on_step_end`` would have been given.
    """
    order = getattr(pipe.scheduler, "order", 1)

    def callback(step: int, timestep, latents: torch.Tensor) -> None:
        callback_on_step_end(pipe, step * order + order - 1, timestep, {"latents": latents})

    return callback


def run_recorded(
    pipe,
    call: dict,
    *,
    capture: bool = True,
    film_decode: str = "auto",
    preview: LatentPreview | None = None,
) -> Recorded:
    """Call ``pipe(**call)`` with the U-Net inputs (always), cross-attention and film (when ``capture``) recorded.

    Args:
        pipe: A diffusers SD pipeline (img2img, inpainting, upscaling, text-to-image).
        call: Keyword arguments of the pipeline call; must contain ``prompt`` (a string) and ``guidance_scale``.
        capture: Record attention and the film.
        film_decode: ``"preview"`` or ``"vae"`` (see :class:`~explain.film.FilmRecorder`).
        preview: A fitted latent preview to reuse.

    Returns:
        The image and all recordings. Capture does not change the image (recorders only read).
    """
    from diffusers import StableDiffusionUpscalePipeline

    prompt = call["prompt"]
    view = tokenize_prompt(pipe.tokenizer, prompt)
    legacy = isinstance(pipe, StableDiffusionUpscalePipeline)  # no callback_on_step_end (diffusers 0.42)
    target = pipe
    if not hasattr(type(pipe), "do_classifier_free_guidance"):
        target = _GuidanceView(pipe.unet, pipe.vae_scale_factor, call["guidance_scale"] > 1.0)
    with contextlib.ExitStack() as stack:
        inputs = stack.enter_context(UNetInputRecorder(pipe.unet))
        recorder = film = None
        callbacks = []
        if capture:
            recorder = stack.enter_context(AttentionRecorder(target, token_count=view.n_used))
            film = FilmRecorder(pipe, decode=film_decode, preview=preview)
            callbacks = [recorder.callback_on_step_end, film.callback_on_step_end]
        kwargs = dict(call)
        if callbacks:
            combined = compose_callbacks(*callbacks)
            if legacy:
                kwargs.update(callback=_legacy_callback(pipe, combined), callback_steps=1)
            else:
                kwargs["callback_on_step_end"] = combined
        started = time.perf_counter()
        images = tuple(pipe(**kwargs).images)
        seconds = time.perf_counter() - started
    captured = recorder.result() if recorder is not None else None
    maps = aggregate(captured, view) if captured is not None else None
    return Recorded(
        image=images[0],
        images=images,
        inputs=input_layout(pipe, inputs),
        input_sample=inputs.sample,
        timesteps_run=inputs.first_timesteps,
        view=view,
        captured=captured,
        maps=maps,
        film=tuple(film.frames()) if film is not None else (),
        seconds=seconds,
    )
