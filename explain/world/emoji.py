"""World v2: emoji sprites and flat shapes, 1-3 objects, counts, colours, ``wearing``, relations, scenes, styles.

Every image is drawn from a :class:`Scene`, so its caption, the character span of every word that names something
and each thing's exact mask (the sprite's alpha) are known; that is what keeps attention faithfulness measurable.
Rendering is deterministic per ``np.random.Generator``.

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
from PIL import Image

from explain.world import lexicon as lx
from explain.world.atlas import sprite
from explain.world.shapes import _draw_mask, _erode

__all__ = [
    "IMAGE_SIZE",
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
BACKGROUND = (236, 236, 228)
WEARER_NOUNS: tuple[str, ...] = tuple(n.word for n in lx.NOUNS.values() if n.wearer)
_DRAWABLE = tuple(n.word for n in lx.NOUNS.values() if n.group != "wearables")
_FREE_COLOR = frozenset(n.word for n in lx.NOUNS.values() if n.free_color)


@dataclass(frozen=True)
class Thing:
    """One noun phrase of a prompt.

    ``relation`` places this thing relative to the *next* thing of the scene ("a bird above a house").
    """

    noun: str
    count: int = 1
    size: str | None = None
    color: str | None = None
    cute: bool = False
    wearing: str | None = None
    wearing_color: str | None = None
    position: str | None = None
    relation: str | None = None
    article: str | None = None  # "one" instead of "a"/"an" for a single thing


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    scene: str | None = None
    style: str | None = None


@dataclass(frozen=True)
class WordLabel:
    """A word (or multi-word noun) of the caption that names something drawn.

    Attributes:
        text: the word as written ("cats", "ice cream").
        span: (start, end) character span in the caption.
        mask: index into :attr:`RenderedScene.masks` of what it names.
        role: noun | color | count | wearable | wearable_color.
    """

    text: str
    span: tuple[int, int]
    mask: int
    role: str


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


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural_only(word: str) -> bool:
    """Nouns such as "sunglasses" take no article ("wearing sunglasses")."""
    n = lx.noun(word)
    return n.plural == n.singular


def _thing_phrase(t: Thing) -> tuple[str, list[tuple[str, int, int]]]:
    """The phrase of one thing and its labelled words as (role, start, end)."""
    n = lx.noun(t.noun)
    head = n.singular if t.count == 1 else n.plural
    adjectives = [w for w in (t.size, "cute" if t.cute else None, t.color) if w]
    body = " ".join([*adjectives, head])
    det = {1: t.article or _article(body), 2: "two", 3: "three"}[t.count]
    text = f"{det} {body}"
    labels: list[tuple[str, int, int]] = []
    cursor = len(det) + 1
    for word in adjectives:
        if word == t.color:
            labels.append(("color", cursor, cursor + len(word)))
        cursor += len(word) + 1
    head_word = n.word if t.count == 1 or n.phrase else head  # "two bowls of ramen": the noun is still "ramen"
    start = text.index(head_word, cursor)
    labels.append(("noun", start, start + len(head_word)))
    if t.count > 1:
        labels.append(("count", 0, len(det)))
    if t.wearing:
        wear = " ".join(w for w in (t.wearing_color, t.wearing) if w)
        text += f" wearing {wear}" if _plural_only(t.wearing) else f" wearing {_article(wear)} {wear}"
        if t.wearing_color:
            start = len(text) - len(wear)
            labels.append(("wearable_color", start, start + len(t.wearing_color)))
        labels.append(("wearable", len(text) - len(t.wearing), len(text)))
    if t.position:
        text += f" {t.position}"
    return text, labels


def caption(scene: Scene) -> tuple[str, tuple[WordLabel, ...]]:
    """Caption a scene in the module's grammar; masks are numbered things first, then wearables."""
    parts: list[str] = []
    words: list[WordLabel] = []
    offset = 0
    wear_index = len(scene.things)
    for i, t in enumerate(scene.things):
        text, labels = _thing_phrase(t)
        for role, s, e in labels:
            mask = i
            if role.startswith("wearable"):
                mask = wear_index
            words.append(WordLabel(text[s:e], (s + offset, e + offset), mask, role))
        wear_index += bool(t.wearing)
        parts.append(text)
        offset += len(text)
        if i + 1 < len(scene.things):
            joint = f" {t.relation} " if t.relation else " and "
            parts.append(joint)
            offset += len(joint)
    if scene.scene:
        parts.append(f" {scene.scene}")
    if scene.style:
        parts.append(f", {scene.style}")
    return "".join(parts), tuple(words)


