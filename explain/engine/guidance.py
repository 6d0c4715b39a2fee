"""Guidance taken apart: the unconditional, conditional, difference and guided predictions of one denoising step.

Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", eq. 6) runs the U-Net twice on
the same x_t, with the negative (or empty) prompt and with the prompt, and extrapolates from the first to the
second by the guidance scale g:

    ε̃ = ε(x_t, ∅) + g · (ε(x_t, c) − ε(x_t, ∅))

Each prediction also says what the clean latent would be (Ho et al. 2020, eq. 15; Salimans & Ho 2022, "Progressive
Distillation", Sec. 4 for v), with ᾱ_t the scheduler's ``alphas_cumprod`` at the step (for σ-parametrised samplers
ᾱ = 1 / (1 + σ²), the same schedule) and x_t the U-Net's input:

    epsilon:  x̂₀ = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t        v_prediction:  x̂₀ = √ᾱ_t x_t − √(1 − ᾱ_t) v

x̂₀ is affine in the prediction, so x̂₀(ε̃) = x̂₀_u + g (x̂₀_c − x̂₀_u): guidance extrapolates pictures too. The
difference's part is Δx̂₀ = x̂₀_c − x̂₀_u, a direction rather than a picture, drawn signed.

Honestly obtained: one recorded run (:func:`explain.engine.run.recorded_run`, the one pipeline call) with a step
tap, a ``callback_on_step_end`` context that keeps the latents entering step k (those after step k − 1;
x_T · ``init_noise_sigma`` for k = 0), the ``[negative, positive]`` prompt embeddings, a copy of the scheduler as it
enters step k, and the latents after step k. The U-Net is then run on the two halves exactly as the pipeline runs
it, and the scheduler copy takes the step with the recombined ε̃: for samplers whose step draws no noise (checked
by stepping twice with different generators), the result equals the pipeline's next latents. The negative prompt's
words get their cross-attention maps from the unconditional branch (``Branch.UNCOND``) of the same run.

Example:
    >>> parts = guidance_parts(pipe, "a red circle on the left", step=5, steps=10, guidance=7.5)
    >>> [p.name for p in parts.parts], parts.step_error
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from explain.capture.film import LatentPreview
from explain.capture.recorder import AttentionRecorder, CapturedAttention
from explain.capture.swap import Branch, cond_rows
from explain.clip.tokens import tokenize_prompt
from explain.diffusion.latents import decode_latents
from explain.engine.requests import RunSettings, whole
from explain.engine.run import STORE_MAX_RESOLUTION, Capture, RecordedRun, recorded_run
from explain.maps.aggregation import aggregate

__all__ = ["PART_NAMES", "GuidancePart", "GuidanceParts", "alpha_bar", "predicted_x0", "guidance_parts"]

PART_NAMES = ("uncond", "cond", "difference", "guided")
TAP_INPUTS = ["latents", "prompt_embeds"]  # callback_on_step_end_tensor_inputs of the run
UINT8_HALF = np.iinfo(np.uint8).max / 2  # signed pictures: 0 is mid-grey


def alpha_bar(scheduler, timestep) -> float:
    """ᾱ_t of the step the scheduler is about to take at ``timestep``.

    σ-parametrised samplers (Euler, Heun, DPM-Solver, ...) index their ``sigmas`` by ``step_index`` once it is
    set: ᾱ = 1 / (1 + σ²) with σ² = (1 − ᾱ) / ᾱ from ``alphas_cumprod`` (Karras et al. 2022, Table 1); otherwise
    ``alphas_cumprod[t]``.
    """
    sigmas, index = getattr(scheduler, "sigmas", None), getattr(scheduler, "step_index", None)
    if sigmas is not None and index is not None:
        sigma = float(sigmas[index])
        return 1.0 / (1.0 + sigma**2)
    if not hasattr(scheduler, "alphas_cumprod"):
        raise ValueError(f"{type(scheduler).__name__} has no alphas_cumprod: not a DDPM-family scheduler")
    return float(scheduler.alphas_cumprod[int(round(float(timestep)))])


def predicted_x0(output: torch.Tensor, sample: torch.Tensor, abar: float, prediction_type: str) -> torch.Tensor:
    """x̂₀ from a model output and the U-Net's input x_t (module docstring), same shape as ``output``."""
    a, s = abar**0.5, (1.0 - abar) ** 0.5
    if prediction_type == "epsilon":
        return (sample - s * output) / a
    if prediction_type == "v_prediction":
        return a * sample - s * output
    if prediction_type == "sample":
        return output
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


