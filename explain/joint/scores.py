"""The image-query x text-key block of a joint softmax, in both normalisations, with bounded work memory.

For image query i and text key j of one head, with s_ij = q_i · k_j · d^-1/2 over the whole joint sequence
(L = N image + T text keys; Esser et al. 2024, the MMDiT joint attention):

    share_ij  = exp(s_ij) / Σ_{l ∈ all L keys} exp(s_il)          the model's own attention weight (joint softmax)
    mass_i    = Σ_{j ∈ text} share_ij                              how much of query i's attention goes to text
    text_ij   = share_ij / mass_i = softmax_{j ∈ text}(s_ij)       renormalised over the text tokens (sums to 1)

``share`` is what the model computes (rows sum to 1 over image *and* text keys, so a word's share is small where the
image attends mostly to itself); ``text`` is the cross-attention-like reading (rows sum to 1 over text tokens, as
UNet cross-attention maps do, DAAM-style). Both come from one pass over Q Kᵀ, chunked over image queries so the
float32 scores never exceed ``work_bytes``. The joint normaliser Σ_{l ∈ all L} exp(s_il) (the row's logsumexp,
which the model's fused attention does not hand out) is the one cost over all L keys: one float32 softmax per row.
The rest touches the text columns only: m_i is a sum over the T text shares, and ``text`` is share / m_i on the K
kept columns (equal to the softmax over the text tokens up to float32 rounding), except on rows whose m_i is below
:data:`MIN_MASS`, where the shares underflow and ``text`` is that softmax itself. The leading dims (calls, batch, heads) are flattened into one batched
matrix product (``torch.bmm``), which the CPU runs about twice as fast as a broadcasting ``@`` over 5 dims.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TextScores", "text_scores", "MIN_MASS", "CPU_CHUNK_BYTES"]

# Below this text mass a float32 share of 1e-7 · mass is subnormal: ``text`` is then taken from a softmax over the
# text scores instead of share / mass (the float32 normal range ends at 2^-126 ≈ 1.2e-38).
MIN_MASS = torch.finfo(torch.float32).tiny * 2**24
# Float32 scores per chunk on the CPU, whatever ``work_bytes`` allows: a chunk that stays in cache (the 28-step tiny
# SD3 stack, 84 calls: 7.4 ms in one 6.7 MB chunk, 4.4 ms in 1 MB ones). Accelerators take ``work_bytes`` chunks.
CPU_CHUNK_BYTES = 2**20


@dataclass(frozen=True, eq=False)  # holds tensors
class TextScores:
    """Image-query x text-key attention of a stack of calls (views into one packed tensor).

    Attributes:
        share: (..., heads, N, K) joint-softmax weights of the kept text columns.
        text: (..., heads, N, K) the same renormalised over all T text tokens.
        mass: (..., heads, N) Σ over all T text tokens of the joint-softmax weights.
        packed: (..., heads, N, 2K + 1) ``[share | text | mass]``, the tensor the three are views of.
    """

    share: torch.Tensor
    text: torch.Tensor
    mass: torch.Tensor
    packed: torch.Tensor


def text_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    text: slice,
    columns: torch.Tensor | None,
    scale: float,
    work_bytes: int,
) -> TextScores:
    """Both normalisations of the image x text block, float32.

    Args:
        query: (..., heads, N, d) queries of the image tokens.
        key: (..., heads, L, d) keys of the whole joint sequence.
        text: Text positions in L.
        columns: Text columns to keep (indices into ``text``), or None for all T.
        scale: Softmax scale (d^-1/2).
        work_bytes: Upper bound for the float32 scores of one chunk of image queries.

    Returns:
        :class:`TextScores` with K = len(columns) (or T) kept columns.
    """
    lead, n, d, length = query.shape[:-2], query.shape[-2], query.shape[-1], key.shape[-2]
    q = query.float().reshape(-1, n, d)  # (X, N, d), X = the leading dims flattened
    k = (key.float() * scale).reshape(-1, length, d).transpose(1, 2)  # (X, d, L): K is the small side to scale
    kept = None if columns is None else columns + text.start  # kept columns' positions in L
    per_query = 4 * length * q.shape[0]  # float32 bytes of one image query's scores over all stacks
    budget = min(work_bytes, CPU_CHUNK_BYTES) if q.device.type == "cpu" else work_bytes
    chunk = max(1, min(n, budget // max(per_query, 1)))
    parts = []
    for start in range(0, n, chunk):
        scores = torch.bmm(q[:, start : start + chunk], k)  # (X, n_c, L) = s, scaled
        probs = scores.softmax(dim=-1)  # the joint softmax (its normaliser needs all L keys)
        mass = probs[..., text].sum(dim=-1, keepdim=True)  # (X, n_c, 1)
        share = probs[..., text] if kept is None else probs.index_select(-1, kept)  # (X, n_c, K)
        renorm = share / mass  # text_ij = share_ij / mass_i, on the K kept columns only
        low = mass.squeeze(-1) < MIN_MASS  # (X, n_c): shares there are subnormal or zero in float32
        if low.any():  # renormalise those rows from the scores themselves: softmax over the text tokens
            exact = scores[low][:, text].softmax(dim=-1)  # (R, T)
            renorm[low] = exact if columns is None else exact.index_select(-1, columns)
        parts.append(torch.cat([share, renorm, mass], dim=-1))  # (X, n_c, 2K + 1)
    packed = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)).view(*lead, n, -1)  # (..., N, 2K + 1)
    n_kept = (packed.shape[-1] - 1) // 2
    return TextScores(packed[..., :n_kept], packed[..., n_kept:-1], packed[..., -1], packed)
