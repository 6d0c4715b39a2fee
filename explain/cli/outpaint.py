"""``python -m explain outpaint``: extend the canvas (sides and/or zoom-out) and fill the new border.

Writes ``image.png``, ``source.png`` (the extended canvas), ``mask.png`` (the new border), ``raw.png``,
``input_layout.json``/``.png``, ``summary.json``, ``attention.npz``, ``heatmaps/``, ``film.gif`` into ``--out``.
"""

from __future__ import annotations

import argparse

from explain.cli.inpaint import add_mode_arguments
from explain.cli.usecase_args import add_common_arguments, execute

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("outpaint", help="outpainting: extend the canvas, fill the border, explained")
    parser.add_argument("--prompt", required=True, help="what the extended image shows")
    for side in ("left", "right", "top", "bottom"):
        parser.add_argument(f"--{side}", type=int, default=0, help=f"pixels to add on the {side} (default 0)")
    parser.add_argument("--zoom-out", type=float, default=1.0, help="shrink the content by this factor (>= 1)")
    add_mode_arguments(parser)
    add_common_arguments(parser, guidance=3.0)
    parser.set_defaults(run=run)
    return parser


def _call(pipe, args):
    from explain.usecases.inpainting import outpaint

    return outpaint(
        args.image,
        args.prompt,
        pipe=pipe,
        left=args.left,
        right=args.right,
        top=args.top,
        bottom=args.bottom,
        zoom_out=args.zoom_out,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        negative_prompt=args.negative_prompt,
        capture=not args.no_capture,
        film_decode=args.film_decode,
    )


def run(args) -> int:
    from explain.cli import CliError

    if not args.prompt.strip():
        raise CliError("--prompt must not be empty")
    sides = {side: getattr(args, side) for side in ("left", "right", "top", "bottom")}
    if any(v < 0 for v in sides.values()):
        raise CliError(f"--left/--right/--top/--bottom must be >= 0 pixels (got {sides})")
    if args.zoom_out < 1:
        raise CliError(f"--zoom-out must be >= 1 (got {args.zoom_out:g})")
    if args.zoom_out == 1 and not any(sides.values()):
        raise CliError("nothing to outpaint: give --left/--right/--top/--bottom > 0 or --zoom-out > 1")
    return execute(args, "inpaint", _call, mode=args.mode)
