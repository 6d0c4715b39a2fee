"""Grade the embedded model: ``python -m training.evaluate [--model DIR] [--quick] ...``.

Four numbers, all on data the model never saw:

- ``clip_retrieval_top1``: zero-shot caption retrieval of the CLIP (Radford et al. 2021): for each of N = 256
  held-out world images (``world.make_batch(seed=10_000)``; training data come from per-index seed sequences,
  ``training.data``), the caption with the highest cosine similarity among the N captions must be its own.
  Identical captions (the grammar is small) count as the right one. Image->text and text->image are reported.
- ``vae_psnr``: PSNR (dB, images in [0, 1]) of held-out images through the VAE, encoder mean -> decoder.
- ``adherence``: the :mod:`training.prompts` set generated with the pipeline (CPU generators seeded 0..S-1, so
  image (prompt, s) does not depend on batching), judged by :func:`training.judge.judge`: accuracy per prompt
  kind, per attribute (colour, shape, position) and overall.
- ``attention_miou``: for every expected object whose colour the judge found, IoU between the judged object
  mask and the DAAM mask of its colour word and of its shape word (cross-attention averaged over steps, layers
  and heads, min-max normalised, thresholded at tau = 0.4; Tang et al. 2023, Sec. 4.1); mean over pairs.

Also writes ``samples.png`` (prompts x seeds, green frame = judged correct) and ``heatmaps.png`` (per-word
heat maps of one two-object sample) into ``--out-dir`` (default ``runs/eval``), and the JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from explain import world
from training.judge import Verdict, judge
from training.prompts import KINDS, EvalPrompt, prompt_set

__all__ = [
    "EvalConfig",
    "Sample",
    "clip_retrieval",
    "vae_psnr",
    "generate_samples",
    "adherence",
    "attention_miou",
    "run",
    "main",
]

REPO = Path(__file__).resolve().parents[1]
HELD_OUT_IMAGE_SEED = 10_000  # world.make_batch seeds >= this are never used for training
TAU = 0.4  # DAAM threshold on the min-max normalised map
QUICK_PROMPTS_PER_KIND = 6
_FUNCTION_WORDS = frozenset({"a", "an", "the", "and", "on", "at", "in"})


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how. ``quick``: 6 prompts per kind, 1 seed, 128 CLIP/VAE images."""

    model: str | None = None
    seeds: int = 2
    steps: int = 25
    guidance: float = 5.0
    batch_size: int = 32
    n_clip: int = 256
    n_vae: int = 256
    device: str | None = None
    out_dir: Path = REPO / "runs" / "eval"
    skip: tuple[str, ...] = ()  # any of "clip", "vae", "adherence"
    quick: bool = False

    @staticmethod
    def quick_preset(**overrides) -> EvalConfig:
        return dataclasses.replace(EvalConfig(seeds=1, n_clip=128, n_vae=128, quick=True), **overrides)


@dataclass(frozen=True, eq=False)
class Sample:
    """One generated image and the attention maps of its object words.

    Attributes:
        prompt: The evaluation prompt.
        seed: Generator seed.
        image: (H, W, 3) uint8.
        object_maps: per expected object, {"color": (H, W), "shape": (H, W)} float32 DAAM maps (not normalised).
        words: all words of the prompt (for the heat-map strip).
        word_maps: (n_words, H, W) float32, or None when not kept.
    """

    prompt: EvalPrompt
    seed: int
    image: np.ndarray
    object_maps: tuple[dict[str, np.ndarray], ...]
    words: tuple[str, ...] = ()
    word_maps: np.ndarray | None = None


def _log(msg: str) -> None:
    print(f"[evaluate] {msg}", file=sys.stderr, flush=True)


def _world_of(model_dir: Path) -> str:
    """The world a model directory was trained on (``explorer.json`` ``"world"``; the shapes world by default)."""
    settings = model_dir / "explorer.json"
    return json.loads(settings.read_text()).get("world", "shapes") if settings.exists() else "shapes"


def _model_dir(model: str | None) -> Path:
    from explain.diffusion.loading import EMBEDDED_MODEL_DIR

    return Path(model) if model is not None else EMBEDDED_MODEL_DIR


# ---------------------------------------------------------------------------------------------------------------
# CLIP retrieval.


