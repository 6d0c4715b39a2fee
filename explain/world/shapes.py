"""The shapes world: a procedural, fully labelled world the embedded model is trained on.

Every image is drawn from a :class:`Scene` (1-3 objects, each with a colour, a shape, a size and a position), so
its caption, each word's character span in the caption, and each object's true mask are known exactly. That is
what lets the project *measure* how faithful cross-attention maps are, which no explainer on real images can.

Prompt grammar (what the model understands)::

    a|an [small|big] COLOR SHAPE POSITION [and a|an [small|big] COLOR SHAPE POSITION ...] [SCENE] [, STYLE]

    COLOR    red, green, blue, yellow, purple, orange
    SHAPE    circle, square, triangle, star, heart, diamond
    POSITION on the left, on the right, at the top, at the bottom, in the center
    SCENE    at night (dark background), on grass (green-tinted ground), at sunset (warm gradient sky)
    STYLE    outlined (only the outline is drawn), striped (stripes of the object's colour)

With no scene or style words the default is flat filled shapes on a light background.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "IMAGE_SIZE",
    "COLORS",
    "SHAPES",
    "POSITIONS",
    "SIZES",
    "SCENES",
    "STYLES",
    "HELD_OUT_PAIRS",
    "WorldObject",
    "Scene",
    "RenderedScene",
    "sample_scene",
    "caption",
    "render",
    "parse_prompt",
    "make_batch",
]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 190),
    "orange": (245, 130, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "diamond")
# Phrase -> object centre as a fraction of the canvas (x, y), y grows downwards.
POSITIONS: dict[str, tuple[float, float]] = {
    "on the left": (0.25, 0.5),
    "on the right": (0.75, 0.5),
    "at the top": (0.5, 0.25),
    "at the bottom": (0.5, 0.75),
    "in the center": (0.5, 0.5),
}
# Size word -> object radius as a fraction of the canvas side. None (no size word) -> "medium".
SIZES: dict[str, float] = {"small": 0.10, "medium": 0.135, "big": 0.17}
SCENES: tuple[str, ...] = ("at night", "on grass", "at sunset")
STYLES: tuple[str, ...] = ("outlined", "striped")

IMAGE_SIZE = 64  # the side in pixels the shapes models are trained at

# Colour-shape pairs never drawn in training: the evaluation asks for them to test generalisation.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "star"), ("orange", "heart"), ("green", "triangle"), ("yellow", "square"), ("blue", "diamond")}
)

# Position pairs that can share a canvas without overlapping (the centre clashes with every edge position).
_COMPATIBLE_POSITIONS = [
    ("on the left", "on the right"),
    ("at the top", "at the bottom"),
    ("on the left", "at the top"),
    ("on the left", "at the bottom"),
    ("on the right", "at the top"),
    ("on the right", "at the bottom"),
]

BACKGROUND_LIGHT = (236, 236, 228)


@dataclass(frozen=True)
class WorldObject:
    """One object of a scene."""

    color: str
    shape: str
    position: str
    size: str | None = None  # "small" | "big" | None (medium, no size word)


@dataclass(frozen=True)
class Scene:
    """What an image shows: objects plus optional scene and drawing style."""

    objects: tuple[WorldObject, ...]
    scene: str | None = None
    style: str | None = None


@dataclass(frozen=True)
class RenderedScene:
    """A drawn scene with its labels.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        masks: (n_objects, H, W) bool, the visible pixels of each object (later objects occlude earlier ones).
        caption: the caption text.
        spans: per object, word -> (start, end) character span in ``caption`` for its colour and shape words.
        scene: the scene description.
    """

    image: np.ndarray
    masks: np.ndarray
    caption: str
    spans: tuple[dict[str, tuple[int, int]], ...]
    scene: Scene = field(repr=False)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(obj: WorldObject) -> tuple[str, dict[str, tuple[int, int]]]:
    words = [obj.size] if obj.size else []
    words += [obj.color, obj.shape]
    head = " ".join(words)
    text = f"{_article(head)} {head} {obj.position}"
    spans: dict[str, tuple[int, int]] = {}
    for key, word in (("color", obj.color), ("shape", obj.shape)):
        start = text.index(f" {word} ") + 1
        spans[key] = (start, start + len(word))
    return text, spans


def caption(scene: Scene) -> tuple[str, tuple[dict[str, tuple[int, int]], ...]]:
    """Caption a scene in the grammar of the module docstring; returns the text and each object's word spans."""
    parts: list[str] = []
    spans: list[dict[str, tuple[int, int]]] = []
    offset = 0
    for i, obj in enumerate(scene.objects):
        if i:
            parts.append(" and ")
            offset += len(" and ")
        text, obj_spans = _object_phrase(obj)
        parts.append(text)
        spans.append({k: (s + offset, e + offset) for k, (s, e) in obj_spans.items()})
        offset += len(text)
    if scene.scene:
        parts.append(f" {scene.scene}")
    if scene.style:
        parts.append(f", {scene.style}")
    return "".join(parts), tuple(spans)


