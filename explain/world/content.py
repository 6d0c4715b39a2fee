"""What the app shows of a model's world: prompts, presets, sample scenes and zero-shot candidates, one per world.

Every tab that shows the world a model was trained on (tab 1's samples and zero-shot presets, tab 2's world
images, tab 3's and tab 4's presets, the prompt offered next to an unknown-word message) reads it from one
:class:`WorldContent`, chosen by the world the model directory names (``explorer.json`` ``"world"``, read by
:func:`model_world`):

- ``"shapes"``: the shapes world of ``models/tiny-shapes-sd`` (:mod:`explain.world.shapes`, 36 words);
- ``"emoji"``: world v2 (:mod:`explain.world.emoji`, about 70 nouns), with the lesson's own examples ("a cat wearing
  sunglasses", "a cute dog", "a bowl of ramen");
- no world (a real checkpoint): the emoji world's content, whose prompts are plain English such a model can draw.

Each world's prompts are sentences of its own grammar (the tests parse every one), so a preset never asks the model
for a word it has not seen.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from explain.diffusion.loading import EMBEDDED_MODEL_DIR, EXPLORER_SETTINGS
from explain.world import emoji, lexicon, shapes

__all__ = [
    "WORLDS",
    "Preset",
    "SteerPresets",
    "ZeroShotExample",
    "WorldContent",
    "world_content",
    "model_world",
    "model_content",
]


@dataclass(frozen=True)
class Preset:
    """One generation preset: a prompt of the world, a seed, a scheduler and its button label."""

    prompt: str
    seed: int
    label: str
    scheduler: str = "default"


@dataclass(frozen=True)
class SteerPresets:
    """The steering tab's one-click experiments on :attr:`WorldContent.default_prompt` (all its words).

    Attributes:
        reweight: (word, weight) pairs: a word's attention scaled.
        swap: (word, new word, first step to keep the original maps) triples: prompt-to-prompt word swaps.
        delete: the word deleted (removed from the prompt, or its attention zeroed).
        causal: the word whose map the causal check tests (delete it: does the image change where its map points?).
    """

    reweight: tuple[tuple[str, float], ...]
    swap: tuple[tuple[str, str, int], ...]
    delete: str
    causal: str


@dataclass(frozen=True)
class ZeroShotExample:
    """A scene of the world (one of its prompts) and the candidate captions CLIP chooses among."""

    prompt: str
    candidates: tuple[str, ...]
    label: str


@dataclass(frozen=True)
class WorldContent:
    """Everything a view shows of one world (see the module docstring).

    Attributes:
        name: ``"shapes"`` or ``"emoji"``.
        summary: One line naming what the world's models know.
        default_prompt: The prompt every form starts with (two things, so maps differ per word).
        focus_word: The word of ``default_prompt`` that word pickers start on.
        presets: Tab 3's one-click generations.
        suggestion: An in-world prompt offered when a prompt has words the model never saw.
        steer: Tab 4's experiments on ``default_prompt``.
        zero_shot: Tab 1's zero-shot presets.
        module: The world's module (:mod:`explain.world.shapes` or :mod:`explain.world.emoji`).
    """

    name: str
    summary: str
    default_prompt: str
    focus_word: str
    presets: tuple[Preset, ...]
    suggestion: str
    steer: SteerPresets
    zero_shot: tuple[ZeroShotExample, ...]
    module: ModuleType

    @property
    def default_candidates(self) -> tuple[str, ...]:
        """The zero-shot candidates the form starts with (the first preset's)."""
        return self.zero_shot[0].candidates

    @property
    def image_size(self) -> int:
        """The side in pixels the world's models are trained at."""
        return self.module.IMAGE_SIZE

    def samples(self, n: int, seed: int, size: int | None = None) -> list:
        """``n`` rendered scenes of the world (``RenderedScene``: image, caption, masks), deterministic in ``seed``."""
        return self.module.make_batch(n, seed, size=size or self.image_size)

    def draw(self, prompt: str, size: int | None = None, seed: int = 0) -> np.ndarray:
        """The (H, W, 3) uint8 render of one of the world's prompts (ValueError if the grammar cannot parse it)."""
        scene = self.module.parse_prompt(prompt)
        if scene is None:
            raise ValueError(f"{prompt!r} is not a sentence of the {self.name} world's grammar")
        return self.module.render(scene, size or self.image_size, np.random.default_rng(seed)).image


def _lines(template: Callable[[str], str], words) -> tuple[str, ...]:
    return tuple(template(w) for w in words)


_SHAPES_PROMPT = "a big red circle on the left and a small blue triangle on the right"
SHAPES = WorldContent(
    name="shapes",
    summary="the shapes world: 6 colours, 6 shapes, sizes, 5 positions, 3 scenes and 2 styles (36 words)",
    default_prompt=_SHAPES_PROMPT,
    focus_word="circle",
    presets=(
        Preset(_SHAPES_PROMPT, 0, "red circle + blue triangle"),
        Preset("a yellow star at the top and a purple heart at the bottom", 3, "yellow star + purple heart"),
        Preset("a big green square in the center at night", 5, "green square at night (DDIM)", "DDIM"),
    ),
    suggestion=_SHAPES_PROMPT,
    steer=SteerPresets(
        reweight=(("red", 0.0), ("triangle", 3.0)),
        swap=(("circle", "square", 4), ("red", "green", 12)),
        delete="blue",
        causal="triangle",
    ),
    zero_shot=(
        ZeroShotExample(
            "a big red heart in the center",
            _lines(lambda s: f"a red {s} in the center", shapes.SHAPES),
            "which shape? (a heart)",
        ),
        ZeroShotExample(
            "a big red triangle in the center",
            _lines(lambda s: f"a red {s} in the center", shapes.SHAPES),
            "which shape? (a triangle)",
        ),
        ZeroShotExample(
            "a big blue star in the center",
            _lines(lambda c: f"a {c} star in the center", shapes.COLORS),
            "which colour? (blue)",
        ),
    ),
    module=shapes,
)

_EMOJI_PROMPT = "a cat wearing sunglasses on the left and a bowl of ramen on the right"
_ANIMALS = ("cat", "dog", "frog", "rabbit", "penguin", "lion", "monkey", "owl")
_WEARABLES = ("sunglasses", "a hat", "a crown", "a scarf")
EMOJI = WorldContent(
    name="emoji",
    summary="world v2: about 70 emoji things and the shapes, counts, sizes, wearing, relations, scenes and styles",
    default_prompt=_EMOJI_PROMPT,
    focus_word="cat",
    presets=(
        Preset("a cat wearing sunglasses", 0, "a cat wearing sunglasses"),
        Preset("a cute dog", 1, "a cute dog"),
        Preset("a bowl of ramen", 2, "a bowl of ramen"),
        Preset(_EMOJI_PROMPT, 3, "cat with sunglasses + ramen"),
        Preset("three red hearts on the beach", 4, "three red hearts on the beach (DDIM)", "DDIM"),
    ),
    suggestion="a cat wearing sunglasses",
    steer=SteerPresets(
        reweight=(("sunglasses", 0.0), ("ramen", 3.0)),
        swap=(("cat", "dog", 4), ("ramen", "pizza", 12)),
        delete="sunglasses",
        causal="ramen",
    ),
    zero_shot=(
        ZeroShotExample(
            "a big cat in the center", _lines(lambda a: f"a {a} in the center", _ANIMALS), "which animal? (a cat)"
        ),
        ZeroShotExample(
            "a dog wearing a hat", _lines(lambda w: f"a dog wearing {w}", _WEARABLES), "wearing what? (a hat)"
        ),
        ZeroShotExample(
            "a bowl of ramen in the snow",
            _lines(lambda s: f"a bowl of ramen {s}", lexicon.SCENES),
            "where? (in the snow)",
        ),
    ),
    module=emoji,
)

WORLDS: dict[str, WorldContent] = {c.name: c for c in (SHAPES, EMOJI)}


def world_content(world: str | None) -> WorldContent:
    """The content of the world a model names (``explorer.json`` ``"world"``); a model naming none gets the emoji
    world's (module docstring); a name of no world here is a ValueError."""
    if world is None:
        return EMOJI
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; known: {', '.join(WORLDS)}")
    return WORLDS[world]


def model_world(model_dir: str | Path) -> str | None:
    """The procedural world a model directory was trained on (``explorer.json`` ``"world"``: ``"shapes"`` or
    ``"emoji"``; an embedded model without the key is a shapes model), None for any other model (no world)."""
    path = Path(model_dir) / EXPLORER_SETTINGS
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("world", "shapes")


def model_content(model: str | Path | None) -> WorldContent:
    """The content of a model as the app and the CLI take it: ``None`` is the embedded model, a directory names its
    world in ``explorer.json``, anything else (a Hub id) is a real checkpoint. Reads no weights."""
    local = Path(model).expanduser() if model else EMBEDDED_MODEL_DIR
    return world_content(model_world(local) if local.is_dir() else None)
