"""World v2's drawing primitives: scene backgrounds, sprites (scaled, tinted), flat shapes, patches, styles.

The renderer (:func:`explain.world.emoji.render`) lays patches out and composites them with these; the judge
(``training/judge_emoji.py``) builds its templates with the very same functions, so what it compares against is
exactly what the renderer can draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from explain.world import lexicon as lx
from explain.world.atlas import sprite
from explain.world.grammar import Thing
from explain.world.shapes import _draw_mask
from explain.world.shapes import _erode as erode  # coverage erosion, shared by the outline style and the judge

__all__ = [
    "BACKGROUND",
    "Patch",
    "background",
    "sprite_rgba",
    "shape_rgba",
    "wearable_patch",
    "composite",
    "sketch",
    "erode",
]

BACKGROUND = (236, 236, 228)


def background(scene: str | None, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float32 background in [0, 255] for a scene word (None: the plain light background)."""
    img = np.empty((size, size, 3), np.float32)
    y = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]  # (size, 1, 1)
    if scene == "on the grass":
        img[:] = (190, 222, 245)
        ground = int(size * rng.uniform(0.55, 0.65))
        img[ground:] = (100, 170, 80)
        blades = rng.random((size - ground, size)) < 0.05
        img[ground:][blades] = (70, 135, 55)
    elif scene == "on the beach":
        img[:] = (175, 215, 245)
        sea, sand = int(size * rng.uniform(0.42, 0.5)), int(size * rng.uniform(0.58, 0.66))
        img[sea:sand] = (60, 140, 200)
        img[sand:] = (235, 210, 160)
    elif scene == "at night":
        img[:] = (22, 26, 56)
        img[rng.random((size, size)) < 0.006] = (235, 235, 200)
    elif scene == "in the snow":
        img[:] = (205, 215, 230)
        ground = int(size * rng.uniform(0.55, 0.65))
        img[ground:] = (248, 250, 252)
        img[rng.random((size, size)) < 0.01] = (255, 255, 255)
    elif scene == "in space":
        img[:] = (8, 6, 20)
        stars = rng.random((size, size)) < 0.01
        img[stars] = rng.uniform(150, 255, size=(int(stars.sum()), 1))
    elif scene == "underwater":
        top, bottom = np.array((70, 170, 200), np.float32), np.array((20, 70, 130), np.float32)
        img[:] = top * (1 - y) + bottom * y
        for _ in range(int(rng.integers(4, 9))):  # bubbles
            cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1.5, 3.5)
            yy, xx = np.ogrid[:size, :size]
            ring = np.abs(np.hypot(xx - cx, yy - cy) - r) < 0.8
            img[ring] = (200, 235, 245)
    elif scene is None:
        img[:] = BACKGROUND
    else:
        raise ValueError(f"unknown scene {scene!r}; known: {', '.join(lx.SCENES)}")
    return img + rng.normal(0, 2.0, size=(size, size, 1)).astype(np.float32)


def _tint(rgb: np.ndarray, alpha: np.ndarray, color: str) -> np.ndarray:
    """Recolour a sprite: its luminance, normalised over its opaque pixels, scales the target colour."""
    lum = rgb @ np.array([0.299, 0.587, 0.114], np.float32)  # (h, w)
    opaque = alpha > 0.5
    ref = float(np.percentile(lum[opaque], 90)) if opaque.any() else 1.0
    t = np.clip(lum / max(ref, 1e-3), 0, 1.2)[..., None]
    target = np.array(lx.COLORS[color], np.float32) / 255.0
    return np.clip(target * (0.3 + 0.85 * t) + 0.1 * np.clip(t - 1.0, 0, 1), 0, 1)


def sprite_rgba(name: str, longest: float, color: str | None) -> np.ndarray:
    """(h, w, 4) float32 sprite scaled so that its longest side is ``longest`` pixels, tinted if ``color``."""
    rgba = sprite(name).rgba
    h, w = rgba.shape[:2]
    scale = longest / max(h, w)
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    img = Image.fromarray(np.round(rgba * 255).astype(np.uint8), "RGBA").resize(size, Image.LANCZOS)
    out = np.asarray(img, dtype=np.float32) / 255.0
    if color:
        out = np.concatenate([_tint(out[..., :3], out[..., 3], color), out[..., 3:]], axis=-1)
    return out


