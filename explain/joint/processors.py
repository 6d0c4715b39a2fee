"""Joint attention of SD3 and Flux, op for op as diffusers computes it, also handing back Q, K and the head outputs.

In an MMDiT block (Esser et al. 2024, "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis",
Fig. 2) image tokens x and text tokens p are projected with their own weights and attend *jointly*:

    [o_x; o_p] = softmax([q_x; q_p] [k_x; k_p]ᵀ · d^-1/2) [v_x; v_p]          (one softmax over all L = N + T keys)

There is no cross-attention layer: the image-query x text-key block of this one softmax is what plays its role.
The functions here are the bodies of the installed processors, **diffusers 0.42.1**, copied op for op (so their
outputs are bitwise the processors'; ``tests/test_joint_processors.py`` checks this against the installed classes):

- :func:`sd3_joint` = ``JointAttnProcessor2_0`` (SD3 / SD3.5 ``JointTransformerBlock.attn``): sequence [image, text],
  layout (B, heads, L, d).
- :func:`flux_joint` = ``FluxAttnProcessor`` (Flux double-stream ``FluxTransformerBlock.attn`` with text, and
  single-stream ``FluxSingleTransformerBlock.attn`` over the already concatenated sequence): sequence [text, image],
  layout (B, L, heads, d), rotary embeddings on Q and K after the QK norms.

Both return a :class:`JointTensors` next to the processor output: the Q and K that entered the attention (views, no
copies) and the per-head outputs before the output projection (ConceptAttention's output space).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.attention_processor import JointAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

__all__ = ["JointTensors", "sd3_joint", "flux_joint", "mirrors", "MIRRORED_DIFFUSERS"]

MIRRORED_DIFFUSERS = "0.42.1"  # the diffusers release whose processor bodies are copied here


@dataclass(frozen=True, eq=False)  # holds tensors
class JointTensors:
    """What one joint-attention call computed, in a common layout (views into the call's own tensors).

    Attributes:
        query: (B, heads, L, d) queries of the joint sequence, as they entered the attention (normed, rotated).
        key: (B, heads, L, d) keys, likewise.
        value: (B, heads, L, d) values.
        heads_out: (B, L, heads * d) attention output before the output projection.
        image: Positions of the image tokens in the sequence.
        text: Positions of the text tokens in the sequence (None in a single-stream call: the caller knows T).
    """

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    heads_out: torch.Tensor
    image: slice | None
    text: slice | None

    @property
    def scale(self) -> float:
        """The attention's softmax scale: SDPA's default d^-1/2 (neither processor passes another)."""
        return self.query.shape[-1] ** -0.5


def mirrors(processor, attention_mask, kwargs: dict) -> bool:
    """Whether :func:`sd3_joint` / :func:`flux_joint` reproduce ``processor`` for this call bit for bit.

    True for exactly the default classes (not subclasses, not IP-Adapter) without a mask or extra arguments.
    """
    return type(processor) in (JointAttnProcessor2_0, FluxAttnProcessor) and attention_mask is None and not kwargs


def sd3_joint(attn, hidden_states, encoder_hidden_states):
    """``JointAttnProcessor2_0.__call__`` (diffusers 0.42.1) with text, op for op.

    Returns:
        ((image output (B, N, C), text output (B, T, C) or the raw one for ``context_pre_only``), JointTensors).
    """
    residual = hidden_states
    batch_size = hidden_states.shape[0]
    query = attn.to_q(hidden_states)
    key = attn.to_k(hidden_states)
    value = attn.to_v(hidden_states)
    inner_dim = key.shape[-1]
    head_dim = inner_dim // attn.heads
    query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, N, d)
    key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    q_text = attn.add_q_proj(encoder_hidden_states)
    k_text = attn.add_k_proj(encoder_hidden_states)
    v_text = attn.add_v_proj(encoder_hidden_states)
    q_text = q_text.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, T, d)
    k_text = k_text.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    v_text = v_text.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_added_q is not None:
        q_text = attn.norm_added_q(q_text)
    if attn.norm_added_k is not None:
        k_text = attn.norm_added_k(k_text)
    query = torch.cat([query, q_text], dim=2)  # (B, heads, L, d): [image, text]
    key = torch.cat([key, k_text], dim=2)
    value = torch.cat([value, v_text], dim=2)
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
    heads_out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)  # (B, L, heads * d)
    heads_out = heads_out.to(query.dtype)
    n_image = residual.shape[1]
    hidden_states, text_states = heads_out[:, :n_image], heads_out[:, n_image:]
    if not attn.context_pre_only:
        text_states = attn.to_add_out(text_states)
    hidden_states = attn.to_out[0](hidden_states)
    hidden_states = attn.to_out[1](hidden_states)
    length = query.shape[2]
    tensors = JointTensors(query, key, value, heads_out, slice(0, n_image), slice(n_image, length))
    return (hidden_states, text_states), tensors


def flux_joint(attn, hidden_states, encoder_hidden_states=None, image_rotary_emb=None, *, backend=None, parallel=None):
    """``FluxAttnProcessor.__call__`` (diffusers 0.42.1, unfused or fused projections, no mask), op for op.

    Args:
        attn: The ``FluxAttention`` module.
        hidden_states: (B, N, C) image tokens (double-stream) or (B, T + N, C) text + image tokens (single-stream).
        encoder_hidden_states: (B, T, C) text tokens (double-stream) or None.
        image_rotary_emb: (cos, sin) over the joint sequence, (L, d) each.
        backend: The processor's ``_attention_backend``.
        parallel: The processor's ``_parallel_config``.

    Returns:
        (the processor's output(s), JointTensors); ``image``/``text`` are None for a single-stream call.
    """
    if attn.fused_projections:
        query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        e_query = e_key = e_value = None
        if encoder_hidden_states is not None and hasattr(attn, "to_added_qkv"):
            e_query, e_key, e_value = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
    else:
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        e_query = e_key = e_value = None
        if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
            e_query = attn.add_q_proj(encoder_hidden_states)
            e_key = attn.add_k_proj(encoder_hidden_states)
            e_value = attn.add_v_proj(encoder_hidden_states)
    query = query.unflatten(-1, (-1, attn.head_dim))  # (B, N, heads, d)
    key = key.unflatten(-1, (-1, attn.head_dim))
    value = value.unflatten(-1, (-1, attn.head_dim))
    query = attn.norm_q(query)
    key = attn.norm_k(key)
    if attn.added_kv_proj_dim is not None:
        e_query = e_query.unflatten(-1, (-1, attn.head_dim))  # (B, T, heads, d)
        e_key = e_key.unflatten(-1, (-1, attn.head_dim))
        e_value = e_value.unflatten(-1, (-1, attn.head_dim))
        e_query = attn.norm_added_q(e_query)
        e_key = attn.norm_added_k(e_key)
        query = torch.cat([e_query, query], dim=1)  # (B, L, heads, d): [text, image]
        key = torch.cat([e_key, key], dim=1)
        value = torch.cat([e_value, value], dim=1)
    if image_rotary_emb is not None:
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
    out = dispatch_attention_fn(query, key, value, attn_mask=None, backend=backend, parallel_config=parallel)
    heads_out = out.flatten(2, 3)  # (B, L, heads * d)
    heads_out = heads_out.to(query.dtype)
    common = dict(query=query.transpose(1, 2), key=key.transpose(1, 2), value=value.transpose(1, 2))
    if encoder_hidden_states is None:
        return heads_out, JointTensors(**common, heads_out=heads_out, image=None, text=None)
    n_text, length = encoder_hidden_states.shape[1], heads_out.shape[1]
    text_states, hidden_states = heads_out.split_with_sizes([n_text, length - n_text], dim=1)
    hidden_states = attn.to_out[0](hidden_states.contiguous())
    hidden_states = attn.to_out[1](hidden_states)
    text_states = attn.to_add_out(text_states.contiguous())
    tensors = JointTensors(**common, heads_out=heads_out, image=slice(n_text, length), text=slice(0, n_text))
    return (hidden_states, text_states), tensors
