"""The CLIP pseudocode on tiny open_clip models: parity with open_clip's own logits and ClipLoss."""

import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from explain.clip.contrastive import (
    contrastive_loss,
    contrastive_step,
    cross_entropy_loss,
    text_hidden_states,
    zero_shot,
)

TOL = 1e-5  # parity tolerance (float32 matmuls in a different order)
EMBED, WIDTH, IMAGE = 32, 64, 32
TEXTS = ["a red circle", "a blue square on the left", "a small yellow star", "a big green heart at night"]


def tiny_vision(**overrides):
    cfg = {"image_size": IMAGE, "patch_size": 8, "width": WIDTH, "layers": 2, "head_width": 32}
    return open_clip.CLIPVisionCfg(**{**cfg, **overrides})


def tiny_text(**overrides):
    cfg = {"context_length": 77, "vocab_size": 49408, "width": WIDTH, "heads": 2, "layers": 2}
    return open_clip.CLIPTextCfg(**{**cfg, **overrides})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=EMBED, vision_cfg=tiny_vision(), text_cfg=tiny_text()).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")  # ships its BPE vocabulary: works offline


@pytest.fixture(scope="module")
def batch(tokenizer):
    g = torch.Generator().manual_seed(1)
    return torch.randn(len(TEXTS), 3, IMAGE, IMAGE, generator=g), tokenizer(TEXTS)


def test_pseudocode_intermediates_are_open_clips(model, batch):
    images, tokens = batch
    r = contrastive_step(model, images, tokens)
    n = len(TEXTS)
    assert r.I_f.shape == (n, WIDTH) and r.T_f.shape == (n, WIDTH)
    assert r.W_i.shape == (WIDTH, EMBED) and r.W_t.shape == (WIDTH, EMBED) and r.b_t is None
    assert r.W_i is model.visual.proj and r.W_t is model.text_projection
    with torch.no_grad():
        # I_f, T_f are really the features BEFORE projection: projecting them gives open_clip's features.
        torch.testing.assert_close(r.I_f @ r.W_i, model.encode_image(images), atol=TOL, rtol=0)
        torch.testing.assert_close(r.T_f @ r.W_t, model.encode_text(tokens), atol=TOL, rtol=0)
        torch.testing.assert_close(r.I_e, model.encode_image(images, normalize=True), atol=TOL, rtol=0)
        torch.testing.assert_close(r.T_e, model.encode_text(tokens, normalize=True), atol=TOL, rtol=0)
        logits_per_image, _ = model.get_logits(images, tokens)
    torch.testing.assert_close(r.logits, logits_per_image, atol=TOL, rtol=0)
    torch.testing.assert_close(r.I_e.norm(dim=1), torch.ones(n))
    assert r.t == pytest.approx(float(model.logit_scale.detach())) and r.logit_scale == pytest.approx(math.exp(r.t))
    torch.testing.assert_close(r.labels, torch.arange(n))
    assert "visual.proj" in r.image_projection and "text_projection" in r.text_projection


def test_loss_equals_open_clip_clip_loss(model, batch):
    images, tokens = batch
    r = contrastive_step(model, images, tokens)
    with torch.no_grad():
        image_features, text_features, scale = model(images, tokens)
        reference = open_clip.ClipLoss()(image_features, text_features, scale)
        logits_per_image, logits_per_text = model.get_logits(images, tokens)
    assert abs(r.loss - float(reference)) <= TOL
    labels = torch.arange(len(TEXTS))
    # axis=0 (over images) is text -> image; axis=1 (over texts) is image -> text.
    assert abs(r.loss_i - float(F.cross_entropy(logits_per_text, labels))) <= TOL
    assert abs(r.loss_t - float(F.cross_entropy(logits_per_image, labels))) <= TOL
    assert r.loss == pytest.approx((r.loss_i + r.loss_t) / 2)
    assert abs(r.loss_i - r.loss_t) > 1e-3  # the two directions really differ on this batch


