"""One generation, streamed: the engine behind the app's "Denoise & attend" view (no UI code here).

Views and exports of a finished result are in :mod:`explain.result_views`. A :class:`GenerationRequest` says what to
draw; :func:`generate_stream` runs the pipeline in a worker thread inside
an :class:`~explain.attention.AttentionRecorder` (cross-attention softmax(QKᵀ/√d) per layer, head and step) and a
:class:`~explain.film.FilmRecorder` (x_t and the predicted clean image x̂₀ per step), and yields
:class:`StepUpdate` previews (about ``STREAMED_PREVIEWS`` per run: each is a VAE decode), then one
:class:`GenerationResult`. Setting the ``stop`` event ends the run
after the current step: the step-end callback sets the pipeline's interrupt flag, which is how diffusers documents
stopping early (``pipe._interrupt = True`` inside ``callback_on_step_end``; the loop then skips what is left).

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
import dataclasses
import inspect
import json
import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explain.loading import scheduler_class

__all__ = [
    "SCHEDULER_CHOICES",
    "MAX_STEPS",
    "MAX_GUIDANCE",
    "GenerationRequest",
    "RunProgress",
    "StepUpdate",
    "GenerationResult",
    "Engine",
    "request_pipeline",
    "size_limits",
    "generate_stream",
    "generate",
]

# Display name -> key of explain.loading.SCHEDULERS ("default" keeps the model's own scheduler class).
SCHEDULER_CHOICES: dict[str, str | None] = {
    "default": None,
    "DDIM": "ddim",
    "DPM-Solver++": "dpm++",
    "Euler": "euler",
    "Euler-a": "euler-a",
    "Heun": "heun",
    "UniPC": "unipc",
    "PNDM": "pndm",
    "DDPM": "ddpm",
}
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 20_000  # longer text is refused before tokenising it (77 slots hold a few hundred characters)
CUT_TOKENS_SHOWN = 8  # an over-long prompt's error quotes this many of the tokens that would be cut
MAX_SIDE_FACTOR = 2  # largest image side: this many times the model's default side
STREAMED_PREVIEWS = 10  # x̂₀ previews streamed per generation (at most about this many; the last step always)
STORE_MAX_RESOLUTION = 32  # maps of larger layers are average-pooled to 32 x 32 (SD's 64 x 64 layers)


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. ``height``/``width`` ``None`` mean the model's default size."""

    prompt: str
    negative: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    scheduler: str = "default"
    height: int | None = None
    width: int | None = None

    def validate(self, pipe) -> tuple[int, int]:
        """Check every field against the pipeline; returns the (height, width) to use.

        Raises:
            ValueError: with a message that names the field, says what is wrong and what is allowed.
        """
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("The prompt is empty: type what the picture should show.")
        for name, text in (("prompt", self.prompt), ("negative prompt", self.negative)):
            _check_prompt_length(pipe.tokenizer, name, text)
        if not _is_whole(self.steps) or not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be a whole number from 1 to {MAX_STEPS} (got {self.steps}).")
        if not _is_number(self.guidance) or not 0 <= self.guidance <= MAX_GUIDANCE:
            raise ValueError(f"guidance must lie in 0..{MAX_GUIDANCE:g} (got {self.guidance}); <= 1 turns it off.")
        if not _is_whole(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED} (got {self.seed}).")
        if self.scheduler not in SCHEDULER_CHOICES:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose from {', '.join(SCHEDULER_CHOICES)}.")
        multiple, default_hw, max_side = size_limits(pipe)
        hw = (self.height or default_hw[0], self.width or default_hw[1])
        for name, value in zip(("height", "width"), hw, strict=True):
            if not _is_whole(value) or value % multiple or not multiple <= value <= max_side:
                raise ValueError(
                    f"{name} {value} is not allowed: use a multiple of {multiple} from {multiple} to {max_side} "
                    f"pixels (this model's default is {default_hw[0]} x {default_hw[1]})."
                )
        return int(hw[0]), int(hw[1])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_number(value) -> bool:
    """A finite real number (bool, NaN and infinities are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value) -> bool:
    """A finite number without a fractional part (``3`` and ``3.0``, not ``2.5``, NaN or ``"3"``)."""
    return _is_number(value) and float(value).is_integer()


def _check_prompt_length(tokenizer, name: str, text: str) -> None:
    """ValueError when ``text`` needs more token slots than the text encoder has (it would be cut silently).

    The message names the field, the limit and the first few words that would be lost, not all of them.
    """
    from explain.tokens import tokenize_prompt

    if not text:
        return
    slots = tokenizer.model_max_length
    if not isinstance(text, str):
        raise ValueError(f"The {name} must be text, not {type(text).__name__}.")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"The {name} is {len(text)} characters long; the text encoder reads at most {slots - 2} tokens "
            f"(a few hundred characters) and the app accepts at most {MAX_PROMPT_CHARS}. Shorten it."
        )
    view = tokenize_prompt(tokenizer, text)
    if not view.truncated:
        return
    cut = tokenizer.decode(tokenizer.convert_tokens_to_ids(list(view.truncated[:CUT_TOKENS_SHOWN]))).strip()
    more = len(view.truncated) - CUT_TOKENS_SHOWN
    raise ValueError(
        f"The {name} is {view.n_prompt_tokens + len(view.truncated)} tokens long; the text encoder has {slots} "
        f"slots, {slots - 2} for words (BOS and EOS take two). {len(view.truncated)} tokens would be cut, starting "
        f"with “{cut}”{f' and {more} more' if more > 0 else ''}. Shorten it."
    )


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


@dataclass
class RunProgress:
    """Live counters of one run, written by its worker thread and readable from any thread.

    A stop request can say how far the run had got (``steps_done`` when the stop flag was set); the run then ends
    after the step in progress, so its result has at most ``steps_done + 1`` steps.

    Attributes:
        steps_done: Denoising steps finished so far.
        total: Steps the sampler runs (0 until the first step is done).
    """

    steps_done: int = 0
    total: int = 0


@dataclass(frozen=True, eq=False)
class GenerationResult:
    """A finished (or stopped) generation with everything recorded on the way.

    Attributes:
        request: The request.
        size: (height, width) in pixels.
        image: The decoded image (PIL).
        view: Tokenisation of the prompt (:class:`explain.tokens.TokenView`).
        captured: Cross-attention maps per layer, per head (:class:`explain.attention.CapturedAttention`).
        frames: Film frames, one per step (:class:`explain.film.FilmFrame`).
        interrupted: True when ``stop`` ended the run early.
        steps_done: Steps that ran.
        seconds: Wall time of the run.
        scheduler: Scheduler class used.
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


