"""Tab 3, Denoise & attend: stream a generation, then explore its cross-attention maps, film and Q/K/V shapes."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from types import SimpleNamespace
from typing import NamedTuple
from urllib.parse import urlencode

import gradio as gr
import numpy as np

from demo.common import IMAGE_FORMAT, MODEL_CONCURRENCY, TAB_IDS, explain, export_dir, lesson, user_errors
from explain.capture.film import noisy_image
from explain.clip.vocabulary import unknown_words_message
from explain.engine.requests import MAX_GUIDANCE, MAX_STEPS, SCHEDULER_CHOICES, GenerationRequest, finite, whole
from explain.engine.run import RunProgress
from explain.engine.session import StepUpdate, generate, generate_stream
from explain.io.exports import export_film_gif, export_grid_png, export_maps_npz, export_settings_json
from explain.maps.aggregation import NORMALIZATIONS
from explain.maps.views import layer_shapes, word_maps

__all__ = ["AttendTab", "DEFAULTS"]

DEFAULTS = {
    "prompt": "a big red circle on the left and a small blue triangle on the right",
    "negative": "",
    "seed": 0,
    "steps": 20,
    "guidance": 7.5,
    "scheduler": "default",
    "height": None,
    "width": None,
}
PRESETS = [
    ["a big red circle on the left and a small blue triangle on the right", "", 0, 15, 7.5, "default"],
    ["a yellow star at the top and a purple heart at the bottom", "", 3, 15, 7.5, "default"],
    ["a big green square in the center at night", "", 5, 15, 7.5, "DDIM"],
]
PRESET_LABELS = ["red circle + blue triangle", "yellow star + purple heart", "green square at night (DDIM)"]
PART_CHOICES = [("down blocks", "down"), ("middle block", "mid"), ("up blocks", "up")]
DOWNSAMPLE_CHOICES = [("full latent size", 1), ("½", 2), ("¼", 4), ("⅛", 8)]
NORMALIZATION_CHOICES = [
    ("min-max: each map on its own", "minmax"),
    ("softmax: which word wins at each pixel", "softmax"),
    ("absolute: one scale for all words", "absolute"),
]
STOP_CONCURRENCY = "control"
FUNCTION_WORDS = ("a", "an", "the", "and", "on", "at", "in", "of")  # hidden by "content words only"
RECENT_RESULTS = 4  # preset results kept for the restore step (a few MB each on the embedded model)  # Stop must not wait behind the run it stops


def _parsed(value):
    """Numeric text as a float (a raw API client may send ``"3"``); anything else as it came."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _number(value, name: str) -> float:
    """``value`` as a finite float (:func:`explain.engine.requests.finite`), or a gr.Error naming the field."""
    with user_errors():
        return finite(name, _parsed(value))


def _whole(value, name: str) -> int:
    """``value`` as an int (:func:`explain.engine.requests.whole`), or a gr.Error naming the field."""
    with user_errors():
        return whole(name, _parsed(value))


@dataclass(frozen=True)
class MapQuery:
    """The map controls of the tab (the components in ``view_inputs`` after the state), read once per event."""

    step: object = None
    all_steps: bool = True
    parts: tuple = ()
    downsamples: tuple = ()
    heads: tuple = ()
    normalization: str = "minmax"
    threshold: float = 0
    content_only: bool = True


class Generated(NamedTuple):
    """What a finished generation sends to the tab's components (``gen_outputs``, in order)."""

    image: object
    status: str
    state: object
    gallery: list
    pair: list
    film: str
    step: dict
    heads: dict
    layer: dict
    qkv: str


class MapOutputs(NamedTuple):
    """The map views of one query (``view_outputs``, in order)."""

    gallery: list
    masks: list
    pair: list
    info: str


class ExportFiles(NamedTuple):
    """The download buttons' files and the permalink."""

    grid: str
    film: str
    npz: str
    settings: str
    link: str


