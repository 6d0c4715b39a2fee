"""An automatic judge of world-v2 images: is each thing of the prompt there, as many times, where, wearing what?

It knows the world's sprites (the committed atlas) and looks for them, so it needs no training:

1. **Find a thing** by masked normalised cross-correlation (NCC) of the image (at 64 x 64) with the thing's
   sprite templates, drawn exactly as the renderer draws them (every variant; tinted when a colour is asked for;
   with the wearable on; outlined or sketched for those styles) at 7 scales covering every size the world uses.
   Peaks of the best-over-templates NCC map above ``PRESENT`` are candidate copies (non-maximum suppression over
   0.6 template widths).
2. **Make sure it is that thing**: at each candidate, the templates of every other noun of the world are tried at
   the same scale (one scale up and down, +-2 px); the candidate counts only if no other noun matches better by
   more than ``MARGIN``. This is what makes "a dog" fail on a picture of a cat.
3. **Check the words**: count (exactly that many copies for two/three, at least one otherwise), position (the
   best copy's centre inside :data:`POSITION_BANDS`), relation (centres compared), colour (the matched pixels'
   mean colour is nearest to the asked one among the world's six), wearing (the wearable's template at the
   wearer's anchor scores above ``WEAR`` and best among the five wearables), scene (nearest reference background
   by the medians of the top, middle and bottom bands and the speckle rate).

Thresholds were set by :func:`validate` on fresh renders: true captions must pass, captions with one word changed
must fail (``python -m training.judge_emoji`` prints the rates; measured numbers are in ``docs/MODEL_CARD.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, replace
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from explain.world import drawing, emoji
from explain.world import lexicon as lx

__all__ = ["ThingVerdict", "Verdict", "POSITION_BANDS", "judge", "degrade", "validate", "thing_mask"]

SIDE = 64  # the judge's working resolution
SCALES = (8, 10, 13, 16, 20, 25, 31, 38)  # template longest side in px at SIDE
PRESENT, MARGIN, WEAR, COPY_RATIO = 0.5, 0.04, 0.35, 0.75
# A sprite may explain a candidate at most this much worse than a flat blob of its outline in the image's mean colour
# there (calibrated: true renders 0.92 / degraded 0.89 accepted as without the check, blobs 0.35 -> 0.07).
STRUCTURE = -0.10

POSITION_BANDS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "on the left": ((0.0, 0.45), (0.15, 0.85)),
    "on the right": ((0.55, 1.0), (0.15, 0.85)),
    "at the top": ((0.15, 0.85), (0.0, 0.45)),
    "at the bottom": ((0.15, 0.85), (0.55, 1.0)),
    "in the center": ((0.28, 0.72), (0.28, 0.72)),
    "in the top left": ((0.0, 0.48), (0.0, 0.48)),
    "in the top right": ((0.52, 1.0), (0.0, 0.48)),
    "in the bottom left": ((0.0, 0.48), (0.52, 1.0)),
    "in the bottom right": ((0.52, 1.0), (0.52, 1.0)),
}


@dataclass(frozen=True)
class ThingVerdict:
    """What the judge found for one thing of the prompt (centres and boxes as fractions of the canvas)."""

    thing: emoji.Thing
    found: int  # copies found
    present: bool
    count_ok: bool
    position_ok: bool
    color_ok: bool
    wearing_ok: bool
    centre: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None
    score: float = 0.0
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)  # (SIDE, SIDE) bool, matched pixels

    @property
    def ok(self) -> bool:
        return self.present and self.count_ok and self.position_ok and self.color_ok and self.wearing_ok


@dataclass(frozen=True)
class Verdict:
    scene: emoji.Scene
    things: tuple[ThingVerdict, ...]
    relation_ok: bool
    scene_ok: bool
    detected_scene: str | None = field(default=None)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.things) and self.relation_ok and self.scene_ok


# ------------------------------------------------------------------------------------------------ templates


def _odd(rgba: np.ndarray) -> np.ndarray:
    """Pad a patch to odd height and width (so a 'same' convolution centres it)."""
    h, w = rgba.shape[:2]
    return np.pad(rgba, ((0, 1 - h % 2), (0, 1 - w % 2), (0, 0)))


def _styled(rgba: np.ndarray, style: str | None) -> np.ndarray:
    """The patch as the renderer draws it in ``style`` (over a light background for the sketch)."""
    if style is None:
        return rgba
    if style == "outlined":
        canvas = np.zeros((*rgba.shape[:2], 3), np.float32)
        patch = drawing.Patch(rgba, 0, 0, 0)
        cov = drawing.composite(canvas, patch, outlined=True)
        alpha = np.clip(cov - drawing.erode(cov, 1), 0, 1)
        return np.concatenate([canvas / 255.0, np.maximum(alpha, 0.15 * cov)[..., None]], axis=-1)
    paper = np.full((*rgba.shape[:2], 3), drawing.BACKGROUND, np.float32)
    paper = paper * (1 - rgba[..., 3:]) + rgba[..., :3] * 255.0 * rgba[..., 3:]
    return np.concatenate([drawing.sketch(paper) / 255.0, rgba[..., 3:]], axis=-1)


@cache
def _templates(noun: str, color: str | None, wearing: str | None, style: str | None) -> tuple:
    """Every way the renderer can draw a thing, at every scale: tuples (scale, variant, rgba (h, w, 4) at SIDE)."""
    n = lx.noun(noun)
    out = []
    names = [v for v, _ in n.wearer] if wearing else (list(n.sprites) or [""])
    for name in names:
        for s in SCALES:
            if n.group == "shapes":
                rgba = drawing.shape_rgba(noun, s, color or "red")
            else:
                rgba = drawing.sprite_rgba(name, s, color if n.free_color else None)
            if wearing:
                rgba = _with_wearable(rgba, emoji.Thing(noun, wearing=wearing), name)
            out.append((s, name, _odd(_styled(rgba, style))))
    return tuple(out)


def _with_wearable(rgba: np.ndarray, thing: emoji.Thing, name: str) -> np.ndarray:
    """Composite the wearable onto a face patch (on a canvas grown to hold it)."""
    h, w = rgba.shape[:2]
    pad = int(0.6 * max(h, w))
    big = np.zeros((h + 2 * pad, w + 2 * pad, 4), np.float32)
    big[pad : pad + h, pad : pad + w] = rgba
    wear = drawing.wearable_patch(thing, name, (pad, pad, pad + w, pad + h), 1)
    canvas = big[..., :3] * 255.0
    a = big[..., 3].copy()
    cov = drawing.composite(canvas, wear, outlined=False)
    a = np.maximum(a, cov)
    out = np.concatenate([canvas / 255.0, a[..., None]], axis=-1)
    ys, xs = np.nonzero(a > 0.05)
    return out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


@dataclass(frozen=True)
class _Prepared:
    """The image (3, H, W) in [0, 1], its row background ``bg`` (3, H, W) and the residual ``d = img - bg``."""

    img: torch.Tensor
    bg: torch.Tensor
    d: torch.Tensor

    def crop(self, y0: int, y1: int, x0: int, x1: int) -> _Prepared:
        return _Prepared(self.img[:, y0:y1, x0:x1], self.bg[:, y0:y1, x0:x1], self.d[:, y0:y1, x0:x1])


def _row_background(img: torch.Tensor) -> torch.Tensor:
    """Every world background is constant along a row (bands, vertical gradients, speckles aside), so each
    row's background is its most frequent colour (16 levels per channel): (3, H, W)."""
    arr = img.numpy()
    q = np.clip((arr * 15).round().astype(int), 0, 15)
    codes = q[0] * 256 + q[1] * 16 + q[2]  # (H, W)
    rows = np.empty((arr.shape[1], 3), np.float32)
    for y in range(arr.shape[1]):
        vals, counts = np.unique(codes[y], return_counts=True)
        sel = codes[y] == vals[np.argmax(counts)]
        rows[y] = arr[:, y, sel].mean(1)
    bg = torch.from_numpy(rows.T.copy())[:, :, None].expand_as(img)
    return bg.contiguous()


