"""Evaluate a world-v2 model (``models/tiny-world-sd``): adherence per category, attention mIoU, CLIP, VAE.

``python -m training.evaluate`` runs this for models trained on world v2 (``explorer.json`` ``"world": "emoji"``).

- **Prompts** are drawn from the grammar with a fixed seed (:func:`prompt_set`), per category: single things,
  two things, ``wearing``, counts, scenes, relations; never a hand-picked list.
- **Adherence**: the share of images the judge (:mod:`training.judge_emoji`) accepts, per category.
- **Attention mIoU**: each found thing's noun map (DAAM: mean over steps, layers and heads, min-max normalised,
  thresholded at tau = 0.4) against the judged mask (the matched sprite silhouettes).
- **CLIP retrieval**: held-out single-thing renders; candidates are the true caption with its noun replaced by
  every noun of the world (so top-1 means the noun was read from the image among all ~60 candidates).
- **VAE**: reconstruction PSNR on held-out renders.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from explain.clip.tokens import tokenize_prompt
from explain.engine.run import Capture, recorded_run
from explain.maps.aggregation import aggregate, threshold_mask
from explain.world import emoji
from explain.world import lexicon as lx
from training import judge_emoji

__all__ = ["EvalPrompt", "prompt_set", "clip_retrieval", "vae_psnr", "evaluate_generation", "run", "main"]

EVAL_SEED = 50_000  # prompt sampling; render seeds >= 10_000 are never used for training
HELD_OUT_SEED = 10_000
TAU = 0.4
CATEGORIES = {"single": 40, "two": 30, "wearing": 30, "counts": 24, "scenes": 24, "relations": 12}
BARS = {"single": 0.90, "two": 0.75, "wearing": 0.70, "counts": 0.60, "scenes": 0.80}


@dataclass(frozen=True)
class EvalPrompt:
    category: str
    scene: emoji.Scene

    @property
    def prompt(self) -> str:
        return emoji.caption(self.scene)[0]


def _pick(rng, items):
    return items[int(rng.integers(len(items)))]


def _thing(rng, position=None, noun=None, n_things=1, **over) -> emoji.Thing:
    word = noun or _pick(rng, tuple(w for w, n in lx.NOUNS.items() if n.group != "wearables"))
    n = lx.noun(word)
    color = _pick(rng, tuple(lx.COLORS)) if word in lx.SHAPE_NOUNS or (n.free_color and rng.random() < 0.5) else None
    size = _pick(rng, (None, None, "small", "big") if n_things == 1 else (None, "small"))
    return replace(emoji.Thing(word, size=size, color=color, position=position), **over)


def prompt_set(quick: bool = False, seed: int = EVAL_SEED) -> list[EvalPrompt]:
    """Prompts per category, drawn from the grammar (``quick``: 6 per category)."""
    rng = np.random.default_rng(seed)
    positions = tuple(lx.POSITIONS)
    out = []
    for cat, n in CATEGORIES.items():
        for _ in range(6 if quick else n):
            pos = _pick(rng, positions) if rng.random() < 0.6 else None
            if cat == "single":
                things = (_thing(rng, pos),)
            elif cat == "two":
                a, b = emoji.PAIRS[int(rng.integers(len(emoji.PAIRS)))]
                first = _thing(rng, a, n_things=2)
                second = _thing(rng, b, n_things=2)
                while second.noun == first.noun:
                    second = _thing(rng, b, n_things=2)
                things = (first, second)
            elif cat == "wearing":
                things = (_thing(rng, pos, _pick(rng, emoji.WEARER_NOUNS), wearing=_pick(rng, lx.WEARABLES)),)
            elif cat == "counts":
                things = (_thing(rng, pos, count=int(rng.integers(2, 4)), size=_pick(rng, (None, "small"))),)
            elif cat == "scenes":
                things = (_thing(rng, pos),)
            else:  # relations
                rel = _pick(rng, lx.RELATIONS)
                first = _thing(rng, None, n_things=2, relation=rel, size="small")
                second = _thing(rng, None, n_things=2)
                things = (first, second)
            scene = _pick(rng, lx.SCENES) if cat == "scenes" else None
            out.append(EvalPrompt(cat, emoji.Scene(things, scene=scene)))
    return out


@dataclass(frozen=True, eq=False)
class Generated:
    prompt: EvalPrompt
    image: np.ndarray  # (H, W, 3) uint8
    words: tuple[str, ...]
    word_maps: np.ndarray  # (n_words, H, W) float32


def generate(pipe, prompts: list[EvalPrompt], steps: int, guidance: float, seed: int, batch: int) -> list[Generated]:
    """Every prompt with attention capture, through the one recorded run (same seed: the same x_T for all)."""
    out = []
    t0 = time.time()
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        texts = [p.prompt for p in chunk]
        call = {"prompt": texts, "num_inference_steps": steps, "guidance_scale": guidance, "output_type": "np"}
        run = recorded_run(pipe, call, seed=seed, capture=Capture(film=False))
        images = np.clip(np.asarray(run.images) * 255 + 0.5, 0, 255).astype(np.uint8)
        for b, p in enumerate(chunk):
            maps = aggregate(run.captured, tokenize_prompt(pipe.tokenizer, p.prompt), image_index=b)
            out.append(Generated(p, images[b], tuple(w.lower() for w in maps.words), maps.word_maps.numpy()))
        print(f"[evaluate] {len(out)}/{len(prompts)} images, {(time.time() - t0) / len(out):.2f} s/image", flush=True)
    return out


def _noun_map(g: Generated, thing: emoji.Thing) -> np.ndarray | None:
    """The DAAM map of a thing's noun word(s) (summed over the words of a two-word noun)."""
    n = lx.noun(thing.noun)
    head = (n.word if thing.count == 1 or n.phrase else n.plural).split()  # as explain.world.emoji labels it
    idx = [i for i, w in enumerate(g.words) if w in head]
    return g.word_maps[idx[: len(head)]].sum(0) if idx else None


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def evaluate_generation(samples: list[Generated]) -> dict:
    """Adherence per category and attention mIoU of noun maps vs judged masks."""
    per_cat: dict[str, list[bool]] = defaultdict(list)
    ious: list[float] = []
    iou_cat: dict[str, list[float]] = defaultdict(list)
    records = []
    for g in samples:
        v = judge_emoji.judge(g.image, g.prompt.scene)
        per_cat[g.prompt.category].append(v.ok)
        for tv in v.things:
            heat = _noun_map(g, tv.thing)
            mask = judge_emoji.thing_mask(tv, g.image.shape[0])
            if heat is None or mask is None:
                continue
            iou = _iou(threshold_mask(torch.as_tensor(heat), TAU).numpy(), mask)
            ious.append(iou)
            iou_cat[g.prompt.category].append(iou)
        records.append({"prompt": g.prompt.prompt, "category": g.prompt.category, "ok": v.ok})
    adherence = {c: {"accuracy": round(float(np.mean(v)), 4), "n": len(v)} for c, v in per_cat.items()}
    for c, bar in BARS.items():
        if c in adherence:
            adherence[c]["bar"] = bar
    return {
        "adherence": adherence,
        "overall": round(float(np.mean([r["ok"] for r in records])), 4),
        "attention_miou": round(float(np.mean(ious)), 4) if ious else None,
        "attention_miou_per_category": {c: round(float(np.mean(v)), 4) for c, v in iou_cat.items()},
        "n_pairs": len(ious),
        "tau": TAU,
        "images": records,
    }


