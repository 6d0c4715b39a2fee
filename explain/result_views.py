"""Views and exports of a finished generation (:class:`explain.session.GenerationResult`), no UI code.

:func:`word_maps` filters the recorded cross-attention (steps, U-Net parts, resolutions, heads), aggregates it the
DAAM way (Tang et al. 2023: mean over the chosen steps, layers and heads, upsampled to the image) and normalises it
per word; :func:`layer_shapes` gives one layer's Q/K/V shapes for the app's softmax(QKᵀ/√d)V diagram; the
``export_*`` functions write a result's map grid (PNG), film (GIF), maps (NPZ) and settings (JSON).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explain.outputs import write_film_gif
from explain.session import GenerationResult

__all__ = [
    "UNET_PARTS",
    "MapView",
    "word_maps",
    "layer_downsample",
    "LayerShapes",
    "layer_shapes",
    "export_grid_png",
    "export_film_gif",
    "export_maps_npz",
    "export_settings_json",
]

# U-Net part (as shown) -> first component of a diffusers module path
UNET_PARTS: dict[str, str] = {"down": "down_blocks", "mid": "mid_block", "up": "up_blocks"}
FILM_TILE = 256  # pixels, longer side of a film tile
FILM_GAP = 8
FILM_CAPTION = 24
FILM_FRAME_MS = 200


@dataclass(frozen=True, eq=False)
class MapView:
    """Per-word heat maps of a result after filtering, normalising and thresholding.

    Attributes:
        words: The words shown.
        maps: (n_words, H, W) float32 in [0, 1] after the chosen normalisation.
        overlays: Per word, the image with its map blended on top, (H, W, 3) uint8.
        masks: Per word, the image outside ``map > threshold`` dimmed, (H, W, 3) uint8; None without a threshold.
        layers: Layers that went into the maps.
        steps: Step indices averaged.
        heads: Head indices averaged (None: all).
    """

    words: tuple[str, ...]
    maps: np.ndarray
    overlays: tuple[np.ndarray, ...]
    masks: tuple[np.ndarray, ...] | None
    layers: tuple[str, ...]
    steps: tuple[int, ...]
    heads: tuple[int, ...] | None


def word_maps(
    result: GenerationResult,
    *,
    steps: Iterable[int] | None = None,
    layers: Iterable[str] | None = None,
    parts: Iterable[str] | None = None,
    downsamples: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    normalization: str = "minmax",
    threshold: float | None = None,
    include_punctuation: bool = False,
    skip_words: Iterable[str] = (),
) -> MapView:
    """DAAM maps of a result's words (:func:`explain.heatmap.aggregate`), normalised, overlaid, thresholded.

    Args:
        result: A finished generation.
        steps: Step indices to average (None: all).
        layers: Layer names (None: all).
        parts: U-Net parts to keep, any of :data:`UNET_PARTS` (None: all).
        downsamples: Keep layers whose feature map is the latent shrunk by these factors (1, 2, 4, ...; None: all).
        heads: Head indices (None: all).
        normalization: One of :data:`explain.heatmap.NORMALIZATIONS`.
        threshold: Also return masks of ``map > threshold`` (None: no masks).
        include_punctuation: Keep punctuation "words".
        skip_words: Words not to show (case-insensitive), e.g. articles.

    Raises:
        ValueError: empty or impossible selections (say which).
    """
    from explain.heatmap import aggregate, normalize, select_layers
    from explain.heatmap import overlay as blend

    captured = result.captured
    all_steps = list(range(captured.n_steps))
    step_list = all_steps if steps is None else [s for s in steps if 0 <= s < captured.n_steps]
    if not step_list:
        raise ValueError(f"no recorded step selected: this run recorded steps 0..{captured.n_steps - 1}")
    names = select_layers(captured, layers)
    if parts is not None:
        wanted = set(parts)
        names = [n for n in names if n.split(".")[0] in {UNET_PARTS[p] for p in wanted & set(UNET_PARTS)}]
    if downsamples is not None:
        factors = {int(f) for f in downsamples}
        names = [n for n in names if layer_downsample(captured, n) in factors]
    if not names:
        raise ValueError("no cross-attention layer matches this choice of U-Net parts and resolutions")
    head_list = None
    if heads is not None:
        most = min(captured.maps[n].shape[2] for n in names)
        head_list = sorted({h for h in heads if 0 <= h < most})
        if not head_list:
            raise ValueError(f"no head selected: the chosen layers have heads 0..{most - 1}")
    maps = aggregate(captured, result.view, steps=step_list, layers=names, heads=head_list)
    skipped = {w.lower() for w in skip_words}
    keep = [
        i
        for i, w in enumerate(result.view.words[: len(maps.words)])
        if (include_punctuation or not w.is_punctuation) and w.text.lower() not in skipped
    ]
    if not keep:
        raise ValueError("the prompt has no words to map")
    raw = maps.word_maps[keep]  # (n, H, W)
    shown = normalize(raw, normalization).numpy()
    image = np.asarray(result.image.convert("RGB"))
    overlays = tuple(blend(image, m, normalise=False) for m in shown)
    masks = None
    if threshold is not None:
        masks = tuple(
            np.where((m > threshold)[..., None], image, (image * 0.25).astype(np.uint8)).astype(np.uint8)
            for m in shown
        )
    return MapView(
        words=tuple(maps.words[i] for i in keep),
        maps=shown.astype(np.float32),
        overlays=overlays,
        masks=masks,
        layers=tuple(names),
        steps=tuple(step_list),
        heads=None if head_list is None else tuple(head_list),
    )


def layer_downsample(captured, name: str) -> int:
    """How many times smaller than the latent a recorded layer's feature map is (1, 2, 4, ...)."""
    return round(max(captured.latent_hw) / max(captured.layer_resolutions[name]))


