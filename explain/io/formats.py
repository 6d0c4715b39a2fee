"""Format-level writers without torch: JSON files, animated GIFs and captioned image pairs (re-exported by
:mod:`explain.io.writers`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["FILM_TILE_SIDE", "FILM_FRAME_MS", "write_json", "write_gif", "captioned_pair"]

FILM_TILE_SIDE = 256  # longest side of one film tile, pixels
FILM_FRAME_MS = 200
PAIR_GAP = 8  # pixels between the two tiles of a captioned pair
PAIR_CAPTION = 24  # pixels of caption band above them


def write_json(path: str | Path, doc) -> Path:
    """``doc`` as indented UTF-8 JSON with a final newline."""
    Path(path).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(path)


def write_gif(path: str | Path, frames: Sequence[Image.Image], duration_ms: int = FILM_FRAME_MS) -> Path:
    """An animated GIF that loops, ``duration_ms`` per frame."""
    frames = list(frames)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return Path(path)


def _fit(array: np.ndarray, side: int) -> Image.Image:
    """(H, W, 3) uint8 -> PIL, nearest-resized so its longer side is ``side`` pixels."""
    height, width = array.shape[:2]
    ratio = side / max(height, width)
    return Image.fromarray(array).resize(
        (max(1, round(width * ratio)), max(1, round(height * ratio))), Image.Resampling.NEAREST
    )


def captioned_pair(left: np.ndarray, right: np.ndarray, caption: str, side: int = FILM_TILE_SIDE) -> Image.Image:
    """Two (H, W, 3) uint8 images side by side (longer side ``side`` each) under a one-line caption."""
    tiles = [_fit(left, side), _fit(right, side)]
    canvas = Image.new("RGB", (tiles[0].width * 2 + PAIR_GAP, tiles[0].height + PAIR_CAPTION), "white")
    canvas.paste(tiles[0], (0, PAIR_CAPTION))
    canvas.paste(tiles[1], (tiles[0].width + PAIR_GAP, PAIR_CAPTION))
    ImageDraw.Draw(canvas).text((6, 6), caption, fill="black")
    return canvas
