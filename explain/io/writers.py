"""One writer per format, shared by ``python -m explain``, the use cases and the app's downloads.

- NPZ, :func:`write_attention_npz`: ``attention.npz`` holds ``words``, ``word_maps`` (float32 ``[n_words, H, W]`` at
  image size, aggregated DAAM-style over all steps, layers and heads, not normalised), ``tokens``, ``token_maps``,
  the per-step ``cube`` (float16 ``[steps, layers, tokens, h, w]``) and ``layer_names``; callers may add documented
  extras (the app adds ``timesteps``).
- GIF, :func:`~explain.io.formats.write_gif`: animated frames; :func:`write_film_gif` (x̂₀ and each word's map per step, the CLI's
  ``film.gif``) and :func:`write_pair_film_gif` (x_t beside x̂₀ per step) compose them.
- PNG: :func:`write_heatmaps` (one overlay per word), :func:`write_grid_png` (the image and every word's overlay).
- Maps of words that need not be in the prompt, :func:`write_concept_files`: ``concepts.npz`` holds ``concepts``,
  ``concept_maps`` (float32 ``[C, H, W]`` at image size), ``layer_names`` and ``method``: ``"ovam"`` (U-Nets,
  :mod:`explain.capture.open_vocabulary`: DAAM aggregate of the attribution text's attention, not normalised) or
  ``"conceptattention"`` (SD3 / Flux, :mod:`explain.joint.concepts`: softmax over the concepts); overlays in
  ``concept_heatmaps/``.
- JSON, :func:`~explain.io.formats.write_json`: indented UTF-8 with a final newline.

The format-level writers (JSON, GIF, captioned pairs) live in :mod:`.formats`, which imports no torch, so the
command line can use them before a model loads.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from explain.capture.film import noisy_image
from explain.capture.recorder import CapturedAttention
from explain.io.figures import word_heatmap_grid
from explain.io.formats import FILM_TILE_SIDE, captioned_pair, write_gif, write_json
from explain.maps.aggregation import TokenMaps, aggregate, overlay, per_step_cube

__all__ = [
    "safe_name",
    "write_json",
    "write_gif",
    "write_attention_npz",
    "write_heatmaps",
    "write_grid_png",
    "write_film_gif",
    "write_pair_film_gif",
    "write_attention_files",
    "write_concept_files",
]

FILM_MAX_WORDS = 8  # word tiles per film frame


def safe_name(word: str) -> str:
    """A file-name-safe form of a word (punctuation-only words become ``punct``)."""
    return re.sub(r"[^\w-]+", "_", word).strip("_") or "punct"


def write_attention_npz(
    path: str | Path, maps: TokenMaps, captured: CapturedAttention, image_index: int = 0, **extras: np.ndarray
) -> Path:
    """``attention.npz`` (format in the module docstring), plus ``extras`` arrays under their own names."""
    clash = set(extras) & {"words", "word_maps", "tokens", "token_maps", "cube", "layer_names"}
    if clash:
        raise ValueError(f"extras may not replace the format's arrays: {sorted(clash)}")
    np.savez_compressed(
        path,
        words=np.array(maps.words, dtype=str),
        word_maps=maps.word_maps.numpy().astype(np.float32),
        tokens=np.array(maps.tokens, dtype=str),
        token_maps=maps.token_maps.numpy().astype(np.float32),
        cube=per_step_cube(captured, image_index=image_index).numpy(),
        layer_names=np.array(captured.layer_names, dtype=str),
        **extras,
    )
    return Path(path)


def write_heatmaps(folder: Path, maps: TokenMaps, image) -> None:
    """One overlay PNG per word, ``NN_word.png``, over ``image`` (the image the maps were made at)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (word, heat) in enumerate(zip(maps.words, maps.word_maps, strict=True)):
        Image.fromarray(overlay(image, heat)).save(folder / f"{i:02d}_{safe_name(word)}.png")


def write_grid_png(path: str | Path, image, words: Sequence[str], maps, title: str | None = None) -> Path:
    """The image and one overlay per word as one PNG (:func:`explain.io.figures.word_heatmap_grid`)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / np.iinfo(np.uint8).max
    fig = word_heatmap_grid([rgb], [list(maps)], list(words), title=title)
    fig.savefig(path, format="png")
    return Path(path)


def _thumbnail(array: np.ndarray) -> np.ndarray:
    image = Image.fromarray(array)
    image.thumbnail((FILM_TILE_SIDE, FILM_TILE_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(image)


def write_film_gif(path: Path, film_frames, captured: CapturedAttention, view) -> Path:
    """Animated GIF: per step, the predicted clean image x̂₀ and the overlays of that step's word maps."""
    frames = []
    for frame in film_frames:
        x0 = frame.image[0]  # (H, W, 3)
        tiles = [x0]
        if frame.step < captured.n_steps:
            maps = aggregate(captured, view, steps=[frame.step], image_size=x0.shape[:2])
            tiles += [overlay(x0, heat) for heat in maps.word_maps[:FILM_MAX_WORDS]]
        frames.append(Image.fromarray(np.concatenate([_thumbnail(t) for t in tiles], axis=1)))
    return write_gif(path, frames)


def write_pair_film_gif(path: str | Path, film_frames, preview, image_hw: tuple[int, int]) -> Path:
    """Animated GIF: per step, the noisy sample x_t (linear latent preview) beside the predicted clean image x̂₀."""
    frames = []
    for frame in film_frames:
        noisy = noisy_image(frame, preview, image_hw)  # (H, W, 3)
        shown = "x0 (predicted clean image)" if frame.source == "x0" else "x_t (no x0 from this scheduler)"
        caption = f"step {frame.step + 1}/{len(film_frames)}   x_t (noisy) | {shown}"
        frames.append(captioned_pair(noisy, frame.image[0], caption))
    return write_gif(path, frames)


def write_attention_files(out: Path, maps: TokenMaps, captured: CapturedAttention, image, view, film=()) -> None:
    """``attention.npz``, ``heatmaps/`` and (with film frames) ``film.gif`` into ``out``."""
    write_attention_npz(out / "attention.npz", maps, captured)
    write_heatmaps(out / "heatmaps", maps, image)
    if film:
        write_film_gif(out / "film.gif", list(film), captured, view)


def write_concept_files(out: Path, maps: TokenMaps, layer_names: Sequence[str], image, method: str) -> None:
    """``concepts.npz`` (``maps.words`` and ``maps.word_maps`` as ``concepts`` and ``concept_maps``) and
    ``concept_heatmaps/`` into ``out`` (format in the module docstring)."""
    np.savez_compressed(
        out / "concepts.npz",
        concepts=np.array(maps.words, dtype=str),
        concept_maps=maps.word_maps.numpy().astype(np.float32),
        layer_names=np.array(list(layer_names), dtype=str),
        method=np.array(method),
    )
    write_heatmaps(out / "concept_heatmaps", maps, image)
