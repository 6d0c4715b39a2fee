"""``python -m explain generate``: one image per (prompt, seed), with its cross-attention explained.

Writes into ``--out DIR`` (or ``DIR/NNN/`` per pair when several prompts or seeds are given, plus
``DIR/index.json``):

- ``image.png``       the generated image
- ``summary.json``    prompt, seed, model, tokens, words, ``unknown_words`` (words the model never saw in training;
                      empty for real checkpoints), capture bytes, seconds (``denoising``: pipeline call to the
                      last step's callback, prompt encoding included; ``total``: the whole pair, files included)
- ``attention.npz``   ``words``, ``word_maps`` (n_words, H, W) float32, ``tokens``, ``token_maps`` (n_tokens, H, W)
                      float32 (DAAM aggregate over all steps, layers, heads; not normalised), ``cube`` float16
                      (steps, layers, tokens, h, w) and ``layer_names``
- ``heatmaps/NN_word.png``  one overlay per word
- ``film.gif``        per step: the predicted clean image x̂₀ (noisy latents where the scheduler gives no x̂₀),
                      then the same frame overlaid with each word's attention at that step

``--no-capture`` writes only ``image.png`` and ``summary.json``; the image is bit-identical to the captured run.

SD3 / SD3.5 and Flux (joint attention, no cross-attention; :mod:`explain.io.joint_writers` gives the formats):
``attention.npz`` holds the same ``words``, ``word_maps``, ``tokens`` (the kept text columns, CLIP and T5),
``token_maps`` and ``layer_names``, read from the joint attention in the TEXT normalisation (``summary.json``
``normalization``), plus ``word_maps_joint``, ``text_mass``, ``columns``, ``encoders`` and no ``cube``;
``heatmaps/`` as above; ``concepts.npz`` and ``concept_heatmaps/``: ConceptAttention maps of the prompt's words and
of every ``--concept`` word; no ``film.gif`` (flow-matching sampler: ``summary.json`` ``notes`` says so).

``--concept WORD`` on a U-Net: ``concepts.npz`` and ``concept_heatmaps/`` hold open-vocabulary maps (OVAM,
:mod:`explain.capture.open_vocabulary`) of the ``--concept`` words, read as one attribution text; the image is
unchanged (format: :func:`explain.io.writers.write_concept_files`).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

from explain.cli import CliError
from explain.diffusion.geometry import Geometry
from explain.diffusion.loading import SCHEDULERS
from explain.io.formats import write_json

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("generate", help="generate images and explain their cross-attention")
    parser.add_argument("--prompt", action="append", required=True, help="prompt (repeat for several)")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt (the unconditional branch)")
    parser.add_argument("--seed", action="append", type=int, help="random seed (repeat for several; default 0)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's, else 25)")
    parser.add_argument(
        "--guidance", type=float, default=None, help="guidance scale; <= 1 is off (default: the model's, else 7.5)"
    )
    parser.add_argument("--height", type=int, default=None, help="image height in pixels (default: the model's)")
    parser.add_argument("--width", type=int, default=None, help="image width in pixels (default: the model's)")
    parser.add_argument("--model", default=None, help="diffusers directory or Hub id (default: embedded model)")
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), default=None, help="replace the scheduler")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-capture", action="store_true", help="only image.png and summary.json")
    parser.add_argument(
        "--concept",
        action="append",
        default=[],
        help="also map this word, in the prompt or not (repeat): OVAM on U-Nets, ConceptAttention on SD3/Flux",
    )
    parser.add_argument(
        "--film-decode", choices=("auto", "preview", "vae"), default="auto", help="film frame decoder (default auto)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.set_defaults(run=run)
    return parser


def _validate_args(args) -> list[int]:
    for prompt in args.prompt:
        if not prompt.strip():
            raise CliError("--prompt must not be empty")
    if args.steps is not None and args.steps < 1:
        raise CliError(f"--steps must be >= 1 (got {args.steps})")
    if args.guidance is not None and (args.guidance < 0 or args.guidance != args.guidance):
        raise CliError(f"--guidance must be >= 0 (got {args.guidance})")
    seeds = args.seed if args.seed else [0]
    if any(seed < 0 for seed in seeds):
        raise CliError("--seed must be >= 0")
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CliError(f"--{name} must be positive (got {value})")
    if any(not word.strip() for word in args.concept):
        raise CliError("--concept must not be empty")
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out} exists and is not a directory")
    return seeds


def _image_size(args, pipe) -> tuple[int, int]:
    """(height, width), defaulting to the model's, checked against the U-Net's total downsampling (a transformer's
    image-token patch)."""
    geometry = Geometry.from_pipeline(pipe, layers=False)
    height, width = geometry.size(args.height, args.width)
    multiple = geometry.multiple
    by = "U-Net downsampling" if getattr(pipe, "unet", None) is not None else "image-token patch"
    for name, value in (("height", height), ("width", width)):
        if value % multiple:
            raise CliError(
                f"--{name} {value} is not a multiple of {multiple} (VAE factor {geometry.vae_factor} x {by} "
                f"{multiple // geometry.vae_factor})"
            )
    return height, width


def _load(args):
    import diffusers
    import transformers

    from explain.diffusion.loading import ModelLoadError, describe_pipeline, load_pipeline, scheduler_class

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    try:
        pipe = load_pipeline(args.model, device=args.device)
    except ModelLoadError as err:
        raise CliError(str(err)) from err
    info = describe_pipeline(pipe)
    args.steps = args.steps or info.recommended_steps
    args.guidance = info.recommended_guidance if args.guidance is None else args.guidance
    if info.attention == "joint" and args.scheduler:
        raise CliError(f"--scheduler: {info.pipeline_class} samples a rectified flow; the choices are U-Net samplers")
    if args.scheduler:
        pipe.scheduler = scheduler_class(args.scheduler).from_config(pipe.scheduler.config)
    return pipe


def _generate_one(pipe, args, prompt: str, seed: int, size: tuple[int, int], out: Path, preview) -> dict:
    from explain.clip.vocabulary import unknown_words_message
    from explain.engine.run import Capture, recorded_run  # torch: deferred so that the parser builds without it
    from explain.io.joint_writers import joint_summary, write_joint_files
    from explain.io.writers import write_attention_files
    from explain.joint.recording import is_joint_pipeline
    from explain.maps.aggregation import aggregate
    from explain.world.content import model_content

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    height, width = size
    call = dict(
        prompt=prompt,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        height=height,
        width=width,
    )
    joint = is_joint_pipeline(pipe)
    concepts = _concepts(pipe, prompt, args.concept) if joint and not args.no_capture else ()
    capture = Capture(film_decode=args.film_decode, preview=preview, concepts=concepts)
    ovam = _open_vocabulary(pipe, args, size) if not joint and args.concept and not args.no_capture else None
    contexts = (ovam,) if ovam is not None else ()
    run = recorded_run(
        pipe, call, seed=seed, capture=Capture.nothing() if args.no_capture else capture, contexts=contexts
    )
    view = run.view
    summary = {
        "prompt": prompt,
        "negative_prompt": args.negative_prompt,
        "seed": seed,
        "model": args.model or "embedded",
        "pipeline": type(pipe).__name__,
        "scheduler": run.scheduler,
        "steps": args.steps,
        "guidance": args.guidance,
        "height": height,
        "width": width,
        "tokens": list(view.used_tokens),
        "truncated": list(view.truncated),
        "words": [w.text for w in view.words],
        "unknown_words": list(run.unknown_words),
        "attention": "joint" if joint else "cross",
    }
    if summary["unknown_words"]:
        suggestion = model_content(args.model).suggestion
        print(f'note: {unknown_words_message(summary["unknown_words"])} Try: "{suggestion}"', file=sys.stderr)
    if run.joint is not None:  # SD3 / Flux: joint-attention token maps and ConceptAttention maps
        write_joint_files(out, run.joint, run.image)
        summary.update(capture=True, **joint_summary(run.joint), notes=list(run.notes))
    elif run.captured is None:
        summary.update(capture_bytes=0, capture=False)
    else:
        write_attention_files(out, aggregate(run.captured, view), run.captured, run.image, view, run.frames)
        summary.update(
            capture=True,
            capture_bytes=run.captured.nbytes,
            film_source="/".join(sorted({frame.source for frame in run.frames})),  # "x0", "latents" or both
            layers=len(run.captured.layer_names),
            captured_steps=run.captured.n_steps,
        )
        if ovam is not None:
            summary.update(_write_open_vocabulary(out, ovam, run.image))
    run.image.save(out / "image.png")
    summary["seconds"] = {"denoising": round(run.denoise_seconds, 4), "total": round(time.perf_counter() - started, 4)}
    write_json(out / "summary.json", summary)
    return summary


def _open_vocabulary(pipe, args, size: tuple[int, int]):
    """U-Nets with ``--concept``: an OVAM recorder whose attribution text is the ``--concept`` words."""
    from explain.capture.open_vocabulary import OpenVocabularyRecorder
    from explain.engine.run import STORE_MAX_RESOLUTION

    text = " ".join(word.strip() for word in args.concept)
    return OpenVocabularyRecorder(pipe, text, max_resolution=STORE_MAX_RESOLUTION, height=size[0], width=size[1])


def _write_open_vocabulary(out: Path, ovam, image) -> dict:
    """``concepts.npz`` and ``concept_heatmaps/`` of the OVAM maps; their ``summary.json`` entries."""
    from explain.capture.open_vocabulary import METHOD
    from explain.io.writers import write_concept_files
    from explain.maps.aggregation import aggregate

    captured = ovam.result()
    maps = aggregate(captured, ovam.view)
    write_concept_files(out, maps, captured.layer_names, image, METHOD)
    return {"concepts": list(maps.words), "concept_method": METHOD, "concept_bytes": captured.nbytes}


def _concepts(pipe, prompt: str, extra: list[str]) -> tuple[str, ...]:
    """ConceptAttention words of an SD3 / Flux run: the prompt's words, then every ``--concept`` word, each once."""
    from explain.joint.recording import prompt_concepts
    from explain.joint.tokens import text_layout

    words = [*prompt_concepts(text_layout(pipe, prompt)), *(word.strip().lower() for word in extra)]
    return tuple(dict.fromkeys(words))


def run(args) -> int:
    """Generate every (prompt, seed) pair; the model is loaded once."""
    seeds = _validate_args(args)
    pipe = _load(args)
    size = _image_size(args, pipe)
    pairs = list(itertools.product(args.prompt, seeds))
    preview = None
    if not args.no_capture and args.film_decode != "vae" and getattr(pipe, "unet", None) is not None:  # film: U-Nets
        from explain.capture.film import LatentPreview

        preview = LatentPreview.fit(pipe.vae)  # once per model
    if len(pairs) == 1:
        _generate_one(pipe, args, *pairs[0], size, args.out, preview)
        return 0
    index = []
    for n, (prompt, seed) in enumerate(pairs):
        sub = f"{n:03d}"
        _generate_one(pipe, args, prompt, seed, size, args.out / sub, preview)
        index.append({"prompt": prompt, "seed": seed, "dir": sub})
    write_json(args.out / "index.json", index)
    return 0
