"""Many recorded calls' attention probabilities in few tensor ops: calls of equal shape share one product.

The recorder keeps, per U-Net call of a cross-attention layer, the recorded branch's Q (B, heads, N, d) and
K (B, heads, T, d) and turns them into A = softmax(Q Kᵀ · scale) (Vaswani et al. 2017, eq. 1) after the run. Layers
at the same resolution of an SD U-Net have the same N, d, T and heads (e.g. the three 16x16 layers of the embedded
model), so their calls of all steps are stacked into one batched product, one softmax, one head mean: 3 rounds of
ops instead of 7 for the embedded model, 4 instead of 16 for SD 1.x. Each row of A is computed by the same kernels
on the same numbers as with one product per layer (``torch.bmm`` and ``softmax`` treat batch entries independently),
so the maps are the same bits; ``tests/test_capture_fast_path.py`` checks it against the per-layer computation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

__all__ = ["QK", "grouped_probs"]


class QK(Protocol):
    """One call's recorded Q (B, heads, N, d), K (B, heads, T, d) and softmax scale."""

    q: torch.Tensor
    k: torch.Tensor
    scale: float


def _shape_key(call: QK) -> tuple:
    """Calls with equal keys can share one batched product."""
    q, k = call.q, call.k
    return (tuple(q.shape), tuple(k.shape), call.scale, q.dtype, k.dtype, q.device, k.device)


def _probs_in_place(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """:func:`explain.capture.op.probs_from_qk` (same ops, same bits) reusing its inputs' and the scores' memory.

    ``q`` (..., N, d) and ``k`` (..., T, d) must be tensors of the caller's own (freshly stacked): K is scaled in
    place and the softmax overwrites the scores, so a run allocates the (..., N, T) probabilities once, not twice
    (tens of MB of fresh pages, each a page fault, for the embedded model). Returns (..., N, T) float32.
    """
    lead, n, t = q.shape[:-2], q.shape[-2], k.shape[-2]
    q3 = q.float().reshape(-1, n, q.shape[-1])  # (L, N, d)
    k3 = k.float().mul_(scale).reshape(-1, t, k.shape[-1])  # (L, T, d): as probs_from_qk, K scaled
    scores = torch.bmm(q3, k3.transpose(1, 2))  # (L, N, T)
    return torch.softmax(scores, dim=-1, out=scores).reshape(*lead, n, t)  # row by row: in place is exact


def grouped_probs(
    calls: dict[str, Sequence[QK]], flatten: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per layer ``flatten(softmax(Q Kᵀ · scale))`` of all its calls, layers of equal shapes computed together.

    Args:
        calls: Per layer its recorded calls, in order (all of one layer share shapes, as in one generation).
        flatten: (M, B, heads, N, T) probabilities -> what is kept per call, e.g. (M, B, tokens, N).

    Returns:
        Per layer (of ``calls`` with at least one call) ``flatten`` of its calls' probabilities, (M, ...) float32;
        layers of one group are views into one tensor.
    """
    groups: dict[tuple, list[str]] = {}
    for name, layer_calls in calls.items():
        if layer_calls:
            groups.setdefault(_shape_key(layer_calls[0]), []).append(name)
    out: dict[str, torch.Tensor] = {}
    for names in groups.values():
        members = [call for name in names for call in calls[name]]
        q = torch.stack([call.q for call in members])  # (ΣM, B, heads, N, d)
        k = torch.stack([call.k for call in members])  # (ΣM, B, heads, T, d)
        flat = flatten(_probs_in_place(q, k, members[0].scale))  # (ΣM, ...)
        at = 0
        for name in names:
            out[name] = flat[at : at + len(calls[name])]  # (M, ...)
            at += len(calls[name])
    return out
