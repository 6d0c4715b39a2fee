"""DAAM: turn captured cross-attention into one heat map per token and per word.

Tang et al. 2023, "What the DAAM: Interpreting Stable Diffusion Using Cross Attention", Sec. 3: every layer's
attention map for token ``j`` is upsampled bicubically to the latent size, clamped at 0 (bicubic overshoots), and
aggregated over heads, layers and time steps:

    D_j(x, y) = mean over (t, layer, head) of  clamp₀(bicubic↑(A_{t,layer,head}[:, j]))(x, y)

DAAM sums where we average (same maps up to a constant; averages keep values on the attention-probability scale).
A word split into several BPE sub-tokens gets the *sum* of its sub-tokens' maps: the probability mass its tokens
receive together. The latent-size map is finally upsampled (bicubic, clamped) to the image size.

Normalisations (:func:`normalize`) and the binary mask of DAAM Sec. 4.1 (:func:`threshold_mask`, τ = 0.4 on the
min-max-normalised map) are separate steps, so the stored aggregate stays the raw average attention.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps

from explain.capture.recorder import CapturedAttention
from explain.clip.tokens import TokenView

__all__ = [
    "TokenMaps",
    "NORMALIZATIONS",
    "aggregate",
    "select_layers",
    "normalize",
    "threshold_mask",
    "overlay",
    "per_step_cube",
    "upsample",
]

NORMALIZATIONS = ("minmax", "softmax", "absolute")


@dataclass(frozen=True, eq=False)  # holds tensors: compare fields explicitly
class TokenMaps:
    """Aggregated heat maps of one image.

    Attributes:
        token_maps: (n_tokens, H, W) float32, one per captured token slot (slot 0 = BOS).
        tokens: Token strings of the captured slots.
        words: Word texts (empty without a :class:`~explain.clip.tokens.TokenView`).
        word_maps: (n_words, H, W) float32, the sum of each word's sub-token maps.
    """

    token_maps: torch.Tensor
    tokens: tuple[str, ...]
    words: tuple[str, ...]
    word_maps: torch.Tensor

    def word_map(self, word: str) -> torch.Tensor:
        """(H, W) map of the first word equal to ``word``."""
        return self.word_maps[self.words.index(word)]

    def span_map(self, token_indices: Iterable[int]) -> torch.Tensor:
        """(H, W) map of a group of token slots (a word's or phrase's sub-tokens): the sum of their maps.

        Slots past the captured ones are left out; no slot left gives a zero map.
        """
        return _span_sum(self.token_maps, token_indices)

    def word_overlays(self, image) -> tuple[np.ndarray, ...]:
        """Each word's map blended over ``image`` (:func:`overlay`, min-max normalised): (H, W, 3) uint8 per word."""
        return tuple(overlay(image, heat.numpy()) for heat in self.word_maps)


def _span_sum(token_maps: torch.Tensor, token_indices: Iterable[int]) -> torch.Tensor:
    """(H, W) sum of the (n_tokens, H, W) ``token_maps`` of the slots ``token_indices`` that were captured."""
    return token_maps[[j for j in token_indices if j < token_maps.shape[0]]].sum(dim=0)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of (..., h, w) to ``size``, clamped at 0 (DAAM)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.clamp(min=0)
    flat = maps.reshape(-1, 1, *maps.shape[-2:])  # (n, 1, h, w)
    out = F.interpolate(flat, size=size, mode="bicubic", align_corners=False).clamp_(min=0)
    return out.reshape(*maps.shape[:-2], *size)


def select_layers(
    captured: CapturedAttention,
    layers: Iterable[str] | None = None,
    resolutions: Iterable[int | tuple[int, int]] | None = None,
) -> list[str]:
    """Layer names kept by a name subset and/or a resolution subset.

    Args:
        captured: Recorded attention.
        layers: Layer names to keep (``None``: all).
        resolutions: Native feature-map sizes to keep, as (h, w) or as an int matching ``max(h, w)``.
    """
    names = list(captured.maps)
    if layers is not None:
        wanted = set(layers)
        unknown = wanted - set(names)
        if unknown:
            raise KeyError(f"unknown layers: {sorted(unknown)}")
        names = [n for n in names if n in wanted]
    if resolutions is not None:
        res = set(resolutions)
        names = [n for n in names if (hw := captured.layer_resolutions[n]) in res or max(hw) in res]
    if not names:
        raise ValueError("no layer left after selecting layers/resolutions")
    return names


