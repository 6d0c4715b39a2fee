"""The kinds of word map an SD3 / SD3.5 or Flux run records, at image size (no UI code).

MMDiT models (Esser et al. 2024) have no cross-attention: image and text tokens attend jointly, so a word's map can
be read three ways (:data:`JOINT_MAP_KINDS`):

- ``"text"``: each image token's joint-softmax weights on the word's text columns, renormalised over all text
  tokens: softmax(QKᵀ/√d) restricted to the text keys and rescaled to sum to 1, the reading that compares with a
  U-Net's cross-attention maps (:class:`~explain.joint.attention_maps.Normalization` TEXT);
- ``"joint"``: the same weights as the model computes them, image keys competing (Normalization JOINT): a word's
  share of the whole joint sequence, small wherever the image attends to itself;
- ``"concept"``: ConceptAttention (Helbling et al., ICML 2025, Eq. 5-7): concept tokens run through the blocks'
  own projections without changing the image, and the map is the softmax over the concepts of the output-space
  dot products o_x · o_c (:mod:`explain.joint.concepts`), which the paper shows segment far better than raw weights.

Each is averaged over the chosen layers (and the steps and heads, as recorded) and upsampled bicubically from the
image-token grid to the image, clamped at 0, as DAAM does for U-Nets (:func:`explain.maps.aggregation.upsample`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from explain.joint.attention_maps import Normalization
from explain.joint.capture import LayerKind
from explain.joint.recording import JointRecorded
from explain.maps.aggregation import TokenMaps, upsample

__all__ = ["JOINT_MAP_KINDS", "JointLayerShapes", "joint_image_maps", "joint_layer_names", "joint_layer_shapes"]

JOINT_MAP_KINDS: dict[str, str] = {  # kind -> what it is, in a line
    "text": "joint attention, renormalised over the text tokens (compares with cross-attention)",
    "joint": "joint attention as the model computes it: softmax over all image and text tokens",
    "concept": "ConceptAttention (Helbling et al. 2025): output-space similarity, softmax over the concepts",
}


def joint_layer_names(recorded: JointRecorded, kind: str = "text") -> tuple[str, ...]:
    """The layers a map of ``kind`` can average: every joint layer for token maps; for ConceptAttention the joint
    blocks it was recorded in."""
    if kind == "concept":
        return () if recorded.concepts is None else recorded.concepts.layer_names
    return recorded.maps.layer_names


def joint_image_maps(
    recorded: JointRecorded, kind: str = "text", layers: Iterable[str] | None = None, image_index: int = 0
) -> TokenMaps:
    """Word (and token) maps of ``kind`` (:data:`JOINT_MAP_KINDS`) at image size, mean over ``layers`` (None: all).

    For ``"concept"`` the words and tokens are the recorded concepts; otherwise the prompt's words and the kept text
    columns (a word's map sums its columns, CLIP's and T5's on SD3).

    Raises:
        ValueError: an unknown kind, a run without concept maps, or layers the kind did not record.
    """
    if kind not in JOINT_MAP_KINDS:
        raise ValueError(f"unknown map kind {kind!r}; known: {', '.join(JOINT_MAP_KINDS)}")
    names = _chosen(recorded, kind, layers)
    if kind == "concept":
        concepts = recorded.concepts
        maps = upsample(concepts.maps(names)[image_index].float(), concepts.image_hw)  # (C, H, W)
        return TokenMaps(token_maps=maps, tokens=concepts.concepts, words=concepts.concepts, word_maps=maps)
    normalization = Normalization(kind)
    size = recorded.maps.image_hw
    return TokenMaps(
        token_maps=upsample(recorded.token_maps(normalization, image_index, names).float(), size),  # (K, H, W)
        tokens=tuple(recorded.layout.tokens[c].token for c in recorded.maps.columns),
        words=recorded.words,
        word_maps=upsample(recorded.word_maps(normalization, image_index, names).float(), size),  # (n_words, H, W)
    )


def _chosen(recorded: JointRecorded, kind: str, layers: Iterable[str] | None) -> tuple[str, ...]:
    available = joint_layer_names(recorded, kind)
    if not available:
        raise ValueError("this run recorded no ConceptAttention maps (no concept words were asked for)")
    if layers is None:
        return available
    names = tuple(layers)
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise ValueError(f"no {kind} maps recorded for layers {unknown or names}; recorded: {', '.join(available)}")
    return names


@dataclass(frozen=True)
class JointLayerShapes:
    """The tensors of one joint-attention layer (MMDiT, Esser et al. 2024), with their actual sizes.

    Image tokens (N = h · w, ``image_dim`` wide) and text tokens (T, ``text_dim`` wide) are projected by their own
    weights (dual-stream blocks: W_q, W_k, W_v for the image, W'_q, W'_k, W'_v for the text; single-stream blocks:
    one set for the concatenated sequence), concatenated to N + T rows of ``inner_dim``, split into ``heads`` heads
    of ``head_dim``; A = softmax(Q Kᵀ / √head_dim) is (heads, N + T, N + T). The word maps read its image-row x
    text-column block (N, T).
    """

    name: str
    kind: str  # LayerKind value: "joint" (dual-stream) or "single" (Flux single-stream)
    heads: int
    head_dim: int
    grid_hw: tuple[int, int]
    n_image: int
    n_text: int
    image_dim: int
    text_dim: int
    inner_dim: int


def joint_layer_shapes(pipe, name: str, recorded: JointRecorded) -> JointLayerShapes:
    """Shapes of joint layer ``name`` (a module path in ``pipe.transformer``) in the run ``recorded``."""
    if name not in recorded.maps.kinds:
        raise ValueError(
            f"{name!r} is not a joint-attention layer of this run; layers: {', '.join(recorded.maps.kinds)}"
        )
    attn = pipe.transformer.get_submodule(name)
    kind = recorded.maps.kinds[name]
    h, w = recorded.maps.grid_hw
    inner = attn.to_q.out_features
    text_proj = getattr(attn, "add_q_proj", None)
    dual = kind is LayerKind.JOINT and text_proj is not None
    return JointLayerShapes(
        name=name,
        kind=kind.value,
        heads=attn.heads,
        head_dim=inner // attn.heads,
        grid_hw=(h, w),
        n_image=h * w,
        n_text=recorded.maps.n_text,
        image_dim=attn.to_q.in_features,
        text_dim=text_proj.in_features if dual else attn.to_q.in_features,
        inner_dim=inner,
    )
