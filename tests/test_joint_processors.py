"""Our op-for-op copies of the installed joint-attention processors give their outputs bit for bit."""

import pytest
import torch
from diffusers.models.attention_processor import JointAttnProcessor2_0
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from explain.joint.processors import MIRRORED_DIFFUSERS, flux_joint, mirrors, sd3_joint
from tests.tiny_mmdit import build_flux, build_sd3


def test_mirrored_version_is_installed():
    import diffusers

    assert diffusers.__version__ == MIRRORED_DIFFUSERS


@pytest.fixture(scope="module")
def transformers(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmdit")
    return build_sd3(root / "sd3").transformer, build_flux(root / "flux").transformer


@pytest.mark.parametrize("block", [0, 2])  # block 0: dual attention + qk norm; block 2: context_pre_only
def test_sd3_joint_equals_installed_processor(transformers, block):
    attn = transformers[0].transformer_blocks[block].attn
    assert type(attn.processor) is JointAttnProcessor2_0
    gen = torch.Generator().manual_seed(block)
    width = attn.query_dim
    image, text = torch.randn(2, 64, width, generator=gen), torch.randn(2, 13, width, generator=gen)
    with torch.no_grad():
        expected = attn.processor(attn, image, text)
        ours, tensors = sd3_joint(attn, image, text)
    assert all(torch.equal(a, b) for a, b in zip(expected, ours, strict=True))
    assert tensors.query.shape == (2, attn.heads, 64 + 13, width // attn.heads)
    assert (tensors.image, tensors.text) == (slice(0, 64), slice(64, 77))


@pytest.mark.parametrize("single", [False, True])
def test_flux_joint_equals_installed_processor(transformers, single):
    flux = transformers[1]
    blocks = flux.single_transformer_blocks if single else flux.transformer_blocks
    attn = blocks[0].attn
    assert type(attn.processor) is FluxAttnProcessor
    gen = torch.Generator().manual_seed(int(single))
    width, n_text, n_image = flux.inner_dim, 7, 64
    ids = torch.cat([torch.zeros(n_text, 3), torch.randint(0, 8, (n_image, 3), generator=gen).float()])
    rotary = flux.pos_embed(ids)  # (cos, sin) over [text, image]
    text = torch.randn(2, n_text, width, generator=gen)
    image = torch.randn(2, n_image, width, generator=gen)
    with torch.no_grad():
        if single:
            joint = torch.cat([text, image], dim=1)
            expected = attn.processor(attn, joint, None, None, rotary)
            ours, tensors = flux_joint(attn, joint, None, rotary)
            assert torch.equal(expected, ours)
            assert tensors.image is None and tensors.text is None
        else:
            expected = attn.processor(attn, image, text, None, rotary)
            ours, tensors = flux_joint(attn, image, text, rotary)
            assert all(torch.equal(a, b) for a, b in zip(expected, ours, strict=True))
            assert (tensors.text, tensors.image) == (slice(0, n_text), slice(n_text, n_text + n_image))
    assert tensors.key.shape == (2, attn.heads, n_text + n_image, attn.head_dim)


def test_mirrors_only_the_exact_default_classes():
    class Custom(JointAttnProcessor2_0):
        pass

    assert mirrors(JointAttnProcessor2_0(), None, {})
    assert mirrors(FluxAttnProcessor(), None, {})
    assert not mirrors(Custom(), None, {})
    assert not mirrors(FluxAttnProcessor(), torch.zeros(1), {})
