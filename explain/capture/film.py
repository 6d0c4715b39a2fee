"""A film of the denoising: per-step latents and the model's current guess of the clean image.

At step t the sampler holds a noisy latent x_t and, implicitly, a prediction of the clean latent

    x̂₀ = (x_t - sqrt(1 - ᾱ_t) · ε̂) / sqrt(ᾱ_t)      (Ho et al. 2020, eq. 15; Song et al. 2021 "DDIM", eq. 12)

Pipelines hand only ``latents`` (the sample *after* the step) to ``callback_on_step_end``; ε̂ and x̂₀ are discarded.
:func:`predicted_x0` recovers x̂₀ exactly, without touching the scheduler, where the scheduler allows it:

- **scheduler state**: DPM-Solver++ (``DPMSolverMultistepScheduler`` with a ``dpmsolver++`` algorithm) and UniPC
  (``predict_x0``) keep their data prediction in ``scheduler.model_outputs[-1]``.
- **inverting one deterministic first-order step** from x_t and x_{t-1}:
  DDIM with η = 0 (the pipeline default) and no clipping: x_t = a_t x̂₀ + s_t ε̂ and x_{t-1} = a_{t-1} x̂₀ + s_{t-1} ε̂
  (a = sqrt(ᾱ), s = sqrt(1 - ᾱ)) give x̂₀ = (s_{t-1} x_t - s_t x_{t-1}) / (s_{t-1} a_t - s_t a_{t-1}).
  Euler (Karras et al. 2022, Alg. 2 with s_churn = 0): x_{t-1} = x_t + (σ_{t-1} - σ_t)(x_t - x̂₀)/σ_t, so
  x̂₀ = x_t - σ_t (x_{t-1} - x_t) / (σ_{t-1} - σ_t). Step 0 needs x_T: pass ``initial_latents`` (see
  :func:`initial_noise`).
- anything else (PNDM, Heun, DDPM, ancestral samplers): no x̂₀; frames show the noisy latents.

Latents are shown through a cheap linear latent→RGB map (:class:`LatentPreview`) fitted once per VAE, or decoded by
the VAE itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from explain.diffusion.geometry import Geometry, vae_factor
from explain.diffusion.steps import StepPlan

__all__ = ["LatentPreview", "FilmFrame", "FilmRecorder", "initial_noise", "noisy_image", "predicted_x0", "x0_method"]


@dataclass(frozen=True, eq=False)  # holds tensors: compare fields explicitly
class LatentPreview:
    """Least-squares affine map from latent channels to RGB: rgb ≈ weight @ z + bias (rgb in [-1, 1]).

    Attributes:
        weight: (3, C) float32.
        bias: (3,) float32.
    """

    weight: torch.Tensor
    bias: torch.Tensor

    @classmethod
    @torch.no_grad()
    def fit(cls, vae, n_images: int = 16, latent_side: int = 8, seed: int = 0) -> LatentPreview:
        """Fit on smooth random colour fields encoded by ``vae`` (posterior means, pipeline latent scale).

        Each latent cell stands for a ``vae_scale_factor``-pixel square, so targets are the images average-pooled
        by that factor (2 ** (number of VAE blocks - 1), as pipelines compute it).
        """
        scale = vae_factor(vae.config)
        generator = torch.Generator().manual_seed(seed)
        side = latent_side * scale
        coarse = torch.rand(n_images, 3, 2, 2, generator=generator) * 2 - 1  # random colours in [-1, 1]
        images = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=True)  # (n, 3, S, S)
        param = next(vae.parameters())
        posterior = vae.encode(images.to(param.device, param.dtype)).latent_dist
        shift = vae.config.get("shift_factor") or 0.0
        latents = ((posterior.mean - shift) * vae.config.scaling_factor).float().cpu()  # (n, C, s, s)
        targets = F.avg_pool2d(images, scale)  # (n, 3, s, s)
        x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()  # (n*s*s, C)
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)  # affine
        y = targets.permute(0, 2, 3, 1).reshape(-1, 3).double()  # (n*s*s, 3)
        solution = torch.linalg.lstsq(x, y).solution  # (C + 1, 3)
        return cls(weight=solution[:-1].T.float(), bias=solution[-1].float())

    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        """(B, C, h, w) latents -> uint8 (B, h, w, 3)."""
        rgb = torch.einsum("oc,bchw->bhwo", self.weight, latents.float().cpu()) + self.bias
        return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


@dataclass(frozen=True, eq=False)  # holds tensors: compare fields explicitly
class FilmFrame:
    """One step of the film.

    Attributes:
        step: Denoising step (:meth:`explain.diffusion.steps.StepPlan.step_of` of the call that finished it).
        timestep: The timestep the step starts from (:meth:`~explain.diffusion.steps.StepPlan.start_timestep`).
        latents: (B, C, h, w) float32, the sample after the step.
        x0: (B, C, h, w) float32 predicted clean latent, or None where not derivable.
        image: (B, H, W, 3) uint8 of ``x0`` (or of ``latents`` when x0 is None), at image size.
        source: ``"x0"`` or ``"latents"``: what ``image`` shows.
    """

    step: int
    timestep: float
    latents: torch.Tensor
    x0: torch.Tensor | None
    image: np.ndarray
    source: str


def noisy_image(frame: FilmFrame, preview: LatentPreview, image_hw: tuple[int, int]) -> np.ndarray:
    """The frame's noisy sample x_t through the linear latent preview, enlarged (nearest) to the image: (H, W, 3)."""
    scale = image_hw[0] // frame.latents.shape[-2]  # pixels per latent cell (the VAE factor)
    return preview(frame.latents)[0].repeat(scale, axis=0).repeat(scale, axis=1)


