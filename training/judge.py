"""Fitting and validation of the shapes-world judge (:mod:`explain.world.judging`): ``python -m training.judge``.

The judge itself lives in ``explain/world/judging/`` (the app's classroom uses it for true masks); this module keeps
what builds and checks it: :func:`degrade` (generator-like damage), :func:`fit_shape_classifier` (``--fit`` prints
the constants of ``explain/world/judging/shape_classifier.py``) and :func:`validate` (accept rates on renders). It
re-exports the judge's public names, so ``from training.judge import judge`` keeps working.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import textwrap

import numpy as np
from PIL import Image

from explain import world
from explain.world.judging import (  # noqa: F401  (re-exported)
    FEATURE_NAMES,
    POSITION_BANDS,
    DetectedObject,
    ObjectVerdict,
    ShapeClassifier,
    Verdict,
    detect,
    judge,
    position_ok,
    shape_features,
)
from explain.world.judging.shape_classifier import _SHAPE_CLASSIFIER  # noqa: F401
from explain.world.judging.verdicts import _describe, _segment  # noqa: F401

__all__ = [
    "DetectedObject",
    "ObjectVerdict",
    "Verdict",
    "POSITION_BANDS",
    "detect",
    "judge",
    "position_ok",
    "shape_features",
    "fit_shape_classifier",
    "degrade",
    "validate",
]


def _fit_logreg(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-3, steps: int = 3000) -> np.ndarray:
    """Full-batch gradient descent (Adam) on softmax cross-entropy. x (N, F) standardised, y (N,) -> (F+1, C)."""
    n, f = x.shape
    xb = np.concatenate([x, np.ones((n, 1))], 1)
    w = np.zeros((f + 1, n_classes))
    onehot = np.eye(n_classes)[y]
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t in range(1, steps + 1):
        logits = xb @ w
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        g = xb.T @ (p - onehot) / n + l2 * np.vstack([w[:-1], np.zeros((1, n_classes))])
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w -= 0.05 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return w


def _format_constants(clf: ShapeClassifier) -> str:
    """The Python source of ``_SHAPE_CLASSIFIER`` (explain/world/judging/shape_classifier.py), for ``--fit``."""

    def nums(v: tuple[float, ...], indent: int) -> list[str]:
        text = ", ".join(repr(float(f"{x:.5g}")) for x in v) + ","
        return textwrap.wrap(text, 119 - indent, initial_indent=" " * indent, subsequent_indent=" " * indent)

    lines = ["# fmt: off", "_SHAPE_CLASSIFIER = ShapeClassifier(", "    mean=(", *nums(clf.mean, 8), "    ),"]
    lines += ["    std=(", *nums(clf.std, 8), "    ),", "    weights=("]
    for row in clf.weights:
        lines += [f"        ({nums(row, 0)[0].rstrip(',')}),"]
    lines += ["    ),", ")", "# fmt: on"]
    return "\n".join(lines)


def degrade(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Make a clean render look like generator output: colour shift, Gaussian blur (sigma 0.7-1 px), noise, JPEG.

    Args:
        image: (H, W, 3) uint8.
        strength: scales every degradation (0 = none).
    """
    img = image.astype(np.float32)
    img = img + rng.normal(0, 10 * strength, size=3) + rng.normal(0, 4 * strength, size=(1, 1, 3))  # colour cast
    mean = img.mean(-1, keepdims=True)
    img = mean + (img - mean) * (1 + rng.uniform(-0.2, 0.1) * strength)  # saturation
    sigma = rng.uniform(0.7, 1.0) * strength
    if sigma > 0:
        r = max(1, math.ceil(3 * sigma))
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
        k /= k.sum()
        h, w = image.shape[:2]
        pad = np.pad(img, ((r, r), (0, 0), (0, 0)), mode="edge")
        img = sum(k[i] * pad[i : i + h] for i in range(2 * r + 1))  # separable: rows, then columns
        pad = np.pad(img, ((0, 0), (r, r), (0, 0)), mode="edge")
        img = sum(k[i] * pad[:, i : i + w] for i in range(2 * r + 1))
    img = img + rng.normal(0, 4 * strength, size=img.shape)
    out = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    if strength > 0:
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=int(rng.integers(50, 90)))
        out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(out)


def _labelled_regions(rendered: world.RenderedScene, image: np.ndarray) -> list[tuple[np.ndarray, int, np.ndarray]]:
    """(segmented mask, true shape index, true mask) for each object whose colour region the segmentation finds."""
    regions = _segment(image, 0.005)
    out = []
    for obj, true_mask in zip(rendered.scene.objects, rendered.masks, strict=True):
        cand = [m for name, m in regions if name == obj.color]
        if cand:
            out.append((max(cand, key=lambda m: m.sum()), world.SHAPES.index(obj.shape), true_mask))
    return out