def _prepare(img: torch.Tensor) -> _Prepared:
    bg = _row_background(img)
    return _Prepared(img, bg, img - bg)


def _kernels(rgba: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A (1, 1, h, w), A*T (1, 3, h, w), A^2*T (1, 3, h, w) and sum(A^2 T^2) of a template (A: alpha, T: colour)."""
    t = torch.from_numpy(np.ascontiguousarray(rgba[..., :3].transpose(2, 0, 1)))  # (3, h, w)
    a = torch.from_numpy(np.ascontiguousarray(rgba[..., 3]))[None]  # (1, h, w)
    return a[None], (a * t)[None], (a * a * t)[None], (a * a * t * t).sum()


def _match(prep: _Prepared, rgba: np.ndarray) -> torch.Tensor:
    """Render-and-compare score of a template centred at every pixel ('same'), (H, W).

    The prediction is the template composited over the image's row background; with ``D = I - BG`` the squared
    error over the template's box expands into convolutions of image-aligned maps with template kernels,
    ``SSD = D^2 * 1 + sum A^2 T^2 + BG^2 * A^2 - 2 D * AT + 2 (D BG) * A... `` (see the code; ``*``: correlation).
    Score = 1 - SSD / SSD_background, the share of the box's residual energy the template explains (1: exact,
    <= 0: no better than empty background).
    """
    a, at, a2t, const = _kernels(rgba)
    h, w = a.shape[-2:]
    pad = (h // 2, w // 2)
    d, bg = prep.d[None], prep.bg[None]  # (1, 3, H, W)
    ones = torch.ones_like(a)
    conv = F.conv2d
    null = conv((d * d).sum(1, keepdim=True), ones, padding=pad)
    ssd = (
        null
        + const
        + conv((bg * bg).sum(1, keepdim=True), a * a, padding=pad)
        - 2 * conv(d, at, padding=pad)
        + 2 * conv((d * bg).sum(1, keepdim=True), a, padding=pad)
        - 2 * conv(bg, a2t, padding=pad)
    )
    floor = 0.02 * float(a.sum())  # a little energy, so that empty background scores <= 0 for any template
    return (1 - ssd / (null + floor))[0, 0]


def _peaks(score: torch.Tensor, radius: int, floor: float) -> list[tuple[int, int, float]]:
    """Local maxima of a (H, W) map above ``floor``, at least ``radius`` apart, best first."""
    k = 2 * radius + 1
    pooled = F.max_pool2d(score[None, None], k, stride=1, padding=radius)[0, 0]
    ys, xs = torch.nonzero((score >= pooled) & (score >= floor), as_tuple=True)
    found = sorted(((int(y), int(x), float(score[y, x])) for y, x in zip(ys, xs, strict=True)), key=lambda p: -p[2])
    kept: list[tuple[int, int, float]] = []
    for p in found:
        if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= radius**2 for q in kept):
            kept.append(p)
    return kept


def _to_tensor(image) -> torch.Tensor:
    """(3, SIDE, SIDE) float in [0, 1]."""
    img = Image.fromarray(np.asarray(image)) if not isinstance(image, Image.Image) else image
    arr = np.asarray(img.convert("RGB").resize((SIDE, SIDE), Image.BOX), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())  # (3, SIDE, SIDE)


def _local_best(prep: _Prepared, rgba: np.ndarray, y: int, x: int, r: int = 2) -> float:
    """Best score of a template within +-r px of (y, x)."""
    h, w = rgba.shape[:2]
    y0, x0 = max(0, y - h // 2 - r), max(0, x - w // 2 - r)
    crop = prep.crop(y0, y + h // 2 + r + 1, x0, x + w // 2 + r + 1)
    if crop.img.shape[1] < 3 or crop.img.shape[2] < 3:
        return -1.0
    score = _match(crop, rgba)
    cy, cx = y - y0, x - x0
    win = score[max(0, cy - r) : cy + r + 1, max(0, cx - r) : cx + r + 1]
    return float(win.max()) if win.numel() else -1.0


@cache
def _bank(scale: int, style: str | None) -> tuple[torch.Tensor, ...]:
    """Every noun's templates at one scale on a common L x L canvas (L: odd, holds the largest one).

    Returns A (K, L*L), A*T (K, 3*L*L), A^2*T (K, 3*L*L), sum A^2 T^2 (K,) and each template's noun.
    """
    entries = []
    for other in lx.NOUNS.values():
        if other.group == "wearables":
            continue
        for c in tuple(lx.COLORS) if other.group == "shapes" else (None,):
            entries += [(other.word, r) for s, _, r in _templates(other.word, c, None, style) if s == scale]
        for wear in lx.WEARABLES if other.wearer else ():  # faces wearing things look like themselves
            entries += [(other.word, r) for s, _, r in _templates(other.word, None, wear, style) if s == scale]
    side = max(max(r.shape[:2]) for _, r in entries) | 1
    rows = []
    for _, r in entries:
        canvas = np.zeros((side, side, 4), np.float32)
        h, w = r.shape[:2]
        y0, x0 = (side - h) // 2, (side - w) // 2
        canvas[y0 : y0 + h, x0 : x0 + w] = r
        a, at, a2t, const = _kernels(canvas)
        rows.append((a.flatten(), at.flatten(), a2t.flatten(), const))
    a, at, a2t, const = (torch.stack([row[i] for row in rows]) for i in range(4))
    return a, at, a2t, const, tuple(n for n, _ in entries)


def _bank_scores(prep: _Prepared, scale: int, style: str | None, y: int, x: int, r: int = 2) -> dict[str, float]:
    """Best score (as :func:`_match`) of every noun's templates at ``scale`` within +-r px of (y, x)."""
    a, at, a2t, const, names = _bank(scale, style)
    side = int(round(a.shape[1] ** 0.5))
    pad = side // 2 + r

    def windows(x_: torch.Tensor) -> torch.Tensor:  # (C, H, W) -> (shifts, C*L*L)
        padded = F.pad(x_[None], (pad, pad, pad, pad), mode="replicate")[0]
        win = padded[:, y : y + 2 * pad + 1, x : x + 2 * pad + 1]
        return F.unfold(win[None], side)[0].T

    d, bg = windows(prep.d), windows(prep.bg)
    d2 = windows((prep.d * prep.d).sum(0, keepdim=True))  # (S, L*L)
    bg2 = windows((prep.bg * prep.bg).sum(0, keepdim=True))
    dbg = windows((prep.d * prep.bg).sum(0, keepdim=True))
    null = d2.sum(1, keepdim=True)  # (S, 1)
    ssd = null + const[None] + bg2 @ (a * a).T - 2 * d @ at.T + 2 * dbg @ a.T - 2 * bg @ a2t.T  # (S, K)
    score = 1 - ssd / (null + 0.02 * a.sum(1)[None])
    best = score.max(0).values  # (K,)
    out: dict[str, float] = {}
    for name, v in zip(names, best.tolist(), strict=True):
        out[name] = max(out.get(name, -1.0), v)
    return out