@dataclass(frozen=True, eq=False)  # holds tensors and arrays
class GuidancePart:
    """One of the four predictions of the step.

    Attributes:
        name: One of :data:`PART_NAMES`.
        output: (1, C, h, w) the model output (ε, or v for v-prediction models); for ``"difference"`` ε_c − ε_u.
        x0: (1, C, h, w) its x̂₀; for ``"difference"`` Δx̂₀ = x̂₀_c − x̂₀_u.
        image: (H, W, 3) uint8, x̂₀ decoded by the VAE; for ``"difference"`` Δx̂₀ through the linear latent
            preview, signed (mid-grey is 0, scaled to its largest value).
        output_image: (H, W, 3) uint8, ``output`` through the linear latent preview, signed likewise.
        rms: Root mean square of ``output``.
    """

    name: str
    output: torch.Tensor
    x0: torch.Tensor
    image: np.ndarray
    output_image: np.ndarray
    rms: float


@dataclass(frozen=True, eq=False)  # holds tensors and arrays
class GuidanceParts:
    """Step ``step`` of a guided generation taken apart (module docstring).

    Attributes:
        step: Index into the scheduler's timesteps (a denoising step for first-order samplers).
        timestep: Its timestep t.
        guidance: The scale g.
        prediction_type: The scheduler's ``prediction_type``.
        alpha_bar: ᾱ_t.
        latents: (1, C, h, w) the sampler's latents entering the step.
        model_input: (1, C, h, w) x_t as the U-Net saw it (after ``scale_model_input``).
        uncond, cond, difference, guided: The four parts.
        next_latents: (1, C, h, w) the pipeline's latents after the step.
        stepped: (1, C, h, w) the scheduler copy's step with ``guided.output``; None for samplers that draw noise.
        scheduler_x0: (1, C, h, w) the scheduler's own ``pred_original_sample`` of that step, where it returns one.
        image: (H, W, 3) uint8, the run's final image.
        negative_prompt: The negative prompt ("" for none).
        negative_words: Its words.
        negative_maps: (n_words, H, W) float32 DAAM maps of those words from the unconditional branch (all steps),
            None when the negative prompt has no words.
        negative_attention: The unconditional branch's recorded maps (for other steps or layers).
        run: The recorded run (its conditional-branch attention included).
    """

    step: int
    timestep: float
    guidance: float
    prediction_type: str
    alpha_bar: float
    latents: torch.Tensor
    model_input: torch.Tensor
    uncond: GuidancePart
    cond: GuidancePart
    difference: GuidancePart
    guided: GuidancePart
    next_latents: torch.Tensor
    stepped: torch.Tensor | None
    scheduler_x0: torch.Tensor | None
    image: np.ndarray
    negative_prompt: str
    negative_words: tuple[str, ...]
    negative_maps: np.ndarray | None
    negative_attention: CapturedAttention
    run: RecordedRun

    @property
    def parts(self) -> tuple[GuidancePart, ...]:
        return self.uncond, self.cond, self.difference, self.guided

    @property
    def recombination_error(self) -> float:
        """max |ε_u + g (ε_c − ε_u) − ε̃| over the latent: the parts add up."""
        recombined = self.uncond.output + self.guidance * (self.cond.output - self.uncond.output)
        return float((recombined - self.guided.output).abs().max())

    @property
    def step_error(self) -> float | None:
        """max |stepped − next_latents|: the explicit step against the pipeline's (None for noise-drawing samplers)."""
        return None if self.stepped is None else float((self.stepped - self.next_latents).abs().max())


class _StepTap:
    """A ``recorded_run`` context keeping what enters and leaves step ``k`` (through ``callback_on_step_end``)."""

    def __init__(self, k: int):
        self.k = k
        self.embeds: torch.Tensor | None = None  # (2, L, d): [negative, positive]
        self.latents_in: torch.Tensor | None = None
        self.scheduler = None  # a copy of the scheduler entering step k (k > 0)
        self.latents_out: torch.Tensor | None = None

    def __enter__(self) -> _StepTap:
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def callback_on_step_end(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        if self.embeds is None:
            self.embeds = callback_kwargs["prompt_embeds"].detach().clone()
        if step_index == self.k - 1:
            self.latents_in = callback_kwargs["latents"].detach().clone()
            self.scheduler = copy.deepcopy(pipe.scheduler)  # its state after step k - 1 (multistep history ...)
        if step_index == self.k:
            self.latents_out = callback_kwargs["latents"].detach().clone()
        return callback_kwargs


def _n_timesteps(pipe, steps: int) -> int:
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def _entering(pipe, tap: _StepTap, noise: torch.Tensor, steps: int):
    """(scheduler copy, latents) as they enter step ``tap.k``; step 0 starts from x_T as ``prepare_latents`` does."""
    if tap.k > 0:
        return tap.scheduler, tap.latents_in
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps, device=noise.device)
    return scheduler, noise * scheduler.init_noise_sigma


