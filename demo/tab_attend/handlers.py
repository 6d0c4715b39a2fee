"""The Denoise & attend tab's handlers: plain methods of :class:`AttendTab`, testable without a server."""

from __future__ import annotations

import threading
from typing import NamedTuple
from urllib.parse import urlencode

import gradio as gr
import numpy as np

from demo.common import TAB_IDS, export_dir, user_errors
from demo.tab_attend import layout, views
from demo.tab_attend.classroom import Classroom
from demo.tab_attend.forms import (
    CROSS_ATTENTION,
    DEFAULTS,
    FUNCTION_WORDS,
    RECENT_RESULTS,
    ExportFiles,
    Generated,
    MapOutputs,
    MapQuery,
    MapsAtStep,
    PresetOutputs,
    Restored,
    UrlSettings,
    form_request,
    request_fields,
    url_number,
    whole_number,
)
from explain.capture.film import noisy_image
from explain.engine.requests import SCHEDULER_CHOICES, GenerationRequest
from explain.engine.run import RunProgress
from explain.engine.session import StepUpdate, generate, generate_stream
from explain.io.exports import export_film_gif, export_grid_png, export_maps_npz, export_settings_json
from explain.maps.joint_views import joint_layer_shapes
from explain.maps.views import MapView, layer_shapes, word_maps

__all__ = ["AttendTab"]


def _session(request) -> str:
    return getattr(request, "session_hash", None) or "local"


class _Running(NamedTuple):
    """A session's run: the flag that stops it and its live progress."""

    stop: threading.Event
    progress: RunProgress