def _is_that_thing(prep: _Prepared, noun: str, scale: int, y: int, x: int, own: float, style) -> bool:
    """No other noun's template explains the candidate better (by more than MARGIN) at about the same scale."""
    i = SCALES.index(scale)
    for s in SCALES[max(0, i - 1) : i + 2]:
        scores = _bank_scores(prep, s, style, y, x)
        if any(v > own + MARGIN for k, v in scores.items() if k != noun):
            return False
    return True


def _mean_color_ok(img: torch.Tensor, rgba: np.ndarray, y: int, x: int, color: str) -> bool:
    """The matched pixels' mean chroma is nearest to ``color`` among the world's colours."""
    h, w = rgba.shape[:2]
    y0, x0 = y - h // 2, x - w // 2
    ys, xs = np.nonzero(rgba[..., 3] > 0.5)
    ys, xs = ys + y0, xs + x0
    keep = (ys >= 0) & (ys < SIDE) & (xs >= 0) & (xs < SIDE)
    if not keep.any():
        return False
    pix = img[:, ys[keep], xs[keep]].T.numpy()  # (n, 3)
    sat = pix.max(1) - pix.min(1)
    pix = pix[sat >= np.percentile(sat, 50)] if len(pix) > 4 else pix  # the colourful half
    mean = pix.mean(0)
    chroma = mean - mean.mean()
    names = list(lx.COLORS)
    ref = np.array([lx.COLORS[c] for c in names], np.float32) / 255.0
    ref_chroma = ref - ref.mean(1, keepdims=True)
    cos = ref_chroma @ chroma / (np.linalg.norm(ref_chroma, axis=1) * max(np.linalg.norm(chroma), 1e-6))
    return names[int(np.argmax(cos))] == color


