"""``python -m explain inpaint``: fill the white region of a mask; pixels outside it are kept exactly.

``--mode unet`` uses the 9-channel inpainting U-Net (mask and masked image as input channels), ``--mode blend`` a
4-channel text-to-image U-Net with the known latents written back every step. Writes ``image.png``, ``source.png``,
``mask.png``, ``raw.png``, ``input_layout.json``/``.png``, ``summary.json``, ``attention.npz``, ``heatmaps/``,
``film.gif`` into ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from explain.cli.usecase_args import add_common_arguments, execute

__all__ = ["add_parser", "run", "add_mode_arguments"]


def add_mode_arguments(parser: argparse.ArgumentParser) -> None:
    """``--mode`` and ``--model`` of inpainting and outpainting."""
    parser.add_argument(
        "--mode", choices=("unet", "blend"), default="unet", help="9-channel inpainting U-Net or 4-channel blending"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="unet mode: a StableDiffusionInpaintPipeline; blend mode: a text-to-image pipeline (default: embedded)",
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("inpaint", help="inpainting (9-channel U-Net or 4-channel blending), explained")
    parser.add_argument("--mask", required=True, type=Path, help="mask image, white = fill (same aspect ratio)")
    parser.add_argument("--prompt", required=True, help="what should appear (whole-image caption works best)")
    parser.add_argument("--strength", type=float, default=1.0, help="1 = fill from pure noise (default)")
    add_mode_arguments(parser)
    add_common_arguments(parser, guidance=3.0)
    parser.set_defaults(run=run)
    return parser


def _call(pipe, args):
    from explain.usecases.inpainting import inpaint

    return inpaint(
        args.image,
        args.mask,
        args.prompt,
        pipe=pipe,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        strength=args.strength,
        negative_prompt=args.negative_prompt,
        capture=not args.no_capture,
        film_decode=args.film_decode,
    )


def run(args) -> int:
    from explain.cli import CliError

    if not args.mask.is_file():
        raise CliError(f"--mask {args.mask} is not a file")
    if not args.prompt.strip():
        raise CliError("--prompt must not be empty")
    if not (0.0 <= args.strength <= 1.0):
        raise CliError(f"--strength must lie in [0, 1] (got {args.strength:g})")
    return execute(args, "inpaint", _call, mode=args.mode, precheck=_precheck)


def _precheck(args) -> None:
    """Mask problems (empty, other aspect ratio, unreadable) before the model loads."""
    from explain.cli.usecase_args import read_image
    from explain.usecases.inputs import to_mask

    to_mask(args.mask, read_image(args.image).size, "--mask")
