"""World v2: emoji sprites from the committed atlas, captions with labelled words, exact masks, the grammar."""

import numpy as np
import pytest

from explain.world import atlas, emoji
from explain.world import lexicon as lx
from training.data import render_split, span_token_indices


def _scenes(n, seed=0):
    rng = np.random.default_rng(seed)
    return [emoji.render(emoji.sample_scene(rng), emoji.IMAGE_SIZE, rng) for _ in range(n)]


def test_atlas_holds_every_sprite_the_lexicon_names_without_the_font():
    sprites = atlas.sprites()
    names = {name for n in lx.NOUNS.values() for name in n.sprites}
    assert names <= set(sprites)
    for name in names:
        s = sprites[name]
        assert s.rgba.shape[2] == 4 and max(s.rgba.shape[:2]) == 80  # cropped to the alpha box, longest side 80
        assert s.rgba[..., 3].max() > 0.99 and s.code_point.startswith("U+")
    assert "Apache" in (atlas.ASSETS / "NOTICE").read_text()


def test_core_vocabulary_of_world2_is_there():
    for word in ("cat", "dog", "ramen", "sunglasses", "hat", "pizza", "robot", "ghost", "circle", "heart"):
        assert word in lx.NOUNS
    assert len([n for n in lx.NOUNS.values() if n.group != "shapes"]) >= 63
    assert {"cat", "dog", "frog", "penguin", "monkey", "lion", "owl", "mouse", "pig", "cow", "robot", "ghost"} == set(
        emoji.WEARER_NOUNS
    )


def test_rendering_is_deterministic_per_generator():
    a = emoji.render(emoji.sample_scene(np.random.default_rng(3)), 128, np.random.default_rng(4))
    b = emoji.render(emoji.sample_scene(np.random.default_rng(3)), 128, np.random.default_rng(4))
    assert a.caption == b.caption and np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)


@pytest.mark.parametrize(
    "prompt",
    [
        "a cat wearing sunglasses",
        "a cute dog",
        "a bowl of ramen",
        "two apples at the top and a small dog at the bottom",
        "a bird above a house",
        "a cat wearing sunglasses on the left and a bowl of ramen on the right",
        "three red balloons in space",
        "a frog wearing a crown, as a sketch",
        "a big blue umbrella in the top left on the beach, outlined",
    ],
)
def test_the_grammar_examples_parse_and_caption_back(prompt):
    scene = emoji.parse_prompt(prompt)
    assert scene is not None
    assert emoji.caption(scene)[0] == prompt


def test_words_outside_the_grammar_do_not_parse():
    for bad in (
        "a unicorn",
        "a cat wearing a dog",
        "two cats on the moon please",
        "a cat on",
        "a green cat",
        "a car wearing a hat",
    ):
        assert emoji.parse_prompt(bad) is None


def test_sampled_captions_round_trip_and_label_their_words():
    for r in _scenes(150):
        assert emoji.caption(emoji.parse_prompt(r.caption))[0] == r.caption
        for w in r.words:
            assert r.caption[w.span[0] : w.span[1]] == w.text
            assert 0 <= w.mask < len(r.masks)
        nouns = [w for w in r.words if w.role == "noun"]
        assert len(nouns) == len(r.scene.things)


def test_masks_are_the_visible_sprite_pixels_and_disjoint():
    for r in _scenes(60, seed=1):
        assert r.masks.shape == (len(r.scene.things) + sum(bool(t.wearing) for t in r.scene.things), 128, 128)
        assert (r.masks.sum(0) <= 1).all()  # occlusion: a pixel belongs to one thing at most
        assert all(m.sum() > 20 for m in r.masks)
        background = ~r.masks.any(0)
        for m in r.masks:  # a thing's pixels differ from the plain background around them
            if r.scene.scene is None and r.scene.style is None:
                diff = np.abs(r.image[m].astype(int) - np.array(emoji.BACKGROUND)).sum(1)
                assert np.median(diff) > 20
        assert background.any()


def test_wearables_sit_on_their_wearer():
    scene = emoji.parse_prompt("a dog wearing sunglasses in the center")
    r = emoji.render(scene, 128, np.random.default_rng(0))
    dog, glasses = r.boxes[0], r.boxes[1]
    cx, cy = (glasses[0] + glasses[2]) / 2, (glasses[1] + glasses[3]) / 2
    assert dog[0] < cx < dog[2] and dog[1] < cy < (dog[1] + dog[3]) / 2 + 5  # over the upper half: the eyes
    hat = emoji.render(emoji.parse_prompt("a cat wearing a hat"), 128, np.random.default_rng(0))
    assert hat.boxes[1][1] < hat.boxes[0][1]  # the hat starts above the cat's head


def test_counts_relations_and_positions_are_drawn():
    r = emoji.render(emoji.parse_prompt("three cherries on the left"), 128, np.random.default_rng(0))
    assert r.instances == (3,)
    ys, xs = np.nonzero(r.masks[0])
    assert xs.mean() < 64
    r = emoji.render(emoji.parse_prompt("a bird above a house"), 128, np.random.default_rng(0))
    bird_y = np.nonzero(r.masks[0])[0].mean()
    house_y = np.nonzero(r.masks[1])[0].mean()
    assert bird_y < house_y - 10


def test_training_data_ground_each_word_to_its_mask():
    d = render_split(6, seed=0, split="val", size=128, max_objects=3, world_name="emoji", latent_factor=8)
    assert d.images.shape == (6, 128, 128, 3) and d.obj_masks.shape[-2:] == (16, 16)
    rng = np.random.default_rng([0, 1, 0])
    r = emoji.render(emoji.sample_scene(rng, max_things=3), 128, rng)
    assert d.captions[0] == r.caption
    noun = next(w for w in r.words if w.role == "noun")
    assert set(span_token_indices(r.caption, noun.span)) <= set(d.obj_tokens[0, noun.mask].tolist())
    assert d.obj_masks[0, noun.mask].max() > 0
