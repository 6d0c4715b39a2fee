"""The judge's verdict: detected objects, matched against the prompt's objects (colour, shape, position)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from explain import world
from explain.world.judging.regions import (
    _PALETTE_NAMES,
    BLEED_NEAR_FRACTION,
    HUE_NEIGHBOURS,
    _close,
    _color_masks,
    _components,
    _dilate,
    _fill_holes,
)
from explain.world.judging.shape_classifier import _SHAPE_CLASSIFIER, ShapeClassifier, shape_features

# Position phrase -> ((x_min, x_max), (y_min, y_max)) band for the object's centroid, as canvas fractions.
# World objects sit at world.POSITIONS +- 0.05 (render jitter); the bands leave ~0.1 of slack on the main axis
# and ~0.25 on the cross axis (an object "on the left" must still be roughly vertically centred).
POSITION_BANDS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "on the left": ((0.0, 0.42), (0.22, 0.78)),
    "on the right": ((0.58, 1.0), (0.22, 0.78)),
    "at the top": ((0.22, 0.78), (0.0, 0.42)),
    "at the bottom": ((0.22, 0.78), (0.58, 1.0)),
    "in the center": ((0.3, 0.7), (0.3, 0.7)),
}


@dataclass(frozen=True, eq=False)
class DetectedObject:
    """One connected region of one palette colour.

    Attributes:
        color: a ``world.COLORS`` name.
        shape: a ``world.SHAPES`` name (the classifier's best guess).
        centroid: (x, y) of the filled silhouette as fractions of width / height, y down.
        area: silhouette area as a fraction of the canvas.
        mask: (H, W) bool filled silhouette.
        bbox: (x0, y0, x1, y1) pixels, end-exclusive.
        shape_probs: classifier probabilities per ``world.SHAPES`` entry.
    """

    color: str
    shape: str
    centroid: tuple[float, float]
    area: float
    mask: np.ndarray = field(repr=False)
    bbox: tuple[int, int, int, int]
    shape_probs: tuple[float, ...] = field(default=(), repr=False)


@dataclass(frozen=True, eq=False)
class ObjectVerdict:
    """The judgement of one expected object. ``detected`` is None when no region of its colour exists."""

    expected: world.WorldObject
    detected: DetectedObject | None
    color_ok: bool
    shape_ok: bool
    position_ok: bool

    @property
    def ok(self) -> bool:
        return self.color_ok and self.shape_ok and self.position_ok

    @property
    def matched_mask(self) -> np.ndarray | None:
        """(H, W) bool mask of the matched region (for attention IoU), or None."""
        return None if self.detected is None else self.detected.mask


@dataclass(frozen=True, eq=False)
class Verdict:
    """Does an image show the prompt? ``ok``: every object right and no large extra object."""

    scene: world.Scene
    objects: tuple[ObjectVerdict, ...]
    extras: tuple[DetectedObject, ...]  # detected regions (>= extra_area) not matched to any expected object
    detected: tuple[DetectedObject, ...] = field(repr=False)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.objects) and not self.extras

    @property
    def matched_masks(self) -> tuple[np.ndarray | None, ...]:
        return tuple(o.matched_mask for o in self.objects)


def _segment(image: np.ndarray, min_area: float) -> list[tuple[str, np.ndarray]]:
    """(colour name, filled silhouette mask) of every region of at least ``min_area`` of the canvas."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    masks = _color_masks(image)
    h, w = masks[0].shape
    close_iter = max(1, round(2 * min(h, w) / 64))  # bridges the 2-3 px gaps between stripes at 64 px
    out = []
    for ci, name in enumerate(_PALETTE_NAMES):
        m = masks[ci]
        if m.sum() < 4:
            continue
        m = _fill_holes(_close(m, close_iter))
        for comp in _components(m):
            if comp.sum() >= min_area * h * w:
                out.append((name, comp))
    return out


def _describe(name: str, mask: np.ndarray, clf: ShapeClassifier | None = None) -> DetectedObject:
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    probs = (clf or _SHAPE_CLASSIFIER).probs(shape_features(mask))
    return DetectedObject(
        color=name,
        shape=world.SHAPES[int(probs.argmax())],
        centroid=(float((xs.mean() + 0.5) / w), float((ys.mean() + 0.5) / h)),
        area=float(len(xs) / (h * w)),
        mask=mask,
        bbox=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
        shape_probs=tuple(float(p) for p in probs),
    )


def detect(image: np.ndarray | Image.Image, min_area: float = 0.005) -> list[DetectedObject]:
    """Find the coloured objects of a shapes-world image.

    Args:
        image: (H, W, 3) uint8 RGB array or PIL image, any size (64x64 for the embedded model).
        min_area: regions smaller than this fraction of the canvas are dropped.

    Returns:
        Detected objects, largest first.
    """
    image = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    clf = _SHAPE_CLASSIFIER
    objs = [_describe(name, m, clf) for name, m in _segment(image, min_area)]
    return sorted(objs, key=lambda o: -o.area)


def position_ok(position: str, centroid: tuple[float, float]) -> bool:
    """Is a centroid (x, y fractions) inside the band of a ``world.POSITIONS`` phrase?"""
    (x0, x1), (y0, y1) = POSITION_BANDS[position]
    x, y = centroid
    return x0 <= x <= x1 and y0 <= y <= y1


def judge(
    image: np.ndarray | Image.Image,
    prompt_or_scene: str | world.Scene,
    min_area: float = 0.005,
    extra_area: float = 0.01,
) -> Verdict:
    """Judge whether an image shows what a world prompt asks for.

    Each expected object is matched to the largest detected region of its colour (world scenes never repeat a
    colour). ``color_ok``: such a region exists; ``shape_ok``: its classified shape is the expected one;
    ``position_ok``: its centroid is in ``POSITION_BANDS[position]``. A smaller unmatched region of the same or a
    neighbouring hue (``HUE_NEIGHBOURS``) lying mostly within 2 px of a matched object is colour bleeding (blurred
    stripes and outlines of an orange object partly read as red) and joins it. Other unmatched regions (another colour, or a
    second region of an expected colour) count as extras when they cover at least ``extra_area`` of the canvas.
    Size words, scene and style are not judged.

    Raises:
        ValueError: the prompt is not in the world grammar.
    """
    scene = prompt_or_scene if isinstance(prompt_or_scene, world.Scene) else world.parse_prompt(prompt_or_scene)
    if scene is None:
        raise ValueError(f"prompt is not in the shapes-world grammar: {prompt_or_scene!r}")
    detected = detect(image, min_area=min_area)
    used: set[int] = set()
    matches: list[int | None] = []
    for obj in scene.objects:
        cand = [i for i, d in enumerate(detected) if d.color == obj.color and i not in used]
        matches.append(cand[0] if cand else None)  # largest first
        used.update(cand[:1])
    verdicts = []
    for obj, i in zip(scene.objects, matches, strict=True):
        if i is None:
            verdicts.append(ObjectVerdict(obj, None, False, False, False))
            continue
        d = detected[i]
        near = _dilate(_dilate(d.mask))
        bleed = [
            j
            for j, e in enumerate(detected)
            if j not in used
            and (e.color == d.color or frozenset((e.color, d.color)) in HUE_NEIGHBOURS)
            and e.area < d.area
            and (e.mask & near).sum() >= BLEED_NEAR_FRACTION * e.mask.sum()
        ]
        if bleed:  # colour bleeding of this object (stripes, outlines, blur): part of it, not an extra object
            used.update(bleed)
            d = _describe(d.color, _fill_holes(np.logical_or.reduce([d.mask] + [detected[j].mask for j in bleed])))
        verdicts.append(ObjectVerdict(obj, d, True, d.shape == obj.shape, position_ok(obj.position, d.centroid)))
    extras = tuple(d for i, d in enumerate(detected) if i not in used and d.area >= extra_area)
    return Verdict(scene=scene, objects=tuple(verdicts), extras=extras, detected=tuple(detected))
