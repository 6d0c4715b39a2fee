"""Grade "edit where a word attends" on the shapes world: ``python -m training.evaluate_attend_edit``.

Cases: the two-object prompts of :func:`training.prompts.prompt_set` with distinct shapes x ``--seeds`` seeds (26 x 2
= 52 by default). In each, one object (alternating) is recoloured: the word is its shape, the edited prompt the
prompt with that object's colour replaced by another colour that neither object has
(:func:`explain.usecases.attend_edit.edit_where_attends`, the embedded model and its 9-channel inpainting U-Net,
same seed, DAAM's τ = 0.4, dilation 2). Per case:

- **hit**: the judge (:func:`training.evaluate_tasks.inside_region`) finds a region of the new colour inside the mask;
- **kept**: the share of changed pixels (|Δ| > 8/255) inside the mask (1 by construction: pixels outside are pasted);
- **mask IoU**: the mask against the judge's mask of the edited object in the image before the edit (when found),
  and how much of the *other* object the mask covers (a leak would recolour it too).
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
from training.evaluate import _iou
from training.evaluate_tasks import inside_region
from training.judge import judge
from training.prompts import prompt_set

__all__ = ["cases", "evaluate", "main"]

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "model" / "attend_edit_eval.json"


def cases(seeds: int) -> list[dict]:
    """(prompt, scene, edited object index, new colour, edited prompt, seed) of every case."""
    pool = [p for p in prompt_set() if p.kind == "two" and len({o.shape for o in p.scene.objects}) == 2]
    out = []
    for seed in range(seeds):
        for i, p in enumerate(pool):
            k = (i + seed) % 2
            obj = p.scene.objects[k]
            used = {o.color for o in p.scene.objects}
            new = [c for c in world.COLORS if c not in used][(i + seed) % (len(world.COLORS) - len(used))]
            if f"{obj.color} {obj.shape}" not in p.prompt:
                continue  # the edit replaces "<colour> <shape>"; every world caption names them so
            edited = p.prompt.replace(f"{obj.color} {obj.shape}", f"{new} {obj.shape}", 1)
            out.append(dict(prompt=p, k=k, new=new, edited=edited, seed=seed))
    return out


def evaluate(base, inpainter, seeds: int, steps: int, guidance: float) -> dict:
    """Run every case of :func:`cases` and report hits, mask quality and timing."""
    from explain.usecases.attend_edit import edit_where_attends

    rows = []
    for case in cases(seeds):
        p, k = case["prompt"], case["k"]
        obj = p.scene.objects[k]
        r = edit_where_attends(
            p.prompt, obj.shape, case["edited"], pipe=base, inpaint_pipe=inpainter, seed=case["seed"],
            steps=steps, guidance=guidance,
        )  # fmt: skip
        before = np.asarray(r.before)
        verdict = judge(before, p.scene)
        own = verdict.objects[k].matched_mask if verdict.objects[k].color_ok else None
        other = verdict.objects[1 - k].matched_mask if verdict.objects[1 - k].color_ok else None
        rows.append(
            {
                "hit": inside_region(np.asarray(r.after), r.mask, case["new"]) is not None,
                "share_inside": r.share_inside,
                "mask_area": r.mask_area,
                "mask_iou_object": None if own is None else _iou(r.mask, own),
                "other_object_covered": None if other is None else float((r.mask & other).sum() / max(other.sum(), 1)),
            }
        )

    def mean(key):
        values = [row[key] for row in rows if row[key] is not None]
        return round(float(np.mean(values)), 4) if values else None

    return {
        "cases": len(rows),
        "hit_rate": mean("hit"),
        "changed_share_inside_mask": mean("share_inside"),
        "mask_area": mean("mask_area"),
        "mask_iou_with_object": mean("mask_iou_object"),
        "other_object_covered": mean("other_object_covered"),
        "settings": {"steps": steps, "guidance": guidance, "inpaint_guidance": 3.0, "threshold": 0.4, "dilation": 2},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate_attend_edit", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (26 prompts)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    import diffusers

    from explain.diffusion.loading import EMBEDDED_MODEL_DIR, recommended_settings
    from explain.usecases import load_task_pipeline
    from explain.usecases.models import load_base

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_base(None, "cpu")
    base.set_progress_bar_config(disable=True)
    inpainter = load_task_pipeline("inpaint", mode="unet", base=base)
    guidance = recommended_settings(EMBEDDED_MODEL_DIR).get("recommended_guidance", 7.5)
    t = time.perf_counter()
    report = {"model": "embedded (models/tiny-shapes-sd + tiny-shapes-tasks inpaint)", "world": "shapes"}
    report.update(evaluate(base, inpainter, args.seeds, args.steps, guidance))
    report["seconds"] = round(time.perf_counter() - t, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
