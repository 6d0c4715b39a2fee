"""The judge's segmentation: each row's background, colour unmixing against the world palette, per-colour regions.

Steps 1-3 of :mod:`explain.world.judging` (numpy only); binary morphology on small (H, W) bool arrays.
"""

from __future__ import annotations

import numpy as np

from explain import world

_PALETTE_NAMES: tuple[str, ...] = tuple(world.COLORS)
_PALETTE = np.array([world.COLORS[c] for c in _PALETTE_NAMES], np.float32)  # (6, 3)
# Reference background colours: the world's backgrounds (see world._background) plus neutral extremes.
BACKGROUND_AGREE = 40.0  # RGB distance under which a row's left and right edge colours agree (background)
BACKGROUND_ROWS = 3  # a pixel's background candidates: its row's colour and those BACKGROUND_ROWS above/below
MAX_RESIDUAL = 48.0  # RGB units: farther than this from every blend line -> unexplained -> background
WEAK_ALPHA = 0.3  # object pixels are at least this much object colour (blurred outlines and stripes are faint) ...
MIN_ALPHA = 0.5  # ... and belong to a region reaching this alpha somewhere ...
LINE_MIN_AREA = 0.006  # ... or covering this fraction of the canvas (a blurred outline never reaching MIN_ALPHA)
CORE_ALPHA = 0.75  # pixels this confident, with 4-neighbours as confident, form an object's solid core ...
CORE_MIN_PIXELS = 6  # ... of at least this many pixels; coreless colours in a region are fringes of another
DOMINANT_SHARE = 0.7  # fringes join a coreless dominant colour holding this share (alpha^2-weighted) of the region

# Palette colours whose blurred or striped edges read as each other (hue within ~55 degrees).
HUE_NEIGHBOURS: frozenset[frozenset[str]] = frozenset(
    frozenset(pair) for pair in (("red", "orange"), ("orange", "yellow"), ("blue", "purple"))
)
BLEED_NEAR_FRACTION = 0.5  # ... and bleeding lies mostly within 2 px of the object (a touching object does not)


def _shifts(p: np.ndarray, h: int, w: int, conn: int) -> list[np.ndarray]:
    offs = [(0, 1), (1, 0), (1, 2), (2, 1), (1, 1)]
    if conn == 8:
        offs += [(0, 0), (0, 2), (2, 0), (2, 2)]
    return [p[dy : dy + h, dx : dx + w] for dy, dx in offs]


def _dilate(m: np.ndarray, conn: int = 8) -> np.ndarray:
    h, w = m.shape
    return np.logical_or.reduce(_shifts(np.pad(m, 1, constant_values=False), h, w, conn))


def _erode(m: np.ndarray, conn: int = 8) -> np.ndarray:
    h, w = m.shape
    return np.logical_and.reduce(_shifts(np.pad(m, 1, constant_values=True), h, w, conn))


def _close(m: np.ndarray, iterations: int) -> np.ndarray:
    out = m
    for _ in range(iterations):
        out = _dilate(out)
    for _ in range(iterations):
        out = _erode(out)
    return out | m


def _fill_holes(m: np.ndarray) -> np.ndarray:
    """Pixels not 4-connected to the canvas border through the complement are holes: fill them."""
    free = ~m
    reach = np.zeros_like(m)
    reach[0, :], reach[-1, :], reach[:, 0], reach[:, -1] = free[0, :], free[-1, :], free[:, 0], free[:, -1]
    while True:
        grown = _dilate(reach, conn=4) & free
        if np.array_equal(grown, reach):
            return ~reach
        reach = grown


def _components(m: np.ndarray) -> list[np.ndarray]:
    """8-connected components of ``m`` as bool masks (min-label propagation)."""
    h, w = m.shape
    big = h * w + 1
    labels = np.where(m, np.arange(1, h * w + 1).reshape(h, w), big)
    while True:
        p = np.pad(labels, 1, constant_values=big)
        new = np.where(m, np.minimum.reduce(_shifts(p, h, w, 8)), big)
        if np.array_equal(new, labels):
            break
        labels = new
    return [labels == v for v in np.unique(labels[m])]


def _hull_area(m: np.ndarray) -> float:
    """Area of the convex hull of the pixel squares of ``m`` (Andrew's monotone chain)."""
    ys, xs = np.nonzero(m)
    pts: set[tuple[int, int]] = set()
    for y in np.unique(ys):
        row = xs[ys == y]
        for x in (int(row.min()), int(row.max()) + 1):
            pts.update({(x, int(y)), (x, int(y) + 1)})
    p = sorted(pts)
    if len(p) < 3:
        return float(m.sum())

    def cross(o: tuple[int, int], a: tuple[int, int], b: tuple[int, int]) -> int:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[int, int]] = []
    upper: list[tuple[int, int]] = []
    for q in p:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], q) <= 0:
            lower.pop()
        lower.append(q)
    for q in reversed(p):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], q) <= 0:
            upper.pop()
        upper.append(q)
    hull = lower[:-1] + upper[:-1]
    x = np.array([q[0] for q in hull], np.float64)
    y = np.array([q[1] for q in hull], np.float64)
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