def _fmt_shape(*dims: int) -> str:
    return "[" + " × ".join(str(d) for d in dims) + "]"


class AttendTab:
    """Handlers and layout of the Denoise & attend tab. Per-session results live in a ``gr.State``."""

    def __init__(self, engine):
        self.engine = engine
        self.guidance = engine.recommended_guidance(DEFAULTS["guidance"])  # e.g. 5 for the embedded model
        self._stops: dict[str, tuple[threading.Event, object]] = {}  # session -> (stop flag, RunProgress) of its run
        self._stops_lock = threading.Lock()
        self._recent: dict = {}  # request -> result of preset runs, so a preset's restore need not run it twice
        self._recent_lock = threading.Lock()

    # -- generation -------------------------------------------------------------------------------------------------
    def _request(self, prompt, negative, seed, steps, guidance, scheduler, height=None, width=None):
        """The request from the form's values; every field is checked again by ``GenerationRequest.validate``."""

        return GenerationRequest(
            prompt=prompt or "",
            negative=negative or "",
            seed=_whole(seed, "seed"),
            steps=_whole(steps, "steps"),
            guidance=_number(guidance, "guidance"),
            scheduler=scheduler or "default",
            height=_whole(height, "height") if height else None,
            width=_whole(width, "width") if width else None,
        )

    def generate(
        self,
        prompt,
        negative,
        seed,
        steps,
        guidance,
        scheduler,
        height,
        width,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008  (Gradio injects the tracker through this default)
    ):
        """Stream x̂₀ previews while denoising; finish with the image, the word maps and the film."""

        req = self._request(prompt, negative, seed, steps, guidance, scheduler, height, width)
        pipe = self.engine.pipeline()
        with user_errors():
            req.validate(pipe)
        stop, run = threading.Event(), RunProgress()
        session = getattr(request, "session_hash", None) or "local"
        with self._stops_lock:
            self._stops[session] = (stop, run)
        # While it runs: the previous run's maps, pair and film are cleared (they belong to the previous picture).
        # A value, not gr.skip(): Gradio rebuilds a component per session on every skip, and the files of a rebuilt
        # component escape delete_cache (they would pile up in the cache folder for the whole class).
        during = (gr.skip(), None, None, None, gr.skip(), gr.skip(), gr.skip(), gr.skip())
        stream = generate_stream(
            pipe, req, stop, lock=self.engine.lock, preview=self.engine.latent_preview(), progress=run
        )
        try:
            with user_errors():
                for item in stream:
                    if isinstance(item, StepUpdate):
                        progress((item.step + 1, item.total), desc="denoising", unit="steps")
                        what = "predicted clean image x̂₀" if item.source == "x0" else "noisy latent x_t"
                        status = (
                            f"Step **{item.step + 1} / {item.total}** (t = {item.timestep:.0f}), "
                            f"{item.elapsed:.1f} s. Showing the {what}."
                        )
                        yield (item.preview, status, *during)
                    else:
                        yield self._finish(item)
        finally:
            stream.close()  # when Stop's `cancels=` closed this generator early, this sets `stop`: the run ends
            # A run that ended on its own is forgotten; a stopped or cancelled one stays until the session's next
            # run, so a Stop that arrives after the cancel still answers that the run is stopping.
            with self._stops_lock:
                if self._stops.get(session, (None,))[0] is stop and not stop.is_set():
                    del self._stops[session]

    def _finish(self, result) -> Generated:
        """Final outputs of a generation: image, status, state, gallery, x_t/x̂₀ pair, film, control updates."""

        stopped = f" **Stopped early** after {result.steps_done} steps." if result.interrupted else ""
        status = (
            f"Done: {result.steps_done} steps with {result.scheduler} in {result.seconds:.1f} s "
            f"(seed {result.request.seed}, guidance {result.request.guidance:g}).{stopped}"
        )
        if result.unknown_words:  # never silent: the model has no meaning for these words
            status += f"\n\n⚠️ {unknown_words_message(result.unknown_words)} The presets below use only words it knows."
        view = self._map_view(result, MapQuery())
        film = export_film_gif(result, export_dir() / "film.gif", preview=self.engine.latent_preview())
        last = max(0, result.captured.n_steps - 1)
        heads = min(result.captured.layer_heads.values())
        layers = list(result.captured.layer_names)
        return Generated(
            result.image,
            status,
            result,
            self._gallery(view),
            self._film_pair(result, last),
            str(film),
            # a slider needs minimum < maximum: a one-step run gets 0..1, fixed at 0
            gr.update(maximum=max(last, 1), value=last, interactive=last > 0),
            gr.update(choices=[str(h) for h in range(heads)], value=[]),
            gr.update(choices=layers, value=layers[0]),
            self.qkv(result, layers[0]),
        )

    def progress(self, session: str):
        """The live :class:`explain.engine.run.RunProgress` of a session's running run, or of its last stopped or
        cancelled one (None when there is none)."""
        with self._stops_lock:
            entry = self._stops.get(session)
        return None if entry is None else entry[1]

    def stop(self, request: gr.Request) -> str:
        """Ask this session's running generation to stop after the current step (and say which step that is)."""
        session = getattr(request, "session_hash", None) or "local"
        with self._stops_lock:
            entry = self._stops.get(session)
        if entry is None:
            return "Nothing is running."
        event, run = entry
        event.set()
        where = f" (step {run.steps_done + 1} of {run.total})" if run.total else " (before the first step)"
        return f"⏹ Stopped: the run ends after the current step{where}. Press **Generate** to run again."

    # -- exploring a result -----------------------------------------------------------------------------------------
    @staticmethod
    def _need(result):
        if result is None:
            raise gr.Error("Generate an image first (or click a preset): the maps come from a generation.")
        return result

    def _map_view(self, result, query: MapQuery):
        # step and heads are re-checked here: a generation rebuilds their components (new range, new choices)
        steps = None if query.all_steps or query.step is None else [_whole(query.step, "step")]
        head_list = [_whole(h, "head") for h in query.heads] if query.heads else None
        with user_errors():
            return word_maps(
                result,
                steps=steps,
                parts=query.parts or None,
                downsamples=[int(d) for d in query.downsamples] if query.downsamples else None,
                heads=head_list,
                normalization=query.normalization or "minmax",
                threshold=float(query.threshold) if query.threshold else None,
                skip_words=FUNCTION_WORDS if query.content_only else (),
            )

    @staticmethod
    def _gallery(view, masks: bool = False) -> list[tuple[np.ndarray, str]]:
        images = view.masks if masks else view.overlays
        return [(image, f"“{word}”") for image, word in zip(images or (), view.words, strict=False)]

    def _film_pair(self, result, step: int) -> list[tuple[np.ndarray, str]]:
        """x_t (the noisy sample after the step, linear latent preview) and x̂₀ at ``step``."""
        frames = result.frames
        frame = frames[min(max(int(step), 0), len(frames) - 1)]
        noisy = noisy_image(frame, self.engine.latent_preview(), result.size)
        shown = "x̂₀ (predicted clean image)" if frame.source == "x0" else "x_t (no x̂₀ from this scheduler)"
        return [(noisy, f"x_t after step {frame.step + 1}"), (frame.image[0], shown)]

    def maps(
        self, result, step, all_steps, parts, downsamples, heads, normalization, threshold, content_only=True
    ) -> MapOutputs:
        """Per-word overlays (and masks above the threshold) for the chosen steps, layers, heads and normalisation."""
        result = self._need(result)
        query = MapQuery(step, all_steps, parts, downsamples, heads, normalization, threshold, content_only)
        view = self._map_view(result, query)
        when = "all steps" if all_steps else f"step {int(step) + 1} of {result.captured.n_steps}"
        info = (
            f"Showing **{when}**, {len(view.layers)} of {len(result.captured.layer_names)} layers, "
            f"{'all heads' if view.heads is None else 'heads ' + ', '.join(map(str, view.heads))}, "
            f"{normalization} normalisation."
        )
        masks = self._gallery(view, masks=True) if view.masks is not None else []
        pair = self._film_pair(result, int(step) if not all_steps else len(result.frames) - 1)
        return MapOutputs(self._gallery(view), masks, pair, info)

    def maps_at_step(
        self, result, step, all_steps, parts, downsamples, heads, normalization, threshold, content_only=True
    ):
        """Moving the step slider shows that one step (and unticks "all steps")."""
        return (
            *self.maps(result, step, False, parts, downsamples, heads, normalization, threshold, content_only),
            False,
        )

    def qkv(self, result, layer: str) -> str:
        """Q, K, V and attention shapes of one cross-attention layer, with this run's numbers."""

        result = self._need(result)
        height, width = result.size
        with user_errors():
            s = layer_shapes(self.engine.pipeline(), layer, height, width)
        h, w = s.feature_hw
        batch = result.captured.batch_size * (2 if result.captured.guided else 1)  # the U-Net batch of this run
        return "\n".join(
            [
                f"**`{s.name}`**: {s.heads} heads × {s.head_dim} dims; feature map {h} × {w} = {s.n_queries} positions.",
                "",
                "| tensor | from | shape |",
                "|---|---|---|",
                f"| image features | U-Net at this layer | {_fmt_shape(s.n_queries, s.query_dim)} |",
                f"| **Q** = features · W_q | W_q {_fmt_shape(s.query_dim, s.inner_dim)} | **{_fmt_shape(s.n_queries, s.inner_dim)}** |",
                f"| text embeddings | CLIP, {s.text_len} slots | {_fmt_shape(s.text_len, s.text_dim)} |",
                f"| **K** = text · W_k | W_k {_fmt_shape(s.text_dim, s.inner_dim)} | **{_fmt_shape(s.text_len, s.inner_dim)}** |",
                f"| **V** = text · W_v | W_v {_fmt_shape(s.text_dim, s.value_dim)} | **{_fmt_shape(s.text_len, s.value_dim)}** |",
                f"| per head | split {s.inner_dim} = {s.heads} × {s.head_dim} | Q_h {_fmt_shape(s.n_queries, s.head_dim)}, K_h {_fmt_shape(s.text_len, s.head_dim)} |",
                f"| **A** = softmax(Q_h K_hᵀ / √{s.head_dim}) | one row per position | **{_fmt_shape(s.heads, s.n_queries, s.text_len)}** |",
                f"| out = A V, heads joined, · W_o | W_o {_fmt_shape(s.value_dim, s.out_dim)} | {_fmt_shape(s.n_queries, s.out_dim)} |",
                "",
                f"With guidance on, every tensor has a batch of {batch} in front ([negative, prompt]); the maps show the prompt half.",
            ]
        )

    def export(
        self,
        result,
        step,
        all_steps,
        parts,
        downsamples,
        heads,
        normalization,
        threshold,
        content_only,
        request: gr.Request,
    ):
        """Files of the current view: heat-map grid (PNG), film (GIF), raw maps (NPZ), settings (JSON)."""

        result = self._need(result)
        query = MapQuery(step, all_steps, parts, downsamples, heads, normalization, threshold, content_only)
        view = self._map_view(result, query)
        folder = export_dir()
        grid = export_grid_png(
            result, view, folder / "heatmaps.png", title=f"“{result.request.prompt}”, seed {result.request.seed}"
        )
        film = export_film_gif(result, folder / "film.gif")
        npz = export_maps_npz(result, folder / "maps.npz")
        settings = export_settings_json(result, folder / "settings.json", model=self.engine.model)
        link = self.permalink(*self._request_fields(result), request)
        return ExportFiles(str(grid), str(film), str(npz), str(settings), link)

    @staticmethod
    def _request_fields(result) -> list:
        r = result.request
        return [r.prompt, r.negative, r.seed, r.steps, r.guidance, r.scheduler, r.height, r.width]

    # -- presets and permalinks ---------------------------------------------------------------------------------------
    def preset(self, prompt, negative, seed, steps, guidance, scheduler):
        """A whole generation without streaming (what the lazily cached presets store)."""

        req = self._request(prompt, negative, seed, steps, guidance, scheduler)
        with user_errors():
            result = generate(self.engine.pipeline(), req, lock=self.engine.lock, preview=self.engine.latent_preview())
        with self._recent_lock:
            self._recent[req] = result
            while len(self._recent) > RECENT_RESULTS:
                self._recent.pop(next(iter(self._recent)))
        image, status, _state, gallery, pair, film, *_ = self._finish(result)
        return image, status, gallery, pair, film

    def restore(self, prompt, negative, seed, steps, guidance, scheduler, height, width, result):
        """After a cached preset: rebuild this session's explorable result (the cache holds only pictures)."""

        req = self._request(prompt, negative, seed, steps, guidance, scheduler, height, width)
        if result is not None and result.request == req:
            return (gr.skip(),) * 5
        with self._recent_lock:
            result = self._recent.get(req)
        if result is None:  # the preset came from the cache: run it once more (deterministic: same pictures)
            with user_errors():
                result = generate(
                    self.engine.pipeline(), req, lock=self.engine.lock, preview=self.engine.latent_preview()
                )
        finished = self._finish(result)
        return result, finished[6], finished[7], finished[8], finished[9]

    def from_url(self, request: gr.Request):
        """Settings from the page's query string (?prompt=...&seed=...&tab=attend), for shareable links."""

        query = dict(request.query_params) if request is not None else {}

        def number(key, cast):
            try:
                return cast(query[key]) if key in query else gr.skip()
            except ValueError:
                gr.Warning(f"Ignoring ?{key}={query[key]!r} from the link: not a number.")
                return gr.skip()

        scheduler = query.get("scheduler")
        tab = query.get("tab") or ("attend" if "prompt" in query else None)
        if tab is not None and tab not in TAB_IDS:
            gr.Warning(f"Ignoring ?tab={tab!r} from the link: tabs are {', '.join(TAB_IDS)}.")
            tab = None
        return (
            query.get("prompt", gr.skip()),
            query.get("negative", gr.skip()),
            number("seed", int),
            number("steps", int),
            number("guidance", float),
            scheduler if scheduler in SCHEDULER_CHOICES else gr.skip(),
            number("height", int),
            number("width", int),
            gr.Tabs(selected=tab) if tab else gr.skip(),
        )

    @staticmethod
    def permalink(
        prompt, negative, seed, steps, guidance, scheduler, height, width, request: gr.Request | None = None
    ) -> str:
        """A link that reopens the app with these settings."""
        fields = {"tab": "attend", "prompt": prompt, "negative": negative, "seed": seed, "steps": steps}
        fields |= {"guidance": guidance, "scheduler": scheduler, "height": height, "width": width}
        query = urlencode({k: v for k, v in fields.items() if v not in (None, "")})
        base = ""
        if request is not None:
            referer = request.headers.get("referer") if hasattr(request, "headers") else None
            base = (referer or "").split("?")[0]
        return f"{base}?{query}"

    # -- layout -----------------------------------------------------------------------------------------------------
    def build(self, pipe_limits) -> dict:
        """Create the tab (call inside ``gr.Tab``); returns the inputs that permalinks restore."""
        assert {v for _, v in NORMALIZATION_CHOICES} == set(NORMALIZATIONS)  # noqa: S101  (choices follow explain/)
        lesson("attend")
        ui = SimpleNamespace(state=gr.State(None))
        vars(ui).update(self._deferred_outputs())  # shown further down, but the presets (next to the inputs) need them
        vars(ui).update(self._build_form(ui, pipe_limits))
        vars(ui).update(self._build_maps(ui))
        vars(ui).update(self._build_film_and_qkv(ui))
        ui.gen_inputs = [ui.prompt, ui.negative, ui.seed, ui.steps, ui.guidance, ui.scheduler, ui.height, ui.width]
        ui.gen_outputs = [ui.image, ui.status, ui.state, ui.gallery, ui.pair, ui.film, ui.step, ui.heads, ui.layer]
        ui.gen_outputs.append(ui.qkv_md)
        ui.view_inputs = [ui.state, ui.step, ui.all_steps, ui.parts, ui.downsamples, ui.heads]
        ui.view_inputs += [ui.normalization, ui.threshold, ui.content_only]
        self._wire_generation(ui)
        self._wire_views(ui)
        self._wire_presets(ui)
        return {"inputs": ui.gen_inputs}

    @staticmethod
    def _deferred_outputs() -> dict:
        """The gallery, x_t/x̂₀ pair and film: created first (render=False), rendered in their own sections."""
        gallery = gr.Gallery(
            elem_classes=["pixels"],
            label="Cross-attention per word (red = strong)",
            elem_id="attend-gallery",
            columns=4,
            height="auto",
            format=IMAGE_FORMAT,
            object_fit="contain",
            render=False,
        )
        pair = gr.Gallery(
            elem_classes=["pixels"],
            label="At the chosen step: noisy sample x_t and predicted clean image x̂₀",
            columns=2,
            height=300,
            format=IMAGE_FORMAT,
            object_fit="contain",
            render=False,
        )
        film = gr.Image(
            label="Film: x̂₀ and every word's map, step by step (GIF)",
            type="filepath",
            height=300,
            format="gif",
            interactive=False,
            render=False,
        )
        return dict(gallery=gallery, pair=pair, film=film)

    def _build_form(self, ui, pipe_limits) -> dict:
        """The generation form, the live image and the presets."""
        multiple, default_hw, max_side = pipe_limits
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(DEFAULTS["prompt"], label="Prompt", lines=2, elem_id="attend-prompt")
                negative = gr.Textbox(
                    "", label="Negative prompt (what to steer away from; the 'unconditional' branch)"
                )
                with gr.Row():
                    seed = gr.Number(DEFAULTS["seed"], label="Seed", precision=0, minimum=0)
                    steps = gr.Slider(
                        1, MAX_STEPS, value=DEFAULTS["steps"], step=1, label="Steps", elem_id="attend-steps"
                    )
                    guidance = gr.Slider(0, MAX_GUIDANCE, value=self.guidance, step=0.5, label="Guidance scale")
                with gr.Row():
                    scheduler = gr.Dropdown(list(SCHEDULER_CHOICES), value="default", label="Scheduler (sampler)")
                    height = gr.Slider(multiple, max_side, value=default_hw[0], step=multiple, label="Height (px)")
                    width = gr.Slider(multiple, max_side, value=default_hw[1], step=multiple, label="Width (px)")
                with gr.Row():
                    gen_btn = gr.Button("Generate", variant="primary", size="lg", elem_id="attend-generate")
                    stop_btn = gr.Button("Stop", variant="stop", size="lg", elem_id="attend-stop")
                status = gr.Markdown("Press **Generate**, or click a preset.", elem_id="status")
                stop_note = gr.Markdown(elem_id="stop-note")  # Stop answers here: `status` belongs to the run
            with gr.Column(scale=2):
                image = gr.Image(
                    label="Image (live: the model's current guess while denoising)",
                    elem_id="attend-image",
                    format=IMAGE_FORMAT,
                    height=380,
                    elem_classes=["pixels"],
                    interactive=False,
                )
                examples = self._presets(prompt, negative, seed, steps, guidance, scheduler, image, status, ui)
            with gr.Column(scale=1):
                explain(
                    "While it runs you see the model's **current guess of the final image** (x̂₀) after each step: "
                    "blurry blobs first, details last. **Stop** ends the run after the current step. Same seed and "
                    "settings → the same picture, every time."
                )
        return dict(
            prompt=prompt,
            negative=negative,
            seed=seed,
            steps=steps,
            guidance=guidance,
            scheduler=scheduler,
            height=height,
            width=width,
            gen_btn=gen_btn,
            stop_btn=stop_btn,
            status=status,
            stop_note=stop_note,
            image=image,
            examples=examples,
        )

    def _presets(self, prompt, negative, seed, steps, guidance, scheduler, image, status, ui) -> gr.Examples:
        """One-click presets, run without streaming and cached lazily (:meth:`preset`)."""
        return gr.Examples(
            [[*row[:4], self.guidance, *row[5:]] for row in PRESETS],  # the model's own guidance
            inputs=[prompt, negative, seed, steps, guidance, scheduler],
            outputs=[image, status, ui.gallery, ui.pair, ui.film],
            fn=self.preset,
            cache_examples=True,
            cache_mode="lazy",
            label="Presets (one click)",
            example_labels=PRESET_LABELS,
        )

    @staticmethod
    def _build_maps(ui) -> dict:
        """Where each word looks: the per-word gallery, masks and the map controls."""
        gallery = ui.gallery
        gr.Markdown("### Where each word looks")
        with gr.Row():
            with gr.Column(scale=3):
                gallery.render()
                masks = gr.Gallery(
                    elem_classes=["pixels"],
                    label="Masks: pixels above the threshold",
                    columns=4,
                    height="auto",
                    format=IMAGE_FORMAT,
                    object_fit="contain",
                )
            with gr.Column(scale=1):
                explain(
                    "Each picture is one word's attention, averaged over the chosen layers, heads and steps, laid over "
                    "the image. 'circle' should light up the circle, 'left' the left side. Move the **step** slider: "
                    "the layout is decided in the first steps."
                )
        with gr.Row():
            step = gr.Slider(
                0,
                max(0, DEFAULTS["steps"] - 1),
                value=0,
                step=1,
                label="Step (0 = first, most noisy)",
                elem_id="attend-step",
                scale=3,
            )
            all_steps = gr.Checkbox(True, label="Average over all steps", scale=1)
        with gr.Row():
            parts = gr.CheckboxGroup(PART_CHOICES, value=[], label="U-Net parts (none ticked = all)")
            downsamples = gr.CheckboxGroup(DOWNSAMPLE_CHOICES, value=[], label="Feature-map size (none = all)")
            heads = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True, label="Heads (empty = all)")
        with gr.Row():
            normalization = gr.Radio(NORMALIZATION_CHOICES, value="minmax", label="Normalisation")
            threshold = gr.Slider(0, 1, value=0.4, step=0.05, label="Mask threshold (0 = no mask)")
            content_only = gr.Checkbox(True, label="Content words only (hide a, the, on, and …)")
        map_info = gr.Markdown(elem_id="attend-map-info")
        return dict(
            masks=masks,
            step=step,
            all_steps=all_steps,
            parts=parts,
            downsamples=downsamples,
            heads=heads,
            normalization=normalization,
            threshold=threshold,
            content_only=content_only,
            map_info=map_info,
        )

    @staticmethod
    def _build_film_and_qkv(ui) -> dict:
        """The film, the Q/K/V table of one layer and the downloads."""
        pair, film = ui.pair, ui.film
        gr.Markdown("### The denoising film and the attention arithmetic")
        with gr.Row():
            with gr.Column(scale=2):
                pair.render()
            with gr.Column(scale=2):
                film.render()
            with gr.Column(scale=1):
                explain(
                    "Left: the noisy sample the sampler holds after the step, and the clean image the model "
                    "predicts from it. Right: the whole run as an animation, each word's map beside x̂₀."
                )
        with gr.Row():
            with gr.Column(scale=3):
                layer = gr.Dropdown([], label="Cross-attention layer", allow_custom_value=True, elem_id="attend-layer")
                qkv_md = gr.Markdown()
            with gr.Column(scale=1):
                explain(
                    "Q comes from the **image** (one row per position of this layer's feature map), K and V from the "
                    "**text** (one row per token slot). A = softmax(QKᵀ/√d) has one row per position and one column "
                    "per token: a column, folded back to the grid, is a heat map."
                )
        with gr.Row():
            export_btn = gr.Button("Prepare downloads")
            grid_file = gr.DownloadButton("Heat-map grid (PNG)", value=None)
            film_file = gr.DownloadButton("Film (GIF)", value=None)
            npz_file = gr.DownloadButton("Maps (NPZ)", value=None)
            json_file = gr.DownloadButton("Settings (JSON)", value=None)
        link = gr.Textbox(label="Permalink: open it to get these settings back", buttons=["copy"], interactive=False)

        return dict(
            layer=layer,
            qkv_md=qkv_md,
            export_btn=export_btn,
            grid_file=grid_file,
            film_file=film_file,
            npz_file=npz_file,
            json_file=json_file,
            link=link,
        )

    def _wire_generation(self, ui) -> None:
        """Generate (streamed) and Stop."""
        gen_event = ui.gen_btn.click(
            self.generate,
            ui.gen_inputs,
            ui.gen_outputs,
            api_name="generate",
            concurrency_id=MODEL_CONCURRENCY,
            concurrency_limit=1,
        )
        ui.prompt.submit(
            self.generate,
            ui.gen_inputs,
            ui.gen_outputs,
            api_visibility="undocumented",
            concurrency_id=MODEL_CONCURRENCY,
        )
        ui.gen_btn.click(lambda: "", None, [ui.stop_note], api_visibility="private", queue=False)
        ui.stop_btn.click(
            self.stop,
            None,
            [ui.stop_note],
            cancels=[gen_event],
            api_name="stop",
            concurrency_id=STOP_CONCURRENCY,
            concurrency_limit=None,
        )

    def _wire_views(self, ui) -> None:
        """Map controls, the step slider, the Q/K/V layer, downloads and the permalink."""
        view_outputs = [ui.gallery, ui.masks, ui.pair, ui.map_info]
        gr.on(
            [
                ui.all_steps.input,
                ui.parts.input,
                ui.downsamples.input,
                ui.heads.input,
                ui.normalization.input,
                ui.threshold.release,
                ui.content_only.input,
            ],
            self.maps,
            ui.view_inputs,
            view_outputs,
            api_name="maps",
        )
        ui.step.release(
            self.maps_at_step, ui.view_inputs, [*view_outputs, ui.all_steps], api_visibility="undocumented"
        )
        ui.layer.input(self.qkv, [ui.state, ui.layer], [ui.qkv_md], api_name="qkv")
        ui.export_btn.click(
            self.export,
            ui.view_inputs,
            [ui.grid_file, ui.film_file, ui.npz_file, ui.json_file, ui.link],
            api_name="export",
        )
        gr.on(
            [
                ui.gen_btn.click,
                ui.prompt.blur,
                ui.negative.blur,
                ui.seed.change,
                ui.steps.release,
                ui.guidance.release,
                ui.scheduler.input,
            ],
            self.permalink,
            ui.gen_inputs,
            [ui.link],
            api_name="permalink",
        )

    def _wire_presets(self, ui) -> None:
        """After a cached preset: rebuild the session's explorable result, then its permalink (registered last)."""
        ui.examples.cache_event.then(
            self.restore,
            ui.gen_inputs + [ui.state],
            [ui.state, ui.step, ui.heads, ui.layer, ui.qkv_md],
            api_visibility="private",
            concurrency_id=MODEL_CONCURRENCY,
        ).then(self.permalink, ui.gen_inputs, [ui.link], api_visibility="private")