def test_softmax_directions(model, batch):
    r = contrastive_step(model, *batch)
    n = len(TEXTS)
    torch.testing.assert_close(r.probs_image_to_text.sum(dim=1), torch.ones(n))
    torch.testing.assert_close(r.probs_text_to_image.sum(dim=0), torch.ones(n))
    assert r.loss_t == pytest.approx(float(-r.probs_image_to_text.diagonal().log().mean()), abs=TOL)
    assert r.loss_i == pytest.approx(float(-r.probs_text_to_image.diagonal().log().mean()), abs=TOL)


def test_cross_entropy_axes_on_an_asymmetric_matrix():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.5, 3.0, 0.0], [4.0, 1.0, 1.0]])
    labels = torch.tensor([0, 1, 2])
    # Column 2 over rows: softmax([1, 0, 1])[2]; row 2 over columns: softmax([4, 1, 1])[2].
    col2 = -math.log(math.exp(1) / (math.exp(1) + math.exp(0) + math.exp(1)))
    row2 = -math.log(math.exp(1) / (math.exp(4) + 2 * math.exp(1)))
    torch.testing.assert_close(cross_entropy_loss(logits, labels, axis=0), F.cross_entropy(logits.T, labels))
    torch.testing.assert_close(cross_entropy_loss(logits, labels, axis=1), F.cross_entropy(logits, labels))
    per_col = -torch.log_softmax(logits, dim=0).diagonal()
    assert float(per_col[2]) == pytest.approx(col2)
    per_row = -torch.log_softmax(logits, dim=1).diagonal()
    assert float(per_row[2]) == pytest.approx(row2)
    with pytest.raises(ValueError, match="axis"):
        cross_entropy_loss(logits, labels, axis=2)


def test_contrastive_loss_for_training_matches_clip_loss_and_its_gradient():
    g = torch.Generator().manual_seed(3)
    a = F.normalize(torch.randn(6, EMBED, generator=g), dim=1).requires_grad_()
    b = F.normalize(torch.randn(6, EMBED, generator=g), dim=1).requires_grad_()
    scale = torch.tensor(1 / 0.07)
    ours = contrastive_loss(a, b, scale)
    (ga, gb) = torch.autograd.grad(ours, (a, b))
    reference = open_clip.ClipLoss()(a, b, scale)
    (ra, rb) = torch.autograd.grad(reference, (a, b))
    assert abs(float(ours.detach()) - float(reference.detach())) <= TOL
    torch.testing.assert_close(ga, ra, atol=TOL, rtol=0)
    torch.testing.assert_close(gb, rb, atol=TOL, rtol=0)


def test_contrastive_loss_of_perfect_orthonormal_pairs():
    # I_e = T_e = orthonormal rows: logits = s * I, each softmax is e^s / (e^s + (n - 1)), both directions equal.
    n, s = 5, 3.0
    eye = torch.eye(n, EMBED)
    expected = math.log(1 + (n - 1) * math.exp(-s))
    assert float(contrastive_loss(eye, eye, s)) == pytest.approx(expected, rel=1e-6)


def test_temperature_override(model, batch):
    r = contrastive_step(model, *batch, temperature_override=0.5)
    assert r.logit_scale == pytest.approx(2.0)
    torch.testing.assert_close(r.logits, r.I_e @ r.T_e.T / 0.5)
    with pytest.raises(ValueError, match="temperature"):
        contrastive_step(model, *batch, temperature_override=0.0)


def test_text_hidden_states_are_per_token(model, tokenizer, batch):
    _, tokens = batch
    h = text_hidden_states(model, tokens)
    n, context = tokens.shape
    assert h.hidden_states.shape == (n, context, WIDTH)
    eot = tokenizer.eot_token_id
    torch.testing.assert_close(h.pooled_index, (tokens == eot).int().argmax(dim=1))
    torch.testing.assert_close(h.pooled, h.hidden_states[torch.arange(n), h.pooled_index])
    with torch.no_grad():
        torch.testing.assert_close(h.embedding, model.encode_text(tokens), atol=TOL, rtol=0)
    # Final layer norm: every token vector is normalised to the LayerNorm's affine params (init: mean 0, var 1).
    torch.testing.assert_close(h.hidden_states.mean(dim=-1), torch.zeros(n, context), atol=1e-5, rtol=0)