@torch.no_grad()
def clip_bundle_from_weights(path: Path):
    """A :class:`explain.clip.model.ClipBundle`-like (model, tokenizer, preprocess) from a CLIP training stage's
    ``clip.safetensors`` (or a :func:`training.train_clip.save_warm_start` file), built with its ``clip_config.json``
    beside it (else the world-cpu preset's), to grade a CLIP before it is packaged."""
    from types import SimpleNamespace

    import open_clip

    from explain.clip.model import image_preprocess
    from training.config import ClipConfig, preset
    from training.models import build_clip
    from training.train_clip import init_from

    config_file = Path(path).with_name("clip_config.json")
    doc = json.loads(config_file.read_text()) if config_file.exists() else None
    fields = None if doc is None else doc.get("clip", doc)  # a training stage nests it under "clip"
    cfg = (
        preset("world-cpu").clip
        if fields is None
        else ClipConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    )
    model = build_clip(cfg)
    init_from(model, Path(path))
    model.eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=cfg.context_length)
    return SimpleNamespace(model=model, tokenizer=tokenizer, preprocess=image_preprocess(cfg.image_size))


def clip_retrieval(model_dir: Path | None = None, n: int = 256, seed: int = HELD_OUT_SEED, bundle=None) -> dict:
    """Noun read from held-out single-thing renders among every noun of the world (see module docstring); the CLIP
    of the pipeline ``model_dir``, or ``bundle`` (:func:`clip_bundle_from_weights`)."""
    from explain.clip.model import load_clip

    bundle = load_clip(model_dir) if bundle is None else bundle
    model = bundle.model
    nouns = [w for w, m in lx.NOUNS.items() if m.group not in ("wearables",)]
    rng = np.random.default_rng(seed)
    hits = []
    for _ in range(n):
        t = _thing(rng, _pick(rng, tuple(lx.POSITIONS)) if rng.random() < 0.6 else None)
        if t.color and lx.noun(t.noun).group != "shapes":
            t = replace(t, color=None)
        sc = emoji.Scene((t,), scene=_pick(rng, lx.SCENES) if rng.random() < 0.3 else None)
        r = emoji.render(sc, emoji.IMAGE_SIZE, rng)
        cands = []
        for w in nouns:
            ok_color = t.color if (w in lx.SHAPE_NOUNS) else None
            if w in lx.SHAPE_NOUNS and ok_color is None:
                ok_color = "red"
            cands.append(emoji.caption(replace(sc, things=(replace(t, noun=w, color=ok_color),)))[0])
        img = bundle.preprocess(Image.fromarray(r.image))[None]
        ie = torch.nn.functional.normalize(model.encode_image(img), dim=-1)
        te = torch.nn.functional.normalize(model.encode_text(bundle.tokenizer(cands)), dim=-1)
        hits.append(nouns[int((ie @ te.T).argmax())] == t.noun)
    return {"top1": round(float(np.mean(hits)), 4), "n": n, "candidates": len(nouns)}


