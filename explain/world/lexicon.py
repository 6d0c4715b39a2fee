"""World v2's vocabulary: every noun with its Noto Color Emoji code points, plural, group and drawing facts.

One table for everything that needs the words: the atlas renderer (``training/render_atlas.py``), the scene
sampler and captioner (:mod:`explain.world.emoji`), the judge and the vocabulary report of the app. The required
core is ``../shared/WORLD2.md``; wearer anchors (eyes, head top, chin) were set once by hand from the rendered
sprites (fractions of the sprite's bounding box, x to the right and y downwards).
"""

from __future__ import annotations

from dataclasses import dataclass

from explain.world import shapes

__all__ = [
    "Anchors",
    "Noun",
    "NOUNS",
    "WEARABLES",
    "SHAPE_NOUNS",
    "COLORS",
    "SIZES",
    "COUNTS",
    "POSITIONS",
    "RELATIONS",
    "SCENES",
    "STYLES",
    "FUNCTION_WORDS",
    "noun",
    "vocabulary_words",
]


@dataclass(frozen=True)
class Anchors:
    """Where wearables go on a face sprite, as fractions of the sprite's box.

    Attributes:
        eyes: (x, y) centre of the eyes; ``eyes_width`` the span of both eyes (sunglasses are this wide).
        top: y of the top of the head (hats and crowns sit there).
        chin: y of the chin (scarves and bows go just below).
    """

    eyes: tuple[float, float]
    eyes_width: float
    top: float
    chin: float


@dataclass(frozen=True)
class Noun:
    """One noun of the world.

    Attributes:
        word: the caption word(s) (``"ice cream"``); ``phrase`` the singular noun phrase (``"bowl of ramen"``).
        plural: the plural phrase (``"bowls of ramen"``, ``"mice"``).
        group: animals | food | things | wearables | shapes.
        sprites: atlas sprite names (the first is the default; variants are drawn at random).
        free_color: a colour word may come before it (the sprite is tinted; shapes always have one).
        wearer: sprite name -> anchors for sprites that can wear a wearable (face variants).
    """

    word: str
    code_points: tuple[int, ...]
    plural: str
    group: str
    phrase: str = ""
    sprites: tuple[str, ...] = ()
    free_color: bool = False
    wearer: tuple[tuple[str, Anchors], ...] = ()

    @property
    def singular(self) -> str:
        return self.phrase or self.word

    @property
    def head(self) -> str:
        """The word whose attention map is the object's (``ramen`` in "a bowl of ramen")."""
        return self.word


def _face(eyes_y: float, top: float, chin: float, eyes_width: float = 0.62, eyes_x: float = 0.5) -> Anchors:
    return Anchors(eyes=(eyes_x, eyes_y), eyes_width=eyes_width, top=top, chin=chin)


def _n(word, cps, plural=None, group="things", phrase="", free_color=False, faces=None, variants=None) -> Noun:
    names = variants if variants is not None else (word.replace(" ", "_"),)
    wearer = tuple(faces.items()) if faces else ()
    return Noun(
        word=word,
        code_points=tuple(cps),
        plural=plural or f"{phrase or word}s",
        group=group,
        phrase=phrase,
        sprites=names,
        free_color=free_color,
        wearer=wearer,
    )


# Animals. Where WORLD2 names a face variant, both are drawn; only face sprites wear things.
_ANIMALS = [
    _n("cat", (0x1F408, 0x1F431), group="animals", variants=("cat", "cat_face"),
       faces={"cat_face": _face(0.55, 0.12, 0.95, 0.62)}),
    _n("dog", (0x1F415, 0x1F436), group="animals", variants=("dog", "dog_face"),
       faces={"dog_face": _face(0.42, 0.02, 0.92, 0.50)}),
    _n("fish", (0x1F41F,), plural="fish", group="animals"),
    _n("bird", (0x1F426,), group="animals"),
    _n("rabbit", (0x1F407,), group="animals"),
    _n("horse", (0x1F40E,), group="animals"),
    _n("cow", (0x1F404, 0x1F42E), group="animals", variants=("cow", "cow_face"),
       faces={"cow_face": _face(0.45, 0.08, 0.96, 0.55)}),
    _n("pig", (0x1F416, 0x1F437), group="animals", variants=("pig", "pig_face"),
       faces={"pig_face": _face(0.42, 0.08, 0.92, 0.52)}),
    _n("duck", (0x1F986,), group="animals"),
    _n("frog", (0x1F438,), group="animals", faces={"frog": _face(0.22, 0.0, 0.95, 0.80)}),
    _n("turtle", (0x1F422,), group="animals"),
    _n("snail", (0x1F40C,), group="animals"),
    _n("butterfly", (0x1F98B,), plural="butterflies", group="animals"),
    _n("bee", (0x1F41D,), group="animals"),
    _n("elephant", (0x1F418,), group="animals"),
    _n("mouse", (0x1F401, 0x1F42D), plural="mice", group="animals", variants=("mouse", "mouse_face"),
       faces={"mouse_face": _face(0.55, 0.22, 0.92, 0.50)}),
    _n("owl", (0x1F989,), group="animals", faces={"owl": _face(0.28, 0.06, 0.50, 0.62)}),
    _n("penguin", (0x1F427,), group="animals", faces={"penguin": _face(0.17, 0.0, 0.34, 0.75, 0.47)}),
    _n("monkey", (0x1F412, 0x1F435), group="animals", variants=("monkey", "monkey_face"),
       faces={"monkey_face": _face(0.45, 0.02, 0.95, 0.55)}),
    _n("lion", (0x1F981,), group="animals", faces={"lion": _face(0.45, 0.14, 0.86, 0.45)}),
]  # fmt: skip

