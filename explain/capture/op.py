"""The one explicit cross-attention op: diffusers' ``AttnProcessor2_0`` written out in three steps.

A cross-attention layer computes (Vaswani et al. 2017, eq. 1; Rombach et al. 2022, eq. 3)

    out = W_o · softmax(Q Kᵀ · d^-1/2) V,   Q = W_q h  (B, heads, N, d),  K = W_k c,  V = W_v c  (B, heads, T, d)

:func:`project` is everything ``AttnProcessor2_0`` does before the product (spatial norm, flattening, group norm,
cross-norm, the Q/K/V projections, the head split, Q/K norms); :func:`finish` everything after it (head merge,
output projection, dropout, un-flattening, residual, rescale). Between them either the fused
``F.scaled_dot_product_attention`` (:func:`attend`: the processor itself, same ops, so the same bits; tested
against the installed diffusers) or the explicit probabilities :func:`explicit_probs` (float32), which the recorder
stores and the steering edits change before ``A @ V`` (:func:`explicit_output`).

Capture (:mod:`explain.capture.recorder`) and steering (:mod:`explain.steering.edits`) both use this module; no
other code in the project writes attention out. The diffusers release it mirrors is named once,
:data:`MIRRORS_DIFFUSERS`; :func:`mirrors` says whether a layer's processor is the one mirrored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

__all__ = [
    "MIRRORS_DIFFUSERS",
    "MIRRORED_PROCESSOR",
    "Projected",
    "mirrors",
    "project",
    "layer_mask",
    "finish",
    "attend",
    "probs_from_qk",
    "explicit_probs",
    "explicit_output",
]

MIRRORS_DIFFUSERS = "0.42"  # the diffusers release whose AttnProcessor2_0.__call__ this module follows op for op
MIRRORED_PROCESSOR = AttnProcessor2_0


@dataclass(frozen=True, eq=False)  # holds tensors
class Projected:
    """A layer call's tensors just before the attention product.

    Attributes:
        query: (B, heads, N, d).
        key: (B, heads, T, d).
        value: (B, heads, T, d).
        residual: The layer input as given (for the residual connection).
        spatial: (C, h, w) of a 4-D input, else None.
    """

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    residual: torch.Tensor
    spatial: tuple[int, int, int] | None

    @property
    def batch(self) -> int:
        return self.query.shape[0]


def mirrors(processor, kwargs: dict | None = None) -> bool:
    """Whether :func:`attend` reproduces ``processor`` exactly for a call with these extra keyword arguments.

    True for diffusers' default ``AttnProcessor2_0`` (exactly that class, not a subclass) without extra arguments;
    anything else (IP-Adapter, xformers, custom processors) must run itself.
    """
    return type(processor) is MIRRORED_PROCESSOR and not kwargs


def project(attn, hidden_states, encoder_hidden_states=None, temb=None) -> Projected:
    """``AttnProcessor2_0`` up to the product: norms, flattening, Q/K/V projections and head split, in its order."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    spatial = None
    if hidden_states.ndim == 4:  # (B, C, h, w) -> (B, h*w, C)
        b, c, h, w = hidden_states.shape
        spatial = (c, h, w)
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states  # (B, T, C')
    batch = context.shape[0]
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)  # (B, N, inner)
    if encoder_hidden_states is not None and attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    key = attn.to_k(context)  # (B, T, inner)
    value = attn.to_v(context)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, N, d)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, T, d)
    value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, T, d)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return Projected(query, key, value, residual, spatial)


def layer_mask(attn, attention_mask, projected: Projected) -> torch.Tensor | None:
    """The layer's ``attention_mask`` argument as ``AttnProcessor2_0`` hands it to the product: (B, heads, ·, T)."""
    if attention_mask is None:
        return None
    b, t = projected.batch, projected.key.shape[-2]
    mask = attn.prepare_attention_mask(attention_mask, t, b)
    return mask.view(b, attn.heads, -1, mask.shape[-1])


def finish(attn, heads_out: torch.Tensor, projected: Projected, rows: list[int] | None = None) -> torch.Tensor:
    """``AttnProcessor2_0`` after the product: merge heads, ``to_out``, un-flatten, residual, rescale.

    Args:
        attn: The diffusers ``Attention`` module.
        heads_out: (R, heads, N, d), the attention product of ``rows`` (all rows when None).
        projected: The call's :class:`Projected` (its residual and spatial shape).
        rows: Rows of the call's batch that ``heads_out`` holds.
    """
    residual = projected.residual if rows is None else projected.residual[rows]
    r, heads, _, head_dim = heads_out.shape
    out = heads_out.transpose(1, 2).reshape(r, -1, heads * head_dim).to(projected.query.dtype)  # (R, N, inner)
    out = attn.to_out[1](attn.to_out[0](out))  # linear projection, dropout
    if projected.spatial is not None:
        out = out.transpose(-1, -2).reshape(r, *projected.spatial)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def attend(
    attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None
) -> tuple[torch.Tensor, Projected]:
    """``AttnProcessor2_0.__call__`` op for op (so bitwise its output), also handing back Q, K and V.

    Returns:
        (the layer output, the call's :class:`Projected` tensors).
    """
    projected = project(attn, hidden_states, encoder_hidden_states, temb)
    mask = layer_mask(attn, attention_mask, projected)
    heads_out = F.scaled_dot_product_attention(
        projected.query, projected.key, projected.value, attn_mask=mask, dropout_p=0.0, is_causal=False
    )  # (B, heads, N, d); scale d^-1/2 as the processor uses
    return finish(attn, heads_out, projected), projected


def probs_from_qk(q: torch.Tensor, k: torch.Tensor, scale: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q Kᵀ · scale (+ mask)) in float32: (..., N, d) x (..., T, d) -> (..., N, T).

    ``q`` and ``k`` share their leading dims; they are flattened into one batched matrix product (``torch.bmm``),
    about twice as fast on the CPU as a broadcasting ``@`` over 4-5 dims.
    """
    lead, n, t = q.shape[:-2], q.shape[-2], k.shape[-2]
    q3 = q.float().reshape(-1, n, q.shape[-1])  # (L, N, d)
    k3 = (k.float() * scale).reshape(-1, t, k.shape[-1])  # (L, T, d): K is the small side to scale
    scores = torch.bmm(q3, k3.transpose(1, 2)).reshape(*lead, n, t)  # (..., N, T)
    if mask is not None:
        scores = scores + mask.float()
    return scores.softmax(dim=-1)


def explicit_probs(attn, projected: Projected, attention_mask=None) -> torch.Tensor:
    """A = softmax(Q Kᵀ · ``attn.scale``) in float32, (B, heads, N, T), over all T keys as the layer itself does."""
    return probs_from_qk(projected.query, projected.key, attn.scale, layer_mask(attn, attention_mask, projected))


def explicit_output(attn, probs: torch.Tensor, projected: Projected, rows: list[int]) -> torch.Tensor:
    """The layer output of ``rows`` from (possibly edited) probabilities (B, heads, N, T): :func:`finish` of A V."""
    v = projected.value[rows]  # (R, heads, T, d)
    heads_out = (probs[rows] @ v.float()).to(v.dtype)  # (R, heads, N, d)
    return finish(attn, heads_out, projected, rows)