def initial_noise(pipe, batch_size: int, height: int, width: int, generator: torch.Generator | None) -> torch.Tensor:
    """The unit Gaussian draw ``pipe.prepare_latents`` makes: pass it as ``latents=`` to get the same image.

    The pipeline multiplies it by ``scheduler.init_noise_sigma``; :class:`FilmRecorder` does the same for x_T.
    """

    shape = (
        batch_size,
        pipe.unet.config.in_channels,
        *Geometry.from_pipeline(pipe, layers=False).latent_hw(height, width),
    )
    return randn_tensor(shape, generator=generator, device=pipe.unet.device, dtype=pipe.unet.dtype)


def x0_method(scheduler) -> str | None:
    """How :func:`predicted_x0` gets x̂₀ for this scheduler: ``"state"``, ``"invert"`` or None."""

    config = scheduler.config
    kind = type(scheduler)
    if kind is DPMSolverMultistepScheduler and config.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"):
        return "state"
    if kind is UniPCMultistepScheduler and config.predict_x0:
        return "state"
    if kind is DDIMScheduler and not config.clip_sample and not config.thresholding:
        return "invert"
    if kind is EulerDiscreteScheduler:
        return "invert"
    return None


@torch.no_grad()
def predicted_x0(scheduler, timestep, sample: torch.Tensor | None, prev_sample: torch.Tensor) -> torch.Tensor | None:
    """x̂₀ of the step just taken (module docstring), or None.

    Args:
        scheduler: The pipeline's scheduler, right after its ``step``.
        timestep: The step's timestep.
        sample: x_t, the input of the step (None if unknown: then only "state" schedulers answer).
        prev_sample: x_{t-1}, the output of the step.
    """

    method = x0_method(scheduler)
    if method == "state":
        return scheduler.model_outputs[-1].float()
    if method is None or sample is None:
        return None
    x_t, x_prev = sample.float(), prev_sample.float()
    if isinstance(scheduler, DDIMScheduler):
        t = int(timestep)
        t_prev = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        alpha_bar = scheduler.alphas_cumprod[t].double()
        alpha_bar_prev = scheduler.alphas_cumprod[t_prev].double() if t_prev >= 0 else scheduler.final_alpha_cumprod
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        a_prev, s_prev = torch.as_tensor(alpha_bar_prev).double().sqrt(), (1 - torch.as_tensor(alpha_bar_prev)).sqrt()
        return ((s_prev * x_t - s * x_prev) / (s_prev * a - s * a_prev)).float()
    sigma = scheduler.sigmas[scheduler.step_index - 1].to(x_t.device)  # step_index has moved past this step
    sigma_next = scheduler.sigmas[scheduler.step_index].to(x_t.device)
    return x_t - sigma * (x_prev - x_t) / (sigma_next - sigma)


AUTO_VAE_MAX_CELLS = 32 * 32  # latent cells up to which decode="auto" uses the VAE (a 128-256 px image)


