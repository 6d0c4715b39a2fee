"""Run a task pipeline with everything recorded: U-Net inputs, cross-attention, the denoising film.

One function for all tasks (:func:`run_recorded`), so every use case is explained with the same views as
text-to-image: it is :func:`explain.engine.run.recorded_run` (the project's one recorded pipeline call: attention,
film, seed policy, lock) with the :class:`~explain.usecases.layout.UNetInputRecorder` entered around the call, plus
the per-word DAAM maps (:mod:`explain.maps.aggregation`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from explain.capture.film import FilmFrame, LatentPreview
from explain.capture.recorder import CapturedAttention
from explain.clip.tokens import TokenView
from explain.diffusion.noising import StrengthStart
from explain.engine.run import Capture, recorded_run
from explain.maps.aggregation import TokenMaps, aggregate
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


def run_recorded(
    pipe,
    call: dict,
    *,
    seed: int | None = None,
    capture: bool = True,
    film_decode: str = "auto",
    preview: LatentPreview | None = None,
    lock=None,
) -> Recorded:
    """Call ``pipe(**call)`` with the U-Net inputs (always), cross-attention and film (when ``capture``) recorded.

    Args:
        pipe: A diffusers SD pipeline (img2img, inpainting, upscaling, text-to-image).
        call: Keyword arguments of the pipeline call; must contain ``prompt`` (a string) and ``guidance_scale``.
        seed: Seed of the run's generator (the engine's seed policy: a CPU generator on every device).
        capture: Record attention and the film.
        film_decode: ``"preview"`` or ``"vae"`` (see :class:`~explain.capture.film.FilmRecorder`).
        preview: A fitted latent preview to reuse.
        lock: Held for the pipeline call.

    Returns:
        The image and all recordings. Capture does not change the image (recorders only read).
    """
    inputs = UNetInputRecorder(pipe.unet)
    options = Capture(film_decode=film_decode, preview=preview) if capture else Capture.nothing()
    run = recorded_run(pipe, call, seed=seed, draw_noise=False, capture=options, contexts=[inputs], lock=lock)
    return Recorded(
        image=run.image,
        images=tuple(run.images),
        inputs=input_layout(pipe, inputs),
        input_sample=inputs.sample,
        timesteps_run=inputs.first_timesteps,
        view=run.view,
        captured=run.captured,
        maps=aggregate(run.captured, run.view) if run.captured is not None else None,
        film=run.frames,
        seconds=run.seconds,
    )
