"""Learn one OVAM attribution token per shape word of the shapes world (OVAM token optimisation, Sec. 3.3).

Marcos-Manchón et al., CVPR 2024: the attribution token of a word is optimised on a few annotated generations so
that its open-vocabulary map matches the object's mask (:func:`explain.capture.token_optimization.optimize_token`).
Here the annotations are the judge's masks (:func:`training.judge.judge`, ``matched_mask``) of generations of
prompts and seeds the evaluation never uses: two-object scenes drawn from the world's grammar
(:func:`training_prompts`, every pair of distinct shapes equally often, so every shape word gets images) with
texts the evaluation does not ask, and seeds from :data:`TRAIN_SEED` on. One
pipeline call records every query (:class:`~explain.capture.token_optimization.QueryRecorder`); each shape word's
token is then fitted on the images where the judge found an object of that shape.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from explain import world
from explain.capture.open_vocabulary import attribution_states
from explain.capture.token_optimization import QueryRecorder, RecordedQueries, optimize_token
from explain.clip.tokens import tokenize_prompt
from training.judge import judge
from training.prompts import EvalPrompt

__all__ = ["TRAIN_SEED", "PROMPT_SEED", "LearnedTokens", "training_prompts", "learn_shape_tokens"]

TRAIN_SEED = 100  # training generations use seeds TRAIN_SEED, TRAIN_SEED + 1, ... (the evaluation uses 0, 1, ...)
PROMPT_SEED = 1_000  # the scene sampler's seed for the training prompts (prompt_set uses 0)


def training_prompts(per_pair: int, exclude: set[str], seed: int = PROMPT_SEED) -> list[EvalPrompt]:
    """``per_pair`` two-object prompts for every unordered pair of distinct shapes (15 pairs in the shapes world).

    Scenes come from :func:`explain.world.sample_scene` (no scene or style words), drawn until each pair has its
    quota, in pair order; a text in ``exclude`` (the evaluated prompts) is never used.
    """
    if per_pair < 0:
        raise ValueError(f"per_pair must be >= 0, got {per_pair}")
    wanted = {frozenset(pair): per_pair for pair in itertools.combinations(world.SHAPES, 2)}
    found: dict[frozenset, list[EvalPrompt]] = {pair: [] for pair in wanted}
    rng, seen = np.random.default_rng(seed), set(exclude)
    while any(len(found[p]) < n for p, n in wanted.items()):
        scene = world.sample_scene(rng, max_objects=2, p_scene=0.0, p_style=0.0)
        pair = frozenset(o.shape for o in scene.objects)
        text = world.caption(scene)[0]
        if len(scene.objects) == 2 and len(pair) == 2 and len(found[pair]) < wanted[pair] and text not in seen:
            seen.add(text)
            found[pair].append(EvalPrompt(text, scene, "two"))
    return [p for pair in wanted for p in found[pair]]


@dataclass(frozen=True, eq=False)
class LearnedTokens:
    """Per shape word: the attribution states (1, T', D) of the word alone with its token optimised, and how."""

    states: dict[str, torch.Tensor]
    n_images: dict[str, int]
    losses: dict[str, tuple[float, float]]  # (first, last) training loss


def _subset(recorded: RecordedQueries, rows: list[int]) -> RecordedQueries:
    return RecordedQueries({n: q[:, rows] for n, q in recorded.queries.items()}, recorded.modules, recorded.latent_hw)


def learn_shape_tokens(
    pipe,
    prompts: list[EvalPrompt],
    seeds: int,
    steps: int,
    guidance: float,
    *,
    iterations: int = 100,
    lr: float = 0.1,
    loss: str = "bce",
) -> LearnedTokens:
    """Generate ``prompts`` x ``seeds`` (seeds from :data:`TRAIN_SEED`), judge them, fit each shape word's token
    (``loss``: :data:`explain.capture.token_optimization.LOSSES`)."""
    jobs = [(s, p) for s in range(seeds) for p in prompts]
    generators = [torch.Generator(device="cpu").manual_seed(TRAIN_SEED + s) for s, _ in jobs]
    with QueryRecorder(pipe) as queries:
        out = pipe(
            [p.prompt for _, p in jobs],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            output_type="np",
        )
    images = np.clip(np.asarray(out.images) * 255.0 + 0.5, 0, 255).astype(np.uint8)  # (B, H, W, 3)
    recorded = queries.result(*images.shape[1:3])
    verdicts = [judge(image, p.scene) for image, (_, p) in zip(images, jobs, strict=True)]
    states, counts, losses = {}, {}, {}
    for shape in world.SHAPES:
        rows, masks = [], []
        for b, ((_, prompt), verdict) in enumerate(zip(jobs, verdicts, strict=True)):
            for obj, judged in zip(prompt.scene.objects, verdict.objects, strict=True):
                if obj.shape == shape and judged.color_ok:
                    rows.append(b)
                    masks.append(torch.as_tensor(judged.matched_mask))
                    break
        base = attribution_states(pipe, shape)
        view = tokenize_prompt(pipe.tokenizer, shape)
        (word,) = view.words
        if len(word.token_indices) != 1:
            raise ValueError(f"{shape!r} is {len(word.token_indices)} BPE tokens; one token per shape word is fitted")
        counts[shape] = len(rows)
        if not rows:  # nothing to learn from: the word's own states
            states[shape], losses[shape] = base, (float("nan"), float("nan"))
            continue
        fitted, curve = optimize_token(
            _subset(recorded, rows),
            base,
            word.token_indices[0],
            torch.stack(masks),
            iterations=iterations,
            lr=lr,
            loss=loss,
        )
        states[shape], losses[shape] = fitted, (curve[0], curve[-1])
    return LearnedTokens(states, counts, losses)
