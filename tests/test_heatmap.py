"""DAAM aggregation and normalisation maths on hand-built captures (no model needed)."""

import dataclasses

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from explain.capture.recorder import CapturedAttention
from explain.capture.swap import Branch
from explain.clip.tokens import build_clip_tokenizer, tokenize_prompt
from explain.maps.aggregation import (
    aggregate,
    normalize,
    overlay,
    per_step_cube,
    select_layers,
    threshold_mask,
)

LATENT = (8, 12)
IMAGE = (64, 96)


def make_capture(layers: dict[str, torch.Tensor], per_head=False) -> CapturedAttention:
    """layers: name -> (steps, batch, [heads,] tokens, h, w)."""
    first = next(iter(layers.values()))
    return CapturedAttention(
        maps={k: v.half() for k, v in layers.items()},
        layer_resolutions={k: tuple(v.shape[-2:]) for k, v in layers.items()},
        latent_hw=LATENT,
        image_hw=IMAGE,
        timesteps=tuple(float(t) for t in range(first.shape[0])),
        calls_per_step=(1,) * first.shape[0],
        token_count=first.shape[-3],
        branch=Branch.COND,
        per_head=per_head,
    )


def constant_maps(values, steps=2, hw=LATENT, batch=1):
    """(steps, batch, tokens, h, w) where token j is the constant values[j]."""
    v = torch.tensor(values, dtype=torch.float32)[None, None, :, None, None]
    return v.expand(steps, batch, len(values), *hw).clone()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_clip_tokenizer(tmp_path_factory.mktemp("tok"))


def test_constant_maps_aggregate_to_their_mean():
    captured = make_capture(
        {
            "down_blocks.0.attn2": constant_maps([0.5, 0.25, 0.125]),
            "down_blocks.1.attn2": constant_maps([0.25, 0.125, 0.5], hw=(4, 6)),
        }
    )
    maps = aggregate(captured)
    assert maps.token_maps.shape == (3, *IMAGE)
    assert maps.token_maps.dtype == torch.float32
    expected = torch.tensor([0.375, 0.1875, 0.3125])[:, None, None].expand(3, *IMAGE)
    torch.testing.assert_close(maps.token_maps, expected, atol=1e-4, rtol=0)


def test_step_layer_resolution_selection():
    steps = torch.zeros(3, 1, 2, *LATENT)
    steps[0], steps[1], steps[2] = 0.25, 0.5, 0.75  # exact in float16
    captured = make_capture({"a.attn2": steps, "b.attn2": constant_maps([0.125, 0.125], steps=3, hw=(4, 6))})
    assert aggregate(captured, steps=[2], layers=["a.attn2"]).token_maps.mean().item() == pytest.approx(0.75)
    assert aggregate(captured, steps=slice(0, 2), resolutions=[LATENT]).token_maps.mean().item() == pytest.approx(
        0.375
    )
    assert aggregate(captured, steps=[0]).token_maps.mean().item() == pytest.approx((0.25 + 0.125) / 2)
    assert select_layers(captured, resolutions=[6]) == ["b.attn2"]  # an int matches max(h, w)
    with pytest.raises(ValueError, match="no layer"):
        select_layers(captured, resolutions=[99])
    with pytest.raises(KeyError):
        select_layers(captured, layers=["nope"])


def test_heads_selection_needs_per_head_capture():
    per_head = torch.zeros(1, 1, 2, 1, *LATENT)  # (steps, batch, heads, tokens, h, w)
    per_head[:, :, 0], per_head[:, :, 1] = 0.25, 0.75
    captured = make_capture({"a.attn2": per_head}, per_head=True)
    assert aggregate(captured).token_maps.mean().item() == pytest.approx(0.5)
    assert aggregate(captured, heads=[1]).token_maps.mean().item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="per_head"):
        aggregate(make_capture({"a.attn2": constant_maps([0.1])}), heads=[0])


def test_bicubic_overshoot_is_clamped():
    """A single hot cell: bicubic upsampling rings negative around it; DAAM clamps at 0."""
    spike = torch.zeros(1, 1, 1, 4, 6)
    spike[..., 1, 2] = 1.0
    captured = make_capture({"a.attn2": spike})
    raw = torch.nn.functional.interpolate(spike[0], size=LATENT, mode="bicubic")
    assert raw.min() < 0  # the overshoot exists
    maps = aggregate(captured)
    assert maps.token_maps.min() >= 0
    assert maps.token_maps.max() > 0.5


def test_word_maps_sum_sub_tokens(tokenizer):
    view = tokenize_prompt(tokenizer, "a ginormous cube")
    assert view.words[1].token_indices == (2, 3, 4)
    values = [0.0, 1 / 64, 2 / 64, 3 / 64, 4 / 64, 5 / 64, 6 / 64]  # BOS, a, gin, or, mous, cube, EOS
    maps = aggregate(make_capture({"a.attn2": constant_maps(values)}), view)
    assert maps.words == ("a", "ginormous", "cube")
    assert maps.tokens == ("<|startoftext|>", "a</w>", "gin", "or", "mous</w>", "cube</w>", "<|endoftext|>")
    assert maps.word_maps.shape == (3, *IMAGE)
    assert maps.word_map("ginormous").mean().item() == pytest.approx((2 + 3 + 4) / 64)
    torch.testing.assert_close(maps.word_map("cube"), maps.token_maps[5])


