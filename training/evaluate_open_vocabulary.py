"""Grade maps of words not in the prompt (OVAM) on the embedded model: ``python -m training.evaluate_open_vocabulary``

Open-vocabulary attention maps (OVAM; Marcos-Manchón et al., CVPR 2024, "Open-Vocabulary Attention Maps with Token
Optimization for Semantic Segmentation in Diffusion Models"): during the run, every cross-attention layer's image
queries Q are also matched against the keys K' = W_k c' of an *attribution text* c' that is not the prompt,
A' = softmax(Q K'ᵀ · d^-1/2) (:class:`explain.capture.open_vocabulary.OpenVocabularyRecorder`; the image is
unchanged). A' is aggregated as DAAM aggregates the prompt's maps (Tang et al. 2023,
:func:`explain.maps.aggregation.aggregate`).

For two-object prompts of the shapes world (:func:`training.prompts.prompt_set`, kind ``two``, two distinct shapes),
each generated image gets, in the same pipeline call as its own-word maps (:func:`training.evaluate.generate_samples`),
OVAM maps for these attribution texts per object (object "a big red circle on the left"):

- ``shape``: the shape word alone, c' = "circle";
- ``phrase``: a short phrase, c' = "the red circle", map = the sum of its "red" and "circle" maps;
- ``phrase_shape``: the same phrase, the "circle" token's map only (the shape word in its colour's context);
- ``color``: the colour word alone, c' = "red";
- ``caption_phrase``: the phrase as the world's captions say it, c' = "a red circle" (sum of both maps);
- ``among_shapes``: every shape word of the world in one text, c' = "a circle and a square and ..." (the named
  shape's map): the words compete in the softmax over c' as the prompt's own words do;

and one shape word absent from the picture (``absent``, c' = "star"; the shapes not in the prompt in turn), also
asked among all shapes (its share of the attention there against the present shapes').

Scores: for ``shape``/``phrase``/``phrase_shape``/``color``, IoU between the DAAM mask (min-max normalised map
> tau = 0.4, DAAM Sec. 4.1, as :func:`training.evaluate.attention_miou`) and the judge's mask of the named object
(:func:`training.judge.judge`, ``matched_mask``), over objects whose colour the judge found; ``other_object_miou`` is
the same mask against the *other* object's mask (a localisation control). Min-max normalisation makes any map light
up somewhere, so the absent word is graded by raw attention mass instead: the mean over pixels of its unnormalised
aggregated probability, against the mean of the present shape words asked the same way (single-word c'). The
prompt's own-word mIoU (:func:`training.evaluate.attention_miou`) on the same images is reported for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from explain import world
from explain.capture.token_optimization import LOSSES
from training.evaluate import (
    REPO,
    TAU,
    Sample,
    _iou,
    _json_default,
    _mean,
    _model_dir,
    attention_miou,
    generate_samples,
)
from training.judge import Verdict, judge
from training.ovam_tokens import TRAIN_SEED, learn_shape_tokens, training_prompts
from training.prompts import EvalPrompt, prompt_set

__all__ = [
    "KINDS",
    "OpenVocabularyConfig",
    "AttributedSample",
    "two_object_prompts",
    "absent_shape",
    "attribution_requests",
    "generate_attributed",
    "score",
    "evaluate",
    "run",
    "main",
]

# attributions scored against their object
KINDS: tuple[str, ...] = ("shape", "phrase", "phrase_shape", "color", "caption_phrase", "among_shapes")
OPTIMIZED = "shape_optimized"  # the shape word alone with its OVAM-optimised token (training.ovam_tokens)
_OPTIMIZED_KEY = "optimized:"  # recorder key prefix of an optimised attribution
# Every shape word of the world in one in-grammar text: asked together, the words compete in the softmax as the
# prompt's own words do (the map of one says where it wins against the others, not where "anything" is).
ALL_SHAPES_TEXT = " and ".join(f"a {shape}" for shape in world.SHAPES)
DEFAULT_OUT = REPO / "docs" / "model" / "open_vocabulary_eval.json"
_LOSS_TEXT = {
    "bce": "BCE of the max-normalised map (the paper's)",
    "soft_iou": "soft Jaccard loss of DAAM's mask (min-max > 0.4, sigmoid at T = 0.05)",
}


@dataclass(frozen=True)
class OpenVocabularyConfig:
    """What to evaluate. ``guidance`` / ``steps`` None: the model's ``explorer.json`` values (else 5.0 / 25)."""

    model: str | None = None
    n_prompts: int = 24
    seeds: int = 2
    steps: int | None = None
    guidance: float | None = None
    batch_size: int = 48  # images per pipeline call (all OVAM recorders record every image of a call)
    tau: float = TAU
    device: str | None = None
    optimize_per_pair: int = 1  # training prompts per pair of shapes to learn shape tokens on (0: no learning)
    optimize_single: bool = False  # also the single-object prompts
    optimize_seeds: int = 3  # seeds of each (from training.ovam_tokens.TRAIN_SEED)
    optimize_loss: str = "soft_iou"  # explain.capture.token_optimization.LOSSES ("bce": the paper's)
    optimize_iterations: int = 300


