"""One generation, streamed: the engine behind the app's "Denoise & attend" view (no UI code here).

Views and exports of a finished result are in :mod:`explain.maps.views`. A :class:`GenerationRequest` says what to
draw; :func:`generate_stream` runs it in a worker thread through the one recorded run,
:func:`explain.engine.run.recorded_run` (cross-attention softmax(QKᵀ/√d) per layer, head and step; x_t and the
predicted clean image x̂₀ per step; the seed policy; the lock), and yields :class:`StepUpdate` previews (about
``STREAMED_PREVIEWS`` per run: each is a VAE decode), then one :class:`GenerationResult`. Setting the ``stop``
event ends the run after the current step (diffusers' documented early stop, see :mod:`explain.engine.run`).

Every request runs on its own shallow copy of the pipeline (same weights, a fresh scheduler built with
``SchedulerClass.from_config(pipe.scheduler.config)``), so scheduler state and the interrupt flag never leak between
runs. The weights and the U-Net's attention processors *are* shared, so runs on one pipeline must not overlap:
:class:`Engine` holds the lock that serialises them.

Example:
    >>> engine = Engine()                        # embedded model, loaded on first use
    >>> request = GenerationRequest("a big red circle on the left", seed=3, steps=15)
    >>> for item in generate_stream(engine.pipeline(), request, lock=engine.lock):
    ...     print(item.step if isinstance(item, StepUpdate) else item.image.size)
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import diffusers
import numpy as np
import transformers
from huggingface_hub import hf_hub_download

from explain.capture.film import LatentPreview
from explain.clip.model import CLIP_SUBDIR, load_clip
from explain.diffusion.geometry import Geometry, SizeLimits
from explain.diffusion.loading import (
    EMBEDDED_MODEL_DIR,
    load_pipeline,
    recommended_settings,
    scheduler_class,
)
from explain.diffusion.steps import StepPlan
from explain.engine.requests import SCHEDULER_CHOICES, GenerationRequest
from explain.engine.run import Capture, RunProgress, recorded_run
from explain.joint.recording import is_joint_pipeline, prompt_concepts
from explain.joint.tokens import text_layout
from explain.world.content import WorldContent, model_content, model_world, world_content

WARM_UP_PROMPT = "a red circle in the center"

__all__ = [
    "StepUpdate",
    "GenerationResult",
    "Engine",
    "request_pipeline",
    "size_limits",
    "ModelLimits",
    "generate_stream",
    "generate",
]

STREAMED_PREVIEWS = 10  # x̂₀ previews streamed per generation (at most about this many; the last step always)


@dataclass(frozen=True, eq=False)
class StepUpdate:
    """One finished denoising step.

    Attributes:
        step: Step index, 0-based.
        total: Steps the sampler runs (the request's steps; PNDM adds one).
        timestep: Scheduler timestep of the step.
        preview: (H, W, 3) uint8: the predicted clean image x̂₀ (or the noisy latent where the scheduler gives none).
        source: ``"x0"`` or ``"latents"``: what ``preview`` shows.
        elapsed: Seconds since the run started.
    """

    step: int
    total: int
    timestep: float
    preview: np.ndarray
    source: str
    elapsed: float


@dataclass(frozen=True, eq=False)
class GenerationResult:
    """A finished (or stopped) generation with everything recorded on the way.

    Attributes:
        request: The request.
        size: (height, width) in pixels.
        image: The decoded image (PIL).
        view: Tokenisation of the prompt (:class:`explain.clip.tokens.TokenView`).
        captured: Cross-attention maps per layer, per head (:class:`explain.capture.recorder.CapturedAttention`).
        frames: Film frames, one per step (:class:`explain.capture.film.FilmFrame`).
        interrupted: True when ``stop`` ended the run early.
        steps_done: Steps that ran.
        seconds: Wall time of the run.
        scheduler: Scheduler class used.
        unknown_words: Words of the prompt the model never saw (:mod:`explain.clip.vocabulary`).
        joint: SD3 / Flux: the joint-attention and ConceptAttention maps of the prompt's words
            (:class:`explain.joint.recording.JointRecorded`); ``captured`` is None and ``frames`` empty there.
        notes: What was not recorded, and why (SD3 / Flux: the film).
    """

    request: GenerationRequest
    size: tuple[int, int]
    image: object
    view: object
    captured: object
    frames: tuple
    interrupted: bool
    steps_done: int
    seconds: float
    scheduler: str
    unknown_words: tuple[str, ...] = ()
    joint: object = None
    notes: tuple[str, ...] = ()


class Engine:
    """The model of a session, loaded on first use, and the lock that serialises pipeline runs.

    Args:
        model: ``None`` (embedded model), a diffusers directory or a Hub id (see :func:`explain.diffusion.loading.load_pipeline`).
        device: ``"cpu"``, ``"cuda"``... (default: CUDA when available).
        quiet: Turn off diffusers' and transformers' loading progress bars (a server log stays readable).
    """

    def __init__(self, model: str | None = None, device: str | None = None, quiet: bool = True):
        self.model = model
        self.device = device
        self.quiet = quiet
        self.lock = threading.RLock()  # held for a whole pipeline run
        self._load_lock = threading.Lock()
        self._pipe = None
        self._clip = None
        self._preview = None

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def limits(self) -> ModelLimits:
        """Image-size limits and the chain length T, read from the model's config files without loading weights.

        Falls back to loading the pipeline when the configs cannot be read on their own.
        """
        try:
            unet, vae, scheduler = (
                self._config(f) for f in ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json")
            )
            return ModelLimits(Geometry.from_configs(unet, vae).limits, int(scheduler["num_train_timesteps"]))
        except (OSError, KeyError, ValueError, TypeError):  # no U-Net config (SD3 / Flux) or a Hub id
            pipe = self.pipeline()
            chain = int(pipe.scheduler.config.num_train_timesteps)
            return ModelLimits(size_limits(pipe), chain, is_joint_pipeline(pipe))

    def recommended_guidance(self, fallback: float = 7.5) -> float:
        """The guidance scale the model directory recommends (``explorer.json``), else ``fallback``; no weights."""

        local = self._local_dir()
        return recommended_settings(local).get("recommended_guidance", fallback) if local.is_dir() else fallback

    def _local_dir(self) -> Path:
        """The model's directory on disk (the embedded model's by default); for a Hub id, a path that is no dir."""

        return Path(self.model).expanduser() if self.model else EMBEDDED_MODEL_DIR

    def _config(self, name: str) -> dict:
        local = self._local_dir()
        if local.is_dir():
            return json.loads((local / name).read_text())

        return json.loads(Path(hf_hub_download(self.model, name)).read_text())

    @staticmethod
    def quiet_loading() -> None:
        """No download/loading progress bars from diffusers and transformers (a server's log stays readable)."""

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()

    def pipeline(self):
        """The shared pipeline (loads it the first time)."""
        with self._load_lock:
            if self._pipe is None:
                if self.quiet:
                    self.quiet_loading()
                self._pipe = load_pipeline(self.model, device=self.device)
            return self._pipe

    def _clip_dir(self) -> Path:
        """The directory whose CLIP tab 1 uses: the model's when it has a full CLIP, else the embedded model's."""
        own = Path(self.model).expanduser() if self.model else None
        return own if own is not None and (own / CLIP_SUBDIR).is_dir() else EMBEDDED_MODEL_DIR

    def clip(self):
        """The embedded model's full CLIP (:class:`explain.clip.model.ClipBundle`), from the model dir when it has one."""
        with self._load_lock:
            if self._clip is None:
                self._clip = load_clip(self._clip_dir())
            return self._clip

    def world(self) -> WorldContent:
        """What the views show of the model's world (:mod:`explain.world.content`): its prompts and presets; a model
        trained on no world of ours (a real checkpoint) gets plain-English ones. Reads no weights."""
        return model_content(self.model)

    def clip_world(self) -> WorldContent:
        """The world of the CLIP :meth:`clip` loads (its samples and zero-shot candidates are of that world)."""
        return world_content(model_world(self._clip_dir()) or "shapes")

    def latent_preview(self):
        """A :class:`explain.capture.film.LatentPreview` fitted once to the model's VAE."""
        pipe = self.pipeline()
        with self._load_lock:
            if self._preview is None:
                self._preview = LatentPreview.fit(pipe.vae)
            return self._preview

    def warm_up(self) -> None:
        """Load everything and run one step at the smallest size the U-Net accepts, so the first real request
        does not pay for loading and first-call set-up, and the first visitor does not wait for a full-size warm-up
        (an SD 1.5-sized model on a CPU: ~80 s at 512 x 512, a second or two at 64 x 64)."""
        pipe = self.pipeline()
        self.latent_preview()
        with contextlib.suppress(FileNotFoundError):
            self.clip()
        side = size_limits(pipe).multiple
        request = GenerationRequest(WARM_UP_PROMPT, steps=1, height=side, width=side)
        for _ in generate_stream(pipe, request, lock=self.lock):
            pass

    def start_warm_up(self) -> threading.Thread:
        """:meth:`warm_up` in a daemon thread (errors surface again on first use)."""

        def run():
            with contextlib.suppress(Exception):
                self.warm_up()

        thread = threading.Thread(target=run, name="engine-warm-up", daemon=True)
        thread.start()
        return thread


def size_limits(pipe) -> SizeLimits:
    """(multiple, default (h, w), max side) in pixels for this pipeline (:class:`explain.diffusion.geometry.Geometry`)."""
    return Geometry.from_pipeline(pipe, layers=False).limits


class ModelLimits(NamedTuple):
    """What the app needs to build its controls before the weights load."""

    size: SizeLimits
    chain_length: int  # T, the scheduler's num_train_timesteps
    joint: bool = False  # SD3 / Flux: joint attention (MMDiT), no U-Net


def request_pipeline(pipe, scheduler: str = "default"):
    """A shallow copy of ``pipe`` (shared weights) with a fresh scheduler: the model's class, or ``scheduler``."""
    key = SCHEDULER_CHOICES[scheduler]
    cls = type(pipe.scheduler) if key is None else scheduler_class(key)
    components = dict(pipe.components)
    components["scheduler"] = cls.from_config(pipe.scheduler.config)
    params = inspect.signature(type(pipe).__init__).parameters
    options = {k: v for k, v in pipe.config.items() if k in params and k not in components}
    copy = type(pipe)(**components, **options)
    copy.set_progress_bar_config(disable=True)
    return copy


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


def generate_stream(
    pipe,
    request: GenerationRequest,
    stop: threading.Event | None = None,
    *,
    lock: contextlib.AbstractContextManager | None = None,
    preview=None,
    per_head: bool = True,
    progress: RunProgress | None = None,
) -> Iterator[StepUpdate | GenerationResult]:
    """Run ``request`` and yield :class:`StepUpdate` previews (every step up to STREAMED_PREVIEWS steps, then
    about that many, the last step always), then the :class:`GenerationResult`, whose film has every step.

    Args:
        pipe: A Stable Diffusion (XL) pipeline (not modified: the run uses :func:`request_pipeline`).
        request: What to generate (validated here: ``ValueError`` before anything runs).
        stop: Set it to end the run after the current step; closing the iterator early sets it too.
        lock: Held for the whole pipeline run (see :class:`Engine`).
        preview: A fitted :class:`explain.capture.film.LatentPreview` (fitted on first need otherwise).
        per_head: Keep each head's maps (needed to filter by head).
        progress: Updated by the worker after every step (e.g. for a stop button to say where the run was).
    """
    height, width = request.validate(pipe)
    progress = progress if progress is not None else RunProgress()
    stop = stop if stop is not None else threading.Event()
    items: queue.Queue = queue.Queue()
    started = time.perf_counter()
    thread = threading.Thread(
        target=_worker,
        args=(pipe, request, (height, width), stop, lock, preview, per_head, items, started, progress),
        name="generate-stream",
        daemon=True,
    )
    thread.start()
    finished = False
    try:
        while True:
            item = items.get()
            if item is _DONE:
                finished = True
                thread.join()  # it has nothing left to do; joined, it cannot outlive the interpreter
                return
            if isinstance(item, _Failure):
                finished = True
                raise item.error
            yield item
    finally:
        if not finished:  # the consumer went away (closed the iterator): stop the worker within one step
            stop.set()


def _worker(pipe, request, size, stop, lock, preview, per_head, items, started, progress) -> None:
    height, width = size
    try:
        run = request_pipeline(pipe, request.scheduler)

        def on_frame(frame):
            total = StepPlan.of(run.scheduler).total
            elapsed = time.perf_counter() - started
            items.put(StepUpdate(frame.step, total, frame.timestep, frame.image[0], frame.source, elapsed))

        # Previews are VAE decodes (small models): stream about STREAMED_PREVIEWS of them, not one per step; the
        # film decodes the remaining frames in batches at the end, which costs far less.
        every = max(1, math.ceil(int(request.steps) / STREAMED_PREVIEWS))
        call = dict(
            prompt=request.prompt,
            negative_prompt=request.negative or None,
            num_inference_steps=int(request.steps),
            guidance_scale=float(request.guidance),
            height=height,
            width=width,
        )
        joint = is_joint_pipeline(run)  # SD3 / Flux: ConceptAttention maps of the prompt's words too; heads averaged
        concepts = prompt_concepts(text_layout(run, request.prompt)) if joint else ()
        capture = Capture(
            per_head=per_head and not joint, preview=preview, on_frame=on_frame, stream_every=every, concepts=concepts
        )
        recorded = recorded_run(run, call, seed=request.seed, capture=capture, stop=stop, progress=progress, lock=lock)
        items.put(
            GenerationResult(
                request=request,
                size=(height, width),
                image=recorded.image,
                view=recorded.view,
                captured=recorded.captured,
                frames=recorded.frames,
                interrupted=recorded.interrupted,
                steps_done=recorded.steps_done,
                seconds=time.perf_counter() - started,
                scheduler=recorded.scheduler,
                unknown_words=recorded.unknown_words,
                joint=recorded.joint,
                notes=recorded.notes,
            )
        )
    except BaseException as error:  # handed to the consumer, raised there
        items.put(_Failure(error))
    finally:
        items.put(_DONE)


def generate(pipe, request: GenerationRequest, **kwargs) -> GenerationResult:
    """:func:`generate_stream` run to the end; returns only the result."""
    result = None
    for item in generate_stream(pipe, request, **kwargs):
        result = item
    if not isinstance(result, GenerationResult):
        raise RuntimeError("the generation ended without a result")
    return result
