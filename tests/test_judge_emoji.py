"""The world-v2 judge: true captions of clean renders pass, captions with one word changed fail."""

import numpy as np
import pytest

from explain.world import emoji
from training import judge_emoji

CASES = [
    ("a cat wearing sunglasses on the left", "a cat wearing a crown on the left"),
    ("a bowl of ramen on the right", "a pizza on the right"),
    ("two apples at the top", "three apples at the top"),
    ("a red balloon in the bottom left", "a blue balloon in the bottom left"),
    ("a dog in the top right at night", "a dog in the top right underwater"),
    ("a big robot on the left", "a big robot on the right"),
]


@pytest.mark.parametrize(("true", "changed"), CASES)
def test_true_caption_passes_and_one_changed_word_fails(true, changed):
    r = emoji.render(emoji.parse_prompt(true), emoji.IMAGE_SIZE, np.random.default_rng(1))
    assert judge_emoji.judge(r.image, true).ok
    assert not judge_emoji.judge(r.image, changed).ok


def test_judged_mask_overlaps_the_true_mask():
    r = emoji.render(emoji.parse_prompt("a big lion in the center"), emoji.IMAGE_SIZE, np.random.default_rng(2))
    v = judge_emoji.judge(r.image, r.scene)
    m = judge_emoji.thing_mask(v.things[0], emoji.IMAGE_SIZE)
    iou = (m & r.masks[0]).sum() / (m | r.masks[0]).sum()
    assert iou > 0.7


@pytest.mark.parametrize("prompt", [true for true, _ in CASES if "balloon" not in true])
def test_a_blob_in_the_right_place_is_not_the_thing(prompt):
    """What an undertrained model draws (the CPU checkpoints: brown sprite-shaped blobs where the things belong)
    must fail, as the true render of the same scene passes."""
    rng = np.random.default_rng(3)
    r = emoji.render(emoji.parse_prompt(prompt), emoji.IMAGE_SIZE, rng)
    assert judge_emoji.judge(r.image, prompt).ok
    assert not judge_emoji.judge(judge_emoji.blob(r, rng), prompt).ok


def test_a_blank_canvas_shows_nothing():
    blank = np.full((128, 128, 3), emoji.BACKGROUND, np.uint8)
    v = judge_emoji.judge(blank, "a cat")
    assert not v.ok and v.things[0].found == 0


def test_prompts_outside_the_grammar_are_refused():
    with pytest.raises(ValueError, match="grammar"):
        judge_emoji.judge(np.zeros((128, 128, 3), np.uint8), "a unicorn")