# ---------------------------------------------------------------------------------------------------- sampling

_PAIRS = [
    ("on the left", "on the right"),
    ("at the top", "at the bottom"),
    ("in the top left", "in the bottom right"),
    ("in the top right", "in the bottom left"),
    ("on the left", "in the top right"),
    ("on the right", "in the bottom left"),
    ("at the top", "in the bottom left"),
    ("at the bottom", "in the top right"),
]
_TRIPLES = [
    ("on the left", "on the right", "at the top"),
    ("on the left", "on the right", "at the bottom"),
    ("in the top left", "in the top right", "at the bottom"),
    ("in the bottom left", "in the bottom right", "at the top"),
]


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _sample_thing(rng: np.random.Generator, position: str | None, n_things: int, allow_count: bool) -> Thing:
    word = _pick(rng, _DRAWABLE)
    n = lx.noun(word)
    count = 1
    if allow_count and rng.random() < 0.25:
        count = 2 if rng.random() < 0.6 else 3
    size = _pick(rng, (None, None, "small", "big") if n_things < 3 else (None, "small"))
    if count > 1:
        size = _pick(rng, (None, "small"))
    color = None
    if word in lx.SHAPE_NOUNS or (n.free_color and rng.random() < 0.6):
        color = _pick(rng, tuple(lx.COLORS))
    wearing = wearing_color = None
    if n.wearer and count == 1 and rng.random() < 0.5:
        wearing = _pick(rng, lx.WEARABLES)
        if lx.noun(wearing).free_color and rng.random() < 0.3:
            wearing_color = _pick(rng, tuple(lx.COLORS))
    cute = n.group == "animals" and rng.random() < 0.12
    article = "one" if count == 1 and rng.random() < 0.08 else None
    return Thing(word, count, size, color, cute, wearing, wearing_color, position, None, article)


def sample_scene(rng: np.random.Generator, max_things: int = 3, p_scene: float = 0.35, p_style: float = 0.12) -> Scene:
    """Draw a random scene of the grammar (the training distribution)."""
    u = rng.random()
    n = 1 if u < 0.45 or max_things == 1 else 2 if u < 0.85 or max_things == 2 else 3
    if n == 1:
        positions: tuple[str | None, ...] = (_pick(rng, tuple(lx.POSITIONS)) if rng.random() < 0.7 else None,)
    elif n == 2:
        pair = _pick(rng, _PAIRS)
        positions = tuple(pair[i] for i in rng.permutation(2)) if rng.random() < 0.8 else (None, None)
    else:
        triple = _pick(rng, _TRIPLES)
        positions = tuple(triple[i] for i in rng.permutation(3))
    things = [_sample_thing(rng, p, n, allow_count=n < 3) for p in positions]
    if n == 2 and rng.random() < 0.3:  # a relation: "a bird above a house [on the left]"
        rel = _pick(rng, lx.RELATIONS)
        first = Thing(**{**things[0].__dict__, "position": None, "relation": rel, "count": 1, "article": None})
        second_pos = _pick(rng, ("on the left", "on the right", "in the center", None))
        if rel in ("above", "on top of"):
            second_pos = _pick(rng, ("at the bottom", "in the center", None))
        elif rel == "below":
            second_pos = _pick(rng, ("at the top", "in the center", None))
        things = [first, Thing(**{**things[1].__dict__, "position": second_pos, "count": 1, "article": None})]
    scene = _pick(rng, lx.SCENES) if rng.random() < p_scene else None
    style = _pick(rng, lx.STYLES) if rng.random() < p_style else None
    return Scene(things=tuple(things), scene=scene, style=style)


# ---------------------------------------------------------------------------------------------------- drawing


def _background(scene: str | None, size: int, rng: np.random.Generator) -> np.ndarray:
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


def _sprite_rgba(name: str, longest: float, color: str | None) -> np.ndarray:
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


def _shape_rgba(shape: str, longest: float, color: str) -> np.ndarray:
    """A flat shape as an RGBA patch (coverage as alpha), reusing the shapes world's anti-aliased drawing."""
    side = max(4, int(np.ceil(longest)) + 2)
    cov = _draw_mask(shape, side / 2, side / 2, longest / 2.2, side, ss=4)
    rgb = np.broadcast_to(np.array(lx.COLORS[color], np.float32) / 255.0, (side, side, 3))
    return np.concatenate([rgb, cov[..., None]], axis=-1)


@dataclass
class _Patch:
    """One drawable patch placed on the canvas: RGBA, top-left corner and the mask it belongs to."""

    rgba: np.ndarray
    x: float
    y: float
    mask: int

    @property
    def box(self) -> tuple[float, float, float, float]:
        h, w = self.rgba.shape[:2]
        return (self.x, self.y, self.x + w, self.y + h)