def test_zero_shot(model, tokenizer, batch):
    images, tokens = batch
    result = zero_shot(model, tokenizer, images[2], TEXTS)
    assert [text for text, _ in result] == TEXTS
    probs = torch.tensor([p for _, p in result])
    assert float(probs.sum()) == pytest.approx(1.0)
    with torch.no_grad():
        expected = model.get_logits(images[2:3], tokens)[0].softmax(dim=1)[0]
    torch.testing.assert_close(probs, expected, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="preprocess"):
        zero_shot(model, tokenizer, object(), TEXTS)


def test_custom_text_clip_with_linear_projection(batch):
    torch.manual_seed(2)
    model = open_clip.CustomTextCLIP(
        embed_dim=EMBED, vision_cfg=tiny_vision(), text_cfg=tiny_text(proj_bias=True)
    ).eval()
    images, tokens = batch
    r = contrastive_step(model, images, tokens)
    assert r.b_t is not None and r.W_t.shape == (WIDTH, EMBED) and "nn.Linear" in r.text_projection
    with torch.no_grad():
        torch.testing.assert_close(r.logits, model.get_logits(images, tokens)[0], atol=TOL, rtol=0)
        reference = open_clip.ClipLoss()(*model(images, tokens))
    assert abs(r.loss - float(reference)) <= TOL


def test_resnet_tower_has_no_separate_projection(batch):
    torch.manual_seed(4)
    vision = open_clip.CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, image_size=IMAGE)
    model = open_clip.CLIP(embed_dim=EMBED, vision_cfg=vision, text_cfg=tiny_text()).eval()
    images, tokens = batch
    r = contrastive_step(model, images, tokens)
    assert r.W_i is None and "ModifiedResNet" in r.image_projection
    assert r.I_f.shape == (len(TEXTS), EMBED)
    with torch.no_grad():
        torch.testing.assert_close(r.logits, model.get_logits(images, tokens)[0], atol=TOL, rtol=0)


def test_rejects_unmatched_batches_and_siglip(model, batch):
    images, tokens = batch
    with pytest.raises(ValueError, match="matched pairs"):
        contrastive_step(model, images[:3], tokens)
    torch.manual_seed(5)
    siglip_like = open_clip.CLIP(
        embed_dim=EMBED, vision_cfg=tiny_vision(), text_cfg=tiny_text(), init_logit_bias=-10.0
    ).eval()
    with pytest.raises(ValueError, match="SigLIP"):
        contrastive_step(siglip_like, images, tokens)


def test_result_shapes_and_logit_summary(model, batch):
    images, tokens = batch
    r = contrastive_step(model, images, tokens)
    n = len(TEXTS)
    assert r.shapes == {
        "I_f": [n, WIDTH],
        "T_f": [n, WIDTH],
        "W_i": [WIDTH, EMBED],
        "W_t": [WIDTH, EMBED],
        "I_e": [n, EMBED],
        "T_e": [n, EMBED],
    }
    logits = r.logits.numpy()
    assert r.matched == int((logits.argmax(axis=1) == np.arange(n)).sum())
    assert r.mean_matched_logit == pytest.approx(np.diag(logits).mean(), abs=1e-6)
    off = logits[~np.eye(n, dtype=bool)]
    assert r.mean_other_logit == pytest.approx(off.mean(), abs=1e-5)


def test_text_hidden_state_shapes_and_slot_norms(model, batch):
    _, tokens = batch
    h = text_hidden_states(model, tokens)
    n, context = tokens.shape
    assert h.shapes == {"hidden_states": [n, context, WIDTH], "pooled": [n, WIDTH], "embedding": [n, EMBED]}
    torch.testing.assert_close(h.slot_norms, torch.linalg.vector_norm(h.hidden_states, dim=-1))
