"""``python -m explain upscale``: super-resolution with the low-res image as extra U-Net input channels.

Writes ``image.png``, ``low_res.png``, ``bicubic.png``, ``input_layout.json``/``.png``, ``summary.json``,
``attention.npz``, ``heatmaps/``, ``film.gif`` into ``--out`` (see :mod:`explain.usecases.export`).
"""

from __future__ import annotations

import argparse

from explain.cli.usecase_args import add_common_arguments, execute

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("upscale", help="super-resolution (SD x4 upscaler design), explained")
    parser.add_argument("--prompt", default="", help="what the image shows (default: empty)")
    parser.add_argument("--noise-level", type=int, default=20, help="noise added to the low-res image (default 20)")
    parser.add_argument("--samples", type=int, default=1, help="average this many samples (default 1)")
    parser.add_argument("--back-projection", type=int, default=0, help="back-projection iterations (default 0)")
    parser.add_argument(
        "--model", default=None, help="StableDiffusionUpscalePipeline directory or Hub id (default: embedded)"
    )
    add_common_arguments(parser, guidance=3.0)
    parser.set_defaults(run=run)
    return parser


def _call(pipe, args):
    from explain.usecases.superres import upscale

    return upscale(
        args.image,
        args.prompt,
        pipe=pipe,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        noise_level=args.noise_level,
        negative_prompt=args.negative_prompt,
        samples=args.samples,
        back_projection=args.back_projection,
        capture=not args.no_capture,
        film_decode=args.film_decode,
    )


def run(args) -> int:
    from explain.cli import CliError

    if args.noise_level < 0:
        raise CliError(f"--noise-level must be >= 0 (got {args.noise_level})")
    if args.samples < 1 or args.back_projection < 0:
        raise CliError("--samples must be >= 1 and --back-projection >= 0")
    return execute(args, "upscale", _call)
