"""``python -m explain clip``: the CLIP pseudocode on n (image, text) pairs.

Writes ``clip_logits.png`` (the n x n logit matrix, matched pairs boxed) and ``clip.json`` (logits, both softmaxes,
``loss_i``, ``loss_t``, ``loss``, the temperature and where the projections come from). Image k pairs with text k.
The model is the embedded tiny CLIP (``--model`` a pipeline directory carrying ``clip/``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from explain.io.formats import write_json

__all__ = ["add_parser", "run", "run_clip"]

FIGURE_NAME = "clip_logits.png"
JSON_NAME = "clip.json"
THUMBNAIL_SIDE = 96


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``clip`` on the top-level subparsers."""
    parser = subparsers.add_parser(
        "clip",
        help="CLIP's contrastive loss on n image/text pairs: logits matrix, loss_i, loss_t",
        description="Run the CLIP paper's pseudocode on matched pairs (image k with text k).",
    )
    parser.add_argument("--image", type=Path, nargs="+", required=True, help="n image files")
    parser.add_argument("--text", nargs="+", required=True, help="n texts, text k describes image k")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--model", default=None, help="pipeline directory with clip/ (default: embedded model)")
    parser.add_argument("--temperature", type=float, default=None, help="override the learned temperature 1/exp(t)")
    parser.set_defaults(run=run)
    return parser


def _open_images(paths: Sequence[Path]) -> list:
    from PIL import Image, UnidentifiedImageError

    from explain.cli import CliError

    images = []
    for path in paths:
        if not path.is_file():
            raise CliError(f"image not found: {path}")
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise CliError(f"not a readable image: {path} ({err})") from None
    return images


def _load_clip(model: str | None):
    """``(open_clip model, tokenizer, preprocess)`` of the embedded CLIP (or another pipeline dir with ``clip/``)."""
    from explain.cli import CliError
    from explain.clip.model import load_clip
    from explain.diffusion.loading import EMBEDDED_MODEL_DIR

    model_dir = Path(model) if model else EMBEDDED_MODEL_DIR
    try:
        bundle = load_clip(model_dir)
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        raise CliError(f"cannot load CLIP from {model_dir}: {err}") from None
    return bundle.model, bundle.tokenizer, bundle.preprocess


def run_clip(
    images: Sequence,
    texts: Sequence[str],
    model,
    tokenizer,
    preprocess,
    out_dir: Path,
    image_labels: Sequence[str] | None = None,
    temperature: float | None = None,
):
    """Run :func:`explain.clip.contrastive.contrastive_step` and write the figure and JSON into ``out_dir``.

    Args:
        images: ``n`` PIL images; image ``k`` pairs with ``texts[k]``.
        texts: ``n`` texts.
        model: an open_clip CLIP (in eval mode).
        tokenizer: ``tokenizer(list[str]) -> [n, L]`` ids.
        preprocess: PIL image -> ``[3, H, W]`` tensor.
        out_dir: existing output directory.
        image_labels: row labels (default ``image 1 .. n``).
        temperature: optional temperature override.

    Returns:
        The :class:`explain.clip.contrastive.ContrastiveResult`.
    """
    import numpy as np
    import torch

    from explain.clip.contrastive import contrastive_step
    from explain.io.figures import clip_logits_figure

    if len(images) != len(texts):
        raise ValueError(f"need matched pairs: {len(images)} images vs {len(texts)} texts")
    labels = list(image_labels) if image_labels is not None else [f"image {k + 1}" for k in range(len(images))]
    batch = torch.stack([preprocess(im) for im in images])  # [n, 3, H, W]
    result = contrastive_step(model, batch, tokenizer(list(texts)), temperature_override=temperature)
    thumbs = []
    for im in images:
        small = im.copy()
        small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        thumbs.append(np.asarray(small, dtype=np.float32) / np.iinfo(np.uint8).max)
    title = (
        f"CLIP logits (× exp(t) = {result.logit_scale:.1f}):  loss_i (text→image) {result.loss_i:.3f},  "
        f"loss_t (image→text) {result.loss_t:.3f}"
    )
    fig = clip_logits_figure(result.logits.cpu().numpy(), labels, list(texts), images=thumbs, title=title)
    fig.savefig(out_dir / FIGURE_NAME)
    doc = {
        "images": labels,
        "texts": list(texts),
        "logits": result.logits.tolist(),
        "logits_rows": "images",
        "logits_columns": "texts",
        "probs_image_to_text": result.probs_image_to_text.tolist(),
        "probs_text_to_image": result.probs_text_to_image.tolist(),
        "t": result.t,
        "logit_scale": result.logit_scale,
        "temperature": 1.0 / result.logit_scale,
        "loss_i": result.loss_i,
        "loss_i_meaning": "cross-entropy along axis 0 (over images): text -> image",
        "loss_t": result.loss_t,
        "loss_t_meaning": "cross-entropy along axis 1 (over texts): image -> text",
        "loss": result.loss,
        "shapes": result.shapes,
        "image_projection": result.image_projection,
        "text_projection": result.text_projection,
    }
    write_json(out_dir / JSON_NAME, doc)
    return result


def run(args: argparse.Namespace) -> int:
    """Entry point for ``python -m explain clip``."""
    from explain.cli import CliError

    if len(args.image) != len(args.text):
        raise CliError(f"need matched pairs: {len(args.image)} --image vs {len(args.text)} --text")
    if args.temperature is not None and args.temperature <= 0:
        raise CliError(f"--temperature must be > 0, got {args.temperature}")
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out} exists and is not a directory")
    images = _open_images(args.image)
    model, tokenizer, preprocess = _load_clip(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    result = run_clip(
        images,
        args.text,
        model,
        tokenizer,
        preprocess,
        args.out,
        image_labels=[p.name for p in args.image],
        temperature=args.temperature,
    )
    print(
        f"loss_i (text->image) {result.loss_i:.4f}, loss_t (image->text) {result.loss_t:.4f}, loss {result.loss:.4f}"
    )
    print(f"wrote {args.out / FIGURE_NAME} and {args.out / JSON_NAME}")
    return 0
