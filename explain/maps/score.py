"""Score the map: how well a word's thresholded cross-attention map covers the region a person paints.

The map is the word's DAAM heat map (Tang et al. 2023; :mod:`explain.maps.aggregation`) turned into a mask by the
project's one threshold rule, DAAM Sec. 4.1: min-max normalise, keep pixels above τ
(:func:`~explain.maps.aggregation.threshold_mask`, τ = 0.4 by default). Agreement with a painted (or true) mask is
the intersection over union, the Jaccard index (Jaccard 1901; the PASCAL VOC segmentation measure):

    IoU(A, B) = |A ∩ B| / |A ∪ B|

Sizes are made to agree explicitly on one grid (the map's own size unless another is asked for): the heat map is
resized bilinearly *before* thresholding; a mask is resized by coverage (area average, ``F.adaptive_avg_pool2d``),
a cell being in the mask when at least :data:`MASK_COVERAGE` of what it covers is (for whole-number factors this is
plain nearest-neighbour enlarging and majority-vote shrinking).

A :class:`Leaderboard` keeps a session's best scores (word, layers, step range, IoU), sorted and bounded.

Example:
    >>> score = score_word(result, "circle", painted_mask, steps=(0, 10))
    >>> board = Leaderboard().add(score.entry("Ada"))
    >>> board.rows()
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from explain.engine.session import GenerationResult
from explain.maps.aggregation import threshold_mask
from explain.maps.views import word_maps

__all__ = [
    "DAAM_TAU",
    "MASK_COVERAGE",
    "LEADERBOARD_SIZE",
    "LEADERBOARD_HEADERS",
    "MapScore",
    "ScoreEntry",
    "Leaderboard",
    "iou",
    "resize_mask",
    "resize_map",
    "score_map",
    "score_word",
]

DAAM_TAU: float = inspect.signature(threshold_mask).parameters["tau"].default  # the threshold rule's own default
MASK_COVERAGE = 0.5  # a resized mask cell is in the mask when at least half of the pixels it covers are
LEADERBOARD_SIZE = 10  # entries a leaderboard keeps by default
LEADERBOARD_HEADERS = ("rank", "name", "word", "layers", "steps", "IoU", "true IoU")
# colours of the agreement picture: both, only the map, only the painted mask (neither stays black)
AGREE_RGB, MAP_ONLY_RGB, MASK_ONLY_RGB = (60, 200, 80), (230, 70, 50), (60, 110, 230)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard index ``|a ∩ b| / |a ∪ b|`` of two same-shape bool masks; 0 when both are empty."""
    if a.shape != b.shape:
        raise ValueError(f"masks differ in size: {a.shape} vs {b.shape}; resize one first (resize_mask)")
    union = int(np.logical_or(a, b).sum())
    return int(np.logical_and(a, b).sum()) / union if union else 0.0


def _as_2d(name: str, array) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"the {name} must be a 2-D (height, width) array, got shape {array.shape}")
    return array


