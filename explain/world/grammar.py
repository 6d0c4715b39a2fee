"""World v2's grammar: the typed scene a prompt describes, its caption with labelled word spans, sampling, parsing.

A :class:`Scene` is what every other part of the world works from: :mod:`explain.world.emoji` draws it,
:func:`caption` writes it in the grammar with the character span of every word that names something, and
:func:`parse_prompt` reads a prompt back into one (None when the prompt is outside the grammar).

Grammar (``../shared/WORLD2.md``; the words live in :mod:`explain.world.lexicon`)::

    PROMPT  THING [(and | RELATION) THING]* [SCENE] [, STYLE]
    THING   (a|an|one|two|three) [big|small] [cute] [COLOUR] NOUN [wearing a|an [COLOUR] WEARABLE] [POSITION]

    RELATION  next to, above, below, on top of (the thing before it relative to the thing after it)
    POSITION  on the left/right, at the top/bottom, in the center, in the top/bottom left/right
    SCENE     on the grass, on the beach, at night, in the snow, in space, underwater
    STYLE     outlined, as a sketch

Colour words go with the shapes and with nouns whose colour is free (balloon, car, flower, umbrella, book, hat).
``wearing`` goes with animals that have a face sprite and with robot and ghost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from explain.world import lexicon as lx

__all__ = ["Thing", "Scene", "WordLabel", "caption", "sample_scene", "parse_prompt", "pick", "PAIRS", "WEARER_NOUNS"]

WEARER_NOUNS: tuple[str, ...] = tuple(n.word for n in lx.NOUNS.values() if n.wearer)
_DRAWABLE = tuple(n.word for n in lx.NOUNS.values() if n.group != "wearables")


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

PAIRS = [
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


def pick(rng: np.random.Generator, items):
    """One of ``items``, uniformly."""
    return items[int(rng.integers(len(items)))]


def _sample_thing(rng: np.random.Generator, position: str | None, n_things: int, allow_count: bool) -> Thing:
    word = pick(rng, _DRAWABLE)
    n = lx.noun(word)
    count = 1
    if allow_count and rng.random() < 0.25:
        count = 2 if rng.random() < 0.6 else 3
    size = pick(rng, (None, None, "small", "big") if n_things < 3 else (None, "small"))
    if count > 1:
        size = pick(rng, (None, "small"))
    color = None
    if word in lx.SHAPE_NOUNS or (n.free_color and rng.random() < 0.6):
        color = pick(rng, tuple(lx.COLORS))
    wearing = wearing_color = None
    if n.wearer and count == 1 and rng.random() < 0.5:
        wearing = pick(rng, lx.WEARABLES)
        if lx.noun(wearing).free_color and rng.random() < 0.3:
            wearing_color = pick(rng, tuple(lx.COLORS))
    cute = n.group == "animals" and rng.random() < 0.12
    article = "one" if count == 1 and rng.random() < 0.08 else None
    return Thing(word, count, size, color, cute, wearing, wearing_color, position, None, article)


def sample_scene(rng: np.random.Generator, max_things: int = 3, p_scene: float = 0.35, p_style: float = 0.12) -> Scene:
    """Draw a random scene of the grammar (the training distribution)."""
    u = rng.random()
    n = 1 if u < 0.45 or max_things == 1 else 2 if u < 0.85 or max_things == 2 else 3
    if n == 1:
        positions: tuple[str | None, ...] = (pick(rng, tuple(lx.POSITIONS)) if rng.random() < 0.7 else None,)
    elif n == 2:
        pair = pick(rng, PAIRS)
        positions = tuple(pair[i] for i in rng.permutation(2)) if rng.random() < 0.8 else (None, None)
    else:
        triple = pick(rng, _TRIPLES)
        positions = tuple(triple[i] for i in rng.permutation(3))
    things = [_sample_thing(rng, p, n, allow_count=n < 3) for p in positions]
    if n == 2 and rng.random() < 0.3:  # a relation: "a bird above a house [on the left]"
        rel = pick(rng, lx.RELATIONS)
        first = Thing(**{**things[0].__dict__, "position": None, "relation": rel, "count": 1, "article": None})
        second_pos = pick(rng, ("on the left", "on the right", "in the center", None))
        if rel in ("above", "on top of"):
            second_pos = pick(rng, ("at the bottom", "in the center", None))
        elif rel == "below":
            second_pos = pick(rng, ("at the top", "in the center", None))
        things = [first, Thing(**{**things[1].__dict__, "position": second_pos, "count": 1, "article": None})]
    scene = pick(rng, lx.SCENES) if rng.random() < p_scene else None
    style = pick(rng, lx.STYLES) if rng.random() < p_style else None
    return Scene(things=tuple(things), scene=scene, style=style)


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