def _wearing_ok(prep: _Prepared, t: emoji.Thing, name: str, rgba_face: np.ndarray, y: int, x: int) -> bool:
    """The asked wearable, drawn at the wearer's anchor, beats the other wearables there."""
    h, w = rgba_face.shape[:2]
    scores = {}
    for wear in lx.WEARABLES:
        whole = _templates(t.noun, None, wear, None)
        cands = [r for s, v, r in whole if v == name and abs(r.shape[1] - w) <= max(3, 0.25 * w)]
        scores[wear] = max((_local_best(prep, r, y, x, r=3) for r in cands), default=-1.0)
    best = max(scores, key=scores.get)
    return best == t.wearing and scores[best] >= WEAR


def _pixels_under(img: torch.Tensor, rgba: np.ndarray, y: int, x: int) -> np.ndarray:
    """(n, 3) image pixels under a template's opaque part centred at (y, x), clipped at the borders."""
    h, w = rgba.shape[:2]
    ys, xs = np.nonzero(rgba[..., 3] > 0.5)
    ys, xs = ys + y - h // 2, xs + x - w // 2
    keep = (ys >= 0) & (ys < img.shape[1]) & (xs >= 0) & (xs < img.shape[2])
    return img[:, ys[keep], xs[keep]].T.numpy()


