"""Measure the use cases on held-out shapes-world images: ``python -m training.evaluate_tasks`` -> runs/eval_tasks.json.

Everything goes through the library functions of :mod:`explain.usecases` on the embedded model and task U-Nets.

1. **Super-resolution** (``--n-upscale`` images, default 100): world scenes rendered with seeds the training never
   used (``world.make_batch(n, 20_000)``; training draws ``default_rng([seed, split, i])``), downsampled to the
   U-Net's low-res size by area averaging, upscaled with the caption as prompt (4 samples) and with an empty prompt
   (1 sample), compared with bicubic by PSNR and SSIM (:mod:`explain.usecases.metrics`). Variants from the same
   samples: one sample; one sample + back-projection; the mean of 4 samples (posterior-mean estimate); the mean +
   back-projection. The VAE's own reconstruction PSNR is the ceiling of any latent upscaler.
2. **Inpainting** (fixed test set, 20 scenes x 5 seeds, both modes): half the scenes *add* an object (the mask is a
   square on an empty position, the prompt the caption of the scene with the new object), half *replace* one (the
   mask covers the existing object, the prompt names another colour there). A hit: :func:`training.judge.detect`
   finds a region of the named colour with at least ``MIN_INSIDE`` of the canvas inside the mask.
3. **Style transfer** (10 plain scenes x 5 style words, strengths 0.6 and 0.8): does CLIP (``style_from_image``) read the
   requested style from the output, and does the judge still find every object's colour at its position? The CLIP
   reader's accuracy on clean renders is measured too, so its verdicts can be weighed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from explain import world
from explain.diffusion.latents import decode_latents, encode_latents, rgb_to_pixels
from training.judge import detect, judge

__all__ = ["inpaint_test_set", "inside_region", "evaluate_upscale", "evaluate_inpaint", "evaluate_stylize", "main"]

HELD_OUT_SEED = 20_000  # upscale scenes
INPAINT_SEED = 30_000  # inpainting test set (31_000: the development set settings were chosen on)
STYLE_SEED = 40_000  # style-transfer content scenes and CLIP reader check
MIN_INSIDE = 0.015  # a hit needs this fraction of the canvas of the named colour inside the mask (~61 px at 64x64)
BOX = 0.5  # mask square side as a fraction of the canvas, centred on a world position


def _box_mask(position: str, size: int) -> np.ndarray:
    """(size, size) bool square of side ``BOX * size`` centred on ``world.POSITIONS[position]``, inside the canvas."""
    fx, fy = world.POSITIONS[position]
    side = round(BOX * size)
    x0 = min(max(round(fx * size - side / 2), 0), size - side)
    y0 = min(max(round(fy * size - side / 2), 0), size - side)
    mask = np.zeros((size, size), bool)
    mask[y0 : y0 + side, x0 : x0 + side] = True
    return mask


def inpaint_test_set(n_scenes: int = 20, size: int = 64, seed: int = INPAINT_SEED) -> list[dict]:
    """The fixed inpainting cases: image, mask, prompt, the colour/shape asked for, and the kind (add/replace)."""
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(n_scenes):
        base = world.sample_scene(rng, max_objects=1, p_scene=0.2, p_style=0.2)
        obj = base.objects[0]
        rendered = world.render(base, size, rng)
        color = [c for c in world.COLORS if c != obj.color][rng.integers(len(world.COLORS) - 1)]
        shape = world.SHAPES[rng.integers(len(world.SHAPES))]
        while (color, shape) in world.HELD_OUT_PAIRS:
            shape = world.SHAPES[rng.integers(len(world.SHAPES))]
        if k % 2 == 0:  # add an object at a position compatible with the existing one
            free = [
                q
                for pair in world.shapes._COMPATIBLE_POSITIONS
                for q in pair
                if obj.position in pair and q != obj.position
            ]
            position = free[rng.integers(len(free))] if free else "on the left"
            target = world.WorldObject(color, shape, position)
            objects, kind = (obj, target), "add"
        else:  # replace the existing object by another colour and shape
            target = world.WorldObject(color, shape, obj.position, obj.size)
            objects, kind = (target,), "replace"
        prompt = world.caption(world.Scene(objects, base.scene, base.style))[0]
        cases.append(
            dict(
                image=rendered.image,
                mask=_box_mask(target.position, size),
                prompt=prompt,
                color=color,
                shape=shape,
                position=target.position,
                kind=kind,
            )
        )
    return cases


def inside_region(image: np.ndarray, mask: np.ndarray, color: str):
    """The detected region of ``color`` with the most pixels inside ``mask``, if that is >= MIN_INSIDE of the
    canvas; else None."""
    regions = [(int((obj.mask & mask).sum()), obj) for obj in detect(image) if obj.color == color]
    inside, region = max(regions, key=lambda r: r[0], default=(0, None))
    return region if inside >= MIN_INSIDE * mask.size else None


def evaluate_upscale(pipe, n: int, steps: int, samples: int = 4, guidance: float = 3.0) -> dict:
    from explain.usecases import back_project, psnr, ssim, upscale

    scenes = world.make_batch(n, HELD_OUT_SEED, max_objects=2)
    scores: dict[str, list[tuple[float, float]]] = {}
    vae_ceiling = []

    def add(name: str, image, reference) -> None:
        scores.setdefault(name, []).append((psnr(image, reference), ssim(image, reference)))

    for i, scene in enumerate(scenes):
        hr = scene.image
        with_caption = upscale(
            hr, scene.caption, pipe=pipe, seed=i, steps=steps, guidance=guidance, samples=samples, capture=False
        )
        low = with_caption.low_res
        add("bicubic", with_caption.bicubic, hr)
        add("model_caption_1_sample", with_caption.samples[0], hr)
        add("model_caption_1_sample_backprojected", back_project(with_caption.samples[0], low), hr)
        add(f"model_caption_mean_of_{samples}", with_caption.image, hr)
        add(f"model_caption_mean_of_{samples}_backprojected", back_project(with_caption.image, low), hr)
        empty = upscale(hr, "", pipe=pipe, seed=i, steps=steps, guidance=guidance, capture=False)
        add("model_empty_prompt_1_sample", empty.image, hr)
        decoded = decode_latents(pipe.vae, encode_latents(pipe.vae, rgb_to_pixels(hr)))  # (1, 3, H, W) in [-1, 1]
        vae_ceiling.append(psnr((decoded[0].permute(1, 2, 0).numpy() + 1) / 2, hr))
    summary = {
        name: {
            "psnr": round(float(np.mean([s[0] for s in vals])), 3),
            "ssim": round(float(np.mean([s[1] for s in vals])), 4),
            "psnr_beats_bicubic_share": round(
                float(np.mean([s[0] > b[0] for s, b in zip(vals, scores["bicubic"], strict=True)])), 3
            ),
        }
        for name, vals in scores.items()
    }
    return {
        "n_images": n,
        "held_out_seed": HELD_OUT_SEED,
        "low_res": list(with_caption.low_res.size),
        "output": list(with_caption.image.size),
        "steps": steps,
        "guidance": guidance,
        "noise_level": with_caption.noise_level,
        "results": summary,
        "vae_reconstruction_psnr": round(float(np.mean(vae_ceiling)), 3),
    }


def evaluate_inpaint(
    pipes: dict, n_scenes: int, seeds: int, steps: int, set_seed: int = INPAINT_SEED, guidance: float = 3.0
) -> dict:
    from explain.usecases import inpaint

    cases = inpaint_test_set(n_scenes, seed=set_seed)
    out = {"n_cases": len(cases) * seeds, "scenes": n_scenes, "seeds": seeds, "steps": steps, "guidance": guidance}
    out["set_seed"] = set_seed
    out["min_inside_fraction"] = MIN_INSIDE
    for mode, pipe in pipes.items():
        hits, shapes, kinds = [], [], {"add": [], "replace": []}
        for case in cases:
            for seed in range(seeds):
                result = inpaint(
                    case["image"], case["mask"], case["prompt"], pipe=pipe, seed=seed, steps=steps,
                    guidance=guidance, capture=False,
                )  # fmt: skip
                region = inside_region(np.asarray(result.image), case["mask"], case["color"])
                hits.append(region is not None)
                shapes.append(region is not None and region.shape == case["shape"])
                kinds[case["kind"]].append(region is not None)
        out[mode] = {
            "color_in_mask_rate": round(float(np.mean(hits)), 3),
            "color_and_shape_rate": round(float(np.mean(shapes)), 3),
            "rate_by_kind": {k: round(float(np.mean(v)), 3) for k, v in kinds.items()},
        }
    return out


def evaluate_stylize(pipe, clip, n_scenes: int, steps: int, strengths: tuple[float, ...] = (0.6, 0.8)) -> dict:
    from explain.usecases import StyleReader, stylize

    read = StyleReader(clip)
    rng = np.random.default_rng(STYLE_SEED)
    reader = []
    for _ in range(60):  # the CLIP reader on clean renders with random scene and style
        scene = world.sample_scene(rng, max_objects=2, p_scene=0.75, p_style=0.67)
        guess = read(world.render(scene, 64, rng).image)
        reader.append((guess.scene == scene.scene, guess.style == scene.style))
    words = world.STYLES + world.SCENES
    contents = []
    for _ in range(n_scenes):
        content = world.sample_scene(rng, max_objects=2, p_scene=0.0, p_style=0.0)
        contents.append((world.render(content, 64, rng).image, world.caption(content)[0]))
    out = {
        "steps": steps,
        "n_content_images": n_scenes,
        "clip_reader_accuracy_on_renders": {
            "scene": round(float(np.mean([r[0] for r in reader])), 3),
            "style": round(float(np.mean([r[1] for r in reader])), 3),
            "n": len(reader),
        },
    }
    for strength in strengths:
        hits, kept = {w: [] for w in words}, {w: [] for w in words}
        for image, caption in contents:
            for word in words:
                result = stylize(image, word, caption, pipe=pipe, strength=strength, steps=steps, capture=False)
                hits[word].append(word in read(result.image).words)
                verdict = judge(np.asarray(result.image), result.prompt)
                kept[word].append(all(o.color_ok and o.position_ok for o in verdict.objects))
        out[f"strength_{strength:g}"] = {
            "style_read_back_rate": {w: round(float(np.mean(v)), 3) for w, v in hits.items()},
            "content_kept_rate": {w: round(float(np.mean(v)), 3) for w, v in kept.items()},
            "style_read_back_overall": round(float(np.mean([h for v in hits.values() for h in v])), 3),
            "content_kept_overall": round(float(np.mean([k for v in kept.values() for k in v])), 3),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate_tasks", description=__doc__.splitlines()[0])
    parser.add_argument("--n-upscale", type=int, default=100, help="held-out images for super-resolution")
    parser.add_argument("--inpaint-scenes", type=int, default=20, help="inpainting test scenes")
    parser.add_argument("--inpaint-seeds", type=int, default=5, help="seeds per inpainting scene")
    parser.add_argument("--style-scenes", type=int, default=10, help="content images for style transfer")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--parts", default="upscale,inpaint,stylize", help="comma-separated subset to (re)run")
    parser.add_argument("--inpaint-seed", type=int, default=INPAINT_SEED, help="inpainting set (31000: dev set)")
    parser.add_argument("--out", type=Path, default=Path("runs/eval_tasks.json"))
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if parts - {"upscale", "inpaint", "stylize"}:
        parser.error(f"unknown parts {sorted(parts - {'upscale', 'inpaint', 'stylize'})}")

    import diffusers

    from explain.clip.model import load_clip
    from explain.diffusion.loading import EMBEDDED_MODEL_DIR
    from explain.usecases import load_task_pipeline
    from explain.usecases.models import load_base

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    base = load_base(None, "cpu")
    report: dict = {"model": "embedded", "device": "cpu", "threads": args.threads, "seconds": {}}
    if parts != {"upscale", "inpaint", "stylize"} and args.out.is_file():  # a partial rerun updates the report
        report = json.loads(args.out.read_text())

    if "upscale" in parts:
        t = time.perf_counter()
        report["upscale"] = evaluate_upscale(load_task_pipeline("upscale", base=base), args.n_upscale, args.steps)
        report["seconds"]["upscale"] = round(time.perf_counter() - t, 1)
        print(json.dumps(report["upscale"]["results"], indent=1), flush=True)

    if "inpaint" in parts:
        t = time.perf_counter()
        pipes = {mode: load_task_pipeline("inpaint", mode=mode, base=base) for mode in ("unet", "blend")}
        key = "inpaint" if args.inpaint_seed == INPAINT_SEED else f"inpaint_seed_{args.inpaint_seed}"
        report[key] = evaluate_inpaint(pipes, args.inpaint_scenes, args.inpaint_seeds, args.steps, args.inpaint_seed)
        report["seconds"][key] = round(time.perf_counter() - t, 1)
        print(json.dumps(report[key], indent=1), flush=True)

    if "stylize" in parts:
        t = time.perf_counter()
        clip = load_clip(EMBEDDED_MODEL_DIR)
        img2img = load_task_pipeline("img2img", base=base)
        report["stylize"] = evaluate_stylize(img2img, clip, args.style_scenes, args.steps)
        report["seconds"]["stylize"] = round(time.perf_counter() - t, 1)
        print(json.dumps(report["stylize"], indent=1), flush=True)

    report["seconds"]["total"] = round(sum(v for k, v in report["seconds"].items() if k != "total"), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({report['seconds']['total']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