def _training_scenes(n: int, seed: int) -> list[tuple[world.RenderedScene, np.ndarray]]:
    """Rendered scenes (styles and scenes oversampled, held-out pairs allowed) with clean or degraded images."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scene = world.sample_scene(
            rng, max_objects=3 if i % 7 == 0 else 2, p_scene=0.4, p_style=0.5, allow_held_out=True
        )
        r = world.render(scene, 64, rng)
        out.append((r, r.image if i % 3 == 0 else degrade(r.image, rng, strength=float(rng.uniform(0.5, 1.3)))))
    return out


def fit_shape_classifier(n: int = 1200, seed: int = 1234) -> ShapeClassifier:
    """Fit the shape classifier on segmentations of ``n`` rendered scenes (1/3 clean, 2/3 degraded)."""
    xs, ys = [], []
    for r, img in _training_scenes(n, seed):
        for m, y, _ in _labelled_regions(r, img):
            xs.append(shape_features(m))
            ys.append(y)
    x = np.array(xs)
    mean, std = x.mean(0), x.std(0) + 1e-6
    w = _fit_logreg((x - mean) / std, np.array(ys), len(world.SHAPES))
    return ShapeClassifier(tuple(mean.tolist()), tuple(std.tolist()), tuple(map(tuple, w.tolist())))


def _swap(scene: world.Scene, rng: np.random.Generator) -> world.Scene:
    """A wrong version of ``scene``: one object's colour, shape or position changed."""
    objs = list(scene.objects)
    i = int(rng.integers(len(objs)))
    o = objs[i]
    what = ("color", "shape", "position")[rng.integers(3)]
    used = {x.color for x in objs}
    if what == "color":
        o = world.WorldObject(rng.choice([c for c in world.COLORS if c not in used]), o.shape, o.position, o.size)
    elif what == "shape":
        o = world.WorldObject(o.color, rng.choice([s for s in world.SHAPES if s != o.shape]), o.position, o.size)
    else:
        taken = {x.position for x in objs}
        free = [p for p in world.POSITIONS if p not in taken and (len(objs) == 1 or p != "in the center")]
        o = world.WorldObject(o.color, o.shape, rng.choice(free), o.size)
    objs[i] = o
    return world.Scene(tuple(objs), scene.scene, scene.style)


def validate(n: int = 600, seed: int = 777, degraded: bool = False) -> dict:
    """Judge accuracy on ``n`` fresh renders: accept rate of the true prompt (overall, per style, per scene,
    per object count), false-accept rate of a wrong prompt (one attribute changed), shape accuracy and mask IoU.
    """
    rng = np.random.default_rng(seed)
    groups: dict[str, list[bool]] = {}
    false_accept: dict[str, list[bool]] = {}
    shape_hits, ious = [], []
    for i in range(n):
        scene = world.sample_scene(
            rng, max_objects=3 if i % 10 == 0 else 2, p_scene=0.4, p_style=0.5, allow_held_out=True
        )
        r = world.render(scene, 64, rng)
        img = degrade(r.image, rng) if degraded else r.image
        v = judge(img, r.caption)
        for key in ("all", f"style={scene.style}", f"scene={scene.scene}", f"objects={len(scene.objects)}"):
            groups.setdefault(key, []).append(v.ok)
        for ov, true_mask in zip(v.objects, r.masks, strict=True):
            shape_hits.append(ov.shape_ok)
            if ov.detected is not None:
                inter = (ov.detected.mask & true_mask).sum()
                ious.append(inter / max((ov.detected.mask | true_mask).sum(), 1))
        wrong = _swap(scene, rng)
        what = next(
            a
            for a in ("color", "shape", "position")
            for o, w in zip(scene.objects, wrong.objects, strict=True)
            if getattr(o, a) != getattr(w, a)
        )
        accepted = judge(img, wrong).ok
        false_accept.setdefault("all", []).append(accepted)
        false_accept.setdefault(what, []).append(accepted)
    return {
        "n": n,
        "degraded": degraded,
        "accept_rate": {k: round(float(np.mean(g)), 4) for k, g in sorted(groups.items())},
        "counts": {k: len(g) for k, g in sorted(groups.items())},
        "shape_accuracy": round(float(np.mean(shape_hits)), 4),
        "mask_iou": round(float(np.mean(ious)), 4),
        "false_accept_rate": {k: round(float(np.mean(g)), 4) for k, g in sorted(false_accept.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.judge", description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="refit the shape classifier and print its constants")
    parser.add_argument("-n", type=int, default=600, help="validation renders")
    args = parser.parse_args(argv)
    if args.fit:
        print(_format_constants(fit_shape_classifier()))
        return 0
    for degraded in (False, True):
        print(json.dumps(validate(args.n, degraded=degraded), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
