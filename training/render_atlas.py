"""Render world v2's sprite atlas from the Noto Color Emoji font: ``python -m training.render_atlas``.

Needs the font once (``apt-get install -y fonts-noto-color-emoji``); the app, the CLI and the tests read only the
committed atlas (``explain/world/assets/emoji_atlas.png`` + ``emoji_atlas.json``). The font's CBDT bitmaps exist
only at size 109, so each glyph is drawn at 109 on an RGBA canvas, cropped to its alpha box and scaled (LANCZOS)
so that its longest side is ``CELL`` pixels. Code points below U+1F000 get the emoji presentation selector U+FE0F.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from explain.world.atlas import ASSETS, ATLAS_IMAGE, ATLAS_INDEX
from explain.world.lexicon import NOUNS

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the only size the CBDT strikes accept
CELL = 80
NOTICE = (
    "Sprites: Noto Color Emoji (https://github.com/googlefonts/noto-emoji), images under the Apache License 2.0, "
    "font under the SIL Open Font License 1.1. Rendered from Debian's fonts-noto-color-emoji by "
    "training/render_atlas.py."
)


def render_glyph(font: ImageFont.FreeTypeFont, code_point: int) -> Image.Image:
    """One glyph, cropped to its alpha box and scaled so that its longest side is CELL pixels. RGBA."""
    text = chr(code_point) + ("\ufe0f" if code_point < 0x1F000 else "")
    canvas = Image.new("RGBA", (160, 150), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 0), text, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        raise RuntimeError(f"U+{code_point:04X} rendered empty")
    glyph = canvas.crop(box)
    scale = CELL / max(glyph.size)
    size = (max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale)))
    return glyph.resize(size, Image.LANCZOS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.render_atlas", description=__doc__)
    p.add_argument("--font", type=Path, default=FONT)
    p.add_argument("--out", type=Path, default=ASSETS)
    args = p.parse_args(argv)
    if not args.font.exists():
        raise SystemExit(f"{args.font} not found: apt-get install -y fonts-noto-color-emoji")
    font = ImageFont.truetype(str(args.font), FONT_SIZE)
    sprites = [(name, cp) for n in NOUNS.values() for name, cp in zip(n.sprites, n.code_points, strict=False)]
    cols = math.ceil(math.sqrt(len(sprites)))
    rows = math.ceil(len(sprites) / cols)
    atlas = Image.new("RGBA", (cols * CELL, rows * CELL), (0, 0, 0, 0))
    index = {}
    for i, (name, cp) in enumerate(sprites):
        glyph = render_glyph(font, cp)
        x, y = (i % cols) * CELL, (i // cols) * CELL
        atlas.alpha_composite(glyph, (x, y))
        index[name] = {"code_point": f"U+{cp:04X}", "box": [x, y, glyph.width, glyph.height]}
    args.out.mkdir(parents=True, exist_ok=True)
    atlas.save(args.out / ATLAS_IMAGE, optimize=True)
    meta = {"notice": NOTICE, "font_size": FONT_SIZE, "cell": CELL, "sprites": index}
    (args.out / ATLAS_INDEX).write_text(json.dumps(meta, indent=1) + "\n")
    (args.out / "NOTICE").write_text(NOTICE + "\n")
    print(f"{len(index)} sprites -> {args.out / ATLAS_IMAGE} ({atlas.width}x{atlas.height})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
