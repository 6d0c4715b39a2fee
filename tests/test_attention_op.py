"""explain.capture.op against the installed diffusers: the explicit op is AttnProcessor2_0, bit for bit."""

import diffusers
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from explain.capture.op import MIRRORS_DIFFUSERS, attend, explicit_output, explicit_probs, mirrors, project

HEADS, HEAD_DIM, QUERY_DIM, TEXT_DIM, TOKENS = 2, 8, 16, 12, 7


def _layer(**kwargs) -> Attention:
    torch.manual_seed(0)
    attn = Attention(QUERY_DIM, heads=HEADS, dim_head=HEAD_DIM, processor=AttnProcessor2_0(), **kwargs)
    return attn.eval()


def _inputs(batch=2, spatial=False, text=True):
    generator = torch.Generator().manual_seed(1)
    shape = (batch, QUERY_DIM, 3, 5) if spatial else (batch, 15, QUERY_DIM)
    hidden = torch.randn(shape, generator=generator)
    context = torch.randn(batch, TOKENS, TEXT_DIM, generator=generator) if text else None
    return hidden, context


def test_the_mirrored_release_is_installed():
    """A diffusers upgrade must re-check the op against the new AttnProcessor2_0 (and move MIRRORS_DIFFUSERS)."""
    assert diffusers.__version__.startswith(MIRRORS_DIFFUSERS)


@pytest.mark.parametrize(
    "layer_kwargs, spatial, text",
    [
        ({"cross_attention_dim": TEXT_DIM}, False, True),  # SD's attn2
        ({"cross_attention_dim": TEXT_DIM, "norm_num_groups": 4, "residual_connection": True}, True, True),
        ({"cross_attention_dim": TEXT_DIM, "qk_norm": "layer_norm", "rescale_output_factor": 2.0}, False, True),
        ({}, False, False),  # self-attention (attn1)
    ],
)
@torch.no_grad()
def test_attend_is_attn_processor_2_0_bit_for_bit(layer_kwargs, spatial, text):
    attn = _layer(**layer_kwargs)
    hidden, context = _inputs(spatial=spatial, text=text)
    expected = AttnProcessor2_0()(attn, hidden, context)
    out, projected = attend(attn, hidden, context)
    assert torch.equal(out, expected)
    assert projected.query.shape == (2, HEADS, 15, HEAD_DIM)
    assert projected.key.shape == projected.value.shape == (2, HEADS, TOKENS if text else 15, HEAD_DIM)


@torch.no_grad()
def test_attend_with_a_mask_is_bit_for_bit():
    attn = _layer(cross_attention_dim=TEXT_DIM)
    hidden, context = _inputs()
    mask = torch.zeros(2, TOKENS)
    mask[:, -2:] = -10000.0  # diffusers' additive mask convention
    assert torch.equal(
        attend(attn, hidden, context, attention_mask=mask)[0], AttnProcessor2_0()(attn, hidden, context, mask)
    )


@torch.no_grad()
def test_explicit_probabilities_are_diffusers_attention_scores():
    """The explicit path's A equals diffusers' own get_attention_scores (the AttnProcessor path) and its output."""
    attn = _layer(cross_attention_dim=TEXT_DIM)
    hidden, context = _inputs()
    projected = project(attn, hidden, context)
    probs = explicit_probs(attn, projected)  # (B, heads, N, T)
    q = attn.head_to_batch_dim(attn.to_q(hidden))
    k = attn.head_to_batch_dim(attn.to_k(context))
    reference = attn.get_attention_scores(q, k).view(2, HEADS, 15, TOKENS)
    torch.testing.assert_close(probs, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, HEADS, 15))
    out = explicit_output(attn, probs, projected, [0, 1])
    torch.testing.assert_close(out, AttnProcessor()(attn, hidden, context), atol=1e-6, rtol=0)


def test_only_the_exact_default_processor_is_mirrored():
    class Custom(AttnProcessor2_0):
        pass

    assert mirrors(AttnProcessor2_0())
    assert not mirrors(Custom()) and not mirrors(AttnProcessor())
    assert not mirrors(AttnProcessor2_0(), {"ip_adapter_masks": None})