# ---------------------------------------------------------------------------------------------------------------
# Colour segmentation.


def _unmix(pixels: np.ndarray, backgrounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best palette/background blend ``p = b + a (c - b)`` per pixel, a in [0, 1].

    Args:
        pixels: (N, 3) float RGB.
        backgrounds: (N, K, 3) float RGB, K candidate background colours per pixel.

    Returns:
        (N,) palette index of the best blend's object colour, (N,) its alpha (object fraction) and (N,) its
        residual (RGB distance from the pixel to the blend segment).
    """
    b = backgrounds[:, None, :, :]  # (N, 1, K, 3)
    d = _PALETTE[None, :, None, :] - b  # (N, P, K, 3) blend directions
    diff = pixels[:, None, None, :] - b  # (N, 1, K, 3)
    alpha = np.clip((diff * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-6), 0.0, 1.0)  # (N, P, K)
    resid = np.linalg.norm(diff - alpha[..., None] * d, axis=-1)  # (N, P, K)
    n, p, k = resid.shape
    best = resid.reshape(n, p * k).argmin(1)
    rows = np.arange(n)
    bp, bk = np.divmod(best, k)
    return bp, alpha[rows, bp, bk], resid[rows, bp, bk]


def _row_background(img: np.ndarray) -> np.ndarray:
    """Background colour per row, (H, 3), from the left and right canvas edges.

    Every world background is constant along a row (light, night, sky over grass, vertical sunset gradient). Each
    row's edge colour is the median of a 3x3 block at the left and at the right edge; rows whose two edges
    disagree (an object touches an edge) take the colour of the nearest rows where they agree.
    """
    h, w, _ = img.shape
    pad = np.pad(img, ((1, 1), (0, 0), (0, 0)), mode="edge")
    left = np.median(np.stack([pad[i : i + h, j] for i in range(3) for j in range(3)]), 0)  # (H, 3)
    right = np.median(np.stack([pad[i : i + h, w - 1 - j] for i in range(3) for j in range(3)]), 0)
    agree = np.linalg.norm(left - right, axis=-1) <= BACKGROUND_AGREE
    mid = (left + right) / 2
    if not agree.any():  # no two edges agree: no row structure to rely on, take the darker-saturated mean
        return mid
    ys = np.arange(h)
    return np.stack([np.interp(ys, ys[agree], mid[agree, ch]) for ch in range(3)], -1)


def _color_masks(image: np.ndarray) -> list[np.ndarray]:
    """Per palette colour, the (H, W) bool pixels that belong to it, before closing and hole filling."""
    img = image.astype(np.float32)
    h, w, _ = img.shape
    rows = _row_background(img)  # (H, 3)
    offsets = (-BACKGROUND_ROWS, 0, BACKGROUND_ROWS)  # neighbouring rows too: a blurred or tilted horizon
    cand = np.stack([rows[np.clip(np.arange(h) + o, 0, h - 1)] for o in offsets], 1)  # (H, K, 3)
    cand = np.broadcast_to(cand[:, None], (h, w, len(offsets), 3)).reshape(h * w, len(offsets), 3)
    idx, a, r = _unmix(img.reshape(-1, 3), cand)
    a, r, idx = a.reshape(h, w), r.reshape(h, w), idx.reshape(h, w)
    labels = np.where((r <= MAX_RESIDUAL) & (a >= WEAK_ALPHA), idx, -1)
    # Fringes: blurred edges of an orange disc can unmix as red or yellow. A colour with no solid core (CORE_ALPHA
    # pixels whose 4-neighbours are too) inside a connected region is a fringe: it joins the region's dominant
    # colour (alpha^2-weighted) when that one has a core or holds DOMINANT_SHARE of the region. Touching objects
    # of different colours each have a core and stay apart.
    solid = np.stack([(labels == ci) & (a >= CORE_ALPHA) for ci in range(len(_PALETTE))])
    for comp in _components(labels >= 0):
        weights = np.bincount(labels[comp], weights=a[comp] ** 2, minlength=len(_PALETTE))
        cores = (solid & comp).sum((1, 2)) >= CORE_MIN_PIXELS
        dom = int(weights.argmax())
        if cores[dom] or weights[dom] >= DOMINANT_SHARE * weights.sum():
            fringe = comp & (labels >= 0) & ~cores[np.maximum(labels, 0)]
            labels[fringe] = dom
    out = []
    for ci in range(len(_PALETTE)):
        keep = np.zeros((h, w), bool)
        for comp in _components(labels == ci):  # confident somewhere, or long enough to be a blurred outline
            if a[comp].max() >= MIN_ALPHA or comp.sum() >= LINE_MIN_AREA * h * w:
                keep |= comp
        out.append(keep)
    return out
