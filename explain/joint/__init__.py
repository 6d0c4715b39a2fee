"""Joint-attention (MMDiT) maps for SD3 / SD3.5 and Flux: token maps and ConceptAttention maps.

- :mod:`.processors`: the installed joint-attention processors op for op (bit-identical outputs), keeping Q, K, V.
- :mod:`.capture`: :class:`JointCapture`, the scoped processor swap, calls, steps and guidance rows.
- :mod:`.scores`: the image x text block of the joint softmax, both normalisations, bounded work memory.
- :mod:`.attention_maps`: :class:`JointAttentionRecorder` -> :class:`JointAttentionMaps` (per layer, head, step).
- :mod:`.concepts`: :class:`ConceptAttentionRecorder` -> :class:`ConceptMaps` (Helbling et al., ICML 2025).
- :mod:`.tokens`: :func:`text_layout`, which text column holds which word (CLIP and T5).
"""

from explain.joint.attention_maps import JointAttentionMaps, JointAttentionRecorder, Normalization, held_bytes
from explain.joint.capture import Family, JointCall, JointCapture, LayerKind
from explain.joint.concepts import ConceptAttentionRecorder, ConceptMaps, concept_embeddings, concept_held_bytes
from explain.joint.tokens import JointTextLayout, JointWord, text_layout

__all__ = [
    "JointAttentionRecorder",
    "JointAttentionMaps",
    "Normalization",
    "ConceptAttentionRecorder",
    "ConceptMaps",
    "concept_embeddings",
    "held_bytes",
    "concept_held_bytes",
    "JointCapture",
    "JointCall",
    "LayerKind",
    "Family",
    "text_layout",
    "JointTextLayout",
    "JointWord",
]
