"""``python -m explain edit``: inpaint an edited prompt where a word of the prompt attends.

Generates ``--prompt`` (seed, steps, guidance; or takes ``--image``, whose maps are recorded while img2img
re-denoises it), turns the DAAM map of ``--word`` into a mask (min-max, above
``--threshold``, grown by ``--dilation`` pixels) and inpaints ``--edited-prompt`` (or the prompt with ``--word``
replaced by ``--new-word``) there with the same seed (:mod:`explain.usecases.attend_edit`). Writes ``before.png``,
``after.png``, ``map.png`` (the word's map over the image), ``mask.png``, ``difference.png`` (|Δ| x 4) and
``summary.json`` (prompts, settings, mask area, share of changed pixels inside the mask) into ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from explain.cli import CliError
from explain.maps.score import DAAM_TAU

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("edit", help="inpaint an edited prompt where a word attends (attention as a mask)")
    parser.add_argument("--prompt", required=True, help="the prompt of the image to edit")
    parser.add_argument("--word", required=True, help="a word of the prompt: its attention map is the mask")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--edited-prompt", default=None, help="the whole edited caption, inpainted inside the mask")
    what.add_argument("--new-word", default=None, help="the edited prompt is the prompt with --word replaced by this")
    parser.add_argument("--threshold", type=float, default=DAAM_TAU, help=f"mask: map > this (default {DAAM_TAU})")
    parser.add_argument("--dilation", type=int, default=2, help="pixels the mask is grown by (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of both runs (default 0)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps of both runs (default 20)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance of the generation (default: model's)")
    parser.add_argument("--inpaint-guidance", type=float, default=3.0, help="guidance of the inpainting (default 3)")
    parser.add_argument(
        "--mode",
        choices=("unet", "blend"),
        default=None,
        help="9-channel inpainting U-Net (embedded default) or 4-channel blending (default for --model)",
    )
    parser.add_argument("--model", default=None, help="a text-to-image pipeline (default: the embedded model)")
    parser.add_argument(
        "--image", type=Path, default=None,
        help="edit this image instead of a generation (--prompt describes it; its maps are recorded by re-denoising)",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.set_defaults(run=run)
    return parser


def _edited_prompt(args) -> str:
    if args.edited_prompt is not None:
        return args.edited_prompt
    from explain.steering.edits import replace_word

    return replace_word(args.prompt, args.word, args.new_word)


def _write(result, out: Path, model: str | None) -> None:
    import numpy as np

    from explain.io.formats import write_json
    from explain.maps.aggregation import overlay

    out.mkdir(parents=True, exist_ok=True)
    result.before.save(out / "before.png")
    result.after.save(out / "after.png")
    Image.fromarray(overlay(np.asarray(result.before), result.word_map, normalise=False)).save(out / "map.png")
    Image.fromarray(result.mask.astype(np.uint8) * 255).save(out / "mask.png")
    Image.fromarray(result.difference_image()).save(out / "difference.png")
    write_json(
        out / "summary.json",
        {
            "model": model or "embedded",
            "prompt": result.prompt,
            "word": result.word,
            "edited_prompt": result.edited_prompt,
            "threshold": result.threshold,
            "dilation": result.dilation,
            "inpainting_mode": result.inpainting.mode,
            "inpainting_unet_in_channels": result.inpainting.in_channels,
            "mask_area": round(result.mask_area, 4),
            "changed_pixels": int(result.changed.sum()),
            "changed_share_inside_mask": result.share_inside,
            "change_level": "any channel moved by more than 8/255",
        },
    )


def run(args) -> int:
    if args.steps < 1 or args.seed < 0:
        raise CliError("--steps must be >= 1 and --seed >= 0")
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out} exists and is not a directory")
    upload = None
    if args.image is not None:
        from explain.cli.usecase_args import read_image

        if not args.image.is_file():
            raise CliError(f"--image {args.image} is not a file")
        upload = read_image(args.image)
    try:
        edited = _edited_prompt(args)
    except ValueError as err:
        raise CliError(str(err)) from err
    import diffusers
    import transformers

    from explain.diffusion.loading import EMBEDDED_MODEL_DIR, ModelLoadError, recommended_settings
    from explain.usecases.attend_edit import edit_where_attends
    from explain.usecases.models import load_base, load_task_pipeline

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    mode = args.mode or ("unet" if args.model is None else "blend")
    if mode == "unet" and args.model is not None:
        raise CliError("--mode unet needs the embedded model's inpainting U-Net; with --model use --mode blend")
    try:
        base = load_base(args.model, args.device)
        inpainter = load_task_pipeline("inpaint", None, mode=mode, base=base)
        img2img = load_task_pipeline("img2img", None, base=base) if upload is not None else None
    except ModelLoadError as err:
        raise CliError(str(err)) from err
    local = Path(args.model).expanduser() if args.model else EMBEDDED_MODEL_DIR
    guidance = args.guidance
    if guidance is None:  # the model's recommended guidance (explorer.json), else SD's usual 7.5
        guidance = recommended_settings(local).get("recommended_guidance", 7.5) if local.is_dir() else 7.5
    try:
        result = edit_where_attends(
            args.prompt,
            args.word,
            edited,
            pipe=base,
            inpaint_pipe=inpainter,
            seed=args.seed,
            steps=args.steps,
            guidance=guidance,
            inpaint_guidance=args.inpaint_guidance,
            threshold=args.threshold,
            dilation=args.dilation,
            image=upload,
            map_pipe=img2img,
        )
    except ValueError as err:
        raise CliError(str(err)) from err
    _write(result, args.out, args.model)
    share = result.share_inside
    print(
        f"edited {result.word!r} -> {result.edited_prompt!r}: mask {result.mask_area:.1%} of the image, "
        f"{int(result.changed.sum())} pixels changed"
        + ("" if share is None else f", {share:.1%} of them inside the mask")
    )
    return 0
