"""Shared plumbing for code that instruments cross-attention through diffusers' public processor API.

- :class:`CrossAttentionSwap`: a context manager that wraps every cross-attention (``attn2``) processor of a U-Net
  and restores the originals on exit, also when the body raises.
- :func:`cond_rows`: which rows of the U-Net batch belong to a classifier-free-guidance branch.
- :func:`prepare_inputs` / :func:`attention_probs`: ``AttnProcessor2_0``'s preprocessing written out, so the
  attention probabilities softmax(Q Kᵀ · scale) (Vaswani et al. 2017, eq. 1) can be computed explicitly.
- :func:`sdpa_with_qk`: ``AttnProcessor2_0`` itself, op for op (so its output is bit-identical), also handing back
  Q and K, so a recorder gets the probabilities without projecting the inputs a second time
  (:func:`probs_from_qk`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

__all__ = [
    "Branch",
    "CrossAttentionSwap",
    "cond_rows",
    "PreparedInputs",
    "prepare_inputs",
    "split_heads",
    "attention_probs",
    "probs_from_qk",
    "mirrors_sdpa",
    "sdpa_with_qk",
]


class Branch(enum.Enum):
    """Which half of a classifier-free-guidance batch to use.

    With guidance on, diffusers' SD pipelines run the U-Net on ``[negative, positive]`` halves; ``COND`` is the
    prompt's half, ``UNCOND`` the negative (or empty) prompt's. Without guidance the whole batch is ``COND``.
    """

    COND = "cond"
    UNCOND = "uncond"


def cond_rows(pipe, batch: int, branch: Branch = Branch.COND) -> slice:
    """Rows of a U-Net batch of size ``batch`` that belong to ``branch`` (read while the pipeline runs)."""
    try:
        guided = pipe.do_classifier_free_guidance
    except AttributeError as err:
        raise RuntimeError("read the guidance branch while the pipeline runs (inside its call)") from err
    if not guided:
        if branch is Branch.UNCOND:
            raise ValueError("Branch.UNCOND needs classifier-free guidance (guidance_scale > 1)")
        return slice(0, batch)
    if batch % 2:
        raise ValueError(f"guidance is on but the U-Net batch ({batch}) is not [negative, positive] halves")
    half = batch // 2
    return slice(0, half) if branch is Branch.UNCOND else slice(half, batch)


class CrossAttentionSwap:
    """Wrap each cross-attention processor of ``unet`` with ``factory(name, original)`` while the context is open.

    Only layers whose attention module has ``is_cross_attention`` are wrapped; the rest keep their processor. On
    exit (also on error) the original processors are set back with ``unet.set_attn_processor``.
    """

    def __init__(self, unet, factory: Callable[[str, object], object]):
        self.unet = unet
        self.factory = factory
        self._originals: dict | None = None

    def __enter__(self) -> CrossAttentionSwap:
        if self._originals is not None:
            raise RuntimeError("this cross-attention swap is already active")
        originals = dict(self.unet.attn_processors)
        swapped, n_cross = {}, 0
        for key, processor in originals.items():
            name = key.removesuffix(".processor")
            if getattr(self.unet.get_submodule(name), "is_cross_attention", False):
                swapped[key] = self.factory(name, processor)
                n_cross += 1
            else:
                swapped[key] = processor
        if not n_cross:
            raise ValueError("the U-Net has no cross-attention layers")
        self._originals = originals
        try:
            self.unet.set_attn_processor(swapped)
        except BaseException:
            self.restore()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.restore()

    def restore(self) -> None:
        if self._originals is not None:
            self.unet.set_attn_processor(dict(self._originals))
            self._originals = None


@dataclass(frozen=True)
class PreparedInputs:
    """A layer's inputs after ``AttnProcessor2_0``'s preprocessing.

    Attributes:
        hidden_states: (B, N, C) image features (flattened from (B, C, h, w) when the layer got 4-D input).
        context: (B, T, C') encoder hidden states (text tokens), cross-normalised if the layer does that.
        spatial: (C, h, w) of a 4-D input, else None.
    """

    hidden_states: torch.Tensor
    context: torch.Tensor
    spatial: tuple[int, int, int] | None


def prepare_inputs(attn, hidden_states, context, temb=None) -> PreparedInputs:
    """Spatial norm, flattening, group norm and cross-norm, in ``AttnProcessor2_0``'s order."""
    hs = hidden_states
    if attn.spatial_norm is not None:
        hs = attn.spatial_norm(hs, temb)
    spatial = None
    if hs.ndim == 4:  # (B, C, h, w) -> (B, h*w, C)
        b, c, h, w = hs.shape
        spatial = (c, h, w)
        hs = hs.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hs = attn.group_norm(hs.transpose(1, 2)).transpose(1, 2)
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    return PreparedInputs(hs, context, spatial)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads*d) -> (B, heads, L, d)."""
    b, length, inner = x.shape
    return x.view(b, length, heads, inner // heads).transpose(1, 2)


def attention_probs(attn, hidden_states, context, attention_mask=None) -> torch.Tensor:
    """softmax(Q Kᵀ · scale) in float32, (B, heads, N, T), over all T keys as the layer itself does.

    Args:
        attn: The diffusers ``Attention`` module.
        hidden_states: (B, N, C) prepared image features (:func:`prepare_inputs`).
        context: (B, T, C') prepared text states.
        attention_mask: The layer's ``attention_mask`` argument for these rows, or None.
    """
    q = split_heads(attn.to_q(hidden_states), attn.heads)  # (B, heads, N, d)
    k = split_heads(attn.to_k(context), attn.heads)  # (B, heads, T, d)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    mask = None
    if attention_mask is not None:
        b, t = context.shape[0], context.shape[1]
        mask = attn.prepare_attention_mask(attention_mask, t, b).view(b, attn.heads, -1, t)
    return probs_from_qk(q, k, attn.scale, mask)


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


def mirrors_sdpa(processor, attention_mask, kwargs: dict) -> bool:
    """Whether :func:`sdpa_with_qk` reproduces ``processor`` exactly for this call.

    True for diffusers' default ``AttnProcessor2_0`` (exactly that class, not a subclass) without an attention
    mask or extra arguments; anything else (IP-Adapter, xformers, custom processors) must run itself.
    """
    return type(processor) is AttnProcessor2_0 and attention_mask is None and not kwargs


def sdpa_with_qk(
    attn, hidden_states, encoder_hidden_states, temb=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``AttnProcessor2_0.__call__`` (diffusers 0.42, no attention mask) op for op, keeping Q and K.

    The output is bitwise what the processor returns (tested: images with capture on equal those with it off).

    Returns:
        (output like the processor's, query (B, heads, N, d), key (B, heads, T, d)).
    """
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch_size, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    batch_size = context.shape[0]
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)  # (B, N, inner)
    if encoder_hidden_states is not None and attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    key = attn.to_k(context)  # (B, T, inner)
    value = attn.to_v(context)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, N, d)
    key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, T, d)
    value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)
    out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)  # (B, N, inner)
    out = attn.to_out[1](attn.to_out[0](out))
    if input_ndim == 4:
        out = out.transpose(-1, -2).reshape(batch_size, channel, height, width)
    if attn.residual_connection:
        out = out + residual
    out = out / attn.rescale_output_factor
    return out, query, key
