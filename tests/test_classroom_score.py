"""Classroom: score a word's thresholded map against a painted mask (IoU), on hand-made arrays with exact answers."""

import numpy as np
import pytest
import torch
from PIL import Image

from explain.capture.recorder import CapturedAttention
from explain.capture.swap import Branch
from explain.clip.tokens import build_clip_tokenizer, tokenize_prompt
from explain.engine.session import GenerationResult
from explain.maps.score import (
    DAAM_TAU,
    LEADERBOARD_HEADERS,
    Leaderboard,
    ScoreEntry,
    iou,
    resize_mask,
    score_map,
    score_word,
)

HEAT = np.array(
    [
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.3],  # 0.3 < τ = 0.4 after min-max: outside the map's mask
    ]
)
CENTRE = np.zeros((4, 4), bool)
CENTRE[1:3, 1:3] = True


def test_iou_counts_exactly():
    painted = CENTRE.copy()
    painted[0, 0] = True  # one extra pixel: 4 / 5
    assert iou(CENTRE, painted) == 4 / 5
    assert iou(CENTRE, ~CENTRE) == 0.0
    assert iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0.0
    with pytest.raises(ValueError, match="differ in size"):
        iou(CENTRE, np.zeros((2, 2), bool))


def test_masks_resize_by_coverage():
    small = np.array([[1, 0], [0, 1]], bool)
    np.testing.assert_array_equal(resize_mask(small, (4, 4)), np.kron(small, np.ones((2, 2), bool)))
    big = np.zeros((4, 4), bool)
    big[0, :2] = True  # top-left cell: 2 of 4 pixels, exactly the coverage needed
    big[2, 2] = True  # bottom-right cell: 1 of 4, not enough
    np.testing.assert_array_equal(resize_mask(big, (2, 2)), [[True, False], [False, False]])
    np.testing.assert_array_equal(resize_mask(np.full((3, 3), 255, np.uint8), (3, 3)), np.ones((3, 3), bool))


def test_score_map_exact_values_with_painted_and_true_masks_of_other_sizes():
    painted = np.kron(CENTRE, np.ones((2, 2), bool))  # the map's mask painted at 8 x 8
    painted[:2, :2] = True  # plus the top-left cell
    true_mask = np.kron(CENTRE, np.ones((4, 4), np.uint8))  # 16 x 16, as numbers
    score = score_map(HEAT, painted, true_mask=true_mask, word="circle", steps=(0, 5))
    assert score.size == (4, 4) and score.tau == DAAM_TAU == 0.4
    np.testing.assert_array_equal(score.map_mask, CENTRE)
    assert score.iou == 4 / 5 and score.true_iou == 1.0 and score.painted_vs_true == 4 / 5
    picture = score.agreement_image()
    assert (
        picture.shape == (4, 4, 3) and tuple(picture[1, 1]) == (60, 200, 80) and tuple(picture[0, 0]) == (60, 110, 230)
    )
    assert tuple(picture[3, 3]) == (0, 0, 0)
    assert score_map(HEAT, painted, tau=0.2).iou == 4 / 6  # τ = 0.2 lets the 0.3 corner in: 6 in the union
    assert score_map(HEAT, CENTRE).true_iou is None


def test_score_map_resizes_the_heat_map_before_thresholding():
    # bilinear (align_corners=False) 2 x 2 -> 4 x 4 of a single hot corner: 1-D weights [1, .75, .25, 0];
    # the outer product is above 0.4 only on the top-left 2 x 2 (1, .75, .75, .5625).
    painted = np.zeros((4, 4), bool)
    painted[:2, :2] = True
    score = score_map(np.array([[1.0, 0.0], [0.0, 0.0]]), painted, size=(4, 4))
    np.testing.assert_array_equal(score.map_mask, painted)
    assert score.iou == 1.0


def test_empty_painting_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="empty"):
        score_map(HEAT, np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="2-D"):
        score_map(HEAT, np.ones((4, 4, 3), bool))


def test_leaderboard_sorts_bounds_and_ranks():
    a = ScoreEntry("Ada", "circle", "all layers", (0, 10), 0.5)
    b = ScoreEntry("Bo", "red", "1/2 resolution", (0, 5), 0.75, 0.6)
    c = ScoreEntry("Cy", "square", "all layers", (5, 10), 0.5)
    board = Leaderboard(max_entries=2).add(a).add(b)
    assert board.entries == (b, a) and board.rank(a) == 2
    board = board.add(c)  # ties keep the earlier score first: c falls off
    assert board.entries == (b, a) and board.rank(c) is None
    assert board.rows() == [
        [1, "Bo", "red", "1/2 resolution", "0–5", 0.75, 0.6],
        [2, "Ada", "circle", "all layers", "0–10", 0.5, None],
    ]
    assert len(board.rows()[0]) == len(LEADERBOARD_HEADERS)
    assert Leaderboard().add(a).entries == (a,)  # the board itself is immutable: every add is a new board
    with pytest.raises(ValueError):
        Leaderboard(max_entries=0)
    with pytest.raises(ValueError):
        board.add(ScoreEntry("x", "red", "all layers", (0, 1), 1.5))


def test_score_word_uses_the_chosen_steps_of_a_generation(tmp_path):
    tokenizer = build_clip_tokenizer(tmp_path / "tokenizer")
    view = tokenize_prompt(tokenizer, "a red circle")  # slots: BOS, a, red, circle, EOS
    circle = view.words[2].token_indices[0]
    maps = torch.zeros(2, 1, view.n_used, 8, 8)  # (steps, batch, tokens, h, w) at image size: no resampling
    maps[0, 0, circle, :4, :4] = 1.0  # step 0: top-left
    maps[1, 0, circle, 4:, 4:] = 1.0  # step 1: bottom-right
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    captured = CapturedAttention(
        maps={layer: maps.half()},
        layer_resolutions={layer: (8, 8)},
        latent_hw=(8, 8),
        image_hw=(8, 8),
        timesteps=(999.0, 500.0),
        calls_per_step=(1, 1),
        token_count=view.n_used,
        branch=Branch.COND,
        per_head=False,
        layer_heads={layer: 1},
        guided=True,
    )
    image = Image.new("RGB", (8, 8))
    result = GenerationResult(None, (8, 8), image, view, captured, (), False, 2, 0.0, "DDIMScheduler")
    painted = np.zeros((16, 16), bool)
    painted[:8, :8] = True  # top-left, painted at twice the size
    first = score_word(result, "Circle", painted, steps=(0, 1))
    assert first.iou == 1.0 and first.word == "circle" and first.steps == (0, 1) and first.layers == "all layers"
    assert score_word(result, "circle", painted, steps=(1, 2)).iou == 0.0
    assert score_word(result, "circle", painted).iou == 0.5  # both steps: top-left and bottom-right
    assert score_word(result, "circle", painted, downsamples=[1]).layers == "1/1 resolution"
    with pytest.raises(ValueError, match="not a word"):
        score_word(result, "square", painted)
    with pytest.raises(ValueError, match="steps"):
        score_word(result, "circle", painted, steps=(2, 2))
