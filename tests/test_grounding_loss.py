"""The U-Net training's TokenCompose-style grounding terms (training/train_unet.py), on hand-made attention."""

import math

import torch

from training.train_unet import grounding_loss


def _setup(inside: float):
    """One image, one object on the left half of a 4x4 latent; tokens 1 (colour) and 2 (shape) of T=4.

    Each object token gets probability ``inside`` at in-mask positions and 0 outside; the rest goes to token 0.
    """
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :, :2] = 1.0  # left half: 8 of 16 positions
    m = mask.flatten(2)[0, 0]  # (16,)
    probs = torch.zeros(1, 2, 16, 4)  # (B, heads, N, T)
    probs[..., 1] = inside * m
    probs[..., 2] = inside * m
    probs[..., 0] = 1 - probs[..., 1] - probs[..., 2]
    tokens = torch.tensor([[[1, 2]]])  # (B, O, 2)
    return [probs], tokens, mask, torch.tensor([True])


def test_attention_inside_the_mask_has_zero_token_loss_and_the_pixel_term_rewards_coverage():
    probs, tokens, mask, keep = _setup(inside=0.5)
    token, pixel = grounding_loss(probs, tokens, mask, keep, pixel_weight=1.0)
    assert token.item() == 0.0
    # BCE: 8 in-mask positions at p = 0.5 (-log 0.5 each), 8 outside at p ~ 0 (clamped to 1e-6)
    assert math.isclose(pixel.item(), (8 * math.log(2) + 8 * -math.log(1 - 1e-6)) / 16, rel_tol=1e-4)
    _, pixel_low = grounding_loss(*_setup(inside=0.1), pixel_weight=1.0)
    assert pixel_low.item() > pixel.item()  # weaker attention over the object costs more


def test_attention_outside_the_mask_costs_one_and_dropped_captions_cost_nothing():
    probs, tokens, mask, keep = _setup(inside=0.5)
    flipped = [probs[0].flip(-2)]  # the tokens now attend only to the right half
    token, pixel = grounding_loss(flipped, tokens, mask, keep)
    assert math.isclose(token.item(), 1.0, rel_tol=1e-6)
    assert pixel.item() == 0.0  # pixel_weight 0: not computed
    token, pixel = grounding_loss(flipped, tokens, mask, torch.tensor([False]), pixel_weight=1.0)
    assert token.item() == 0.0 and pixel.item() == 0.0
