"""The one recorded run: every generation in the project (app, steering, use cases, CLI) is a call of this.

:func:`recorded_run` calls a diffusers pipeline once with everything the explorer records:

- cross-attention softmax(Q Kᵀ · d^-1/2) per layer and step (:class:`~explain.capture.recorder.AttentionRecorder`;
  DAAM, Tang et al. 2023), maps of layers larger than :data:`STORE_MAX_RESOLUTION` average-pooled to it, for
  every caller alike;
- the denoising film, x_t and x̂₀ per step (:class:`~explain.capture.film.FilmRecorder`);
- caller contexts entered around the call (prompt-to-prompt steering, the U-Net input recorder), whose
  ``callback_on_step_end`` is chained in;
- a stop flag (diffusers' documented early stop: ``pipe._interrupt = True`` in ``callback_on_step_end``) and
  progress counters;
- the model lock, held for the whole call when given (runs on one pipeline share its weights and processors).

Seed policy, one rule for every device: the seed seeds a **CPU** ``torch.Generator`` (:func:`seed_generator`);
text-to-image draws x_T from it (:func:`~explain.capture.film.initial_noise`, the draw ``prepare_latents`` would
make, moved to the pipeline's device) and every prompt of a batch starts from that same x_T; the generator is then
handed to the pipeline for the sampler's own noise (ancestral samplers, img2img noising). CPU draws are the same on
every machine, so one seed gives one x_T in every tab, in the CLI and on CPU, CUDA or MPS (images then agree up to
the device's arithmetic).

Joint-attention pipelines (SD3 / SD3.5, Flux: no U-Net, no cross-attention) run through the same call with the
recorder of their family, :class:`~explain.joint.recording.JointRecording` (joint-attention token maps, and
ConceptAttention maps for ``Capture.concepts``), in :attr:`RecordedRun.joint`; x_T is their pipelines' own draw
(:func:`~explain.joint.recording.joint_initial_noise`, Flux's packed into tokens); their film is not recorded
(flow-matching sampler; :attr:`RecordedRun.notes` says so).

Two pipeline differences are bridged here, without touching the pipelines: ``StableDiffusionUpscalePipeline`` has
only the legacy ``callback(step, t, latents)`` (adapted to ``callback_on_step_end``), and no
``do_classifier_free_guidance`` attribute (the recorder is given a view of the pipeline that states it).

Example:
    >>> run = recorded_run(pipe, {"prompt": "a red circle", "num_inference_steps": 20}, seed=0)
    >>> run.image, run.captured.layer_names, len(run.frames)
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from diffusers import StableDiffusionUpscalePipeline

from explain.capture.film import FilmFrame, FilmRecorder, LatentPreview, initial_noise
from explain.capture.recorder import AttentionRecorder, CapturedAttention
from explain.capture.swap import compose_callbacks
from explain.clip.tokens import TokenView, tokenize_prompt
from explain.clip.vocabulary import unknown_words, vocabulary_of
from explain.diffusion.geometry import Geometry
from explain.diffusion.steps import StepPlan
from explain.joint.recording import (
    FILM_NOT_RECORDED,
    JointRecorded,
    JointRecording,
    is_joint_pipeline,
    joint_initial_noise,
)

__all__ = [
    "SEED_DEVICE",
    "STORE_MAX_RESOLUTION",
    "Capture",
    "RunProgress",
    "RecordedRun",
    "seed_generator",
    "recorded_run",
]

SEED_DEVICE = "cpu"  # every seed's generator lives here, whatever device the pipeline runs on
STORE_MAX_RESOLUTION = 32  # maps of larger layers are average-pooled to 32 x 32 (SD's 64 x 64 layers)


def seed_generator(seed: int) -> torch.Generator:
    """The generator of a seed: on :data:`SEED_DEVICE` for every pipeline device (see the module's seed policy)."""
    return torch.Generator(SEED_DEVICE).manual_seed(int(seed))


@dataclass(frozen=True)
class Capture:
    """What :func:`recorded_run` records besides the image.

    Attributes:
        attention: Record cross-attention maps (conditional branch).
        film: Record the film (x_t and x̂₀ per step).
        per_head: Keep each head's maps instead of their mean.
        film_decode: ``"auto"``, ``"preview"`` or ``"vae"`` (see :class:`~explain.capture.film.FilmRecorder`).
        preview: A fitted latent preview to reuse.
        on_frame: Called with each streamed film frame (every ``stream_every`` steps and the last).
        stream_every: Steps between streamed frames.
        concepts: SD3 / Flux: words to map with ConceptAttention (any words; with ``attention``).
    """

    attention: bool = True
    film: bool = True
    per_head: bool = False
    film_decode: str = "auto"
    preview: LatentPreview | None = None
    on_frame: Callable | None = None
    stream_every: int = 1
    concepts: tuple[str, ...] = ()

    @classmethod
    def nothing(cls) -> Capture:
        """Only the image (the image is bit-identical to a captured run's)."""
        return cls(attention=False, film=False)


@dataclass
class RunProgress:
    """Live counters of one run, written by the thread that runs it and readable from any thread.

    A stop request can say how far the run had got (``steps_done`` when the stop flag was set); the run then ends
    after the step in progress, so its result has at most ``steps_done + 1`` steps.

    Attributes:
        steps_done: Denoising steps finished so far.
        total: Steps the sampler runs (0 until the first step is done).
    """

    steps_done: int = 0
    total: int = 0


@dataclass(frozen=True, eq=False)  # holds tensors and images: compare fields explicitly
class RecordedRun:
    """One pipeline call and everything recorded on the way.

    Attributes:
        images: The pipeline's ``images`` (PIL images, or a (B, H, W, 3) float array for ``output_type="np"``).
        view: Tokenisation of the (first) prompt.
        captured: Cross-attention maps (None without attention capture).
        frames: Film frames, one per step (empty without film).
        noise: (1, C, h, w) the x_T every prompt started from (None when the pipeline drew its own start).
        interrupted: True when ``stop`` ended the run early.
        steps_done: Steps that ran.
        seconds: Wall time of the pipeline call.
        denoise_seconds: Pipeline call to the last step's callback (prompt encoding included, decoding not).
        scheduler: Scheduler class used.
        size: (height, width) in pixels of the images.
        unknown_words: Words of the (first) prompt the model never saw in training
            (:mod:`explain.clip.vocabulary`; always empty for real checkpoints).
        joint: SD3 / Flux: the joint-attention (and ConceptAttention) maps; ``captured`` is None there.
        notes: What was asked for but not recorded, and why (SD3 / Flux: the film).
    """

    images: object
    view: TokenView
    captured: CapturedAttention | None
    frames: tuple[FilmFrame, ...]
    noise: torch.Tensor | None
    interrupted: bool
    steps_done: int
    seconds: float
    denoise_seconds: float
    scheduler: str
    size: tuple[int, int] = field(default=(0, 0))
    unknown_words: tuple[str, ...] = ()
    joint: JointRecorded | None = None
    notes: tuple[str, ...] = ()

    @property
    def image(self):
        return self.images[0]


@dataclass(frozen=True)
class _GuidanceView:
    """The parts of a pipeline :class:`AttentionRecorder` reads, with the guidance flag stated explicitly."""

    unet: torch.nn.Module
    vae_scale_factor: int
    tokenizer: object
    do_classifier_free_guidance: bool


def _legacy_callback(pipe, callback_on_step_end):
    """``callback(step, t, latents)`` -> ``callback_on_step_end(pipe, i, t, {"latents": latents})``.

    The legacy callback runs once per full solver step with ``step = i // order``; the last U-Net call of that step
    has index ``step * order + order - 1``, which is what ``callback_on_step_end`` would have been given.
    """
    order = getattr(pipe.scheduler, "order", 1)

    def callback(step: int, timestep, latents: torch.Tensor) -> None:
        callback_on_step_end(pipe, step * order + order - 1, timestep, {"latents": latents})

    return callback


def _prompts(call: dict) -> list[str]:
    prompt = call["prompt"]
    return [prompt] if isinstance(prompt, str) else list(prompt)


def recorded_run(
    pipe,
    call: dict,
    *,
    seed: int | None = None,
    draw_noise: bool = True,
    capture: Capture | None = None,
    contexts: Sequence[contextlib.AbstractContextManager] = (),
    stop: threading.Event | None = None,
    progress: RunProgress | None = None,
    lock: contextlib.AbstractContextManager | None = None,
) -> RecordedRun:
    """Call ``pipe(**call)`` with the recorders, the seed policy, the stop flag and the lock (module docstring).

    Args:
        pipe: A diffusers SD pipeline (text-to-image, img2img, inpainting, upscaling; SDXL too).
        call: Keyword arguments of the pipeline call; ``prompt`` (a string or a list) is required. ``generator``,
            ``latents`` and ``callback_on_step_end`` are set here.
        seed: Seed of the run's CPU generator (None: the pipeline's own randomness).
        draw_noise: Draw x_T here (text-to-image) and start every prompt from it; False for pipelines that make
            their start from an input image (img2img, inpainting, upscaling).
        capture: What to record (default :class:`Capture`: attention and film).
        contexts: Entered around the call, in order, before the recorders (their ``callback_on_step_end``, when
            they have one, runs first); each restores what it changed on exit.
        stop: Set it to end the run after the current step.
        progress: Updated after every step.
        lock: Held for the whole call.
    """
    capture = capture if capture is not None else Capture()
    prompts = _prompts(call)
    kwargs, noise = _seeded_call(pipe, call, len(prompts), seed, draw_noise)
    joint = is_joint_pipeline(pipe)  # SD3 / Flux: joint-attention recorder, no film
    target = pipe
    if not joint and not hasattr(type(pipe), "do_classifier_free_guidance"):
        target = _GuidanceView(pipe.unet, pipe.vae_scale_factor, pipe.tokenizer, kwargs["guidance_scale"] > 1.0)
    counter = _StepCounter(stop, progress)
    with lock if lock is not None else contextlib.nullcontext():
        with contextlib.ExitStack() as stack:  # exits innermost first: each context restores what it found
            entered = [stack.enter_context(context) for context in contexts]
            recorder = (
                stack.enter_context(_attention_recorder(target, capture, prompts, kwargs))
                if capture.attention
                else None
            )
            film = _film_recorder(pipe, capture, kwargs.get("latents")) if capture.film and not joint else None
            callback = compose_callbacks(
                *(getattr(context, "callback_on_step_end", None) for context in entered),
                recorder and recorder.callback_on_step_end,
                film and film.callback_on_step_end,
                counter,
            )
            if isinstance(pipe, StableDiffusionUpscalePipeline):  # no callback_on_step_end (diffusers 0.42)
                kwargs.update(callback=_legacy_callback(pipe, callback), callback_steps=1)
            else:
                kwargs["callback_on_step_end"] = callback
            started = time.perf_counter()
            images = pipe(**kwargs).images
            seconds = time.perf_counter() - started
        view = tokenize_prompt(pipe.tokenizer, prompts[0])
        recorded = recorder.result() if recorder is not None else None
        return RecordedRun(
            images=images,
            view=view,
            unknown_words=unknown_words(view, vocabulary_of(getattr(pipe, "text_encoder", None))),
            captured=None if joint else recorded,
            joint=recorded if joint else None,
            notes=(FILM_NOT_RECORDED,) if joint and capture.film else (),
            frames=tuple(film.frames()) if film is not None else (),
            noise=noise,
            interrupted=bool(getattr(pipe, "_interrupt", False)),
            steps_done=counter.steps_done,
            seconds=seconds,
            denoise_seconds=(counter.last if counter.last is not None else started + seconds) - started,
            scheduler=type(pipe.scheduler).__name__,
            size=_size(images),
        )


def _seeded_call(pipe, call: dict, n_prompts: int, seed: int | None, draw_noise: bool):
    """The call's keyword arguments with the seed policy applied: (kwargs, x_T (1, C, h, w) or None)."""
    kwargs = dict(call)
    generator = noise = None
    if seed is not None:
        generator = kwargs["generator"] = seed_generator(seed)
    if draw_noise:
        height, width = Geometry.from_pipeline(pipe, layers=False).size(kwargs.get("height"), kwargs.get("width"))
        kwargs.update(height=height, width=width)
        if is_joint_pipeline(pipe):  # (1, C, h, w) and what the pipeline takes (Flux: packed (1, N, 4C) tokens)
            noise, latents = joint_initial_noise(pipe, 1, height, width, generator)
        else:
            noise = latents = initial_noise(pipe, 1, height, width, generator)  # (1, C, h, w): the pipeline's draw
        kwargs["latents"] = latents.expand(n_prompts, *latents.shape[1:]).clone()  # (B, ...): the same x_T
    return kwargs, noise


class _StepCounter:
    """The run's last ``callback_on_step_end``: counts finished steps, updates progress, honours the stop flag."""

    def __init__(self, stop: threading.Event | None, progress: RunProgress | None):
        self.stop, self.progress = stop, progress
        self.steps_done, self.last = 0, None

    def __call__(self, pipe, step_index, timestep, callback_kwargs):
        self.last = time.perf_counter()
        plan = StepPlan.of(pipe.scheduler)  # Heun: 2 calls a step; PNDM: one warm-up call
        self.steps_done = plan.steps_done(step_index)
        if self.progress is not None:
            self.progress.steps_done = self.steps_done
            self.progress.total = plan.total
        if self.stop is not None and self.stop.is_set():
            pipe._interrupt = True  # diffusers' documented early stop: the loop skips the rest
        return callback_kwargs


def _film_recorder(pipe, capture: Capture, initial_latents) -> FilmRecorder:
    return FilmRecorder(
        pipe,
        decode=capture.film_decode,
        initial_latents=initial_latents,
        preview=capture.preview,
        on_frame=capture.on_frame,
        stream_every=capture.stream_every,
    )


def _attention_recorder(target, capture: Capture, prompts: list[str], kwargs: dict):
    """The recorder of a run, by family. U-Nets: an AttentionRecorder on the BOS..EOS columns of the longest
    prompt, maps pooled to STORE_MAX_RESOLUTION. SD3 / Flux: a JointRecording (token and concept maps)."""
    size = dict(height=kwargs.get("height"), width=kwargs.get("width"))
    if is_joint_pipeline(target):
        return JointRecording(
            target,
            prompts,
            per_head=capture.per_head,
            concepts=capture.concepts,
            max_sequence_length=kwargs.get("max_sequence_length"),
            **size,
        )
    if capture.concepts:
        raise ValueError("Capture.concepts (ConceptAttention maps) needs an SD3 or Flux pipeline")
    return AttentionRecorder(
        target,
        per_head=capture.per_head,
        token_count=max(tokenize_prompt(target.tokenizer, p).n_used for p in prompts),
        max_resolution=STORE_MAX_RESOLUTION,
        **size,
    )


def _size(images) -> tuple[int, int]:
    """(height, width) of the first image (PIL or array)."""
    first = images[0]
    return (first.height, first.width) if hasattr(first, "height") else tuple(first.shape[:2])