@dataclass(frozen=True)
class LayerShapes:
    """The tensors of one cross-attention layer, with their actual sizes.

    Q = features · W_q: (N, inner) from the (N, query_dim) image features, N = h · w positions;
    K = text · W_k and V = text · W_v: (L, inner) from the (L, text_dim) token embeddings, L token slots;
    split into ``heads`` heads of ``head_dim``; A = softmax(Q Kᵀ / √head_dim): (heads, N, L).
    """

    name: str
    heads: int
    head_dim: int
    feature_hw: tuple[int, int]
    n_queries: int
    query_dim: int
    text_len: int
    text_dim: int
    inner_dim: int
    value_dim: int
    out_dim: int


def layer_shapes(pipe, name: str, height: int, width: int) -> LayerShapes:
    """Shapes of ``name``'s Q, K, V and attention for an image of ``height`` x ``width`` (read from the module)."""
    from explain.loading import describe_pipeline

    layers = {layer.name: layer for layer in describe_pipeline(pipe).cross_attention_layers}
    if name not in layers:
        raise ValueError(f"{name!r} is not a cross-attention layer of this U-Net")
    attn = pipe.unet.get_submodule(name)
    down = layers[name].downsample
    latent_h, latent_w = height // pipe.vae_scale_factor, width // pipe.vae_scale_factor
    h, w = -(-latent_h // down), -(-latent_w // down)  # stride-2 convolutions round up
    inner = attn.to_q.out_features
    return LayerShapes(
        name=name,
        heads=attn.heads,
        head_dim=inner // attn.heads,
        feature_hw=(h, w),
        n_queries=h * w,
        query_dim=attn.to_q.in_features,
        text_len=pipe.tokenizer.model_max_length,
        text_dim=attn.to_k.in_features,
        inner_dim=attn.to_k.out_features,
        value_dim=attn.to_v.out_features,
        out_dim=attn.to_out[0].out_features,
    )


# -- exports --------------------------------------------------------------------------------------------------------
def export_grid_png(result: GenerationResult, view: MapView, path: str | Path, title: str | None = None) -> Path:
    """The image and one overlay per word as one PNG (:func:`explain.figures.word_heatmap_grid`)."""
    from explain.figures import word_heatmap_grid

    image = np.asarray(result.image.convert("RGB"), dtype=np.float32) / np.iinfo(np.uint8).max
    fig = word_heatmap_grid([image], [list(view.maps)], list(view.words), title=title)
    fig.savefig(path, format="png")
    return Path(path)


def export_film_gif(result: GenerationResult, path: str | Path, preview=None) -> Path:
    """The denoising as an animated GIF.

    With ``preview`` (a :class:`explain.film.LatentPreview`): per step, the noisy sample x_t beside the predicted
    clean image x̂₀, large. Without: x̂₀ and each word's attention at that step (the CLI's ``film.gif``).
    """
    if preview is None:
        write_film_gif(Path(path), list(result.frames), result.captured, result.view)
        return Path(path)
    from PIL import Image, ImageDraw

    frames = []
    for frame in result.frames:
        scale = result.size[0] // frame.latents.shape[-2]
        noisy = preview(frame.latents)[0].repeat(scale, axis=0).repeat(scale, axis=1)  # (H, W, 3)
        tiles = [
            Image.fromarray(t).resize(_tile_size(t.shape), Image.Resampling.NEAREST) for t in (noisy, frame.image[0])
        ]
        canvas = Image.new("RGB", (tiles[0].width * 2 + FILM_GAP, tiles[0].height + FILM_CAPTION), "white")
        canvas.paste(tiles[0], (0, FILM_CAPTION))
        canvas.paste(tiles[1], (tiles[0].width + FILM_GAP, FILM_CAPTION))
        shown = "x0 (predicted clean image)" if frame.source == "x0" else "x_t (no x0 from this scheduler)"
        text = f"step {frame.step + 1}/{len(result.frames)}   x_t (noisy) | {shown}"
        ImageDraw.Draw(canvas).text((6, 6), text, fill="black")
        frames.append(canvas)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=FILM_FRAME_MS, loop=0)
    return Path(path)


def _tile_size(shape) -> tuple[int, int]:
    """(width, height) of a film tile: the longer side FILM_TILE pixels."""
    height, width = shape[:2]
    ratio = FILM_TILE / max(height, width)
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def export_maps_npz(result: GenerationResult, path: str | Path) -> Path:
    """Raw maps: ``words``, ``word_maps`` (n, H, W), ``tokens``, ``token_maps``, ``cube`` (steps, layers, tokens, h, w)."""
    from explain.heatmap import aggregate, per_step_cube

    maps = aggregate(result.captured, result.view)
    np.savez_compressed(
        path,
        words=np.array(maps.words, dtype=str),
        word_maps=maps.word_maps.numpy().astype(np.float32),
        tokens=np.array(maps.tokens, dtype=str),
        token_maps=maps.token_maps.numpy().astype(np.float32),
        cube=per_step_cube(result.captured).numpy(),
        layer_names=np.array(result.captured.layer_names, dtype=str),
        timesteps=np.array(result.captured.timesteps, dtype=np.float32),
    )
    return Path(path)


def export_settings_json(result: GenerationResult, path: str | Path, model: str | None = None) -> Path:
    """The request and what ran (scheduler class, size, steps done), as JSON."""
    doc = {
        **result.request.to_dict(),
        "model": model or "embedded",
        "scheduler_class": result.scheduler,
        "size": list(result.size),
        "steps_done": result.steps_done,
        "interrupted": result.interrupted,
        "seconds": round(result.seconds, 3),
        "words": [w.text for w in result.view.words],
    }
    Path(path).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(path)
