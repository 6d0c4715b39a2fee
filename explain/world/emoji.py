"""World v2: emoji sprites and flat shapes, 1-3 objects, counts, colours, ``wearing``, relations, scenes, styles.

Every image is drawn from a :class:`Scene`, so its caption, the character span of every word that names something
and each thing's exact mask (the sprite's alpha) are known; that is what keeps attention faithfulness measurable.
Rendering is deterministic per ``np.random.Generator``. The grammar (scene types, captions, sampling, parsing)
lives in :mod:`explain.world.grammar`, the drawing primitives in :mod:`explain.world.drawing`; this module lays a
scene out and renders it, and re-exports the grammar's names so ``emoji.Scene`` etc. keep working.

Grammar (``../shared/WORLD2.md``; the words live in :mod:`explain.world.lexicon`)::

    PROMPT  THING [(and | RELATION) THING]* [SCENE] [, STYLE]
    THING   (a|an|one|two|three) [big|small] [cute] [COLOUR] NOUN [wearing a|an [COLOUR] WEARABLE] [POSITION]

    RELATION  next to, above, below, on top of (the thing before it relative to the thing after it)
    POSITION  on the left/right, at the top/bottom, in the center, in the top/bottom left/right
    SCENE     on the grass, on the beach, at night, in the snow, in space, underwater
    STYLE     outlined, as a sketch

Colour words go with the shapes and with nouns whose colour is free (balloon, car, flower, umbrella, book, hat).
``wearing`` goes with animals that have a face sprite and with robot and ghost: sunglasses over the eyes, hat and
crown on the head, scarf and bow under the chin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from explain.world import lexicon as lx
from explain.world.drawing import (
    BACKGROUND,
    Patch,
    background,
    composite,
    shape_rgba,
    sketch,
    sprite_rgba,
    wearable_patch,
)
from explain.world.grammar import (
    PAIRS,
    WEARER_NOUNS,
    Scene,
    Thing,
    WordLabel,
    caption,
    parse_prompt,
    pick,
    sample_scene,
)

__all__ = [
    "IMAGE_SIZE",
    "BACKGROUND",
    "PAIRS",
    "Thing",
    "Scene",
    "WordLabel",
    "RenderedScene",
    "caption",
    "sample_scene",
    "render",
    "parse_prompt",
    "make_batch",
    "WEARER_NOUNS",
]

IMAGE_SIZE = 128


@dataclass(frozen=True)
class RenderedScene:
    """A drawn scene with its labels.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        masks: (M, H, W) bool, visible pixels of each thing (all copies of a counted thing together), then of each
            wearable; later things occlude earlier ones.
        instances: per thing, the number of copies drawn.
        boxes: per mask, (x0, y0, x1, y1) of its drawn box in pixels.
        caption: the caption text; ``words`` its labelled words.
    """

    image: np.ndarray
    masks: np.ndarray
    instances: tuple[int, ...]
    boxes: tuple[tuple[float, float, float, float], ...]
    caption: str
    words: tuple[WordLabel, ...]
    scene: Scene = field(repr=False)


def _thing_patches(t: Thing, rng: np.random.Generator, n_things: int, size: int) -> tuple[list[np.ndarray], str]:
    """The RGBA patches of each copy of a thing and the sprite name used ('' for shapes)."""
    n = lx.noun(t.noun)
    longest = lx.SIZES[t.size] * size * rng.uniform(0.9, 1.1) * (0.8 if n_things >= 3 else 1.0)
    longest *= {1: 1.0, 2: 0.7, 3: 0.56}[t.count]
    if n.group == "shapes":
        return [shape_rgba(n.word, longest, t.color) for _ in range(t.count)], ""
    name = pick(rng, tuple(dict(n.wearer))) if t.wearing else pick(rng, n.sprites)
    return [sprite_rgba(name, longest * rng.uniform(0.95, 1.05), t.color) for _ in range(t.count)], name


def _group_extent(patches: list[np.ndarray], gap: float) -> tuple[float, float]:
    """Width and height of a row of copies."""
    return sum(p.shape[1] for p in patches) + gap * (len(patches) - 1), max(p.shape[0] for p in patches)


def _headroom(t: Thing, h: float) -> tuple[float, float]:
    """Room a wearable needs above (hat, crown) or below (scarf, bow) its wearer's box."""
    return (0.45 * h if t.wearing in ("hat", "crown") else 0.0, 0.3 * h if t.wearing in ("scarf", "bow") else 0.0)