def test_image_index_selects_batch_entry():
    both = torch.cat([constant_maps([0.125]), constant_maps([0.75])], dim=1)  # (steps, 2, 1, h, w)
    captured = make_capture({"a.attn2": both})
    assert aggregate(captured, image_index=1).token_maps.mean().item() == pytest.approx(0.75)
    assert aggregate(captured, image_index=0).token_maps.mean().item() == pytest.approx(0.125)


def test_normalize_minmax_softmax_absolute():
    torch.manual_seed(0)
    maps = torch.rand(3, 5, 7)
    maps[2] = 0.3  # constant map
    mm = normalize(maps, "minmax")
    assert mm[:2].amin(dim=(-2, -1)).tolist() == [0.0, 0.0]
    torch.testing.assert_close(mm[:2].amax(dim=(-2, -1)), torch.ones(2))
    assert torch.equal(mm[2], torch.zeros(5, 7))

    share = normalize(maps, "softmax")
    torch.testing.assert_close(share.sum(0), torch.ones(5, 7))
    torch.testing.assert_close(share[0] / share[1], maps[0] / maps[1])  # ratios between words are kept

    absolute = normalize(maps * 4, "absolute")
    assert absolute.max().item() == pytest.approx(1.0)
    torch.testing.assert_close(absolute, maps / maps.max())
    with pytest.raises(ValueError, match="unknown"):
        normalize(maps, "zscore")


def test_threshold_mask_uses_normalised_tau():
    ramp = torch.linspace(10, 20, 11)[None].expand(3, 11)  # min-max normalised: 0, 0.1, ..., 1
    mask = threshold_mask(ramp, tau=0.4)
    assert mask.dtype == torch.bool
    assert mask[0].tolist() == [False] * 5 + [True] * 6  # 0.5 .. 1.0 are > 0.4 (0.4 itself is not)


def test_overlay_blends_colormap():
    image = np.full((4, 6, 3), 100, np.uint8)
    heat = torch.linspace(0, 1, 24).reshape(4, 6)
    assert np.array_equal(overlay(image, heat, alpha=0.0), image)
    full = overlay(image, heat, alpha=1.0, cmap="viridis")
    expected = np.round(colormaps["viridis"](heat.numpy())[..., :3] * 255).astype(np.uint8)
    assert np.abs(full.astype(int) - expected.astype(int)).max() <= 1
    half = overlay(Image.fromarray(image), heat, alpha=0.5, cmap="viridis")
    assert half.dtype == np.uint8 and half.shape == (4, 6, 3)
    assert np.abs(half.astype(int) - (0.5 * 100 + 0.5 * expected).round().astype(int)).max() <= 1
    small = overlay(np.zeros((8, 12, 3), np.uint8), heat)  # heat resized to the image
    assert small.shape == (8, 12, 3)


def test_per_step_cube_shape_and_values():
    steps = torch.zeros(3, 1, 2, 4, 6)
    steps[1] = 0.5
    captured = make_capture({"a.attn2": constant_maps([0.25, 0.75], steps=3), "b.attn2": steps})
    cube = per_step_cube(captured)
    assert cube.shape == (3, 2, 2, *LATENT)
    assert cube.dtype == torch.float16
    assert cube[1, 1].min().item() == pytest.approx(0.5) and cube[0, 1].max().item() == 0.0
    assert cube[:, 0, 1].float().mean().item() == pytest.approx(0.75)


def test_span_map_sums_the_captured_slots_of_a_group():
    maps = aggregate(make_capture({"a.attn2": constant_maps([0.0, 0.125, 0.25, 0.5])}))
    torch.testing.assert_close(maps.span_map((1, 3)), torch.full(IMAGE, 0.625))
    torch.testing.assert_close(maps.span_map((2, 9)), torch.full(IMAGE, 0.25))  # slot 9 was not captured
    assert maps.span_map(()).shape == IMAGE and maps.span_map(()).max() == 0


def test_word_overlays_blend_each_words_map(tokenizer):
    view = tokenize_prompt(tokenizer, "a ginormous cube")
    ramp = torch.linspace(0, 1, LATENT[0] * LATENT[1]).reshape(1, 1, 1, *LATENT).expand(2, 1, 7, *LATENT).clone()
    maps = aggregate(make_capture({"a.attn2": ramp}), view)
    image = np.full((*IMAGE, 3), 80, np.uint8)
    overlays = maps.word_overlays(Image.fromarray(image))
    assert len(overlays) == len(maps.words) == 3
    for shown, heat in zip(overlays, maps.word_maps, strict=True):
        assert np.array_equal(shown, overlay(image, heat.numpy()))


def test_unet_batch_and_shared_heads_come_from_the_capture():
    captured = make_capture({"a.attn2": constant_maps([0.5], batch=2)})
    assert captured.batch_size == 2 and captured.unet_batch_size == 2  # guided unknown: the stored batch
    guided = dataclasses.replace(captured, guided=True, layer_heads={"a.attn2": 8, "b.attn2": 5})
    assert guided.unet_batch_size == 4  # [negative, positive] halves
    assert guided.shared_heads == 5
    assert dataclasses.replace(captured, guided=False).unet_batch_size == 2
