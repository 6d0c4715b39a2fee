"""Classroom: delete a word and see whether the image changes where the word's attention map points."""

import numpy as np
import pytest
from tiny_pipelines import single_thread

from explain.engine.session import request_pipeline
from explain.steering.causal import delete_word, pearson, share_inside

PROMPT = "a red circle on the left and a blue square on the right"
STEPS = 10
# Measured on the embedded model (seed 0, 10 steps, guidance 5, "square" removed): 44 % of the change lies in the
# word's DAAM mask, which covers 6.5 % of the image (6.8 times its share); r(change, map) = 0.67. The rest is spread
# over the image: without "square" the sentence leaves the world's grammar and the circle changes too.
MIN_SHARE_INSIDE, MIN_CONCENTRATION, MIN_CORRELATION = 0.35, 4.0, 0.5


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


def test_pearson_and_share_inside_exact():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert pearson(a, -a) == pytest.approx(-1.0)
    assert pearson(a, np.ones((2, 2))) is None
    assert pearson(np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])) == pytest.approx(-0.5)
    mask = np.array([[True, False], [False, True]])
    assert share_inside(a, mask) == 5 / 10
    assert share_inside(np.zeros((2, 2)), mask) is None
    with pytest.raises(ValueError):
        pearson(a, np.ones(3))


@pytest.fixture(scope="module")
def deleted(engine):
    pipe = request_pipeline(engine.pipeline())
    return delete_word(pipe, PROMPT, "square", seed=0, steps=STEPS, guidance=engine.recommended_guidance())


def test_deleting_square_changes_the_image_inside_its_map(deleted):
    r = deleted
    assert r.edited_prompt == "a red circle on the left and a blue on the right"
    height, width = r.baseline.shape[:2]
    assert r.change.shape == r.word_map.shape == r.word_mask.shape == (height, width)
    assert r.change.dtype == np.float32 and r.change.min() >= 0 and r.change.max() <= 1
    assert r.share_inside > MIN_SHARE_INSIDE
    assert r.concentration > MIN_CONCENTRATION and r.mask_area < 0.25
    assert r.correlation > MIN_CORRELATION
    assert r.share_outside == pytest.approx(1 - r.share_inside)
    columns = np.arange(width)
    assert (r.word_map.sum(0) @ columns) / r.word_map.sum() > width / 2  # the square's map is on the right
    picture = r.change_image()
    assert picture.dtype == np.uint8 and picture.max() == 255
    assert r.map_overlay().shape == r.change_overlay().shape == (height, width, 3)


def test_unknown_word_is_refused(engine):
    with pytest.raises(ValueError, match="not a word"):
        delete_word(engine.pipeline(), PROMPT, "triangle", steps=2)