def _signed_picture(preview: LatentPreview, latents: torch.Tensor, scale: int) -> np.ndarray:
    """(1, C, h, w) signed latents -> (h·scale, w·scale, 3) uint8 through the preview's linear part, 0 = grey."""
    rgb = torch.einsum("oc,bchw->bhwo", preview.weight, latents.float().cpu())[0]  # (h, w, 3)
    peak = float(rgb.abs().max())
    unit = rgb / peak if peak > 0 else rgb
    image = ((unit + 1) * UINT8_HALF).round().to(torch.uint8).numpy()
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return (
        ((pixels.float().cpu() + 1) * UINT8_HALF)
        .round()
        .clamp(0, 2 * UINT8_HALF)
        .to(torch.uint8)
        .permute(0, 2, 3, 1)
        .numpy()
    )


def _step(scheduler, output: torch.Tensor, timestep, sample: torch.Tensor, seed: int):
    """``scheduler.step`` with its noise (a generator where it takes one, else the global RNG) seeded by ``seed``."""
    kwargs = {}
    if "generator" in inspect.signature(scheduler.step).parameters:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return scheduler.step(output, timestep, sample, **kwargs)


@torch.no_grad()
def _take_apart(pipe, scheduler, latents, timestep, embeds, guidance, preview):
    """The four parts, the step taken with ε̃ (None if noisy), the scheduler's x̂₀ and the U-Net input."""
    model_input = scheduler.scale_model_input(torch.cat([latents] * 2), timestep)  # (2, C, h, w)
    abar = alpha_bar(scheduler, timestep)
    out = pipe.unet(model_input, timestep, encoder_hidden_states=embeds, return_dict=False)[0]  # (2, C, h, w)
    uncond, cond = out[cond_rows(pipe, 2, Branch.UNCOND)], out[cond_rows(pipe, 2, Branch.COND)]
    outputs = {"uncond": uncond, "cond": cond, "difference": cond - uncond}
    outputs["guided"] = uncond + guidance * (cond - uncond)  # Ho & Salimans 2022, eq. 6, as the pipeline computes it
    kind = scheduler.config.prediction_type
    x_t = model_input[:1]
    x0 = {name: predicted_x0(outputs[name], x_t, abar, kind) for name in ("uncond", "cond", "guided")}
    x0["difference"] = x0["cond"] - x0["uncond"]
    decoded = _to_uint8(decode_latents(pipe.vae, torch.cat([x0["uncond"], x0["cond"], x0["guided"]])))
    images = dict(zip(("uncond", "cond", "guided"), decoded, strict=True))
    factor = pipe.vae_scale_factor
    images["difference"] = _signed_picture(preview, x0["difference"], factor)
    parts = {
        name: GuidancePart(
            name,
            outputs[name],
            x0[name],
            images[name],
            _signed_picture(preview, outputs[name], factor),
            float(outputs[name].float().pow(2).mean().sqrt()),
        )
        for name in PART_NAMES
    }
    other = copy.deepcopy(scheduler)  # the same state: a second step with other noise tells if the step is noisy
    first = _step(scheduler, outputs["guided"], timestep, latents, seed=0)
    second = _step(other, outputs["guided"], timestep, latents, seed=1)
    stepped = first.prev_sample if torch.equal(first.prev_sample, second.prev_sample) else None
    return parts, stepped, getattr(first, "pred_original_sample", None), model_input[:1], abar


def _negative_maps(recorder: AttentionRecorder, view) -> tuple[tuple[str, ...], np.ndarray | None, CapturedAttention]:
    captured = recorder.result()
    if not view.words:
        return (), None, captured
    maps = aggregate(captured, view)
    return maps.words, maps.word_maps.numpy().astype(np.float32), captured


