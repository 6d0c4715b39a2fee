"""``python -m explain stylize``: img2img (SDEdit) from a content image with style words.

``--strength`` is where the sampler starts on the forward chain (printed as step and timestep). Writes
``image.png``, ``content.png``, ``input_layout.json``/``.png``, ``summary.json``, ``attention.npz``, ``heatmaps/``,
``film.gif`` into ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from explain.cli.usecase_args import add_common_arguments, execute

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    from explain import world

    parser = subparsers.add_parser("stylize", help="style transfer by img2img (SDEdit), explained")
    parser.add_argument(
        "--style",
        action="append",
        default=[],
        help=f"style words (repeat); world: {', '.join(world.STYLES + world.SCENES)}",
    )
    parser.add_argument("--style-image", type=Path, default=None, help="read style words from this image (CLIP)")
    parser.add_argument("--prompt", default=None, help="what the content image shows (default: style words only)")
    parser.add_argument("--strength", type=float, default=0.6, help="start point on the forward chain, 0..1")
    parser.add_argument(
        "--model", default=None, help="text-to-image diffusers directory or Hub id (default: embedded)"
    )
    add_common_arguments(parser, guidance=7.5)
    parser.set_defaults(run=run)
    return parser


def _call(pipe, args):
    from explain.usecases.sdedit import stylize

    result = stylize(
        args.image,
        args.style,
        args.prompt,
        pipe=pipe,
        strength=args.strength,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        negative_prompt=args.negative_prompt,
        style_image=args.style_image,
        capture=not args.no_capture,
        film_decode=args.film_decode,
    )
    start = result.start
    print(
        f"strength {start.strength:g}: skip {start.t_start} of {start.num_inference_steps} steps, start at timestep "
        f"{start.start_timestep} (signal x{start.signal_coef:.3f}, noise x{start.noise_std:.3f}), "
        f"{start.denoising_steps} steps run"
    )
    return result


def run(args) -> int:
    from explain.cli import CliError

    if args.style_image is not None and not args.style_image.is_file():
        raise CliError(f"--style-image {args.style_image} is not a file")
    if not (0.0 <= args.strength <= 1.0):
        raise CliError(f"--strength must lie in [0, 1] (got {args.strength:g})")
    if args.steps >= 1 and int(args.steps * args.strength) == 0:
        raise CliError(
            f"--strength {args.strength:g} x --steps {args.steps} rounds down to 0 denoising steps: "
            f"use --strength >= {1 / args.steps:.3g} or more --steps"
        )
    if args.style_image is not None:
        from explain.cli.usecase_args import read_image

        read_image(args.style_image, "--style-image")
    return execute(args, "img2img", _call)