def _wearable_patch(t: Thing, wearer: str, box: tuple[float, float, float, float], mask: int) -> _Patch:
    """Place ``t.wearing`` on the face sprite ``wearer`` drawn in ``box`` (lexicon anchors)."""
    anchors = dict(lx.noun(t.noun).wearer)[wearer]
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    ex, ey = x0 + anchors.eyes[0] * w, y0 + anchors.eyes[1] * h
    kind = t.wearing
    width = {"sunglasses": 1.2 * anchors.eyes_width * w, "hat": 0.7 * w, "crown": 0.6 * w, "scarf": 0.5 * w}.get(
        kind, 0.45 * w
    )
    rgba = _sprite_rgba(kind, width, t.wearing_color)
    ph, pw = rgba.shape[:2]
    if kind == "sunglasses":
        return _Patch(rgba, ex - pw / 2, ey - ph / 2, mask)
    if kind in ("hat", "crown"):
        return _Patch(rgba, ex - pw / 2, y0 + anchors.top * h - 0.78 * ph, mask)
    if kind == "scarf":
        return _Patch(rgba, ex - pw / 2, y0 + anchors.chin * h - 0.15 * ph, mask)
    return _Patch(rgba, ex - pw / 2, y0 + anchors.chin * h - 0.5 * ph, mask)  # bow


def _thing_patches(t: Thing, rng: np.random.Generator, n_things: int, size: int) -> tuple[list[np.ndarray], str]:
    """The RGBA patches of each copy of a thing and the sprite name used ('' for shapes)."""
    n = lx.noun(t.noun)
    longest = lx.SIZES[t.size] * size * rng.uniform(0.9, 1.1) * (0.8 if n_things >= 3 else 1.0)
    longest *= {1: 1.0, 2: 0.7, 3: 0.56}[t.count]
    if n.group == "shapes":
        return [_shape_rgba(n.word, longest, t.color) for _ in range(t.count)], ""
    name = _pick(rng, tuple(dict(n.wearer))) if t.wearing else _pick(rng, n.sprites)
    return [_sprite_rgba(name, longest * rng.uniform(0.95, 1.05), t.color) for _ in range(t.count)], name


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


def _composite(img: np.ndarray, patch: _Patch, outlined: bool) -> np.ndarray:
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
        a = np.clip(a - _erode(a, max(1, round(size / 64))), 0, 1)
        rgb = np.broadcast_to(mean * 0.8, rgb.shape)
    region = img[y0:y1, x0:x1]
    img[y0:y1, x0:x1] = region * (1 - a[..., None]) + rgb * a[..., None]
    cov[y0:y1, x0:x1] = sub[..., 3]
    return cov


def _sketch(img: np.ndarray) -> np.ndarray:
    """'as a sketch': pencil lines (the luminance's gradient magnitude) and light shading on paper."""
    lum = img @ np.array([0.299, 0.587, 0.114], np.float32)  # (H, W)
    p = np.pad(lum, 1, mode="edge")
    gx = p[1:-1, 2:] - p[1:-1, :-2]
    gy = p[2:, 1:-1] - p[:-2, 1:-1]
    edges = np.clip(np.hypot(gx, gy) * 1.6, 0, 200)
    out = 246.0 - edges - 0.18 * (255.0 - lum)
    return np.repeat(np.clip(out, 0, 255)[..., None], 3, axis=-1) * np.array([1.0, 0.99, 0.96], np.float32)


def render(scene: Scene, size: int = IMAGE_SIZE, rng: np.random.Generator | None = None) -> RenderedScene:
    """Draw a scene at ``size`` x ``size`` with small random jitter of placement and scale."""
    rng = rng if rng is not None else np.random.default_rng(0)
    img = _background(scene.scene, size, rng)
    groups, names = zip(*(_thing_patches(t, rng, len(scene.things), size) for t in scene.things), strict=True)
    centres = _layout(scene, list(groups), size, rng)
    patches: list[_Patch] = []
    n_wear = sum(bool(t.wearing) for t in scene.things)
    wear_mask = len(scene.things)
    for i, (t, copies, (cx, cy)) in enumerate(zip(scene.things, groups, centres, strict=True)):
        w, _ = _group_extent(copies, 0.08 * size)
        x = cx - w / 2
        row = []
        for rgba in copies:
            ph, pw = rgba.shape[:2]
            row.append(_Patch(rgba, x, cy - ph / 2, i))
            x += pw + 0.08 * size
        patches += row
        if t.wearing:
            patches.append(_wearable_patch(t, names[i], row[0].box, wear_mask))
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
        cov = _composite(img, p, scene.style == "outlined")
        drawn = cov > 0.5
        masks[:, drawn] = False  # what is drawn later occludes what is behind it
        masks[p.mask] |= drawn
        b = boxes[p.mask]
        x0, y0, x1, y1 = p.box
        boxes[p.mask] = [min(b[0], x0), min(b[1], y0), max(b[2], x1), max(b[3], y1)]
    if scene.style == "as a sketch":
        img = _sketch(img)
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


