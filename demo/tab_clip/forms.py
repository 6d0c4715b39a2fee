"""The CLIP tab's settings and the named values its handlers return (in the order of their output components)."""

from __future__ import annotations

import math
from typing import NamedTuple

from demo.common import user_errors
from explain.clip.live import LiveTraining
from explain.engine.requests import finite, whole

__all__ = [
    "MAX_WORLD",
    "MAX_UPLOADS",
    "PADDING_SHOWN",
    "LABEL_CHARS",
    "CLIP_CODE_WIDTH",
    "Tokens",
    "Batch",
    "ClipRun",
    "TextStates",
    "Loaded",
    "LIVE_FRAMES",
    "LIVE_DEFAULTS",
    "MAX_LEARNING_RATE",
    "MIN_LEARNING_RATE",
    "live_training",
    "Live",
]

MAX_WORLD = 8
MAX_UPLOADS = 8
PADDING_SHOWN = 3  # padding slots drawn before the "... xN" chip
LABEL_CHARS = 34  # text labels on the logits plot are cut to this many characters
CLIP_CODE_WIDTH = 53  # column where the live-value comments start
LIVE_FRAMES = 25  # frames a live training run streams (each: the matrix picture, the curves, the projection)
# the form's defaults: n = 8 pairs turn the softmax diagonal (> 0.9 of it) in about 50 steps; 200 show it settle
LIVE_DEFAULTS = {"n": 8, "steps": 200, "learning_rate": 2e-3, "learn_temperature": True, "temperature": 0.07}
MIN_LEARNING_RATE, MAX_LEARNING_RATE = 1e-5, 0.1


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


def live_training(n, steps, learning_rate, learn_temperature, temperature, shuffle, seed) -> LiveTraining:
    """The live run the form asks for (checked by ``LiveTraining.validate``), about :data:`LIVE_FRAMES` frames."""
    with user_errors():
        steps = whole("steps", steps)  # its range: LiveTraining.validate
        options = LiveTraining(
            n=whole("batch size n", n),
            steps=steps,
            learning_rate=finite("learning rate", learning_rate),
            learn_temperature=bool(learn_temperature),
            temperature=finite("temperature", temperature),
            shuffle_captions=bool(shuffle),
            seed=whole("seed", seed),
            frame_every=max(1, math.ceil(steps / LIVE_FRAMES)),  # >= 1 for any steps: validate names bad ones
        )
        return options.validate()


class Live(NamedTuple):
    """One frame of a live training run (:meth:`ClipTab.train_live`), in the order of its output components."""

    matrix: object  # (H, W, 3) uint8: the n x n logits, images down the side
    losses: object  # DataFrame: step, value, curve (loss_i, loss_t, loss)
    temperature: object  # DataFrame: step, temperature
    projection: object  # Figure: the joint space in 2-D
    softmax: dict  # the row softmax as a table
    history: dict  # one row per frame: step, losses, temperature, diagonal share
    captions: str
    status: str