_FOOD = [
    _n("ramen", (0x1F35C,), plural="bowls of ramen", group="food", phrase="bowl of ramen"),
    _n("pizza", (0x1F355,), group="food"),
    _n("apple", (0x1F34E,), group="food"),
    _n("banana", (0x1F34C,), group="food"),
    _n("cake", (0x1F370,), group="food"),
    _n("burger", (0x1F354,), group="food"),
    _n("carrot", (0x1F955,), group="food"),
    _n("cherry", (0x1F352,), plural="cherries", group="food"),
    _n("donut", (0x1F369,), group="food"),
    _n("ice cream", (0x1F366,), group="food"),
    _n("strawberry", (0x1F353,), plural="strawberries", group="food"),
    _n("watermelon", (0x1F349,), group="food"),
    _n("coffee", (0x2615,), plural="cups of coffee", group="food", phrase="cup of coffee"),
    _n("egg", (0x1F95A,), group="food"),
]

_THINGS = [
    _n("car", (0x1F697,), free_color=True),
    _n("bus", (0x1F68C,), plural="buses"),
    _n("bicycle", (0x1F6B2,)),
    _n("rocket", (0x1F680,)),
    _n("boat", (0x26F5,)),
    _n("airplane", (0x2708,)),
    _n("train", (0x1F686,)),
    _n("house", (0x1F3E0,)),
    _n("tree", (0x1F333,)),
    _n("flower", (0x1F338,), free_color=True),
    _n("sun", (0x2600,)),
    _n("moon", (0x1F319,)),
    _n("cloud", (0x2601,)),
    _n("umbrella", (0x2602,), free_color=True),
    _n("balloon", (0x1F388,), free_color=True),
    _n("book", (0x1F4D5,), free_color=True),
    _n("guitar", (0x1F3B8,)),
    _n("ball", (0x26BD,)),
    _n("key", (0x1F511,)),
    _n("clock", (0x23F0,)),
    _n("mushroom", (0x1F344,)),
    _n("cactus", (0x1F335,), plural="cacti"),
    _n("robot", (0x1F916,), faces={"robot": _face(0.52, 0.20, 0.92, 0.62)}),
    _n("ghost", (0x1F47B,), faces={"ghost": _face(0.30, 0.02, 0.55, 0.55)}),
]

_WEARABLES = [
    _n("sunglasses", (0x1F576,), plural="sunglasses", group="wearables"),
    _n("hat", (0x1F3A9,), group="wearables", free_color=True),
    _n("crown", (0x1F451,), group="wearables"),
    _n("scarf", (0x1F9E3,), plural="scarves", group="wearables"),
    _n("bow", (0x1F380,), group="wearables"),
]

SHAPE_NOUNS: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "diamond")
_SHAPES = [_n(s, (), group="shapes", free_color=True, variants=()) for s in SHAPE_NOUNS]

NOUNS: dict[str, Noun] = {n.word: n for n in _ANIMALS + _FOOD + _THINGS + _WEARABLES + _SHAPES}
WEARABLES: tuple[str, ...] = tuple(n.word for n in _WEARABLES)

COLORS: dict[str, tuple[int, int, int]] = shapes.COLORS  # the same six colours as the shapes world
# Size word -> the object's longest side as a fraction of the canvas (None: no size word).
SIZES: dict[str | None, float] = {"small": 0.26, None: 0.36, "big": 0.48}
COUNTS: dict[str, int] = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}
# Phrase -> object centre as a fraction of the canvas (x, y), y grows downwards.
POSITIONS: dict[str, tuple[float, float]] = {
    **shapes.POSITIONS,  # left, right, top, bottom, center, as in the shapes world
    "in the top left": (0.25, 0.25),
    "in the top right": (0.75, 0.25),
    "in the bottom left": (0.25, 0.75),
    "in the bottom right": (0.75, 0.75),
}
RELATIONS: tuple[str, ...] = ("next to", "above", "below", "on top of")
SCENES: tuple[str, ...] = ("on the grass", "on the beach", "at night", "in the snow", "in space", "underwater")
STYLES: tuple[str, ...] = ("outlined", "as a sketch")
FUNCTION_WORDS: tuple[str, ...] = ("and", "wearing", "cute", "it", "the", "of", "a", "an", "in", "on", "at")


def noun(word: str) -> Noun:
    """The :class:`Noun` for a caption word, singular or plural (``"mice"`` -> mouse)."""
    if word in NOUNS:
        return NOUNS[word]
    for n in NOUNS.values():
        if word in (n.plural, n.singular):
            return n
    raise KeyError(f"{word!r} is not a noun of the world")


def vocabulary_words() -> frozenset[str]:
    """Every word a caption of the world can contain (what the embedded model has seen)."""
    words: set[str] = set(FUNCTION_WORDS) | set(COLORS) | {w for w in SIZES if w} | set(COUNTS)
    for n in NOUNS.values():
        for phrase in (n.singular, n.plural):
            words.update(phrase.split())
    for phrase in (*POSITIONS, *RELATIONS, *SCENES, *STYLES):
        words.update(phrase.split())
    return frozenset(words)