def _has_structure(prep: _Prepared, rgba: np.ndarray, y: int, x: int, own: float) -> bool:
    """The sprite explains the candidate about as well as (within -STRUCTURE of) a flat blob of its outline in the
    image's own mean colour there, or better: what an undertrained generator draws matches outline and hue, not the
    drawing, and a flat twin explains such a blob far better than the sprite does."""
    pix = _pixels_under(prep.img, rgba, y, x)
    if not len(pix):
        return False
    flat = rgba.copy()
    flat[..., :3] = pix.mean(0)
    return own >= _local_best(prep, flat, y, x) + STRUCTURE


def _scale_range(t: emoji.Thing, n_things: int) -> tuple[float, float]:
    """Template sizes (longest side at SIDE) a thing of this size word and count can have, with leeway."""
    longest = lx.SIZES[t.size] * SIDE * {1: 1.0, 2: 0.7, 3: 0.56}[t.count] * (0.8 if n_things >= 3 else 1.0)
    return 0.62 * longest, 1.45 * longest


def _find(prep: _Prepared, t: emoji.Thing, style: str | None, n_things: int) -> ThingVerdict:
    n = lx.noun(t.noun)
    color = t.color if (n.free_color or n.group == "shapes") else None
    best_map, best_idx = None, None
    lo, hi = _scale_range(t, n_things)
    temps = tuple(e for e in _templates(t.noun, color, t.wearing, style) if lo <= e[0] <= hi)
    for i, (_, _, rgba) in enumerate(temps):
        score = _match(prep, rgba)
        if best_map is None:
            best_map, best_idx = score, torch.zeros_like(score, dtype=torch.long)
        else:
            better = score > best_map
            best_map = torch.where(better, score, best_map)
            best_idx = torch.where(better, torch.full_like(best_idx, i), best_idx)
    copies = []
    for y, x, sc in _peaks(best_map, 2, PRESENT):
        s, name, rgba = temps[int(best_idx[y, x])]
        h, w = rgba.shape[:2]
        if any(
            abs(y - c[0]) < 0.4 * (h + c[5].shape[0]) and abs(x - c[1]) < 0.4 * (w + c[5].shape[1]) for c in copies
        ):
            continue  # the same copy seen at another scale or offset
        if copies and sc < COPY_RATIO * copies[0][2]:
            break  # copies of one thing match about equally well; the rest are look-alikes
        sprite = n.group != "shapes"  # shapes are flat: their outline and colour are all there is to them
        if (not sprite or _has_structure(prep, rgba, y, x, sc)) and _is_that_thing(prep, t.noun, s, y, x, sc, style):
            copies.append((y, x, sc, s, name, rgba))
        if len(copies) >= 4:
            break
    if not copies:
        return ThingVerdict(t, 0, False, False, False, False, False)
    y, x, sc, s, name, rgba = copies[0]
    centre = (x / SIDE, y / SIDE)
    h, w = rgba.shape[:2]
    box = ((x - w / 2) / SIDE, (y - h / 2) / SIDE, (x + w / 2) / SIDE, (y + h / 2) / SIDE)
    count_ok = len(copies) == t.count if t.count > 1 else True
    if t.count > 1:
        centres = [(c[1] / SIDE, c[0] / SIDE) for c in copies[: t.count]]
        centre = tuple(np.mean(centres, axis=0).tolist())
    pos_ok = True
    if t.position:
        (x0, x1), (y0, y1) = POSITION_BANDS[t.position]
        pos_ok = x0 <= centre[0] <= x1 and y0 <= centre[1] <= y1
    color_ok = True if color is None or style == "as a sketch" else _mean_color_ok(prep.img, rgba, y, x, color)
    face = [r for s2, v, r in _templates(t.noun, None, None, None) if v == name and s2 == s] if t.wearing else []
    wear_ok = True if not t.wearing else _wearing_ok(prep, t, name, face[0] if face else rgba, y, x)
    mask = np.zeros((SIDE, SIDE), bool)
    for cy, cx, *_, r in copies[: max(1, t.count)]:
        _paste(mask, r[..., 3] > 0.5, cy, cx)
    return ThingVerdict(t, len(copies), True, count_ok, pos_ok, color_ok, wear_ok, centre, box, sc, mask)


