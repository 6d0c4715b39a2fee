"""The shapes world: determinism, caption <-> scene round trip, word spans, true masks, held-out pairs."""

import numpy as np
import pytest

from explain import world


def _scenes(n: int, seed: int = 0, **kwargs) -> list[world.Scene]:
    rng = np.random.default_rng(seed)
    kwargs = {"max_objects": 3, "p_scene": 0.5, "p_style": 0.5, "allow_held_out": True, **kwargs}
    return [world.sample_scene(rng, **kwargs) for _ in range(n)]


def test_make_batch_is_deterministic_in_seed():
    a, b, c = world.make_batch(12, seed=3), world.make_batch(12, seed=3), world.make_batch(12, seed=4)
    for x, y in zip(a, b, strict=True):
        assert x.caption == y.caption and x.scene == y.scene
        assert np.array_equal(x.image, y.image) and np.array_equal(x.masks, y.masks)
    assert [x.caption for x in a] != [x.caption for x in c]


def test_render_shapes_and_dtypes():
    for size in (32, 64, 128):
        (r,) = world.make_batch(1, seed=1, size=size)
        assert r.image.shape == (size, size, 3) and r.image.dtype == np.uint8
        assert r.masks.shape == (len(r.scene.objects), size, size) and r.masks.dtype == bool


def test_caption_parses_back_to_the_same_scene():
    for scene in _scenes(600):
        text, _ = world.caption(scene)
        assert world.parse_prompt(text) == scene, text
        assert world.parse_prompt(text.upper() + ".") == scene  # case and a final full stop do not matter


@pytest.mark.parametrize("text", ["", "a red circle", "a red circle on the moon", "two red circles on the left"])
def test_parse_prompt_rejects_text_outside_the_grammar(text):
    assert world.parse_prompt(text) is None


def test_spans_point_at_the_colour_and_shape_words():
    for scene in _scenes(300, seed=1):
        text, spans = world.caption(scene)
        assert len(spans) == len(scene.objects)
        for obj, span in zip(scene.objects, spans, strict=True):
            assert text[slice(*span["color"])] == obj.color
            assert text[slice(*span["shape"])] == obj.shape
            for start, end in span.values():  # whole words, not substrings
                assert start == 0 or text[start - 1] == " "
                assert end == len(text) or text[end] in " ,"
        starts = [s["color"][0] for s in spans]
        assert starts == sorted(starts)  # objects are captioned in order


def test_masks_are_non_empty_and_disjoint():
    rng = np.random.default_rng(2)
    for scene in _scenes(200, seed=2):
        r = world.render(scene, 64, rng)
        assert r.masks.sum(axis=(1, 2)).min() > 0, r.caption
        assert r.masks.sum(axis=0).max() <= 1, r.caption  # no pixel belongs to two objects


def test_mask_is_where_the_object_colour_is():
    (r,) = world.make_batch(1, seed=5, p_scene=0.0, p_style=0.0)
    for obj, mask in zip(r.scene.objects, r.masks, strict=True):
        inside = r.image[mask].astype(float).mean(axis=0)
        assert np.abs(inside - world.COLORS[obj.color]).max() < 25


def test_held_out_pairs_are_never_sampled_unless_allowed():
    pairs = {(o.color, o.shape) for s in _scenes(4000, seed=3, allow_held_out=False) for o in s.objects}
    assert not pairs & world.HELD_OUT_PAIRS
    assert len(pairs) == len(world.COLORS) * len(world.SHAPES) - len(world.HELD_OUT_PAIRS)
    allowed = {(o.color, o.shape) for s in _scenes(4000, seed=3) for o in s.objects}
    assert allowed >= world.HELD_OUT_PAIRS


def test_colours_are_distinct_within_a_scene():
    for scene in _scenes(500, seed=4):
        colors = [o.color for o in scene.objects]
        assert len(colors) == len(set(colors))