def _layers_mean(
    captured: CapturedAttention,
    names: list[str],
    steps: list[int] | slice,
    heads: list[int] | None,
    image_index: int,
    size: tuple[int, int],
) -> torch.Tensor:
    """Each layer's maps upsampled per (step, head) and averaged: (layers, tokens, *size) float32, ``names`` order.

    Layers of equal map shape (one U-Net resolution) go through each op together: a few large ops instead of many
    small ones. Every map is still upsampled and clamped on its own and each layer's mean runs over the same numbers
    in the same order, so the result is that of one layer at a time, bit for bit (tests/test_capture_fast_path.py).
    """
    if heads is not None and not captured.per_head:
        raise ValueError("heads were averaged during capture; record with per_head=True to select heads")
    groups: dict[tuple, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault((tuple(captured.maps[name].shape[2:]), captured.maps[name].dtype), []).append(i)
    means: list[torch.Tensor | None] = [None] * len(names)
    for members in groups.values():
        maps = torch.stack(
            [captured.maps[names[i]][steps, image_index] for i in members]
        ).float()  # (G, S, [heads,] T, h, w)
        if captured.per_head:
            if heads is not None:
                maps = maps[:, :, heads]
            maps = maps.flatten(1, 2)  # (G, S*heads, T, h, w)
        group_means = upsample(maps, size).mean(dim=1)  # (G, T, *size)
        for g, i in enumerate(members):
            means[i] = group_means[g]
    return torch.stack(means)  # (layers, T, *size)


def _span_sums(token_maps: torch.Tensor, spans: list[list[int]]) -> torch.Tensor:
    """(n_spans, H, W): per span the sum of its (n_tokens, H, W) ``token_maps``; spans of one length in one op.

    ``token_maps[idx].sum(dim=1)`` over (n, length, H, W) adds each span's maps in the order ``sum(dim=0)`` does
    for one span, so the sums are the same bits as one :func:`_span_sum` per span.
    """
    out = token_maps.new_empty((len(spans), *token_maps.shape[1:]))  # (n_spans, H, W)
    by_length: dict[int, list[int]] = {}
    for i, span in enumerate(spans):
        by_length.setdefault(len(span), []).append(i)
    for members in by_length.values():
        index = torch.tensor([spans[i] for i in members], dtype=torch.long)  # (n, length)
        out[members] = token_maps[index].sum(dim=1)  # (n, H, W)
    return out


def aggregate(
    captured: CapturedAttention,
    view: TokenView | None = None,
    *,
    steps: Iterable[int] | slice | None = None,
    layers: Iterable[str] | None = None,
    resolutions: Iterable[int | tuple[int, int]] | None = None,
    heads: Iterable[int] | None = None,
    image_index: int = 0,
    image_size: tuple[int, int] | None = None,
) -> TokenMaps:
    """DAAM aggregation over steps, layers and heads (module docstring), then per-word sums.

    Args:
        captured: Output of :meth:`explain.capture.recorder.AttentionRecorder.result`.
        view: Tokenisation of the prompt of ``image_index`` (gives token strings and word spans).
        steps: Step indices (or a slice) to average; ``None``: all.
        layers: Layer names; ``None``: all.
        resolutions: Keep layers of these native sizes (see :func:`select_layers`).
        heads: Head indices (needs ``per_head`` capture); ``None``: all.
        image_index: Which image of the batch.
        image_size: (H, W) of the output maps; default ``captured.image_hw``.

    Returns:
        Token and word maps at image size, float32, not normalised.
    """
    steps = slice(None) if steps is None else (steps if isinstance(steps, slice) else list(steps))
    heads = None if heads is None else list(heads)
    names = select_layers(captured, layers, resolutions)
    latent = captured.latent_hw
    per_layer = _layers_mean(captured, names, steps, heads, image_index, latent)  # (layers, T, *latent)
    token_maps = upsample(per_layer.mean(dim=0), image_size or captured.image_hw)  # (T, H, W)
    n_tokens = token_maps.shape[0]
    if view is None:
        return TokenMaps(token_maps, tuple(str(i) for i in range(n_tokens)), (), token_maps[:0])
    words = [w for w in view.words if max(w.token_indices) < n_tokens]
    word_maps = _span_sums(token_maps, [list(w.token_indices) for w in words]) if words else token_maps[:0]
    return TokenMaps(token_maps, tuple(view.tokens[:n_tokens]), tuple(w.text for w in words), word_maps)


def normalize(maps: torch.Tensor, mode: str = "minmax") -> torch.Tensor:
    """Normalise (n, H, W) heat maps to [0, 1].

    Modes:
        ``"minmax"``: each map on its own, (m - min) / (max - min) (a constant map becomes 0).
        ``"softmax"``: at each pixel, the share of each map in the sum over maps, m_i / Σ_j m_j. For attention
            probabilities this is the softmax re-taken over the chosen tokens only (softmax restricted to a subset
            of keys = p_i / Σ_subset p_j), so it answers "which of these words wins here".
        ``"absolute"``: all maps divided by their common maximum: keeps how much stronger one word is.
    """
    maps = maps.float()
    if mode == "minmax":
        low = maps.amin(dim=(-2, -1), keepdim=True)
        span = maps.amax(dim=(-2, -1), keepdim=True) - low
        return torch.where(span > 0, (maps - low) / span.clamp(min=torch.finfo(maps.dtype).tiny), 0.0)
    if mode == "softmax":
        total = maps.sum(dim=0, keepdim=True)
        return torch.where(total > 0, maps / total.clamp(min=torch.finfo(maps.dtype).tiny), 1.0 / maps.shape[0])
    if mode == "absolute":
        peak = maps.max()
        return maps / peak if peak > 0 else torch.zeros_like(maps)
    raise ValueError(f"unknown normalisation {mode!r}; choose from {NORMALIZATIONS}")


def threshold_mask(heat: torch.Tensor, tau: float = 0.4) -> torch.Tensor:
    """DAAM's binary segmentation (Sec. 4.1): min-max normalise, keep pixels above ``tau``. Returns bool (H, W)."""
    return normalize(heat[None], "minmax")[0] > tau


def overlay(image, heat, cmap: str = "jet", alpha: float = 0.5, normalise: bool = True) -> np.ndarray:
    """Blend a heat map over an image: ``(1 - alpha) * image + alpha * colormap(heat)``.

    Args:
        image: PIL image or uint8 array (H, W, 3).
        heat: (h, w) map; resized bilinearly to the image when sizes differ.
        cmap: A matplotlib colormap name.
        alpha: Weight of the heat colours.
        normalise: Min-max normalise ``heat`` first; otherwise it must already lie in [0, 1].

    Returns:
        uint8 array (H, W, 3).
    """

    rgb = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)[..., :3]
    heat = torch.as_tensor(np.asarray(heat, dtype=np.float32))
    if tuple(heat.shape) != rgb.shape[:2]:
        heat = F.interpolate(heat[None, None], size=rgb.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    if normalise:
        heat = normalize(heat[None], "minmax")[0]
    colours = colormaps[cmap](heat.clamp(0, 1).numpy())[..., :3] * 255.0  # (H, W, 3)
    return np.clip((1.0 - alpha) * rgb + alpha * colours, 0, 255).round().astype(np.uint8)


def per_step_cube(
    captured: CapturedAttention, latent_hw: tuple[int, int] | None = None, image_index: int = 0
) -> torch.Tensor:
    """Every layer's map at every step on one grid: (steps, layers, tokens, h, w) float16.

    Layers follow ``captured.layer_names``; heads are averaged; maps are resized bicubically (clamped at 0) to
    ``latent_hw`` (default ``captured.latent_hw``).
    """
    size = tuple(latent_hw or captured.latent_hw)
    cube = []
    for maps in captured.maps.values():
        m = upsample(maps[:, image_index].float(), size)  # (S, [heads,] T, *size)
        cube.append((m.mean(dim=1) if captured.per_head else m).half())  # (S, T, *size)
    return torch.stack(cube, dim=1)
