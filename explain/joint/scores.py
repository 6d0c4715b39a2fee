"""The image-query x text-key block of a joint softmax, in both normalisations, with bounded work memory.

For image query i and text key j of one head, with s_ij = q_i · k_j · d^-1/2 over the whole joint sequence
(L = N image + T text keys; Esser et al. 2024, the MMDiT joint attention):

    share_ij  = exp(s_ij) / Σ_{l ∈ all L keys} exp(s_il)          the model's own attention weight (joint softmax)
    mass_i    = Σ_{j ∈ text} share_ij                              how much of query i's attention goes to text
    text_ij   = share_ij / mass_i = softmax_{j ∈ text}(s_ij)       renormalised over the text tokens (sums to 1)

``share`` is what the model computes (rows sum to 1 over image *and* text keys, so a word's share is small where the
image attends mostly to itself); ``text`` is the cross-attention-like reading (rows sum to 1 over text tokens, as
UNet cross-attention maps do, DAAM-style). Both come from one pass over Q Kᵀ, chunked over image queries so the
float32 scores never exceed ``work_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TextScores", "text_scores"]


@dataclass(frozen=True, eq=False)  # holds tensors
class TextScores:
    """Image-query x text-key attention of a stack of calls.

    Attributes:
        share: (..., heads, N, K) joint-softmax weights of the kept text columns.
        text: (..., heads, N, K) the same renormalised over all T text tokens.
        mass: (..., heads, N) Σ over all T text tokens of the joint-softmax weights.
    """

    share: torch.Tensor
    text: torch.Tensor
    mass: torch.Tensor


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
    q = query
    k = (key.float() * scale).transpose(-1, -2)  # (..., heads, d, L): K is the small side to scale
    n, length = q.shape[-2], key.shape[-2]
    per_query = 4 * length * q[..., 0, 0].numel()  # float32 bytes of one image query's scores over all stacks
    chunk = max(1, min(n, work_bytes // max(per_query, 1)))
    shares, texts, masses = [], [], []
    for start in range(0, n, chunk):
        scores = q[..., start : start + chunk, :].float() @ k  # (..., heads, n_c, L)
        share_all = scores.softmax(dim=-1)[..., text]  # (..., heads, n_c, T): the joint softmax's text block
        renorm = scores[..., text].softmax(dim=-1)  # softmax over the text tokens (stable where the mass is tiny)
        masses.append(share_all.sum(dim=-1))  # (..., heads, n_c)
        if columns is not None:
            share_all, renorm = share_all.index_select(-1, columns), renorm.index_select(-1, columns)
        shares.append(share_all)
        texts.append(renorm)
    if len(shares) == 1:
        return TextScores(shares[0], texts[0], masses[0])
    return TextScores(torch.cat(shares, dim=-2), torch.cat(texts, dim=-2), torch.cat(masses, dim=-1))
