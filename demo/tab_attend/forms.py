"""The Denoise & attend tab's settings, input parsing, and the named values its handlers take and return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import gradio as gr

from demo.common import user_errors
from explain.engine.requests import GenerationRequest, finite, whole

__all__ = [
    "DEFAULTS",
    "PRESET_STEPS",
    "PART_CHOICES",
    "DOWNSAMPLE_CHOICES",
    "NORMALIZATION_CHOICES",
    "CROSS_ATTENTION",
    "MAP_KIND_CHOICES",
    "STOP_CONCURRENCY",
    "MAPS_CONCURRENCY",
    "FUNCTION_WORDS",
    "RECENT_RESULTS",
    "number",
    "whole_number",
    "form_request",
    "request_fields",
    "url_number",
    "MapQuery",
    "Generated",
    "MapOutputs",
    "MapsAtStep",
    "ExportFiles",
    "PresetOutputs",
    "Restored",
    "UrlSettings",
    "SCORE_BRUSH",
    "ScoreSetup",
    "Scored",
    "GuidanceViews",
]

DEFAULTS = {  # the prompt is the model's world's (AttendTab.world.default_prompt)
    "negative": "",
    "seed": 0,
    "steps": 20,
    "guidance": 7.5,
    "scheduler": "default",
    "height": None,
    "width": None,
}
PRESET_STEPS = 15  # the presets' steps (the model's own guidance; prompts, seeds and schedulers from its world)
PART_CHOICES = [("down blocks", "down"), ("middle block", "mid"), ("up blocks", "up")]
DOWNSAMPLE_CHOICES = [("full latent size", 1), ("½", 2), ("¼", 4), ("⅛", 8)]
NORMALIZATION_CHOICES = [
    ("min-max: each map on its own", "minmax"),
    ("softmax: which word wins at each pixel", "softmax"),
    ("absolute: one scale for all words", "absolute"),
]
CROSS_ATTENTION = "cross"  # the map kind of U-Net models: their cross-attention
MAP_KIND_CHOICES = [  # SD3 / Flux (explain.maps.joint_views.JOINT_MAP_KINDS)
    ("joint attention, renormalised over the text (≈ cross-attention)", "text"),
    ("joint attention as computed: softmax over image and text", "joint"),
    ("ConceptAttention: output space (Helbling et al. 2025)", "concept"),
]
STOP_CONCURRENCY = "control"  # Stop must not wait behind the run it stops
MAPS_CONCURRENCY = "maps"  # the map views run in order: the view of the last control moved is the one that stays
FUNCTION_WORDS = ("a", "an", "the", "and", "on", "at", "in", "of")  # hidden by "content words only"
RECENT_RESULTS = 4  # preset results kept for the restore step (a few MB each on the embedded model)
SCORE_BRUSH = "#ff00ff"  # the painting brush of "Score the map": any stroke counts, magenta stands out


# -- input parsing ------------------------------------------------------------------------------------------------------
def _parsed(value):
    """Numeric text as a float (a raw API client may send ``"3"``); anything else as it came."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def number(value, name: str) -> float:
    """``value`` as a finite float (:func:`explain.engine.requests.finite`), or a gr.Error naming the field."""
    with user_errors():
        return finite(name, _parsed(value))


def whole_number(value, name: str) -> int:
    """``value`` as an int (:func:`explain.engine.requests.whole`), or a gr.Error naming the field."""
    with user_errors():
        return whole(name, _parsed(value))


def form_request(prompt, negative, seed, steps, guidance, scheduler, height=None, width=None) -> GenerationRequest:
    """The request from the form's values; every field is checked again by ``GenerationRequest.validate``."""
    return GenerationRequest(
        prompt=prompt or "",
        negative=negative or "",
        seed=whole_number(seed, "seed"),
        steps=whole_number(steps, "steps"),
        guidance=number(guidance, "guidance"),
        scheduler=scheduler or "default",
        height=whole_number(height, "height") if height else None,
        width=whole_number(width, "width") if width else None,
    )


