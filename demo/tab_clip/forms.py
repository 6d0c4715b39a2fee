"""The CLIP tab's settings and the named values its handlers return (in the order of their output components)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "MAX_WORLD",
    "MAX_UPLOADS",
    "PADDING_SHOWN",
    "LABEL_CHARS",
    "DEFAULT_PROMPT",
    "SHAPE_CLASSES",
    "COLOR_CLASSES",
    "DEFAULT_CLASSES",
    "CLIP_CODE_WIDTH",
    "Tokens",
    "Batch",
    "ClipRun",
    "TextStates",
    "Loaded",
]

MAX_WORLD = 8
MAX_UPLOADS = 8
PADDING_SHOWN = 3  # padding slots drawn before the "... xN" chip
LABEL_CHARS = 34  # text labels on the logits plot are cut to this many characters
DEFAULT_PROMPT = "a big red circle on the left and a small blue triangle on the right"
SHAPE_CLASSES = "\n".join(
    f"a red {shape} in the center" for shape in ("circle", "square", "triangle", "star", "heart", "diamond")
)
COLOR_CLASSES = "\n".join(
    f"a {color} star in the center" for color in ("red", "green", "blue", "yellow", "purple", "orange")
)
DEFAULT_CLASSES = SHAPE_CLASSES
CLIP_CODE_WIDTH = 53  # column where the live-value comments start


class Tokens(NamedTuple):
    """A prompt's 77 slots: the chip strip (HTML), the used-slot table and a summary."""

    strip: str
    slots: list[list]
    summary: str


class Batch(NamedTuple):
    """World samples as a gallery and their true captions, one per line."""

    gallery: list
    texts: str


class ClipRun(NamedTuple):
    """One batch through the pseudocode: the logits figure, the listing, both softmax tables and the loss."""

    figure: object
    code: str
    image_to_text: dict
    text_to_image: dict
    loss: str


class TextStates(NamedTuple):
    """What the U-Net gets from the text encoder (a summary) and the per-slot hidden-state table."""

    text: str
    states: list[list]


class Loaded(NamedTuple):
    """The tab's first views when the page opens (:meth:`ClipTab.on_load`)."""

    strip: str
    slots: list[list]
    summary: str
    gallery: list
    texts: str
    figure: object
    code: str
    image_to_text: dict
    text_to_image: dict
    loss: str
    text: str
    states: list[list]