def shape_rgba(shape: str, longest: float, color: str) -> np.ndarray:
    """A flat shape as an RGBA patch (coverage as alpha), reusing the shapes world's anti-aliased drawing."""
    side = max(4, int(np.ceil(longest)) + 2)
    cov = _draw_mask(shape, side / 2, side / 2, longest / 2.2, side, ss=4)
    rgb = np.broadcast_to(np.array(lx.COLORS[color], np.float32) / 255.0, (side, side, 3))
    return np.concatenate([rgb, cov[..., None]], axis=-1)


@dataclass
class Patch:
    """One drawable patch placed on the canvas: RGBA, top-left corner and the mask it belongs to."""

    rgba: np.ndarray
    x: float
    y: float
    mask: int

    @property
    def box(self) -> tuple[float, float, float, float]:
        h, w = self.rgba.shape[:2]
        return (self.x, self.y, self.x + w, self.y + h)


def wearable_patch(t: Thing, wearer: str, box: tuple[float, float, float, float], mask: int) -> Patch:
    """Place ``t.wearing`` on the face sprite ``wearer`` drawn in ``box`` (lexicon anchors)."""
    anchors = dict(lx.noun(t.noun).wearer)[wearer]
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    ex, ey = x0 + anchors.eyes[0] * w, y0 + anchors.eyes[1] * h
    kind = t.wearing
    width = {"sunglasses": 1.2 * anchors.eyes_width * w, "hat": 0.7 * w, "crown": 0.6 * w, "scarf": 0.5 * w}.get(
        kind, 0.45 * w
    )
    rgba = sprite_rgba(kind, width, t.wearing_color)
    ph, pw = rgba.shape[:2]
    if kind == "sunglasses":
        return Patch(rgba, ex - pw / 2, ey - ph / 2, mask)
    if kind in ("hat", "crown"):
        return Patch(rgba, ex - pw / 2, y0 + anchors.top * h - 0.78 * ph, mask)
    if kind == "scarf":
        return Patch(rgba, ex - pw / 2, y0 + anchors.chin * h - 0.15 * ph, mask)
    return Patch(rgba, ex - pw / 2, y0 + anchors.chin * h - 0.5 * ph, mask)  # bow


def composite(img: np.ndarray, patch: Patch, outlined: bool) -> np.ndarray:
    """Alpha-composite a patch onto ``img`` (H, W, 3 in [0, 255]); returns the patch's coverage on the canvas."""
    size = img.shape[0]
    h, w = patch.rgba.shape[:2]
    x, y = int(round(patch.x)), int(round(patch.y))
    x0, y0, x1, y1 = max(0, x), max(0, y), min(size, x + w), min(size, y + h)
    cov = np.zeros(img.shape[:2], np.float32)
    if x1 <= x0 or y1 <= y0:
        return cov
    sub = patch.rgba[y0 - y : y1 - y, x0 - x : x1 - x]
    a = sub[..., 3]
    rgb = sub[..., :3] * 255.0
    if outlined:  # only the silhouette's outline, in the patch's mean colour, darkened
        mean = (rgb * a[..., None]).sum((0, 1)) / max(float(a.sum()), 1e-6)
        a = np.clip(a - erode(a, max(1, round(size / 64))), 0, 1)
        rgb = np.broadcast_to(mean * 0.8, rgb.shape)
    region = img[y0:y1, x0:x1]
    img[y0:y1, x0:x1] = region * (1 - a[..., None]) + rgb * a[..., None]
    cov[y0:y1, x0:x1] = sub[..., 3]
    return cov


def sketch(img: np.ndarray) -> np.ndarray:
    """'as a sketch': pencil lines (the luminance's gradient magnitude) and light shading on paper."""
    lum = img @ np.array([0.299, 0.587, 0.114], np.float32)  # (H, W)
    p = np.pad(lum, 1, mode="edge")
    gx = p[1:-1, 2:] - p[1:-1, :-2]
    gy = p[2:, 1:-1] - p[:-2, 1:-1]
    edges = np.clip(np.hypot(gx, gy) * 1.6, 0, 200)
    out = 246.0 - edges - 0.18 * (255.0 - lum)
    return np.repeat(np.clip(out, 0, 255)[..., None], 3, axis=-1) * np.array([1.0, 0.99, 0.96], np.float32)
