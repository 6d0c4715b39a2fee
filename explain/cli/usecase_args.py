"""Command-line plumbing shared by ``python -m explain upscale|stylize|inpaint|outpaint`` (argparse only).

Each subcommand adds its own arguments plus :func:`add_common_arguments`, and runs :func:`execute` with a function
that calls the library. Library ``ValueError`` and ``ModelLoadError`` become one-line errors with exit code 2
(:class:`explain.cli.CliError`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from explain.cli import CliError

__all__ = ["add_common_arguments", "execute", "read_image"]


def add_common_arguments(parser: argparse.ArgumentParser, guidance: float, steps: int = 20) -> None:
    """Arguments every use case has (seed, steps, guidance, model, device, capture, output)."""
    parser.add_argument("--image", required=True, type=Path, help="input image file (any mode; converted to RGB)")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt (the unconditional branch)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--steps", type=int, default=steps, help=f"sampler steps (default {steps})")
    parser.add_argument("--guidance", type=float, default=guidance, help=f"guidance scale (default {guidance:g})")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-capture", action="store_true", help="skip attention, heat maps and film")
    parser.add_argument("--film-decode", choices=("auto", "preview", "vae"), default="auto", help="film frame decoder")
    parser.add_argument("--out", required=True, type=Path, help="output directory")


def _check(args) -> None:
    if args.steps < 1:
        raise CliError(f"--steps must be >= 1 (got {args.steps})")
    if args.guidance < 0:
        raise CliError(f"--guidance must be >= 0 (got {args.guidance})")
    if args.seed < 0:
        raise CliError("--seed must be >= 0")
    if not args.image.is_file():
        raise CliError(f"--image {args.image} is not a file")
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out} exists and is not a directory")


def read_image(path: Path, option: str = "--image"):
    """Read an input file early (before any model loads), so bad files fail fast with one line."""
    from explain.usecases.inputs import to_rgb

    try:
        return to_rgb(path, option)[0]
    except ValueError as err:
        raise CliError(str(err)) from err


def execute(args, task: str, call: Callable, mode: str = "unet", precheck: Callable | None = None) -> int:
    """Validate common args, load the task pipeline, run ``call(pipe, args)`` -> result, write the files.

    Args:
        args: Parsed arguments (with ``model``).
        task: ``load_task_pipeline`` task name.
        call: ``(pipe, args) -> TaskResult``.
        mode: Inpainting mode for loading.
        precheck: ``(args) -> None``, run before the model loads; raise ``ValueError`` or ``CliError``.
    """
    _check(args)
    read_image(args.image)
    if precheck is not None:
        try:
            precheck(args)
        except ValueError as err:
            raise CliError(str(err)) from err
    import diffusers
    import transformers

    from explain.diffusion.loading import ModelLoadError
    from explain.usecases.export import write_outputs
    from explain.usecases.models import load_task_pipeline

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        pipe = load_task_pipeline(task, args.model, mode=mode, device=args.device)
    except ModelLoadError as err:
        raise CliError(str(err)) from err
    try:
        result = call(pipe, args)
    except ValueError as err:
        raise CliError(str(err)) from err
    write_outputs(result, args.out, model=args.model)
    for note in result.notes:
        print(f"note: {note}")
    return 0
