"""Views of a finished generation (:class:`explain.engine.session.GenerationResult`), no UI code.

:func:`word_maps` filters the recorded cross-attention (steps, U-Net parts, resolutions, heads), aggregates it the
DAAM way (Tang et al. 2023: mean over the chosen steps, layers and heads, upsampled to the image) and normalises it
per word; :func:`layer_shapes` gives one layer's Q/K/V shapes for the app's softmax(QKᵀ/√d)V diagram; the
downloads of a result are written by :mod:`explain.io.exports`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from explain.diffusion.geometry import Geometry
from explain.engine.session import GenerationResult
from explain.maps.aggregation import aggregate, normalize, select_layers
from explain.maps.aggregation import overlay as blend
from explain.maps.joint_views import joint_image_maps, joint_layer_names

__all__ = [
    "UNET_PARTS",
    "MapView",
    "word_maps",
    "layer_downsample",
    "LayerShapes",
    "layer_shapes",
]

# U-Net part (as shown) -> first component of a diffusers module path
UNET_PARTS: dict[str, str] = {"down": "down_blocks", "mid": "mid_block", "up": "up_blocks"}


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
    kind: str | None = None,
) -> MapView:
    """DAAM maps of a result's words (:func:`explain.maps.aggregation.aggregate`), normalised, overlaid, thresholded.

    On SD3 / Flux results (``result.joint``) the maps are read from the joint attention instead
    (:func:`_joint_word_maps`): ``kind`` picks one of :data:`explain.maps.joint_views.JOINT_MAP_KINDS` (None: the
    run's own reading), U-Net parts, resolutions and heads do not apply, and steps were averaged while recording.

    Args:
        result: A finished generation.
        steps: Step indices to average (None: all).
        layers: Layer names (None: all).
        parts: U-Net parts to keep, any of :data:`UNET_PARTS` (None: all).
        downsamples: Keep layers whose feature map is the latent shrunk by these factors (1, 2, 4, ...; None: all).
        heads: Head indices (None: all).
        normalization: One of :data:`explain.maps.aggregation.NORMALIZATIONS`.
        threshold: Also return masks of ``map > threshold`` (None: no masks).
        include_punctuation: Keep punctuation "words".
        skip_words: Words not to show (case-insensitive), e.g. articles.
        kind: SD3 / Flux only: which map (``"text"``, ``"joint"``, ``"concept"``).

    Raises:
        ValueError: empty or impossible selections (say which).
    """
    joint = getattr(result, "joint", None)
    if joint is not None:
        return _joint_word_maps(
            result,
            joint,
            steps,
            layers,
            parts,
            downsamples,
            heads,
            normalization,
            threshold,
            skip_words,
            kind,
            include_punctuation,
        )
    if kind is not None:
        raise ValueError(f"map kind {kind!r} is for SD3 / Flux runs; a U-Net's maps are its cross-attention")
    captured = result.captured
    all_steps = list(range(captured.n_steps))
    step_list = all_steps if steps is None else [s for s in steps if 0 <= s < captured.n_steps]
    if not step_list:
        raise ValueError(f"no recorded step selected: this run recorded steps 0..{captured.n_steps - 1}")
    names = _chosen_layers(captured, layers, parts, downsamples)
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
    words = tuple(maps.words[i] for i in keep)
    heads_kept = None if head_list is None else tuple(head_list)
    return _view(result.image, words, maps.word_maps[keep], normalization, threshold, names, step_list, heads_kept)


def _view(image, words, raw, normalization, threshold, layers, steps, heads) -> MapView:
    """The :class:`MapView` of raw (n, H, W) word maps: normalised, overlaid on ``image``, masked at ``threshold``."""
    shown = normalize(raw, normalization).numpy()
    image = np.asarray(image.convert("RGB"))
    overlays = tuple(blend(image, m, normalise=False) for m in shown)
    masks = None
    if threshold is not None:
        masks = tuple(
            np.where((m > threshold)[..., None], image, (image * 0.25).astype(np.uint8)).astype(np.uint8)
            for m in shown
        )
    return MapView(
        words=tuple(words),
        maps=shown.astype(np.float32),
        overlays=overlays,
        masks=masks,
        layers=tuple(layers),
        steps=tuple(steps),
        heads=heads,
    )


def _joint_word_maps(
    result, joint, steps, layers, parts, downsamples, heads, normalization, threshold, skip_words, kind, punctuation
) -> MapView:
    """:func:`word_maps` of an SD3 / Flux run (:func:`explain.maps.joint_views.joint_image_maps`)."""
    n_steps = len(joint.maps.timesteps)
    if steps is not None and sorted(set(steps)) != list(range(n_steps)):
        raise ValueError(
            "SD3 / Flux maps are averaged over the steps while they are recorded (keeping each step costs the steps "
            "times the memory): choose all steps"
        )
    if parts is not None or downsamples is not None:
        raise ValueError("U-Net parts and feature-map sizes do not apply: SD3 / Flux have one token grid, no U-Net")
    if heads is not None and not joint.maps.per_head:
        raise ValueError("this run kept the mean over heads (per_head=False): choose all heads")
    kind = kind or joint.normalization.value
    maps = joint_image_maps(joint, kind, layers)
    skipped = {w.lower() for w in skip_words}
    keep = [i for i, w in enumerate(maps.words) if (punctuation or w[:1].isalnum()) and w.lower() not in skipped]
    if not keep:
        raise ValueError("the prompt has no words to map")
    words = tuple(maps.words[i] for i in keep)
    names = joint_layer_names(joint, kind) if layers is None else tuple(layers)
    return _view(result.image, words, maps.word_maps[keep], normalization, threshold, names, range(n_steps), None)


def _chosen_layers(captured, layers, parts, downsamples) -> list[str]:
    """Recorded layers kept by the layer names, U-Net parts and downsampling factors asked for (None: all)."""
    names = select_layers(captured, layers)
    if parts is not None:
        wanted = set(parts)
        names = [n for n in names if n.split(".")[0] in {UNET_PARTS[p] for p in wanted & set(UNET_PARTS)}]
    if downsamples is not None:
        factors = {int(f) for f in downsamples}
        names = [n for n in names if layer_downsample(captured, n) in factors]
    if not names:
        raise ValueError("no cross-attention layer matches this choice of U-Net parts and resolutions")
    return names


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
    geometry = Geometry.from_pipeline(pipe)
    layer = geometry.layer(name)
    attn = pipe.unet.get_submodule(name)
    h, w = layer.feature_hw(geometry.latent_hw(height, width))
    inner = attn.to_q.out_features
    return LayerShapes(
        name=name,
        heads=layer.heads,
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