class AttendTab:
    """Handlers and layout of the Denoise & attend tab. Per-session results live in a ``gr.State``."""

    def __init__(self, engine):
        self.engine = engine
        self.guidance = engine.recommended_guidance(DEFAULTS["guidance"])  # e.g. 5 for the embedded model
        self.world = engine.world()  # the prompts and presets of the model's world (explain.world.content)
        self._stops: dict[str, _Running] = {}  # session -> its running (or last stopped) run
        self._stops_lock = threading.Lock()
        self._recent: dict = {}  # request -> result of preset runs, so a preset's restore need not run it twice
        self._recent_lock = threading.Lock()
        self.classroom = Classroom(self)  # "Score the map" and "Guidance taken apart"

    def build(self, pipe_limits, joint: bool = False) -> dict:
        """Create the tab (call inside ``gr.Tab``); returns the inputs that permalinks restore. ``joint``: the model
        is SD3 / Flux (joint attention: the kind-of-map control shows)."""
        return layout.build(self, pipe_limits, joint)

    # -- generation -------------------------------------------------------------------------------------------------
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

        req = form_request(prompt, negative, seed, steps, guidance, scheduler, height, width)
        pipe = self.engine.pipeline()
        with user_errors():
            req.validate(pipe)
        session, (stop, run) = self.start_run(request)
        stream = generate_stream(
            pipe, req, stop, lock=self.engine.lock, preview=self.engine.latent_preview(), progress=run
        )
        try:
            with user_errors():
                for item in stream:
                    if isinstance(item, StepUpdate):
                        progress((item.step + 1, item.total), desc="denoising", unit="steps")
                        yield Generated.streaming(item.preview, views.step_status(item))
                    else:
                        yield self._finish(item)
        finally:
            stream.close()  # when Stop's `cancels=` closed this generator early, this sets `stop`: the run ends
            self.end_run(session, stop)

    def start_run(self, request) -> tuple[str, _Running]:
        """A new run of the request's session: its stop flag and progress, which the tab's Stop finds."""
        session, running = _session(request), _Running(threading.Event(), RunProgress())
        with self._stops_lock:
            self._stops[session] = running
        return session, running

    def end_run(self, session: str, stop: threading.Event) -> None:
        """Forget a run that ended on its own.

        A stopped or cancelled one stays until the session's next run, so a Stop that arrives after the cancel
        still answers that the run is stopping.
        """
        with self._stops_lock:
            entry = self._stops.get(session)
            if entry is not None and entry.stop is stop and not stop.is_set():
                del self._stops[session]

    def _finish(self, result) -> Generated:
        """Final outputs of a generation: image, status, state, gallery, x_t/x̂₀ pair, film, control updates."""

        joint = result.joint is not None  # SD3 / Flux: joint maps, averaged over steps and heads, no film
        view = self._map_view(result, MapQuery(kind="text" if joint else CROSS_ATTENTION))
        preview = None if joint else self.engine.latent_preview()
        film = export_film_gif(result, export_dir() / "film.gif", preview=preview)
        last = 0 if joint else max(0, result.captured.n_steps - 1)
        layers = list(result.joint.maps.layer_names if joint else result.captured.layer_names)
        heads = 0 if joint else result.captured.shared_heads
        return Generated(
            image=result.image,
            status=views.done_status(result, self.world.suggestion),
            state=result,
            gallery=views.word_gallery(view),
            pair=self._film_pair(result, last),
            film=None if film is None else str(film),
            # a slider needs minimum < maximum: a one-step run gets 0..1, fixed at 0
            step=gr.update(maximum=max(last, 1), value=last, interactive=last > 0),
            heads=gr.update(choices=[str(h) for h in range(heads)], value=[], interactive=heads > 0),
            layer=gr.update(choices=layers, value=layers[0]),
            qkv=self.qkv(result, layers[0]),
        )

    def progress(self, session: str):
        """The live :class:`explain.engine.run.RunProgress` of a session's running run, or of its last stopped or
        cancelled one (None when there is none)."""
        with self._stops_lock:
            entry = self._stops.get(session)
        return None if entry is None else entry.progress

    def stop(self, request: gr.Request) -> str:
        """Ask this session's running generation to stop after the current step (and say which step that is)."""
        with self._stops_lock:
            entry = self._stops.get(_session(request))
        if entry is None:
            return "Nothing is running."
        entry.stop.set()
        run = entry.progress
        where = f" (step {run.steps_done + 1} of {run.total})" if run.total else " (before the first step)"
        return f"⏹ Stopped: the run ends after the current step{where}. Press **Generate** to run again."

    # -- exploring a result -----------------------------------------------------------------------------------------
    @staticmethod
    def _need(result):
        if result is None:
            raise gr.Error("Generate an image first (or click a preset): the maps come from a generation.")
        return result

    @staticmethod
    def _map_view(result, query: MapQuery) -> MapView:
        if result.joint is not None:  # SD3 / Flux: one token grid, steps and heads averaged while recording
            with user_errors():
                return word_maps(
                    result,
                    kind=query.joint_kind or "text",
                    normalization=query.normalization or "minmax",
                    threshold=float(query.threshold) if query.threshold else None,
                    skip_words=FUNCTION_WORDS if query.content_only else (),
                )
        # step and heads are re-checked here: a generation rebuilds their components (new range, new choices)
        steps = None if query.all_steps or query.step is None else [whole_number(query.step, "step")]
        head_list = [whole_number(h, "head") for h in query.heads] if query.heads else None
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

    def _film_pair(self, result, step: int) -> list[tuple[np.ndarray, str]]:
        """x_t (the noisy sample after the step, linear latent preview) and x̂₀ at ``step``."""
        frames = result.frames
        if not frames:  # SD3 / Flux record no film (result.notes says why)
            return []
        frame = frames[min(max(int(step), 0), len(frames) - 1)]
        noisy = noisy_image(frame, self.engine.latent_preview(), result.size)
        shown = "x̂₀ (predicted clean image)" if frame.source == "x0" else "x_t (no x̂₀ from this scheduler)"
        return [(noisy, f"x_t after step {frame.step + 1}"), (frame.image[0], shown)]

    def maps(
        self,
        result,
        step,
        all_steps,
        parts,
        downsamples,
        heads,
        normalization,
        threshold,
        content_only=True,
        kind=CROSS_ATTENTION,
    ) -> MapOutputs:
        """Per-word overlays (and masks above the threshold) for the chosen steps, layers, heads and normalisation;
        on SD3 / Flux, of the chosen kind of map."""
        result = self._need(result)
        query = MapQuery(step, all_steps, parts, downsamples, heads, normalization, threshold, content_only, kind)
        view = self._map_view(result, query)
        masks = views.word_gallery(view, masks=True) if view.masks is not None else []
        pair = self._film_pair(result, int(step) if not all_steps and step is not None else len(result.frames) - 1)
        return MapOutputs(views.word_gallery(view), masks, pair, views.map_info(result, view, query))

    def maps_at_step(self, result, step, all_steps, *controls) -> MapsAtStep:
        """Moving the step slider shows that one step (and unticks "all steps"); ``controls``: the rest of
        :meth:`maps`' parameters."""
        shown = self.maps(result, step, False, *controls)
        return MapsAtStep(*shown, all_steps=False)

    def qkv(self, result, layer: str) -> str:
        """Q, K, V and attention shapes of one cross-attention layer, with this run's numbers."""

        result = self._need(result)
        height, width = result.size
        with user_errors():
            if result.joint is not None:
                return views.joint_qkv_table(joint_layer_shapes(self.engine.pipeline(), layer, result.joint))
            shapes = layer_shapes(self.engine.pipeline(), layer, height, width)
        return views.qkv_table(shapes, result.captured.unet_batch_size)

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
        kind,
        request: gr.Request,
    ):
        """Files of the current view: heat-map grid (PNG), film (GIF; none on SD3 / Flux), raw maps (NPZ), settings
        (JSON)."""

        result = self._need(result)
        query = MapQuery(step, all_steps, parts, downsamples, heads, normalization, threshold, content_only, kind)
        view = self._map_view(result, query)
        folder = export_dir()
        grid = export_grid_png(
            result, view, folder / "heatmaps.png", title=f"“{result.request.prompt}”, seed {result.request.seed}"
        )
        film = export_film_gif(result, folder / "film.gif")
        npz = export_maps_npz(result, folder / "maps.npz")
        settings = export_settings_json(result, folder / "settings.json", model=self.engine.model)
        link = self.permalink(*request_fields(result.request), request)
        return ExportFiles(str(grid), None if film is None else str(film), str(npz), str(settings), link)

    # -- presets and permalinks ---------------------------------------------------------------------------------------
    def _generate(self, req: GenerationRequest):
        """A whole generation without streaming."""
        with user_errors():
            return generate(self.engine.pipeline(), req, lock=self.engine.lock, preview=self.engine.latent_preview())

    def preset(self, prompt, negative, seed, steps, guidance, scheduler):
        """A whole generation without streaming (what the lazily cached presets store)."""

        req = form_request(prompt, negative, seed, steps, guidance, scheduler)
        result = self._generate(req)
        with self._recent_lock:
            self._recent[req] = result
            while len(self._recent) > RECENT_RESULTS:
                self._recent.pop(next(iter(self._recent)))
        done = self._finish(result)
        return PresetOutputs(done.image, done.status, done.gallery, done.pair, done.film)

    def restore(self, prompt, negative, seed, steps, guidance, scheduler, height, width, result, *controls):
        """After a cached preset: rebuild this session's explorable result (the cache holds only pictures) and show
        its maps as ``controls`` (the map controls, in the order of :meth:`maps`) ask.

        In one event, so a control moved right after the preset is never overtaken by a later first view.
        """

        req = form_request(prompt, negative, seed, steps, guidance, scheduler, height, width)
        if result is not None and result.request == req:  # the session already holds this result
            return Restored(gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), *self.maps(result, *controls))
        with self._recent_lock:
            result = self._recent.get(req)
        if result is None:  # the preset came from the cache: run it once more (deterministic: same pictures)
            result = self._generate(req)
        done = self._finish(result)
        _, all_steps, parts, downsamples, _, *rest = controls  # the new result: its last step, all heads
        last = done.step["value"]
        view = self.maps(result, last, all_steps, parts, downsamples, [], *rest)
        return Restored(result, done.step, done.heads, done.layer, done.qkv, *view)

    def from_url(self, request: gr.Request):
        """Settings from the page's query string (?prompt=...&seed=...&tab=attend), for shareable links."""

        query = dict(request.query_params) if request is not None else {}
        scheduler = query.get("scheduler")
        tab = query.get("tab") or ("attend" if "prompt" in query else None)
        if tab is not None and tab not in TAB_IDS:
            gr.Warning(f"Ignoring ?tab={tab!r} from the link: tabs are {', '.join(TAB_IDS)}.")
            tab = None
        return UrlSettings(
            prompt=query.get("prompt", gr.skip()),
            negative=query.get("negative", gr.skip()),
            seed=url_number(query, "seed", int),
            steps=url_number(query, "steps", int),
            guidance=url_number(query, "guidance", float),
            scheduler=scheduler if scheduler in SCHEDULER_CHOICES else gr.skip(),
            height=url_number(query, "height", int),
            width=url_number(query, "width", int),
            tab=gr.Tabs(selected=tab) if tab else gr.skip(),
        )

    def permalink(
        self, prompt, negative, seed, steps, guidance, scheduler, height, width, request: gr.Request | None = None
    ) -> str:
        """A link that reopens the app with these settings; refused with /generate's message where /generate would
        refuse them (a link never promises a picture the app will not make)."""
        with user_errors():
            form_request(prompt, negative, seed, steps, guidance, scheduler, height, width).validate(
                self.engine.pipeline()
            )
        fields = {"tab": "attend", "prompt": prompt, "negative": negative, "seed": seed, "steps": steps}
        fields |= {"guidance": guidance, "scheduler": scheduler, "height": height, "width": width}
        query = urlencode({k: v for k, v in fields.items() if v not in (None, "")})
        base = ""
        if request is not None:
            referer = request.headers.get("referer") if hasattr(request, "headers") else None
            base = (referer or "").split("?")[0]
        return f"{base}?{query}"