@torch.no_grad()
def vae_psnr(pipe, n: int = 128, seed: int = HELD_OUT_SEED + 1) -> dict:
    vae = pipe.vae
    imgs = np.stack([r.image for r in emoji.make_batch(n, seed)])
    x = torch.as_tensor(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(vae.dtype)
    out = []
    for i in range(0, n, 32):
        rec = vae.decode(vae.encode(x[i : i + 32]).latent_dist.mean).sample.float().clamp(-1, 1)
        mse = ((rec - x[i : i + 32].float()) / 2).pow(2).flatten(1).mean(1)
        out += (10 * torch.log10(1 / mse.clamp_min(1e-10))).tolist()
    return {"psnr_db": round(float(np.mean(out)), 2), "min_db": round(float(np.min(out)), 2), "n": n}


def save_grid(samples: list[Generated], path: Path, per_row: int = 8, limit: int = 48) -> Path:
    """Generated images with their prompts, a green frame when the judge accepts."""
    from matplotlib.figure import Figure

    picked = samples[:: max(1, len(samples) // limit)][:limit]
    rows = (len(picked) + per_row - 1) // per_row
    fig = Figure(figsize=(per_row * 1.9, rows * 2.2), dpi=100)
    for i, g in enumerate(picked):
        ax = fig.add_subplot(rows, per_row, i + 1)
        ax.imshow(g.image)
        ok = judge_emoji.judge(g.image, g.prompt.scene).ok
        for sp in ax.spines.values():
            sp.set_color("green" if ok else "red")
            sp.set_linewidth(3)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title("\n".join(_wrap(g.prompt.prompt, 28)), fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line]


def run(model: Path, quick: bool, steps: int, guidance: float, out: Path, skip: set[str]) -> dict:
    from explain.diffusion.loading import load_pipeline

    pipe = load_pipeline(str(model))
    result: dict = {"model": str(model), "steps": steps, "guidance": guidance, "quick": quick}
    if "vae" not in skip:
        result["vae"] = vae_psnr(pipe)
        print(f"[evaluate] vae {result['vae']}", flush=True)
    if "clip" not in skip:
        result["clip"] = clip_retrieval(model, n=64 if quick else 256)
        print(f"[evaluate] clip {result['clip']}", flush=True)
    if "adherence" not in skip:
        samples = generate(pipe, prompt_set(quick), steps, guidance, seed=0, batch=16)
        result.update(evaluate_generation(samples))
        save_grid(samples, out / "samples.png")
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate_world", description=__doc__)
    p.add_argument("--model", type=Path, default=None, help="a world pipeline directory")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--out", type=Path, default=Path("runs/eval_world"))
    p.add_argument("--skip", default="", help="comma-separated: vae,clip,adherence")
    p.add_argument("--clip-weights", type=Path, default=None, help="grade only this clip.safetensors (noun top-1)")
    args = p.parse_args(argv)
    if args.clip_weights is not None:
        print(json.dumps(clip_retrieval(bundle=clip_bundle_from_weights(args.clip_weights)), indent=1))
        return 0
    skip = {s for s in args.skip.split(",") if s}
    if args.model is None:
        p.error("--model is required (or --clip-weights)")
    res = run(args.model, args.quick, args.steps, args.guidance, args.out, skip)
    print(json.dumps({k: v for k, v in res.items() if k != "images"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