def _load_clip(model_dir: Path, device: str = "cpu"):
    """(open_clip model, tokenizer, preprocess) of a pipeline directory with a ``clip/`` folder."""
    from explain.clip.model import load_clip

    bundle = load_clip(model_dir, device=device)
    return bundle.model, bundle.tokenizer, bundle.preprocess


@torch.no_grad()
def clip_retrieval(model_dir: Path, n: int = 256, seed: int = HELD_OUT_IMAGE_SEED, device: str = "cpu") -> dict:
    """Zero-shot caption retrieval top-1 among ``n`` held-out images and their ``n`` captions."""
    from PIL import Image

    model, tokenizer, preprocess = _load_clip(model_dir, device)
    batch = world.make_batch(n, seed)
    captions = [r.caption for r in batch]
    pixels = torch.stack([preprocess(Image.fromarray(r.image)) for r in batch]).to(device)  # (N, 3, S, S)
    img = torch.nn.functional.normalize(model.encode_image(pixels).float(), dim=-1)  # (N, D)
    txt = torch.nn.functional.normalize(model.encode_text(tokenizer(captions).to(device)).float(), dim=-1)  # (N, D)
    sim = img @ txt.T  # (N images, N captions)
    same = np.array([[a == b for b in captions] for a in captions])  # duplicate captions are equally right
    i2t = same[np.arange(n), sim.argmax(1).cpu().numpy()].mean()
    t2i = same[sim.argmax(0).cpu().numpy(), np.arange(n)].mean()
    return {
        "image_to_text_top1": round(float(i2t), 4),
        "text_to_image_top1": round(float(t2i), 4),
        "n": n,
        "distinct_captions": len(set(captions)),
        "chance": round(float(same.sum(1).mean() / n), 4),
        "image_seed": seed,
    }


# ---------------------------------------------------------------------------------------------------------------
# VAE reconstruction.