def _layout(scene: Scene, groups: list[list[np.ndarray]], size: int, rng: np.random.Generator) -> list[tuple]:
    """Centre (cx, cy) of every thing's row of copies, honouring positions and relations, inside the canvas."""
    n = len(groups)
    ext = [_group_extent(g, 0.08 * size) for g in groups]
    centres: list[tuple[float, float] | None] = [None] * n
    order = list(range(n))[::-1]  # relation targets come after their subjects: place them first
    for i in order:
        t = scene.things[i]
        w, h = ext[i]
        if t.relation and centres[i + 1] is not None:
            tx, ty = centres[i + 1]
            tw, th = ext[i + 1]
            gap = 0.04 * size
            if t.relation == "above":
                c = (tx + rng.uniform(-0.05, 0.05) * size, ty - th / 2 - gap - h / 2)
            elif t.relation == "below":
                c = (tx + rng.uniform(-0.05, 0.05) * size, ty + th / 2 + gap + h / 2 + _headroom(t, h)[0])
            elif t.relation == "on top of":
                c = (tx + rng.uniform(-0.03, 0.03) * size, ty - th / 2 - h / 2 + 0.12 * min(h, th))
            else:  # next to
                side = 1 if (tx < size / 2) == (rng.random() < 0.85) else -1
                c = (tx + side * (tw / 2 + gap + w / 2), ty + (th - h) / 2 * rng.uniform(-0.3, 0.3))
        elif t.position:
            fx, fy = lx.POSITIONS[t.position]
            c = ((fx + rng.uniform(-0.04, 0.04)) * size, (fy + rng.uniform(-0.04, 0.04)) * size)
        else:
            c = _free_spot(w, h, [(centres[j], ext[j]) for j in range(n) if centres[j] is not None], size, rng)
        centres[i] = c
    out = []
    for (cx, cy), (w, h), t in zip(centres, ext, scene.things, strict=True):
        top, bottom = _headroom(t, h)
        cx = float(np.clip(cx, w / 2 + 1, size - w / 2 - 1)) if w < size - 2 else size / 2
        cy = (
            float(np.clip(cy, h / 2 + 1 + top, size - h / 2 - 1 - bottom)) if h + top + bottom < size - 2 else size / 2
        )
        out.append((cx, cy))
    return out


def _free_spot(w, h, placed, size: int, rng: np.random.Generator) -> tuple[float, float]:
    """A random centre for a w x h box that overlaps the placed boxes as little as possible (best of 24 tries)."""
    best, best_cost = (size / 2, size / 2), float("inf")
    for _ in range(24):
        c = (rng.uniform(w / 2, size - w / 2), rng.uniform(h / 2, size - h / 2))
        cost = 0.0
        for (px, py), (pw, ph) in placed:
            ox = max(0.0, (w + pw) / 2 - abs(c[0] - px))
            oy = max(0.0, (h + ph) / 2 - abs(c[1] - py))
            cost += ox * oy
        if cost < best_cost:
            best, best_cost = c, cost
        if cost == 0:
            break
    return best


def render(scene: Scene, size: int = IMAGE_SIZE, rng: np.random.Generator | None = None) -> RenderedScene:
    """Draw a scene at ``size`` x ``size`` with small random jitter of placement and scale."""
    rng = rng if rng is not None else np.random.default_rng(0)
    img = background(scene.scene, size, rng)
    groups, names = zip(*(_thing_patches(t, rng, len(scene.things), size) for t in scene.things), strict=True)
    centres = _layout(scene, list(groups), size, rng)
    patches: list[Patch] = []
    n_wear = sum(bool(t.wearing) for t in scene.things)
    wear_mask = len(scene.things)
    for i, (t, copies, (cx, cy)) in enumerate(zip(scene.things, groups, centres, strict=True)):
        w, _ = _group_extent(copies, 0.08 * size)
        x = cx - w / 2
        row = []
        for rgba in copies:
            ph, pw = rgba.shape[:2]
            row.append(Patch(rgba, x, cy - ph / 2, i))
            x += pw + 0.08 * size
        patches += row
        if t.wearing:
            patches.append(wearable_patch(t, names[i], row[0].box, wear_mask))
            wear_mask += 1
    draw_order = list(range(len(patches)))
    for i, t in enumerate(scene.things):  # "X on top of Y": Y is drawn first, X rests in front of it
        if t.relation == "on top of":
            first = [k for k in draw_order if patches[k].mask in (i, _wear_index(scene, i))]
            rest = [k for k in draw_order if k not in first]
            target = [k for k in rest if patches[k].mask in (i + 1, _wear_index(scene, i + 1))]
            pos = max(rest.index(k) for k in target) + 1
            draw_order = rest[:pos] + first + rest[pos:]
    n_masks = len(scene.things) + n_wear
    masks = np.zeros((n_masks, size, size), bool)
    boxes: list[list[float]] = [[size, size, 0.0, 0.0] for _ in range(n_masks)]
    for k in draw_order:
        p = patches[k]
        cov = composite(img, p, scene.style == "outlined")
        drawn = cov > 0.5
        masks[:, drawn] = False  # what is drawn later occludes what is behind it
        masks[p.mask] |= drawn
        b = boxes[p.mask]
        x0, y0, x1, y1 = p.box
        boxes[p.mask] = [min(b[0], x0), min(b[1], y0), max(b[2], x1), max(b[3], y1)]
    if scene.style == "as a sketch":
        img = sketch(img)
    text, words = caption(scene)
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return RenderedScene(
        image=image,
        masks=masks,
        instances=tuple(t.count for t in scene.things),
        boxes=tuple(tuple(b) for b in boxes),
        caption=text,
        words=words,
        scene=scene,
    )


def _wear_index(scene: Scene, i: int) -> int:
    """Mask index of thing ``i``'s wearable (-1 if it wears nothing)."""
    if not scene.things[i].wearing:
        return -1
    return len(scene.things) + sum(bool(t.wearing) for t in scene.things[:i])


def make_batch(n: int, seed: int, size: int = IMAGE_SIZE, **kwargs) -> list[RenderedScene]:
    """``n`` rendered scenes, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    return [render(sample_scene(rng, **kwargs), size, rng) for _ in range(n)]