@dataclass(frozen=True, eq=False)
class AttributedSample:
    """One generated image with its own-word maps and its OVAM maps.

    Attributes:
        sample: image and own-word maps (:class:`training.evaluate.Sample`).
        object_maps: per expected object, {kind: (H, W) float32 OVAM map, not normalised} for every :data:`KINDS`.
        absent_word: a shape word absent from the prompt.
        absent_map: (H, W) float32 OVAM map of ``absent_word`` alone, not normalised.
        absent_among_map: (H, W) float32 map of ``absent_word`` in :data:`ALL_SHAPES_TEXT`, not normalised.
    """

    sample: Sample
    object_maps: tuple[dict[str, np.ndarray], ...]
    absent_word: str
    absent_map: np.ndarray
    absent_among_map: np.ndarray


def _log(msg: str) -> None:
    print(f"[evaluate_open_vocabulary] {msg}", file=sys.stderr, flush=True)


def _pool() -> list[EvalPrompt]:
    return [p for p in prompt_set() if p.kind == "two" and len({o.shape for o in p.scene.objects}) == 2]


POOL = _pool()  # two-object prompts with distinct shapes, in prompt_set order


def two_object_prompts(n: int) -> list[EvalPrompt]:
    """The first ``n`` prompts of kind ``two`` of :func:`training.prompts.prompt_set` whose two shapes differ."""
    pool = POOL
    if not 1 <= n <= len(pool):
        raise ValueError(f"n_prompts must be in [1, {len(pool)}] (two-object prompts with distinct shapes), got {n}")
    return pool[:n]


def absent_shape(prompt: EvalPrompt, index: int) -> str:
    """A ``world.SHAPES`` word not in ``prompt``: the missing shapes taken in turn by prompt ``index``."""
    present = {o.shape for o in prompt.scene.objects}
    missing = [s for s in world.SHAPES if s not in present]
    return missing[index % len(missing)]


def attribution_requests(obj: world.WorldObject) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Per kind of :data:`KINDS`: (attribution text c', words of c' whose maps are summed)."""
    phrase = f"the {obj.color} {obj.shape}"
    return {
        "shape": (obj.shape, (obj.shape,)),
        "phrase": (phrase, (obj.color, obj.shape)),
        "phrase_shape": (phrase, (obj.shape,)),
        "color": (obj.color, (obj.color,)),
        "caption_phrase": (f"a {obj.color} {obj.shape}", (obj.color, obj.shape)),
        "among_shapes": (ALL_SHAPES_TEXT, (obj.shape,)),
    }


def _text_map(maps, words: tuple[str, ...]) -> np.ndarray:
    """(H, W) sum of the word maps of ``words`` in one attribution text's :class:`TokenMaps`."""
    return sum(maps.word_map(w) for w in words).numpy().astype(np.float32)


