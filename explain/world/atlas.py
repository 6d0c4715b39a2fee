"""The committed sprite atlas of world v2 (Noto Color Emoji, Apache-2.0; see ``assets/NOTICE``).

Only this atlas is read at run time: the font is needed once, by ``python -m training.render_atlas``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["ASSETS", "ATLAS_IMAGE", "ATLAS_INDEX", "Sprite", "sprites", "sprite"]

ASSETS = Path(__file__).resolve().parent / "assets"
ATLAS_IMAGE = "emoji_atlas.png"
ATLAS_INDEX = "emoji_atlas.json"


@dataclass(frozen=True)
class Sprite:
    """One sprite: ``rgba`` (h, w, 4) float32 in [0, 1], cropped to its alpha box; ``code_point`` as U+XXXX."""

    name: str
    code_point: str
    rgba: np.ndarray


@cache
def sprites(assets: Path = ASSETS) -> dict[str, Sprite]:
    """All sprites of the atlas, by name (read once per process)."""
    index = json.loads((assets / ATLAS_INDEX).read_text())
    atlas = np.asarray(Image.open(assets / ATLAS_IMAGE).convert("RGBA"), dtype=np.float32) / 255.0
    out = {}
    for name, meta in index["sprites"].items():
        x, y, w, h = meta["box"]
        out[name] = Sprite(name, meta["code_point"], atlas[y : y + h, x : x + w].copy())
    return out


def sprite(name: str) -> Sprite:
    try:
        return sprites()[name]
    except KeyError:
        raise KeyError(f"no sprite {name!r} in the atlas; known: {', '.join(sorted(sprites()))}") from None
