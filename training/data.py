"""The training data: shapes-world scenes rendered in parallel, deterministic per sample index.

Sample ``i`` of a split is drawn with ``np.random.default_rng([seed, split_id, i])``, so the data do not depend
on the number of worker processes.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass

import numpy as np

from explain import world

__all__ = ["WorldData", "render_split", "word_token_index"]

MAX_OBJECTS = 3
SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class WorldData:
    """A rendered split.

    Attributes:
        images: (N, S, S, 3) uint8.
        captions: N caption strings.
        obj_tokens: (N, MAX_OBJECTS, 2) int16, token index of each object's colour and shape word (-1: none).
        obj_masks: (N, MAX_OBJECTS, S/4, S/4) uint8, each object's mask coverage at latent size, 0..255.
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


def _render_one(args: tuple[int, int, int, int, float]) -> tuple:
    seed, split_id, i, size, max_objects = args
    rng = np.random.default_rng([seed, split_id, i])
    scene = world.sample_scene(rng, max_objects=int(max_objects), allow_held_out=False)
    r = world.render(scene, size, rng)
    tokens = np.full((MAX_OBJECTS, 2), -1, np.int16)
    lat = size // 4
    masks = np.zeros((MAX_OBJECTS, lat, lat), np.uint8)
    for o, spans in enumerate(r.spans):
        tokens[o, 0] = word_token_index(r.caption, spans["color"][0])
        tokens[o, 1] = word_token_index(r.caption, spans["shape"][0])
        cov = r.masks[o].reshape(lat, 4, lat, 4).mean(axis=(1, 3))
        masks[o] = np.round(cov * 255).astype(np.uint8)
    return r.image, r.caption, tokens, masks


def render_split(
    n: int, seed: int, split: str = "train", size: int = 64, max_objects: int = 2, workers: int | None = None
) -> WorldData:
    """Render ``n`` scenes of a split in parallel."""
    jobs = [(seed, SPLITS[split], i, size, max_objects) for i in range(n)]
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