def sample_scene(
    rng: np.random.Generator,
    max_objects: int = 2,
    p_scene: float = 0.2,
    p_style: float = 0.2,
    allow_held_out: bool = False,
) -> Scene:
    """Draw a random scene. Held-out colour-shape pairs are excluded unless ``allow_held_out``."""
    n = int(rng.integers(1, max_objects + 1))
    if n == 1:
        positions: tuple[str, ...] = (list(POSITIONS)[rng.integers(len(POSITIONS))],)
    else:
        pair = _COMPATIBLE_POSITIONS[rng.integers(len(_COMPATIBLE_POSITIONS))]
        positions = tuple(pair[i] for i in rng.permutation(2))
        if n == 3:  # three objects: left, right and (top or bottom), drawn small enough to fit
            positions = ("on the left", "on the right", ("at the top", "at the bottom")[rng.integers(2)])
    objects = []
    used_colors: set[str] = set()
    for pos in positions:
        while True:
            color = list(COLORS)[rng.integers(len(COLORS))]
            shape = SHAPES[rng.integers(len(SHAPES))]
            if color in used_colors:  # distinct colours keep every object identifiable by the judge
                continue
            if not allow_held_out and (color, shape) in HELD_OUT_PAIRS:
                continue
            break
        used_colors.add(color)
        size = (None, "small", "big")[rng.integers(3)]
        objects.append(WorldObject(color=color, shape=shape, position=pos, size=size))
    scene = SCENES[rng.integers(len(SCENES))] if rng.random() < p_scene else None
    style = STYLES[rng.integers(len(STYLES))] if rng.random() < p_style else None
    return Scene(objects=tuple(objects), scene=scene, style=style)


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape of 'radius' r centred at (cx, cy); None for the circle."""
    if shape == "square":
        s = r * 0.9
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "diamond":
        return [(cx, cy - r * 1.1), (cx + r * 0.8, cy), (cx, cy + r * 1.1), (cx - r * 0.8, cy)]
    if shape == "triangle":
        return [
            (cx + r * math.cos(a), cy + r * 0.15 + r * math.sin(a))
            for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
    if shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rad = r * 1.1 if k % 2 == 0 else r * 0.45
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    if shape == "heart":
        pts = []
        for k in range(48):
            a = 2 * math.pi * k / 48
            x = 16 * math.sin(a) ** 3
            y = 13 * math.cos(a) - 5 * math.cos(2 * a) - 2 * math.cos(3 * a) - math.cos(4 * a)
            pts.append((cx + x * r / 16.0, cy - y * r / 16.0 - r * 0.1))
        return pts
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _draw_mask(shape: str, cx: float, cy: float, r: float, size: int, ss: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one shape, drawn at ``ss``x supersampling. Shape (size, size)."""
    big = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(big)
    poly = _shape_polygon(shape, cx * ss, cy * ss, r * ss)
    if poly is None:
        draw.ellipse([cx * ss - r * ss, cy * ss - r * ss, cx * ss + r * ss, cy * ss + r * ss], fill=255)
    else:
        draw.polygon(poly, fill=255)
    return np.asarray(big.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


def _erode(cov: np.ndarray, px: int) -> np.ndarray:
    """Min-filter erosion of a coverage map by ``px`` pixels (for outlines)."""
    out = cov.copy()
    for _ in range(px):
        p = np.pad(out, 1, mode="constant")
        out = np.minimum.reduce([p[1:-1, 1:-1], p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])
    return out


def _background(scene: str | None, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float32 background in [0, 255]."""
    img = np.empty((size, size, 3), np.float32)
    if scene == "at night":
        img[:] = (25, 28, 52)
        stars = rng.random((size, size)) < 0.004
        img[stars] = (230, 230, 200)
    elif scene == "on grass":
        img[:] = (200, 225, 240)  # sky
        horizon = int(size * 0.62)
        img[horizon:] = (110, 170, 90)
    elif scene == "at sunset":
        y = np.linspace(0, 1, size, dtype=np.float32)[:, None]
        top, bottom = np.array((250, 170, 120), np.float32), np.array((250, 220, 160), np.float32)
        img[:] = (top * (1 - y) + bottom * y)[:, None, :].reshape(size, 1, 3)
    else:
        img[:] = BACKGROUND_LIGHT
    noise = rng.normal(0, 2.0, size=(size, size, 1)).astype(np.float32)
    return img + noise


def render(
    scene: Scene, size: int = IMAGE_SIZE, rng: np.random.Generator | None = None, jitter: float = 0.05
) -> RenderedScene:
    """Draw a scene at ``size``x``size`` pixels with small random jitter of position and radius."""
    rng = rng if rng is not None else np.random.default_rng(0)
    img = _background(scene.scene, size, rng)
    masks = np.zeros((len(scene.objects), size, size), bool)
    shrink = 0.8 if len(scene.objects) >= 3 else 1.0
    for i, obj in enumerate(scene.objects):
        fx, fy = POSITIONS[obj.position]
        fx += rng.uniform(-jitter, jitter)
        fy += rng.uniform(-jitter, jitter)
        r = SIZES[obj.size or "medium"] * shrink * rng.uniform(0.92, 1.08) * size
        cov = _draw_mask(obj.shape, fx * size, fy * size, r, size, ss=4)
        if scene.style == "outlined":
            width = max(1, round(size / 32))
            cov = np.clip(cov - _erode(cov, width), 0.0, 1.0)
        elif scene.style == "striped":
            period = max(4, size // 10)
            yy, xx = np.mgrid[0:size, 0:size]
            stripes = (((xx + yy) // (period // 2)) % 2 == 0).astype(np.float32)
            cov = cov * (0.25 + 0.75 * stripes)  # stripes of full colour over a faint fill
        color = np.array(COLORS[obj.color], np.float32)
        img = img * (1 - cov[..., None]) + color * cov[..., None]
        masks[i] = _draw_mask(obj.shape, fx * size, fy * size, r, size, ss=4) > 0.5  # the filled silhouette
        masks[:i] &= ~masks[i]  # later objects occlude earlier ones
    text, spans = caption(scene)
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return RenderedScene(image=image, masks=masks, caption=text, spans=spans, scene=scene)


_OBJECT_RE = re.compile(
    r"^(?:a|an)\s+(?:(?P<size>small|big)\s+)?(?P<color>{colors})\s+(?P<shape>{shapes})\s+(?P<position>{positions})$".format(
        colors="|".join(COLORS), shapes="|".join(SHAPES), positions="|".join(POSITIONS)
    )
)


def parse_prompt(text: str) -> Scene | None:
    """Parse a prompt of the world grammar back into a :class:`Scene`; None if it is not in the grammar."""
    t = " ".join(text.lower().strip().rstrip(".").split())
    style = None
    for s in STYLES:
        if t.endswith(f", {s}") or t.endswith(f" {s}"):
            style = s
            t = t[: -len(s)].rstrip(" ,")
            break
    scene = None
    for s in SCENES:
        if t.endswith(f" {s}"):
            scene = s
            t = t[: -len(s)].rstrip()
            break
    objects = []
    for part in t.split(" and "):
        m = _OBJECT_RE.match(part.strip())
        if not m:
            return None
        objects.append(WorldObject(m["color"], m["shape"], m["position"], m["size"]))
    return Scene(objects=tuple(objects), scene=scene, style=style) if objects else None


def make_batch(
    n: int, seed: int, size: int = IMAGE_SIZE, max_objects: int = 2, allow_held_out: bool = False, **kwargs
) -> list[RenderedScene]:
    """``n`` rendered scenes, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    return [
        render(sample_scene(rng, max_objects=max_objects, allow_held_out=allow_held_out, **kwargs), size, rng)
        for _ in range(n)
    ]