def request_fields(request: GenerationRequest) -> list:
    """The form's values of ``request``, in the order of the generation inputs (the permalink's fields)."""
    r = request
    return [r.prompt, r.negative, r.seed, r.steps, r.guidance, r.scheduler, r.height, r.width]


def url_number(query: dict, key: str, cast):
    """``query[key]`` as a number for a form field, or gr.skip() (with a warning when it is not a number)."""
    try:
        return cast(query[key]) if key in query else gr.skip()
    except ValueError:
        gr.Warning(f"Ignoring ?{key}={query[key]!r} from the link: not a number.")
        return gr.skip()


# -- named inputs and outputs -------------------------------------------------------------------------------------------
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
    kind: str = CROSS_ATTENTION

    @property
    def joint_kind(self) -> str | None:
        """The kind for :func:`explain.maps.views.word_maps` (None: the model's own, cross-attention on U-Nets)."""
        return None if self.kind in (None, "", CROSS_ATTENTION) else str(self.kind)


class Generated(NamedTuple):
    """What a generation sends to the tab's components (``gen_outputs``, in order)."""

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

    @classmethod
    def streaming(cls, preview, status: str) -> Generated:
        """While a run streams: its preview and status; the previous run's maps, pair and film are cleared.

        A value, not gr.skip(), clears them: Gradio rebuilds a component per session on every skip, and the files of
        a rebuilt component escape delete_cache (they would pile up in the cache folder for the whole class).
        """
        return cls(preview, status, gr.skip(), None, None, None, gr.skip(), gr.skip(), gr.skip(), gr.skip())


class MapOutputs(NamedTuple):
    """The map views of one query (``view_outputs``, in order)."""

    gallery: list
    masks: list
    pair: list
    info: str


class MapsAtStep(NamedTuple):
    """The map views at one step, and the "all steps" box unticked."""

    gallery: list
    masks: list
    pair: list
    info: str
    all_steps: bool


class ExportFiles(NamedTuple):
    """The download buttons' files and the permalink."""

    grid: str
    film: str
    npz: str
    settings: str
    link: str


class PresetOutputs(NamedTuple):
    """What a (cached) preset shows: the image, the status, the word maps, the x_t/x̂₀ pair and the film."""

    image: object
    status: str
    gallery: list
    pair: list
    film: str


class Restored(NamedTuple):
    """After a cached preset: the session's explorable result, the controls that follow it, and its map views as
    the map controls are set (the cache holds the views of the default controls)."""

    state: object
    step: dict
    heads: dict
    layer: dict
    qkv: str
    gallery: list
    masks: list
    pair: list
    info: str


class UrlSettings(NamedTuple):
    """The form's values from a permalink's query string (gr.skip() where it has none), and the tab to open."""

    prompt: object
    negative: object
    seed: object
    steps: object
    guidance: object
    scheduler: object
    height: object
    width: object
    tab: object


class ScoreSetup(NamedTuple):
    """After a generation: the image in the painting editor and the prompt's words to score."""

    editor: object
    word: dict


class Scored(NamedTuple):
    """One painted mask scored (:meth:`~demo.tab_attend.classroom.Classroom.score_map`), in output order."""

    iou: float
    true_iou: float | None  # None where the world does not know the object's mask ("not known")
    agreement: object  # (H, W, 3) uint8: green both, red map only, blue painted only
    leaderboard: dict
    board: object  # the session's explain.maps.score.Leaderboard (a gr.State)
    summary: str


class GuidanceViews(NamedTuple):
    """One step's guidance taken apart (:meth:`~demo.tab_attend.classroom.Classroom.guidance_parts`)."""

    predictions: list  # ε_u, ε_c, ε_c − ε_u, ε̃ through the latent preview
    x0: list  # the x̂₀ each one gives
    maps: list  # the prompt's and the negative prompt's word maps
    recombination_error: float  # max |ε_u + g (ε_c − ε_u) − ε̃|
    summary: str