class Engine:
    """The model of a session, loaded on first use, and the lock that serialises pipeline runs.

    Args:
        model: ``None`` (embedded model), a diffusers directory or a Hub id (see :func:`explain.loading.load_pipeline`).
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

    def limits(self) -> tuple[tuple[int, int, int], int]:
        """``(size_limits, T)`` read from the model's config files, without loading weights (fast start).

        Falls back to loading the pipeline when the configs cannot be read on their own.
        """
        try:
            unet, vae, scheduler = (
                self._config(f) for f in ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json")
            )
            sample = unet["sample_size"]
            sample_hw = (sample, sample) if isinstance(sample, int) else tuple(sample)
            vae_factor = 2 ** (len(vae["block_out_channels"]) - 1)  # as diffusers pipelines compute it
            default_hw = (sample_hw[0] * vae_factor, sample_hw[1] * vae_factor)
            multiple = vae_factor * 2 ** (len(unet["block_out_channels"]) - 1)
            limits = (multiple, default_hw, MAX_SIDE_FACTOR * max(default_hw))
            return limits, int(scheduler["num_train_timesteps"])
        except (OSError, KeyError, ValueError, TypeError):
            pipe = self.pipeline()
            return size_limits(pipe), int(pipe.scheduler.config.num_train_timesteps)

    def recommended_guidance(self, fallback: float = 7.5) -> float:
        """The guidance scale the model directory recommends (``explorer.json``), else ``fallback``; no weights."""
        from explain.loading import recommended_settings

        local = self._local_dir()
        return recommended_settings(local).get("recommended_guidance", fallback) if local.is_dir() else fallback

    def _local_dir(self) -> Path:
        """The model's directory on disk (the embedded model's by default); for a Hub id, a path that is no dir."""
        from explain.loading import EMBEDDED_MODEL_DIR

        return Path(self.model).expanduser() if self.model else EMBEDDED_MODEL_DIR

    def _config(self, name: str) -> dict:
        local = self._local_dir()
        if local.is_dir():
            return json.loads((local / name).read_text())
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(self.model, name)).read_text())

    @staticmethod
    def quiet_loading() -> None:
        """No download/loading progress bars from diffusers and transformers (a server's log stays readable)."""
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()

    def pipeline(self):
        """The shared pipeline (loads it the first time)."""
        with self._load_lock:
            if self._pipe is None:
                from explain.loading import load_pipeline

                if self.quiet:
                    self.quiet_loading()
                self._pipe = load_pipeline(self.model, device=self.device)
            return self._pipe

    def clip(self):
        """The embedded model's full CLIP (:class:`explain.clip_model.ClipBundle`), from the model dir when it has one."""
        with self._load_lock:
            if self._clip is None:
                from explain.clip_model import CLIP_SUBDIR, load_clip
                from explain.loading import EMBEDDED_MODEL_DIR

                own = Path(self.model) if self.model else None
                self._clip = load_clip(own if own is not None and (own / CLIP_SUBDIR).is_dir() else EMBEDDED_MODEL_DIR)
            return self._clip

    def latent_preview(self):
        """A :class:`explain.film.LatentPreview` fitted once to the model's VAE."""
        pipe = self.pipeline()
        with self._load_lock:
            if self._preview is None:
                from explain.film import LatentPreview

                self._preview = LatentPreview.fit(pipe.vae)
            return self._preview

    def warm_up(self) -> None:
        """Load everything and run one short generation, so the first real request is fast."""
        pipe = self.pipeline()
        self.latent_preview()
        with contextlib.suppress(FileNotFoundError):
            self.clip()
        for _ in generate_stream(pipe, GenerationRequest("a red circle in the center", steps=2), lock=self.lock):
            pass

    def start_warm_up(self) -> threading.Thread:
        """:meth:`warm_up` in a daemon thread (errors surface again on first use)."""

        def run():
            with contextlib.suppress(Exception):
                self.warm_up()

        thread = threading.Thread(target=run, name="engine-warm-up", daemon=True)
        thread.start()
        return thread


def size_limits(pipe) -> tuple[int, tuple[int, int], int]:
    """(multiple, default (h, w), max side) in pixels for this pipeline.

    Sides must be multiples of the VAE factor times the U-Net's downsampling (every down block but the last halves).
    """
    sample = pipe.unet.config.sample_size
    sample_hw = (sample, sample) if isinstance(sample, int) else tuple(sample)
    default_hw = (sample_hw[0] * pipe.vae_scale_factor, sample_hw[1] * pipe.vae_scale_factor)
    multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    return multiple, default_hw, MAX_SIDE_FACTOR * max(default_hw)


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
        preview: A fitted :class:`explain.film.LatentPreview` (fitted on first need otherwise).
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
    import torch

    from explain.attention import AttentionRecorder, compose_callbacks
    from explain.film import FilmRecorder, initial_noise
    from explain.tokens import tokenize_prompt

    height, width = size
    try:
        with lock if lock is not None else contextlib.nullcontext():
            run = request_pipeline(pipe, request.scheduler)
            view = tokenize_prompt(run.tokenizer, request.prompt)
            generator = torch.Generator(run.unet.device).manual_seed(int(request.seed))
            noise = initial_noise(run, 1, height, width, generator)
            steps_done = 0

            def total_steps() -> int:
                return len(run.scheduler.timesteps) // run.scheduler.order  # PNDM runs one more than asked

            def on_frame(frame):
                elapsed = time.perf_counter() - started
                items.put(StepUpdate(frame.step, total_steps(), frame.timestep, frame.image[0], frame.source, elapsed))

            def count_and_interrupt(run_pipe, step_index, timestep, callback_kwargs):
                nonlocal steps_done
                steps_done = (step_index + 1) // run_pipe.scheduler.order  # completed steps (Heun: 2 calls each)
                progress.steps_done, progress.total = steps_done, total_steps()
                if stop.is_set():
                    run_pipe._interrupt = True  # diffusers' documented early stop: the loop skips the rest
                return callback_kwargs

            # Previews are VAE decodes (small models): stream about STREAMED_PREVIEWS of them, not one per step; the
            # film decodes the remaining frames in batches at the end, which costs far less.
            every = max(1, math.ceil(int(request.steps) / STREAMED_PREVIEWS))
            film = FilmRecorder(run, initial_latents=noise, preview=preview, on_frame=on_frame, stream_every=every)
            recorder = AttentionRecorder(
                run,
                per_head=per_head,
                token_count=view.n_used,
                max_resolution=STORE_MAX_RESOLUTION,
                height=height,
                width=width,
            )
            with recorder:
                image = run(
                    prompt=request.prompt,
                    negative_prompt=request.negative or None,
                    num_inference_steps=int(request.steps),
                    guidance_scale=float(request.guidance),
                    height=height,
                    width=width,
                    generator=generator,
                    latents=noise,
                    callback_on_step_end=compose_callbacks(
                        recorder.callback_on_step_end, film.callback_on_step_end, count_and_interrupt
                    ),
                ).images[0]
            result = GenerationResult(
                request=request,
                size=(height, width),
                image=image,
                view=view,
                captured=recorder.result(),
                frames=tuple(film.frames()),
                interrupted=bool(run.interrupt),
                steps_done=steps_done,
                seconds=time.perf_counter() - started,
                scheduler=type(run.scheduler).__name__,
            )
        items.put(result)
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