def _paste(canvas: np.ndarray, m: np.ndarray, y: int, x: int) -> None:
    """OR a (h, w) mask centred at (y, x) into ``canvas``, clipped at the borders."""
    h, w = m.shape
    y0, x0 = y - h // 2, x - w // 2
    ys, xs = slice(max(0, y0), min(canvas.shape[0], y0 + h)), slice(max(0, x0), min(canvas.shape[1], x0 + w))
    canvas[ys, xs] |= m[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]


def _relation_ok(a: ThingVerdict, b: ThingVerdict) -> bool:
    rel = a.thing.relation
    if not rel or a.centre is None or b.centre is None:
        return rel is None or False
    (ax, ay), (bx, by) = a.centre, b.centre
    if rel == "above" or rel == "on top of":
        return ay < by - 0.05 and abs(ax - bx) < 0.3
    if rel == "below":
        return ay > by + 0.05 and abs(ax - bx) < 0.3
    return abs(ax - bx) > 0.12 and abs(ay - by) < 0.3  # next to


@cache
def _scene_references() -> tuple[tuple[str | None, np.ndarray], ...]:
    rng = np.random.default_rng(99)
    refs = []
    for s in (None, *lx.SCENES):
        for _ in range(6):
            img = drawing.background(s, SIDE, rng)
            refs.append((s, _scene_features(np.clip(img, 0, 255) / 255.0)))
    return tuple(refs)


def _scene_features(arr: np.ndarray) -> np.ndarray:
    """Medians of the top, middle and bottom bands (RGB) and the speckle rate: (10,)."""
    bands = [arr[: SIDE // 5], arr[2 * SIDE // 5 : 3 * SIDE // 5], arr[-SIDE // 5 :]]
    med = [np.median(b.reshape(-1, 3), axis=0) for b in bands]
    lum = arr @ np.array([0.299, 0.587, 0.114], np.float32)
    speck = float((lum > np.median(lum) + 0.35).mean())
    return np.concatenate([*med, [speck * 5]])


def detect_scene(image) -> str | None:
    """The nearest reference background (None: the plain light background)."""
    arr = _to_tensor(image).numpy().transpose(1, 2, 0)
    f = _scene_features(arr)
    return min(_scene_references(), key=lambda r: float(np.abs(r[1] - f).sum()))[0]


def judge(image, prompt_or_scene: str | emoji.Scene) -> Verdict:
    """Judge whether an image shows what a world-v2 prompt asks for.

    Raises:
        ValueError: the prompt is not in the world grammar.
    """
    scene = prompt_or_scene if isinstance(prompt_or_scene, emoji.Scene) else emoji.parse_prompt(prompt_or_scene)
    if scene is None:
        raise ValueError(f"prompt is not in world v2's grammar: {prompt_or_scene!r}")
    prep = _prepare(_to_tensor(image))
    things = tuple(_find(prep, t, scene.style, len(scene.things)) for t in scene.things)
    rel_ok = all(_relation_ok(things[i], things[i + 1]) for i, t in enumerate(scene.things) if t.relation)
    found_scene = detect_scene(image) if scene.style != "as a sketch" else scene.scene
    scene_ok = scene.scene is None or found_scene == scene.scene
    return Verdict(scene, things, rel_ok, scene_ok, found_scene)


def thing_mask(verdict: ThingVerdict, size: int) -> np.ndarray | None:
    """The judged pixels of a thing (its matched templates' silhouettes) as a (size, size) bool mask."""
    if verdict.mask is None:
        return None
    return np.asarray(Image.fromarray(verdict.mask).resize((size, size), Image.NEAREST))


# ------------------------------------------------------------------------------------------------ validation


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Make a clean render look like generator output: blur, a small colour shift and noise."""
    img = Image.fromarray(image).filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.3)))
    arr = np.asarray(img, np.float32) + rng.normal(0, 6, size=3) + rng.normal(0, 5, size=image.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def blob(rendered: emoji.RenderedScene, rng: np.random.Generator) -> np.ndarray:
    """What an undertrained model draws: every thing in its place and size, as a blurred flat blob of one dull
    colour (the scene's own background kept). A garbage negative: the judge must reject it for the true caption."""
    image = rendered.image.astype(np.float32)
    dull = np.array([120, 90, 60], np.float32) + rng.normal(0, 20, size=3)  # brown, as the CPU checkpoints drew
    for mask in rendered.masks:
        image[mask] = 0.5 * image[mask].mean(axis=0) + 0.5 * dull  # (k, 3): the thing's mean hue, dulled
    out = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    return np.asarray(out.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.5))))