def _check_one_call(captured: dict, n_images: int, steps: int, image_hw: tuple[int, int]) -> None:
    """The OVAM recorders saw exactly one pipeline call of ``n_images`` images (they run without a callback)."""
    for text, cap in captured.items():
        if cap.batch_size != n_images or cap.n_steps != steps or tuple(cap.image_hw) != tuple(image_hw):
            raise RuntimeError(
                f"OVAM capture of {text!r} is {cap.batch_size} images x {cap.n_steps} steps at {cap.image_hw}; "
                f"expected one call of {n_images} x {steps} at {image_hw}"
            )


def generate_attributed(
    pipe, prompts: list[EvalPrompt], seeds: int, steps: int, guidance: float, batch_size: int = 48, learned=None
) -> list[AttributedSample]:
    """Generate every (prompt, seed) with own-word and OVAM maps recorded in the same pipeline calls.

    Prompts are taken ``batch_size // seeds`` at a time; each group is one :func:`training.evaluate.generate_samples`
    call (CPU generators seeded 0..seeds-1, own-word capture with its callback) inside one
    :class:`~explain.capture.open_vocabulary.OpenVocabularyRecorder` per distinct attribution text of the group.
    Those recorders get no step callback, so each U-Net call is one step and the latent size is the U-Net
    default, the pipeline's default too (checked). Returns samples in (group, seed, prompt) order. With ``learned``
    (:class:`training.ovam_tokens.LearnedTokens`), each object also gets :data:`OPTIMIZED`: its shape word alone
    with the learned token states.
    """
    from explain.capture.open_vocabulary import OpenVocabularyRecorder
    from explain.maps.aggregation import aggregate

    per_call = max(1, batch_size // seeds)
    out: list[AttributedSample] = []
    for start in range(0, len(prompts), per_call):
        group = prompts[start : start + per_call]
        objects = [[attribution_requests(o) for o in p.scene.objects] for p in group]
        absent = [absent_shape(p, start + j) for j, p in enumerate(group)]
        texts = sorted(
            {t for reqs in objects for req in reqs for t, _ in req.values()} | set(absent) | {ALL_SHAPES_TEXT}
        )
        _log(f"prompts {start}..{start + len(group) - 1}: {len(texts)} attribution texts")
        optimized = sorted({o.shape for p in group for o in p.scene.objects}) if learned is not None else []
        with contextlib.ExitStack() as stack:
            recorders = {t: stack.enter_context(OpenVocabularyRecorder(pipe, t)) for t in texts}
            for shape in optimized:
                ovam = OpenVocabularyRecorder(pipe, shape, states=learned.states[shape])
                recorders[_OPTIMIZED_KEY + shape] = stack.enter_context(ovam)
            samples = generate_samples(pipe, group, seeds, steps, guidance, batch_size=len(group) * seeds)
        captured = {t: rec.result() for t, rec in recorders.items()}
        _check_one_call(captured, len(samples), steps, samples[0].image.shape[:2])
        for b, sample in enumerate(samples):
            j = b % len(group)
            assert sample.prompt is group[j] and sample.seed == b // len(group)  # generate_samples' (seed, prompt)
            needed = {t for req in objects[j] for t, _ in req.values()} | {absent[j], ALL_SHAPES_TEXT}
            if learned is not None:
                needed |= {_OPTIMIZED_KEY + o.shape for o in group[j].scene.objects}
            hw = sample.image.shape[:2]
            maps = {t: aggregate(captured[t], recorders[t].view, image_index=b, image_size=hw) for t in needed}
            object_maps = tuple(
                {kind: _text_map(maps[text], words) for kind, (text, words) in req.items()}
                | ({OPTIMIZED: _text_map(maps[_OPTIMIZED_KEY + o.shape], (o.shape,))} if learned is not None else {})
                for req, o in zip(objects[j], group[j].scene.objects, strict=True)
            )
            absent_map = _text_map(maps[absent[j]], (absent[j],))
            among = _text_map(maps[ALL_SHAPES_TEXT], (absent[j],))
            out.append(AttributedSample(sample, object_maps, absent[j], absent_map, among))
    return out


def _found(v: Verdict) -> list[int]:
    """Indices of expected objects the judge found (a region of their colour; as ``attention_miou``)."""
    return [k for k, ov in enumerate(v.objects) if ov.color_ok]


def _absent_report(attributed: list[AttributedSample], verdicts: list[Verdict], tau: float) -> dict:
    """Raw OVAM mass (mean over pixels of the unnormalised map) of the absent vs the present shape words."""
    from explain.maps.aggregation import threshold_mask

    absent, present, beats, best_iou = [], [], [], []
    for a, v in zip(attributed, verdicts, strict=True):
        masses = [float(m["shape"].mean()) for m in a.object_maps]
        absent.append(float(a.absent_map.mean()))
        present += masses
        beats.append(min(masses) > absent[-1])
        found = _found(v)
        if found:
            mask = threshold_mask(torch.as_tensor(a.absent_map), tau).numpy()
            best_iou.append(max(_iou(mask, v.objects[k].matched_mask) for k in found))
    ratio = float(np.mean(absent) / np.mean(present)) if present and np.mean(present) > 0 else None
    among_absent = [float(a.absent_among_map.mean()) for a in attributed]
    among_present = [[float(m["among_shapes"].mean()) for m in a.object_maps] for a in attributed]
    return {
        "among_shapes": {  # the same question with every shape word in one text: shares of one softmax
            "mean_mass_absent": round(float(np.mean(among_absent)), 6),
            "mean_mass_present": round(float(np.mean([m for ms in among_present for m in ms])), 6),
            "present_beats_absent": _mean([min(ms) > x for ms, x in zip(among_present, among_absent, strict=True)]),
        },
        "mean_mass_absent": round(float(np.mean(absent)), 6),
        "mean_mass_present": round(float(np.mean(present)), 6),
        "ratio_absent_to_present": None if ratio is None else round(ratio, 4),
        "present_beats_absent": _mean(beats),  # share of images where both present shapes outweigh the absent one
        "absent_mask_best_object_iou": _mean(best_iou),  # min-max mask of the absent word vs its best-matching object
        "n_images": len(absent),
        "n_present_words": len(present),
    }


def score(attributed: list[AttributedSample], verdicts: list[Verdict], tau: float = TAU) -> dict:
    """mIoU per attribution kind against the named and the other object, absent-word mass, own-word mIoU."""
    from explain.maps.aggregation import threshold_mask

    own, other, correct = defaultdict(list), defaultdict(list), defaultdict(list)
    for a, v in zip(attributed, verdicts, strict=True):
        found = _found(v)
        for k in found:
            ov = v.objects[k]
            for kind, heat in a.object_maps[k].items():
                mask = threshold_mask(torch.as_tensor(heat), tau).numpy()
                own[kind].append(_iou(mask, ov.matched_mask))
                if ov.ok:
                    correct[kind].append(own[kind][-1])
                other[kind] += [_iou(mask, v.objects[i].matched_mask) for i in found if i != k]
    example = attribution_requests(attributed[0].sample.prompt.scene.objects[0]) if attributed else {}
    present = [k for k in (*KINDS, OPTIMIZED) if attributed and k in attributed[0].object_maps[0]]
    if OPTIMIZED in present:
        example[OPTIMIZED] = (f"{example['shape'][0]} (learned token)", example["shape"][1])
    kinds = {
        kind: {
            "miou": _mean(own[kind]),
            "n_pairs": len(own[kind]),
            "other_object_miou": _mean(other[kind]),
            "n_other_pairs": len(other[kind]),
            "miou_object_judged_right": _mean(correct[kind]),
            "n_object_judged_right": len(correct[kind]),
            "example": {"text": example[kind][0], "words": list(example[kind][1])} if example else None,
        }
        for kind in present
    }
    n_objects = sum(len(v.objects) for v in verdicts)
    return {
        "attributions": kinds,
        "absent_word": _absent_report(attributed, verdicts, tau),
        "own_words": attention_miou([a.sample for a in attributed], verdicts, tau),
        "objects_found": sum(len(_found(v)) for v in verdicts),
        "objects": n_objects,
        "images": len(verdicts),
        "tau": tau,
    }


def evaluate(
    pipe,
    prompts: list[EvalPrompt],
    seeds: int,
    steps: int,
    guidance: float,
    batch_size: int = 48,
    tau: float = TAU,
    train_prompts: list[EvalPrompt] = (),
    train_seeds: int = 0,
    loss: str = "soft_iou",
    iterations: int = 300,
) -> dict:
    """Learn shape tokens on ``train_prompts`` (if any; :func:`training.ovam_tokens.learn_shape_tokens`), generate
    with OVAM capture (:func:`generate_attributed`), judge every image, :func:`score` it."""
    t = time.time()
    learned = None
    if train_prompts and train_seeds:
        learned = learn_shape_tokens(
            pipe, list(train_prompts), train_seeds, steps, guidance, iterations=iterations, loss=loss
        )
        _log(f"learned shape tokens on {len(train_prompts)} x {train_seeds} images: {learned.n_images}")
    learn_s = time.time() - t
    attributed = generate_attributed(pipe, prompts, seeds, steps, guidance, batch_size, learned)
    generate_s = time.time() - t - learn_s
    verdicts = [judge(a.sample.image, a.sample.prompt.scene) for a in attributed]
    report = score(attributed, verdicts, tau)
    judged_s = time.time() - t - generate_s - learn_s
    report["timings_s"] = {
        "learn_tokens": round(learn_s, 1),
        "generate": round(generate_s, 1),
        "judge_and_score": round(judged_s, 1),
    }
    if learned is not None:
        report["token_optimization"] = {
            "method": "OVAM token optimisation (Marcos-Manchon et al. 2024, Sec. 3.3), the word's token state alone "
            f"optimised (Adam, {iterations} iterations, lr 0.1) against the judge's mask; loss {loss!r}: "
            + _LOSS_TEXT[loss],
            "train_prompts": [p.prompt for p in train_prompts],
            "train_seeds": [TRAIN_SEED + s for s in range(train_seeds)],
            "images_per_shape": learned.n_images,
            "loss_first_last": {k: [round(a, 4), round(b, 4)] for k, (a, b) in learned.losses.items()},
        }
    return report


def _recommended(model_dir: Path) -> dict:
    """The model's ``explorer.json`` (recommended ``guidance`` / ``steps``), or {}."""
    path = model_dir / "explorer.json"
    return json.loads(path.read_text()) if path.exists() else {}


def run(cfg: OpenVocabularyConfig) -> dict:
    """Load the pipeline and :func:`evaluate` ``cfg.n_prompts`` two-object prompts x ``cfg.seeds``."""
    import diffusers
    import transformers

    from explain.diffusion.loading import default_device, load_pipeline

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    model_dir = _model_dir(cfg.model)
    settings = _recommended(model_dir)
    steps = cfg.steps or int(settings.get("steps", 25))
    guidance = cfg.guidance if cfg.guidance is not None else float(settings.get("guidance", 5.0))
    device = cfg.device or default_device()
    prompts = two_object_prompts(cfg.n_prompts)
    train = training_prompts(cfg.optimize_per_pair, exclude={p.prompt for p in prompt_set()})  # never evaluated
    if cfg.optimize_per_pair and cfg.optimize_single:
        train += [p for p in prompt_set() if p.kind == "single"]
    t = time.time()
    pipe = load_pipeline(cfg.model, device=device)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.time() - t
    report = {
        "method": "OVAM (Marcos-Manchon et al., CVPR 2024), DAAM aggregation (Tang et al. 2023)",
        "model": str(model_dir.relative_to(REPO) if model_dir.is_relative_to(REPO) else model_dir),
        "config": {**dataclasses.asdict(cfg), "steps": steps, "guidance": guidance, "device": device},
        "prompts": len(prompts),
    }
    seeds = cfg.optimize_seeds if train else 0
    report.update(
        evaluate(
            pipe,
            prompts,
            cfg.seeds,
            steps,
            guidance,
            cfg.batch_size,
            cfg.tau,
            train,
            seeds,
            cfg.optimize_loss,
            cfg.optimize_iterations,
        )
    )
    report["timings_s"]["load_pipeline"] = round(load_s, 1)
    return report


def table(report: dict) -> str:
    """A short text table of :func:`score`'s report."""
    rows = [f"{'attribution':14s} {'example':16s} {'mIoU':>6s} {'other obj':>9s} {'pairs':>5s}"]
    for kind, r in report["attributions"].items():
        text = r["example"]["text"] if r["example"] else ""
        rows.append(
            f"{kind:14s} {text!r:16s} {r['miou'] or 0:6.3f} {r['other_object_miou'] or 0:9.3f} {r['n_pairs']:5d}"
        )
    own = report["own_words"]
    for label, key, role in (("own shape", "shape_words", "shape"), ("own colour", "color_words", "color")):
        rows.append(f"{label:14s} {'(the prompt)':16s} {own[key] or 0:6.3f} {'':9s} {own['n_pairs'][role]:5d}")
    a = report["absent_word"]
    rows.append(
        f"absent shape word: mean raw mass {a['mean_mass_absent']:.5f} vs present {a['mean_mass_present']:.5f} "
        f"(ratio {a['ratio_absent_to_present']}); present > absent in {a['present_beats_absent']} of "
        f"{a['n_images']} images; its min-max mask still reaches IoU {a['absent_mask_best_object_iou']} with an object"
    )
    rows.append(
        f"objects found by the judge: {report['objects_found']}/{report['objects']} in {report['images']} images"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate_open_vocabulary", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default=None, help="pipeline directory (default: models/tiny-shapes-sd)")
    parser.add_argument("--n-prompts", type=int, default=24, help="two-object prompts (distinct shapes), at most 31")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (CPU generators 0..S-1)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: explorer.json, else 25)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance (default: explorer.json, else 5)")
    parser.add_argument("--batch-size", type=int, default=48, help="images per pipeline call")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report")
    parser.add_argument(
        "--optimize-per-pair", type=int, default=1, help="prompts per shape pair to learn shape tokens on (0: off)"
    )
    parser.add_argument("--optimize-seeds", type=int, default=3, help="seeds of each training prompt")
    parser.add_argument("--optimize-single", action="store_true", help="also learn on the single-object prompts")
    parser.add_argument("--optimize-loss", choices=LOSSES, default="soft_iou", help="token optimisation objective")
    parser.add_argument("--optimize-iterations", type=int, default=300, help="Adam iterations per token")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.batch_size < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--seeds, --steps and --batch-size must be >= 1")
    cfg = OpenVocabularyConfig(
        model=args.model,
        n_prompts=args.n_prompts,
        seeds=args.seeds,
        steps=args.steps,
        guidance=args.guidance,
        batch_size=args.batch_size,
        device=args.device,
        optimize_per_pair=args.optimize_per_pair,
        optimize_seeds=args.optimize_seeds,
        optimize_single=args.optimize_single,
        optimize_loss=args.optimize_loss,
        optimize_iterations=args.optimize_iterations,
    )
    t = time.time()
    report = run(cfg)
    report["timings_s"]["total"] = round(time.time() - t, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    print(table(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