class FilmRecorder:
    """Collect one frame per denoising step through ``callback_on_step_end``.

    Pass ``film.callback_on_step_end`` to the pipeline (with ``latents`` among the callback tensor inputs, the
    default). Frames are decoded lazily by :meth:`frames`, in batches (one VAE call decodes several frames, which
    costs far less than one call per frame); with ``on_frame`` every ``stream_every``-th frame (and the last) is
    decoded at once and handed over (streaming), and is not decoded again by :meth:`frames`.

    Args:
        pipe: A Stable Diffusion (XL) pipeline.
        every: Keep every ``every``-th step (the last step is always kept).
        decode: ``"preview"`` (linear latent→RGB, cheap), ``"vae"`` (the VAE decoder) or ``"auto"``: the VAE for
            latents of at most ``AUTO_VAE_MAX_CELLS`` cells (small models, where decoding costs little and the
            linear preview is poor), the preview otherwise.
        initial_latents: The unit noise passed to the pipeline as ``latents=`` (:func:`initial_noise`), so the
            first step's x̂₀ can be inverted too.
        preview: A fitted :class:`LatentPreview` to reuse; fitted on first need otherwise.
        on_frame: Called with each streamed frame as it is recorded.
        stream_every: Stream every ``stream_every``-th kept frame (the last one always).
    """

    def __init__(
        self,
        pipe,
        every: int = 1,
        decode: str = "auto",
        initial_latents: torch.Tensor | None = None,
        preview: LatentPreview | None = None,
        on_frame: Callable[[FilmFrame], None] | None = None,
        stream_every: int = 1,
    ):
        if every < 1 or stream_every < 1:
            raise ValueError("every and stream_every must be >= 1")
        if decode not in ("preview", "vae", "auto"):
            raise ValueError(f"decode must be 'preview', 'vae' or 'auto', not {decode!r}")
        self.pipe = pipe
        self.every = every
        self.decode = decode
        self.preview = preview
        self.on_frame = on_frame
        self.stream_every = stream_every
        self._initial = initial_latents
        self._prev: torch.Tensor | None = None
        self._raw: list[tuple[int, float, torch.Tensor, torch.Tensor | None]] = []
        self._decoded: dict[int, FilmFrame] = {}  # index into _raw -> frame (streamed or decoded by frames())

    def callback_on_step_end(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        """Pipeline callback: record x_{t-1} and x̂₀ of this step."""
        if "latents" not in callback_kwargs:
            raise KeyError("FilmRecorder needs 'latents' in callback_on_step_end_tensor_inputs")
        latents = callback_kwargs["latents"]
        scheduler = pipe.scheduler
        if self._prev is None and self._initial is not None:
            self._prev = self._initial.to(latents.device) * scheduler.init_noise_sigma  # x_T as the pipeline makes it
        x0 = predicted_x0(scheduler, timestep, self._prev, latents)
        self._prev = latents.detach().clone()
        plan = StepPlan.of(scheduler)
        last_index = plan.calls - 1
        step = plan.step_of(step_index)
        if not plan.completes(step_index):  # a predictor call (2nd-order samplers) or PNDM's PLMS warm-up
            return callback_kwargs
        if step % self.every == 0 or step_index == last_index:
            start = plan.start_timestep(step)  # the step's own timestep (PNDM repeats one in its calls)
            entry = (step, start, latents.detach().float().cpu(), None if x0 is None else x0.cpu())
            self._raw.append(entry)
            kept = len(self._raw) - 1
            if self.on_frame is not None and (kept % self.stream_every == 0 or step_index == last_index):
                self._decoded[kept] = self._decode([entry])[0]
                self.on_frame(self._decoded[kept])
        return callback_kwargs

    @torch.no_grad()
    def _to_rgb(self, latents: torch.Tensor) -> np.ndarray:
        """(B, C, h, w) pipeline-scale latents -> uint8 (B, H, W, 3) at image size."""
        scale = self.pipe.vae_scale_factor
        vae = self.pipe.vae
        decode = self.decode
        if decode == "auto":
            decode = "vae" if latents.shape[-2] * latents.shape[-1] <= AUTO_VAE_MAX_CELLS else "preview"
        if decode == "vae":
            param = next(vae.parameters())
            image = vae.decode(latents.to(param.device, param.dtype) / vae.config.scaling_factor).sample
            return ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        if self.preview is None:
            self.preview = LatentPreview.fit(vae)
        small = self.preview(latents)  # (B, h, w, 3)
        return small.repeat(scale, axis=1).repeat(scale, axis=2)  # nearest upsampling to image size

    def _decode(self, entries: list[tuple[int, float, torch.Tensor, torch.Tensor | None]]) -> list[FilmFrame]:
        """Frames of ``entries`` (step, timestep, x_t, x̂₀ or None), decoded together in one call."""
        shown = [latents if x0 is None else x0 for _, _, latents, x0 in entries]  # each (B, C, h, w)
        rgb = self._to_rgb(torch.cat(shown))  # (n * B, H, W, 3)
        frames, at = [], 0
        for (step, timestep, latents, x0), part in zip(entries, shown, strict=True):
            image = rgb[at : at + part.shape[0]]
            at += part.shape[0]
            frames.append(FilmFrame(step, timestep, latents, x0, image, "latents" if x0 is None else "x0"))
        return frames

    def frames(self, batch: int = 8) -> list[FilmFrame]:
        """All recorded frames, decoded ``batch`` at a time (cached; streamed frames are reused)."""
        todo = [i for i in range(len(self._raw)) if i not in self._decoded]
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            for i, frame in zip(chunk, self._decode([self._raw[i] for i in chunk]), strict=True):
                self._decoded[i] = frame
        return [self._decoded[i] for i in range(len(self._raw))]