def _other(rng, items, current):
    items = [i for i in items if i != current]
    return items[int(rng.integers(len(items)))]


_OPPOSITE = {
    "on the left": "on the right",
    "on the right": "on the left",
    "at the top": "at the bottom",
    "at the bottom": "at the top",
    "in the center": "in the top left",
    "in the top left": "in the bottom right",
    "in the bottom right": "in the top left",
    "in the top right": "in the bottom left",
    "in the bottom left": "in the top right",
}


def change_one_word(scene: emoji.Scene, rng: np.random.Generator) -> tuple[emoji.Scene, str]:
    """The scene with one word of one thing (or the scene word) changed so that the image no longer fits."""
    i = int(rng.integers(len(scene.things)))
    t = scene.things[i]
    options = ["noun"]
    if t.count > 1:
        options.append("count")
    if t.position:
        options.append("position")
    if t.wearing:
        options.append("wearing")
    if t.color:
        options.append("color")
    if scene.scene:
        options.append("scene")
    kind = options[int(rng.integers(len(options)))]
    if kind == "scene":
        return replace(scene, scene=_other(rng, lx.SCENES, scene.scene)), kind
    if kind == "noun":
        present = {x.noun for x in scene.things}
        if t.wearing:
            pool = [w for w in emoji.WEARER_NOUNS if w not in present]
        elif t.color:
            pool = [w for w, m in lx.NOUNS.items() if m.free_color and m.group != "wearables" and w not in present]
        else:
            pool = [w for w, m in lx.NOUNS.items() if m.group not in ("wearables", "shapes") and w not in present]
        new = replace(t, noun=_other(rng, pool, t.noun))
    elif kind == "count":
        new = replace(t, count=5 - t.count)  # 2 <-> 3
    elif kind == "position":
        new = replace(t, position=_OPPOSITE[t.position])
    elif kind == "wearing":
        new = replace(t, wearing=_other(rng, lx.WEARABLES, t.wearing), wearing_color=None)
    else:
        new = replace(t, color=_other(rng, tuple(lx.COLORS), t.color))
    things = list(scene.things)
    things[i] = new
    return replace(scene, things=tuple(things)), kind


def validate(n: int = 200, seed: int = 777, degraded: bool = False) -> dict:
    """Accept rate on true captions and false-accept rate on one-word-changed captions, over fresh renders."""
    rng = np.random.default_rng(seed)
    true_ok, false_ok, blob_ok, by_kind = [], [], [], {}
    for _ in range(n):
        r = emoji.render(emoji.sample_scene(rng), emoji.IMAGE_SIZE, rng)
        img = degrade(r.image, rng) if degraded else r.image
        true_ok.append(judge(img, r.scene).ok)
        blob_ok.append(judge(blob(r, rng), r.scene).ok)
        changed, kind = change_one_word(r.scene, rng)
        accepted = judge(img, changed).ok
        false_ok.append(accepted)
        by_kind.setdefault(kind, []).append(accepted)
    return {
        "n": n,
        "degraded": degraded,
        "accept_true": float(np.mean(true_ok)),
        "accept_changed": float(np.mean(false_ok)),
        "accept_blobs": float(np.mean(blob_ok)),  # garbage negatives (:func:`blob`): should be near 0
        "accept_changed_by_word": {k: [float(np.mean(v)), len(v)] for k, v in sorted(by_kind.items())},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.judge_emoji", description=__doc__)
    p.add_argument("-n", type=int, default=200)
    p.add_argument("--seed", type=int, default=777)
    args = p.parse_args(argv)
    out = {"clean": validate(args.n, args.seed), "degraded": validate(args.n, args.seed + 1, degraded=True)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