def resize_mask(mask, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) mask (bool, or numbers: nonzero is in) on a (H, W) grid by coverage (module docstring)."""
    mask = _as_2d("mask", mask) != 0
    if mask.shape == tuple(size):
        return mask
    coverage = F.adaptive_avg_pool2d(torch.from_numpy(mask).float()[None, None], tuple(size))[0, 0]  # (H, W)
    return (coverage >= MASK_COVERAGE).numpy()


def resize_map(heat, size: tuple[int, int]) -> torch.Tensor:
    """A (h, w) heat map resized bilinearly to (H, W), float32 (as :func:`~explain.maps.aggregation.overlay`)."""
    heat = torch.as_tensor(_as_2d("map", heat).astype(np.float32))
    if tuple(heat.shape) == tuple(size):
        return heat
    return F.interpolate(heat[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]


@dataclass(frozen=True)
class ScoreEntry:
    """One line of a leaderboard.

    Attributes:
        name: Who scored (may be empty).
        word: The word whose map was scored.
        layers: Which maps were used, as shown (e.g. ``"all layers"``, ``"1/2 resolution"``).
        steps: Denoising steps ``[start, stop)`` averaged.
        iou: IoU with the painted mask.
        true_iou: IoU with the true mask, when one was given.
    """

    name: str
    word: str
    layers: str
    steps: tuple[int, int]
    iou: float
    true_iou: float | None = None


@dataclass(frozen=True, eq=False)  # holds arrays
class MapScore:
    """A word's thresholded map against a painted mask (and the true mask), on one grid.

    Attributes:
        word: The word.
        iou: IoU(map mask, painted mask).
        true_iou: IoU(map mask, true mask), None without a true mask.
        painted_vs_true: IoU(painted mask, true mask), None without a true mask (how well the person painted).
        map_mask: (H, W) bool, the thresholded map.
        painted: (H, W) bool, the painted mask on the grid.
        true_mask: (H, W) bool on the grid, or None.
        tau: The threshold used (on the min-max-normalised map).
        layers: Which maps were used (for the leaderboard).
        steps: Steps ``[start, stop)`` averaged (for the leaderboard).
    """

    word: str
    iou: float
    true_iou: float | None
    painted_vs_true: float | None
    map_mask: np.ndarray
    painted: np.ndarray
    true_mask: np.ndarray | None
    tau: float
    layers: str = "all layers"
    steps: tuple[int, int] = (0, 0)

    @property
    def size(self) -> tuple[int, int]:
        return self.map_mask.shape

    def agreement_image(self) -> np.ndarray:
        """(H, W, 3) uint8: green where map and painting agree, red map only, blue painting only, black neither."""
        picture = np.zeros((*self.size, 3), np.uint8)
        picture[self.map_mask & self.painted] = AGREE_RGB
        picture[self.map_mask & ~self.painted] = MAP_ONLY_RGB
        picture[~self.map_mask & self.painted] = MASK_ONLY_RGB
        return picture

    def entry(self, name: str = "") -> ScoreEntry:
        """This score as a leaderboard line."""
        return ScoreEntry(name, self.word, self.layers, self.steps, self.iou, self.true_iou)


def score_map(
    heat,
    painted,
    *,
    true_mask=None,
    word: str = "",
    tau: float | None = None,
    size: tuple[int, int] | None = None,
    layers: str = "all layers",
    steps: tuple[int, int] = (0, 0),
) -> MapScore:
    """IoU of a heat map's DAAM mask with a painted mask (and with a true mask), on one grid (module docstring).

    Args:
        heat: (h, w) heat map (raw or normalised: min-max normalisation comes first either way).
        painted: (h', w') mask, bool or numbers (nonzero is in), any size.
        true_mask: (h'', w'') true mask of the object, any size, or None.
        word: The word the map belongs to.
        tau: Threshold on the min-max-normalised map (None: :data:`DAAM_TAU`).
        size: (H, W) grid of the comparison (None: the heat map's size).
        layers: Which maps went into ``heat`` (kept for the leaderboard).
        steps: Steps ``[start, stop)`` averaged into ``heat`` (kept for the leaderboard).

    Raises:
        ValueError: a non-2-D input, or an empty painted mask (nothing painted).
    """
    grid = tuple(size) if size is not None else _as_2d("map", heat).shape
    resized = resize_map(heat, grid)
    tau = DAAM_TAU if tau is None else float(tau)
    map_mask = threshold_mask(resized, tau).numpy()
    painted_grid = resize_mask(painted, grid)
    if not painted_grid.any():
        raise ValueError("The painted mask is empty: paint where you think the word is, then score.")
    true_grid = None if true_mask is None else resize_mask(true_mask, grid)
    return MapScore(
        word=word,
        iou=iou(map_mask, painted_grid),
        true_iou=None if true_grid is None else iou(map_mask, true_grid),
        painted_vs_true=None if true_grid is None else iou(painted_grid, true_grid),
        map_mask=map_mask,
        painted=painted_grid,
        true_mask=true_grid,
        tau=tau,
        layers=layers,
        steps=steps,
    )


def score_word(
    result: GenerationResult,
    word: str,
    painted,
    *,
    steps: tuple[int, int] | None = None,
    downsamples: Iterable[int] | None = None,
    true_mask=None,
    tau: float | None = None,
) -> MapScore:
    """Score ``word``'s map in a finished generation against a painted mask, on the image's grid.

    The map is the app's own view (:func:`explain.maps.views.word_maps`: DAAM over the chosen steps and layers).

    Args:
        result: A finished generation (:class:`explain.engine.session.GenerationResult`).
        word: A word of the prompt (case-insensitive).
        painted: The painted mask, any size (nonzero is in).
        steps: Steps ``[start, stop)`` to average (None: all recorded steps).
        downsamples: Keep layers whose feature map is the latent shrunk by these factors (None: all).
        true_mask: The object's true mask, any size, or None.
        tau: Threshold (None: the DAAM default).
    """
    n_steps = result.captured.n_steps
    start, stop = (0, n_steps) if steps is None else (int(steps[0]), min(int(steps[1]), n_steps))
    if not 0 <= start < stop:
        raise ValueError(f"steps must be a range [start, stop) within 0..{n_steps} (got {steps}).")
    factors = None if downsamples is None else sorted({int(f) for f in downsamples})
    view = word_maps(result, steps=range(start, stop), downsamples=factors)
    wanted = word.strip().lower()
    if wanted not in view.words:
        listed = ", ".join(repr(w) for w in view.words)
        raise ValueError(f"The word {word!r} is not a word of the prompt; its words are: {listed}")
    layers = "all layers" if factors is None else "1/" + ", 1/".join(map(str, factors)) + " resolution"
    return score_map(
        view.maps[view.words.index(wanted)],
        painted,
        true_mask=true_mask,
        word=wanted,
        tau=tau,
        size=result.size,
        layers=layers,
        steps=(start, stop),
    )


@dataclass(frozen=True)
class Leaderboard:
    """A session's best scores, highest IoU first (ties: the earlier score first), at most ``max_entries``.

    Immutable: :meth:`add` returns a new board (safe to keep in a per-session state).
    """

    entries: tuple[ScoreEntry, ...] = ()
    max_entries: int = LEADERBOARD_SIZE

    def __post_init__(self):
        if self.max_entries < 1:
            raise ValueError(f"a leaderboard keeps at least 1 entry (got {self.max_entries})")

    def add(self, entry: ScoreEntry) -> Leaderboard:
        """The board with ``entry`` in its place; the lowest entry falls off when the board is full."""
        if not 0.0 <= entry.iou <= 1.0:
            raise ValueError(f"an IoU lies in [0, 1] (got {entry.iou})")
        ranked = sorted((*self.entries, entry), key=lambda e: -e.iou)  # stable: ties keep their order
        return Leaderboard(tuple(ranked[: self.max_entries]), self.max_entries)

    def rank(self, entry: ScoreEntry) -> int | None:
        """1-based place of ``entry`` (this very entry), or None when it is not (or no longer) on the board."""
        return next((i + 1 for i, e in enumerate(self.entries) if e is entry), None)

    def rows(self, digits: int = 3) -> list[list]:
        """Table rows under :data:`LEADERBOARD_HEADERS` (IoUs rounded to ``digits``)."""
        return [
            [
                i + 1,
                e.name,
                e.word,
                e.layers,
                f"{e.steps[0]}–{e.steps[1]}",
                round(e.iou, digits),
                None if e.true_iou is None else round(e.true_iou, digits),
            ]
            for i, e in enumerate(self.entries)
        ]
