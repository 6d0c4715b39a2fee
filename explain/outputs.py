"""The attention files every generating command writes: ``attention.npz``, ``heatmaps/`` and ``film.gif``.

Shared by ``python -m explain generate``, the use-case subcommands and the app's downloads, so the files have one
format: ``attention.npz`` holds ``words``, ``word_maps`` (float32 ``[n_words, H, W]`` at image size, aggregated
DAAM-style over all steps, layers and heads, not normalised), ``tokens``, ``token_maps``, the per-step ``cube``
(float16 ``[steps, layers, tokens, h, w]``) and ``layer_names``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from explain.attention import CapturedAttention
from explain.heatmap import TokenMaps, aggregate, overlay, per_step_cube

__all__ = ["safe_name", "write_attention_npz", "write_heatmaps", "write_film_gif", "write_attention_files"]

FILM_TILE_SIDE = 256  # longest side of one film tile, pixels
FILM_MAX_WORDS = 8  # word tiles per film frame
FILM_FRAME_MS = 200


def safe_name(word: str) -> str:
    """A file-name-safe form of a word (punctuation-only words become ``punct``)."""
    return re.sub(r"[^\w-]+", "_", word).strip("_") or "punct"


def write_attention_npz(path: Path, maps: TokenMaps, captured: CapturedAttention, image_index: int = 0) -> None:
    np.savez_compressed(
        path,
        words=np.array(maps.words, dtype=str),
        word_maps=maps.word_maps.numpy().astype(np.float32),
        tokens=np.array(maps.tokens, dtype=str),
        token_maps=maps.token_maps.numpy().astype(np.float32),
        cube=per_step_cube(captured, image_index=image_index).numpy(),
        layer_names=np.array(captured.layer_names, dtype=str),
    )


def write_heatmaps(folder: Path, maps: TokenMaps, image) -> None:
    """One overlay PNG per word, ``NN_word.png``, over ``image`` (the image the maps were made at)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (word, heat) in enumerate(zip(maps.words, maps.word_maps, strict=True)):
        Image.fromarray(overlay(image, heat)).save(folder / f"{i:02d}_{safe_name(word)}.png")


def _thumbnail(array: np.ndarray) -> np.ndarray:
    image = Image.fromarray(array)
    image.thumbnail((FILM_TILE_SIDE, FILM_TILE_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(image)


def write_film_gif(path: Path, film_frames, captured: CapturedAttention, view) -> None:
    """Animated GIF: per step, the predicted clean image x̂₀ and the overlays of that step's word maps."""
    frames = []
    for frame in film_frames:
        x0 = frame.image[0]  # (H, W, 3)
        tiles = [x0]
        if frame.step < captured.n_steps:
            maps = aggregate(captured, view, steps=[frame.step], image_size=x0.shape[:2])
            tiles += [overlay(x0, heat) for heat in maps.word_maps[:FILM_MAX_WORDS]]
        frames.append(Image.fromarray(np.concatenate([_thumbnail(t) for t in tiles], axis=1)))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=FILM_FRAME_MS, loop=0)


def write_attention_files(out: Path, maps: TokenMaps, captured: CapturedAttention, image, view, film=()) -> None:
    """``attention.npz``, ``heatmaps/`` and (with film frames) ``film.gif`` into ``out``."""
    write_attention_npz(out / "attention.npz", maps, captured)
    write_heatmaps(out / "heatmaps", maps, image)
    if film:
        write_film_gif(out / "film.gif", list(film), captured, view)
