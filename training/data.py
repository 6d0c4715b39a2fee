"""The training data: world scenes rendered in parallel, deterministic per sample index.

Sample ``i`` of a split is drawn with ``np.random.default_rng([seed, split_id, i])``, so the data do not depend
on the number of worker processes. Two worlds: ``shapes`` (:mod:`explain.world.shapes`, the model in
``models/tiny-shapes-sd``) and ``emoji`` (:mod:`explain.world.emoji`, world v2).
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass

import numpy as np

from explain import world
from explain.world import emoji

__all__ = ["WorldData", "render_split", "word_token_index", "span_token_indices", "WORLDS"]

MAX_OBJECTS = 3
WORLDS = ("shapes", "emoji")
# world v2: up to 3 things + 3 wearables, each grounded by up to 4 tokens (noun BPE pieces, colour, count)
EMOJI_GROUPS, EMOJI_TOKENS = 6, 4
SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class WorldData:
    """A rendered split.

    Attributes:
        images: (N, S, S, 3) uint8.
        captions: N caption strings.
        obj_tokens: (N, G, K) int16, token indices that name mask g (-1: none). Shapes world: G = MAX_OBJECTS,
            K = 2 (colour and shape word); emoji world: G = EMOJI_GROUPS, K = EMOJI_TOKENS.
        obj_masks: (N, G, S/f, S/f) uint8, each mask's coverage at latent size (f: the VAE factor), 0..255.
    """

    images: np.ndarray
    captions: list[str]
    obj_tokens: np.ndarray
    obj_masks: np.ndarray


_TOKENIZER = None


def word_token_index(caption: str, start: int) -> int:
    """Index in the 77-slot token sequence of the (first BPE token of the) word starting at ``start``."""
    global _TOKENIZER  # a per-process cache of the BPE tokenizer, read-only after creation
    if _TOKENIZER is None:
        from open_clip.tokenizer import SimpleTokenizer

        _TOKENIZER = SimpleTokenizer()
    return 1 + len(_TOKENIZER.encode(caption[:start]))  # +1 for the start-of-text token


def span_token_indices(caption: str, span: tuple[int, int]) -> list[int]:
    """Indices in the 77-slot sequence of every BPE token of the caption's characters ``span`` (a word or two)."""
    first = word_token_index(caption, span[0])
    end = 1 + len(_TOKENIZER.encode(caption[: span[1]]))
    return list(range(first, max(end, first + 1)))


def _coverage(mask: np.ndarray, factor: int) -> np.ndarray:
    """(S, S) bool -> (S/f, S/f) uint8 coverage 0..255."""
    lat = mask.shape[0] // factor
    cov = mask.reshape(lat, factor, lat, factor).mean(axis=(1, 3))
    return np.round(cov * 255).astype(np.uint8)


def _render_emoji(seed: int, split_id: int, i: int, size: int, max_objects: int, factor: int) -> tuple:
    rng = np.random.default_rng([seed, split_id, i])
    r = emoji.render(emoji.sample_scene(rng, max_things=max_objects), size, rng)
    tokens = np.full((EMOJI_GROUPS, EMOJI_TOKENS), -1, np.int16)
    filled = np.zeros(EMOJI_GROUPS, int)
    for w in r.words:
        for t in span_token_indices(r.caption, w.span):
            if filled[w.mask] < EMOJI_TOKENS and t < 77:
                tokens[w.mask, filled[w.mask]] = t
                filled[w.mask] += 1
    masks = np.zeros((EMOJI_GROUPS, size // factor, size // factor), np.uint8)
    for g in range(len(r.masks)):
        masks[g] = _coverage(r.masks[g], factor)
    return r.image, r.caption, tokens, masks


def _render_one(args: tuple) -> tuple:
    seed, split_id, i, size, max_objects, world_name, factor = args
    if world_name == "emoji":
        return _render_emoji(seed, split_id, i, size, max_objects, factor)
    rng = np.random.default_rng([seed, split_id, i])
    scene = world.sample_scene(rng, max_objects=int(max_objects), allow_held_out=False)
    r = world.render(scene, size, rng)
    tokens = np.full((MAX_OBJECTS, 2), -1, np.int16)
    masks = np.zeros((MAX_OBJECTS, size // factor, size // factor), np.uint8)
    for o, spans in enumerate(r.spans):
        tokens[o, 0] = word_token_index(r.caption, spans["color"][0])
        tokens[o, 1] = word_token_index(r.caption, spans["shape"][0])
        masks[o] = _coverage(r.masks[o], factor)
    return r.image, r.caption, tokens, masks


def render_split(
    n: int,
    seed: int,
    split: str = "train",
    size: int = 64,
    max_objects: int = 2,
    workers: int | None = None,
    world_name: str = "shapes",
    latent_factor: int = 4,
) -> WorldData:
    """Render ``n`` scenes of a split of ``world_name`` in parallel; masks at ``size // latent_factor``."""
    if world_name not in WORLDS:
        raise ValueError(f"unknown world {world_name!r}; known: {', '.join(WORLDS)}")
    jobs = [(seed, SPLITS[split], i, size, max_objects, world_name, latent_factor) for i in range(n)]
    workers = workers or mp.cpu_count()
    if workers > 1 and n > 256:
        with mp.get_context("fork").Pool(workers) as pool:
            out = pool.map(_render_one, jobs, chunksize=256)
    else:
        out = [_render_one(j) for j in jobs]
    return WorldData(
        images=np.stack([o[0] for o in out]),
        captions=[o[1] for o in out],
        obj_tokens=np.stack([o[2] for o in out]),
        obj_masks=np.stack([o[3] for o in out]),
    )