# ---------------------------------------------------------------------------------------------------- parsing

_PARAPHRASES = {  # accepted variants -> the grammar's words
    "on grass": "on the grass",
    "in snow": "in the snow",
    "under water": "underwater",
    "in the middle": "in the center",
    "in the centre": "in the center",
}


def _normalise(text: str) -> str:
    t = " ".join(text.lower().replace(",", " , ").split()).strip(" .")
    for old, new in _PARAPHRASES.items():
        t = (" " + t + " ").replace(f" {old} ", f" {new} ").strip()
    return t.replace(" ,", ",")


def _match_noun(words: list[str], i: int) -> tuple[str, int, int] | None:
    """The longest noun phrase starting at ``words[i]``: (noun, count implied by the form, next index)."""
    best = None
    for n in lx.NOUNS.values():
        for form, plural in ((n.singular, False), (n.plural, True), (n.word, False)):
            k = len(form.split())
            if words[i : i + k] == form.split() and (best is None or k > best[2] - i):
                best = (n.word, 2 if plural and n.plural != n.singular else 1, i + k)
    return best


def _parse_thing(phrase: str) -> Thing | None:
    words = phrase.split()
    if not words:
        return None
    i, count, article = 0, 1, None
    if words[0] in lx.COUNTS:
        count = lx.COUNTS[words[0]]
        article = "one" if words[0] == "one" else None
        i = 1
    size = words[i] if i < len(words) and words[i] in ("small", "big") else None
    i += size is not None
    cute = i < len(words) and words[i] == "cute"
    i += cute
    color = words[i] if i < len(words) and words[i] in lx.COLORS else None
    i += color is not None
    if i >= len(words):
        return None
    m = _match_noun(words, i)
    if m is None:
        return None
    noun, _plural_count, i = m
    if color and not (lx.noun(noun).free_color):
        return None  # colour words go with shapes and free-colour nouns only
    wearing = wearing_color = None
    if i < len(words) and words[i] == "wearing":
        i += 1
        if i < len(words) and words[i] in ("a", "an"):
            i += 1
        if i < len(words) and words[i] in lx.COLORS:
            wearing_color = words[i]
            i += 1
        if i >= len(words) or words[i] not in lx.WEARABLES:
            return None
        wearing = words[i]
        i += 1
        if not lx.noun(noun).wearer:
            return None  # only animals with a face, robots and ghosts wear things
    rest = " ".join(words[i:])
    if rest and rest not in lx.POSITIONS:
        return None
    return Thing(noun, count, size, color, cute, wearing, wearing_color, rest or None, None, article)


def _parse_body(t: str) -> list[Thing] | None:
    """Things joined by " and " or by a relation; None if any part is not a thing of the grammar."""
    things: list[Thing] = []
    for part in t.split(" and "):
        pieces, relation = [part.strip()], None
        for rel in lx.RELATIONS:
            if f" {rel} " in pieces[0]:
                pieces = pieces[0].split(f" {rel} ", 1)
                relation = rel
                break
        parsed = [_parse_thing(p) for p in pieces]
        if any(p is None for p in parsed):
            return None
        if relation:
            parsed[0] = Thing(**{**parsed[0].__dict__, "relation": relation})
        things += parsed
    return things or None


def parse_prompt(text: str) -> Scene | None:
    """Parse a prompt of the grammar (and its listed paraphrases) into a :class:`Scene`; None if it is not one."""
    t = _normalise(text)
    style = None
    for s in lx.STYLES:
        if t.endswith(f", {s}") or t.endswith(f" {s}"):
            style, t = s, t[: -len(s)].rstrip(" ,")
            break
    for s in lx.SCENES:
        if t.endswith(f" {s}"):
            things = _parse_body(t[: -len(s)].rstrip())
            if things is not None:
                return Scene(things=tuple(things), scene=s, style=style)
    things = _parse_body(t)
    return Scene(things=tuple(things), scene=None, style=style) if things else None