@torch.no_grad()
def vae_psnr(pipe, n: int = 256, seed: int = HELD_OUT_IMAGE_SEED + 1, batch_size: int = 64) -> dict:
    """PSNR = 10 log10(1 / MSE) per image, images in [0, 1], reconstructed as decode(encode(x).mean)."""
    vae = pipe.vae
    images = np.stack([r.image for r in world.make_batch(n, seed)])  # (N, H, W, 3) uint8
    psnrs = []
    for i in range(0, n, batch_size):
        x = torch.as_tensor(images[i : i + batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)
        x = x.to(vae.device, vae.dtype)
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
        mse = (((rec + 1) / 2 - (x.float() + 1) / 2) ** 2).mean(dim=(1, 2, 3)).clamp(min=1e-10)
        psnrs.append((10 * torch.log10(1.0 / mse)).cpu())
    p = torch.cat(psnrs)
    return {"mean_db": round(float(p.mean()), 3), "min_db": round(float(p.min()), 3), "n": n, "image_seed": seed}


# ---------------------------------------------------------------------------------------------------------------
# Generation with attention capture.


def _word_index(words: list[str], word: str, occurrence: int) -> int | None:
    """Index of the ``occurrence``-th (0-based) word equal to ``word``, or None."""
    hits = [i for i, w in enumerate(words) if w == word]
    return hits[occurrence] if occurrence < len(hits) else None


def generate_samples(
    pipe,
    prompts: list[EvalPrompt],
    seeds: int,
    steps: int,
    guidance: float,
    batch_size: int = 32,
    keep_word_maps: set[tuple[int, int]] = frozenset(),
) -> list[Sample]:
    """Generate every (prompt, seed) with cross-attention capture; returns samples in (seed, prompt) order.

    Args:
        keep_word_maps: (prompt index, seed) pairs whose full per-word maps are kept (for figures).
    """
    from explain.capture.recorder import AttentionRecorder
    from explain.clip.tokens import tokenize_prompt
    from explain.maps.aggregation import aggregate

    jobs = [(s, j) for s in range(seeds) for j in range(len(prompts))]
    views = [tokenize_prompt(pipe.tokenizer, p.prompt) for p in prompts]
    out: list[Sample] = []
    t0 = time.time()
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        texts = [prompts[j].prompt for _, j in chunk]
        gens = [torch.Generator(device="cpu").manual_seed(s) for s, _ in chunk]
        with AttentionRecorder(pipe, token_count=max(views[j].n_used for _, j in chunk)) as rec:
            result = pipe(
                texts,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=gens,
                output_type="np",
                callback_on_step_end=rec.callback_on_step_end,
            )
        captured = rec.result()
        images = np.clip(np.asarray(result.images) * 255.0 + 0.5, 0, 255).astype(np.uint8)  # (B, H, W, 3)
        for b, (s, j) in enumerate(chunk):
            image_hw = images[b].shape[:2]
            maps = aggregate(captured, views[j], image_index=b, image_size=image_hw)
            words = [w.lower() for w in maps.words]
            word_maps = maps.word_maps.numpy()  # (n_words, H, W)
            object_maps = []
            for k, obj in enumerate(prompts[j].scene.objects):
                earlier_same_shape = sum(o.shape == obj.shape for o in prompts[j].scene.objects[:k])
                entry = {}
                for role, word, occ in (("color", obj.color, 0), ("shape", obj.shape, earlier_same_shape)):
                    idx = _word_index(words, word, occ)
                    if idx is not None:
                        entry[role] = word_maps[idx].astype(np.float32)
                object_maps.append(entry)
            keep = (j, s) in keep_word_maps
            out.append(
                Sample(
                    prompt=prompts[j],
                    seed=s,
                    image=images[b],
                    object_maps=tuple(object_maps),
                    words=tuple(words) if keep else (),
                    word_maps=word_maps.copy() if keep else None,
                )
            )
        done = start + len(chunk)
        _log(f"generated {done}/{len(jobs)} images ({(time.time() - t0) / done:.2f} s/image)")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Scores.


def _mean(values: list[bool] | list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def adherence(samples: list[Sample], verdicts: list[Verdict]) -> dict:
    """Accuracy per kind and per attribute of judged samples (see :func:`training.judge.judge`).

    ``attributes`` are over all expected objects (a missing colour fails shape and position too);
    ``attributes_given_color`` only over objects whose colour was found.
    """
    per_kind: dict[str, list[bool]] = defaultdict(list)
    attrs: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    given: dict[str, list[bool]] = defaultdict(list)
    extras = []
    for sample, v in zip(samples, verdicts, strict=True):
        kind = sample.prompt.kind
        per_kind[kind].append(v.ok)
        extras.append(bool(v.extras))
        for ov in v.objects:
            for group in ("all", kind):
                attrs[group]["color"].append(ov.color_ok)
                attrs[group]["shape"].append(ov.shape_ok)
                attrs[group]["position"].append(ov.position_ok)
            if ov.color_ok:
                given["shape"].append(ov.shape_ok)
                given["position"].append(ov.position_ok)
    all_ok = [v.ok for v in verdicts]
    plain = [v.ok for s, v in zip(samples, verdicts, strict=True) if s.prompt.kind != "styled"]
    return {
        "overall": _mean(all_ok),
        "overall_without_styled": _mean(plain),
        "per_kind": {k: {"accuracy": _mean(per_kind[k]), "n": len(per_kind[k])} for k in KINDS if per_kind[k]},
        "attributes": {a: _mean(vals) for a, vals in attrs["all"].items()},
        "attributes_given_color": {a: _mean(vals) for a, vals in given.items()},
        "attributes_per_kind": {k: {a: _mean(vals) for a, vals in attrs[k].items()} for k in KINDS if k in attrs},
        "extra_object_rate": _mean(extras),
        "n_images": len(verdicts),
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def attention_miou(samples: list[Sample], verdicts: list[Verdict], tau: float = TAU) -> dict:
    """Mean IoU between DAAM word masks (min-max normalised map > ``tau``) and judged object masks."""
    from explain.maps.aggregation import threshold_mask

    ious: dict[str, list[float]] = {"color": [], "shape": []}
    per_kind: dict[str, list[float]] = defaultdict(list)
    for sample, v in zip(samples, verdicts, strict=True):
        for ov, maps in zip(v.objects, sample.object_maps, strict=True):
            if not ov.color_ok:
                continue
            for role, heat in maps.items():
                mask = threshold_mask(torch.as_tensor(heat), tau).numpy()
                iou = _iou(mask, ov.matched_mask)
                ious[role].append(iou)
                per_kind[sample.prompt.kind].append(iou)
    both = ious["color"] + ious["shape"]
    return {
        "miou": _mean(both),
        "color_words": _mean(ious["color"]),
        "shape_words": _mean(ious["shape"]),
        "per_kind": {k: _mean(v) for k, v in per_kind.items()},
        "n_pairs": {"color": len(ious["color"]), "shape": len(ious["shape"])},
        "tau": tau,
    }


# ---------------------------------------------------------------------------------------------------------------
# Figures.


def save_sample_grid(samples: list[Sample], verdicts: list[Verdict], path: Path, rows: int = 10) -> Path:
    """Prompts x seeds; a green frame when the judge accepts the image, red otherwise."""
    from matplotlib.figure import Figure

    by_prompt: dict[str, list[tuple[Sample, Verdict]]] = defaultdict(list)
    for s, v in zip(samples, verdicts, strict=True):
        by_prompt[s.prompt.prompt].append((s, v))
    chosen: list[str] = []
    for kind in KINDS:  # two prompts of each kind, in set order
        chosen += [p for p in dict.fromkeys(s.prompt.prompt for s in samples if s.prompt.kind == kind)][:2]
    chosen = chosen[:rows]
    cols = max(len(by_prompt[p]) for p in chosen)
    fig = Figure(figsize=(1.8 * cols + 3.0, 1.8 * len(chosen)), layout="constrained")
    axes = fig.subplots(len(chosen), cols + 1, squeeze=False, width_ratios=[1.6] + [1] * cols)
    for r, prompt in enumerate(chosen):
        text_ax = axes[r, 0]
        text_ax.set_axis_off()
        kind = by_prompt[prompt][0][0].prompt.kind
        text_ax.text(1.0, 0.5, f"[{kind}]\n{_wrap(prompt, 30)}", fontsize=9, va="center", ha="right")
        for c in range(cols):
            ax = axes[r, c + 1]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(by_prompt[prompt]):
                ax.set_axis_off()
                continue
            s, v = by_prompt[prompt][c]
            ax.imshow(s.image, interpolation="nearest")
            for spine in ax.spines.values():
                spine.set_edgecolor("#2a9d3a" if v.ok else "#d1342f")
                spine.set_linewidth(4)
            if r == 0:
                ax.set_title(f"seed {s.seed}", fontsize=11)
    fig.suptitle("Generated samples (green: judged correct)", fontsize=14)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path


def save_samples(samples: list[Sample], verdicts: list[Verdict], path: Path) -> Path:
    """All generated images with their prompt, kind, seed and verdict, for inspection (``np.load``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        images=np.stack([s.image for s in samples]),  # (N, H, W, 3) uint8
        prompts=np.array([s.prompt.prompt for s in samples]),
        kinds=np.array([s.prompt.kind for s in samples]),
        seeds=np.array([s.seed for s in samples]),
        ok=np.array([v.ok for v in verdicts]),
    )
    return path


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def save_heatmap_strip(sample: Sample, path: Path) -> Path:
    """Per-word heat maps of one sample (function words and punctuation left out)."""
    from explain.io.figures import word_heatmap_grid

    keep = [i for i, w in enumerate(sample.words) if w not in _FUNCTION_WORDS and any(ch.isalnum() for ch in w)]
    fig = word_heatmap_grid(
        [sample.image.astype(np.float32) / 255.0],
        [[sample.word_maps[i] for i in keep]],
        [sample.words[i] for i in keep],
        title=f"“{sample.prompt.prompt}” (seed {sample.seed})",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=60)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Driver.


def _prompts(cfg: EvalConfig) -> list[EvalPrompt]:
    prompts = list(prompt_set())
    if cfg.quick:
        per_kind: dict[str, int] = defaultdict(int)
        quick = []
        for p in prompts:
            if per_kind[p.kind] < QUICK_PROMPTS_PER_KIND:
                per_kind[p.kind] += 1
                quick.append(p)
        prompts = quick
    return prompts


def run(cfg: EvalConfig) -> dict:
    """Run every part not in ``cfg.skip``; returns the JSON-ready report."""
    import diffusers
    import transformers

    from explain.diffusion.loading import default_device, load_pipeline

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    device = cfg.device or default_device()
    model_dir = _model_dir(cfg.model)
    report: dict = {
        "model": str(model_dir),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
        "device": device,
        "timings_s": {},
    }
    timings = report["timings_s"]
    t = time.time()
    if "clip" not in cfg.skip:
        report["clip_retrieval"] = clip_retrieval(model_dir, cfg.n_clip, device=device)
        report["clip_retrieval_top1"] = report["clip_retrieval"]["image_to_text_top1"]
        timings["clip"] = round(time.time() - t, 1)
        _log(f"CLIP retrieval top-1 {report['clip_retrieval_top1']} ({timings['clip']} s)")
    if "vae" in cfg.skip and "adherence" in cfg.skip:
        return report
    t = time.time()
    pipe = load_pipeline(cfg.model, device=device)
    timings["load_pipeline"] = round(time.time() - t, 1)
    if "vae" not in cfg.skip:
        t = time.time()
        report["vae"] = vae_psnr(pipe, cfg.n_vae)
        report["vae_psnr"] = report["vae"]["mean_db"]
        timings["vae"] = round(time.time() - t, 1)
        _log(f"VAE PSNR {report['vae_psnr']} dB ({timings['vae']} s)")
    if "adherence" not in cfg.skip:
        prompts = _prompts(cfg)
        strip_prompt = next((j for j, p in enumerate(prompts) if p.kind == "two"), 0)
        t = time.time()
        samples = generate_samples(
            pipe, prompts, cfg.seeds, cfg.steps, cfg.guidance, cfg.batch_size, keep_word_maps={(strip_prompt, 0)}
        )
        timings["generate"] = round(time.time() - t, 1)
        t = time.time()
        verdicts = [judge(s.image, s.prompt.scene) for s in samples]
        timings["judge"] = round(time.time() - t, 1)
        report["adherence"] = adherence(samples, verdicts)
        report["attention"] = attention_miou(samples, verdicts)
        report["attention_miou"] = report["attention"]["miou"]
        t = time.time()
        files = {"samples_png": str(save_sample_grid(samples, verdicts, cfg.out_dir / "samples.png"))}
        files["samples_npz"] = str(save_samples(samples, verdicts, cfg.out_dir / "samples.npz"))
        strip = next(s for s in samples if s.word_maps is not None)
        files["heatmaps_png"] = str(save_heatmap_strip(strip, cfg.out_dir / "heatmaps.png"))
        report["files"] = files
        timings["figures"] = round(time.time() - t, 1)
        _log(f"adherence {report['adherence']['overall']}, attention mIoU {report['attention_miou']}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline directory (default: models/tiny-shapes-sd)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per prompt (default 2; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps with the pipeline's scheduler")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per pipeline call")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "eval", help="where figures go")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default OUT_DIR/eval.json)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: clip, vae, adherence")
    parser.add_argument("--quick", action="store_true", help="6 prompts per kind, 1 seed, 128 CLIP/VAE images")
    args = parser.parse_args(argv)
    if _world_of(_model_dir(args.model)) == "emoji":  # world v2's model: its own judge and prompt set
        from training import evaluate_world

        forward = [
            "--model",
            str(_model_dir(args.model)),
            "--steps",
            str(args.steps),
            "--guidance",
            str(args.guidance),
        ]
        forward += ["--out", str(args.out_dir), "--skip", args.skip] + (["--quick"] if args.quick else [])
        return evaluate_world.main(forward)
    skip = tuple(s.strip() for s in args.skip.split(",") if s.strip())
    if set(skip) - {"clip", "vae", "adherence"}:
        parser.error(f"--skip takes clip, vae, adherence (got {args.skip!r})")
    if args.seeds is not None and args.seeds < 1 or args.steps < 1 or args.batch_size < 1:
        parser.error("--seeds, --steps and --batch-size must be >= 1")
    overrides = dict(
        model=args.model,
        steps=args.steps,
        guidance=args.guidance,
        batch_size=args.batch_size,
        device=args.device,
        out_dir=args.out_dir,
        skip=skip,
    )
    if args.seeds is not None:
        overrides["seeds"] = args.seeds
    cfg = EvalConfig.quick_preset(**overrides) if args.quick else EvalConfig(**overrides)
    t = time.time()
    report = run(cfg)
    report["timings_s"]["total"] = round(time.time() - t, 1)
    text = json.dumps(report, indent=1, default=_json_default)
    out = args.out or cfg.out_dir / ("eval_quick.json" if cfg.quick else "eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)
    return 0


def _json_default(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