def _check(pipe, step, seed, steps, guidance) -> int:
    """Validate the request (``ValueError``s name the field); the step index."""
    RunSettings(seed, steps, guidance).validate()
    if not isinstance(pipe, StableDiffusionPipeline) or pipe.unet.config.time_cond_proj_dim is not None:
        raise ValueError(
            "guidance taken apart needs a StableDiffusionPipeline (SD 1.x / 2.x) without a guidance embedding"
        )
    if guidance <= 1:
        raise ValueError(
            f"guidance must be above 1 to take it apart (got {guidance}): at 1 or below the pipeline runs only the "
            "conditional branch."
        )
    return whole("step", step, 0, _n_timesteps(pipe, int(steps)) - 1)


def _negative_recorder(pipe, view, height: int | None, width: int | None) -> AttentionRecorder:
    """Records the unconditional branch's maps: the negative prompt's words (``view``), stored small."""
    return AttentionRecorder(
        pipe,
        branch=Branch.UNCOND,
        token_count=view.n_used,
        max_resolution=STORE_MAX_RESOLUTION,
        height=height,
        width=width,
    )


def guidance_parts(
    pipe,
    prompt: str,
    step: int,
    *,
    negative_prompt: str = "",
    seed: int = 0,
    steps: int = 20,
    guidance: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    preview: LatentPreview | None = None,
    lock=None,
    stop=None,
    progress=None,
) -> GuidanceParts:
    """Generate once and take step ``step``'s classifier-free guidance apart (module docstring).

    Args:
        pipe: A ``StableDiffusionPipeline`` (SD 1.x / 2.x); its scheduler decides the sampler.
        prompt: The prompt.
        step: Index into the scheduler's timesteps, 0 to ``len(timesteps) - 1`` (PNDM has ``steps + 1``).
        negative_prompt: The negative prompt ("" for the empty prompt).
        seed, steps: The run's seed and denoising steps.
        guidance: Scale g; must be above 1 (at 1 or below the pipeline runs only the conditional branch).
        height, width: Image size in pixels (default: the model's).
        preview: A fitted latent preview (fitted here otherwise).
        lock, stop, progress: As for :func:`~explain.engine.run.recorded_run`: held for the call; a
            ``threading.Event`` that ends the run after the current step; a ``RunProgress`` updated every step.

    Raises:
        ValueError: bad settings, guidance <= 1, a step outside the run, a pipeline other than SD 1.x / 2.x, or
            a run stopped before step ``step`` was taken.
    """
    k = _check(pipe, step, seed, steps, guidance)
    negative_view = tokenize_prompt(pipe.tokenizer, negative_prompt)
    tap, negative = _StepTap(k), _negative_recorder(pipe, negative_view, height, width)
    call = dict(
        prompt=prompt,
        negative_prompt=negative_prompt or None,
        num_inference_steps=int(steps),
        guidance_scale=float(guidance),
        height=height,
        width=width,
        callback_on_step_end_tensor_inputs=TAP_INPUTS,
    )
    capture = Capture(film=False)
    run = recorded_run(
        pipe, call, seed=seed, capture=capture, contexts=[tap, negative], stop=stop, progress=progress, lock=lock
    )
    if tap.latents_out is None:  # stopped before step k finished: there is no step to take apart
        raise ValueError(
            f"The run was stopped after {run.steps_done} steps, before step {k + 1}: nothing to take apart."
        )
    scheduler, latents = _entering(pipe, tap, run.noise, int(steps))
    timestep = scheduler.timesteps[k]
    preview = preview if preview is not None else LatentPreview.fit(pipe.vae)
    parts, stepped, scheduler_x0, model_input, abar = _take_apart(
        pipe, scheduler, latents, timestep, tap.embeds, float(guidance), preview
    )
    words, maps, captured = _negative_maps(negative, negative_view)
    return GuidanceParts(
        step=k,
        timestep=float(timestep),
        guidance=float(guidance),
        prediction_type=scheduler.config.prediction_type,
        alpha_bar=abar,
        latents=latents,
        model_input=model_input,
        **parts,
        next_latents=tap.latents_out,
        stepped=stepped,
        scheduler_x0=scheduler_x0,
        image=np.asarray(run.image.convert("RGB")),
        negative_prompt=negative_prompt,
        negative_words=words,
        negative_maps=maps,
        negative_attention=captured,
        run=run,
    )
