"""The evaluation judge (training.judge), the prompt set (training.prompts) and the scoring of training.evaluate."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from explain import world
from training import judge as J
from training.evaluate import Sample, _word_index, adherence, attention_miou
from training.prompts import KINDS, prompt_set


def _renders(n: int, seed: int, **kwargs) -> list[world.RenderedScene]:
    rng = np.random.default_rng(seed)
    kwargs = {"max_objects": 2, "p_scene": 0.4, "p_style": 0.4, "allow_held_out": True, **kwargs}
    return [world.render(world.sample_scene(rng, **kwargs), 64, rng) for _ in range(n)]


@pytest.fixture(scope="module")
def renders():
    return _renders(120, seed=2024)


def _replace(scene: world.Scene, i: int, **changes) -> world.Scene:
    objects = list(scene.objects)
    objects[i] = dataclasses.replace(objects[i], **changes)
    return dataclasses.replace(scene, objects=tuple(objects))


# ---------------------------------------------------------------------------------------------------------------
# Judge.


def test_judge_accepts_ground_truth_renders(renders):
    verdicts = [J.judge(r.image, r.caption) for r in renders]
    assert np.mean([v.ok for v in verdicts]) >= 0.95
    ious = [
        (ov.matched_mask & m).sum() / (ov.matched_mask | m).sum()
        for r, v in zip(renders, verdicts, strict=True)
        for ov, m in zip(v.objects, r.masks, strict=True)
        if ov.detected is not None
    ]
    assert np.mean(ious) > 0.85


def test_judge_tolerates_generator_like_degradation():
    rng = np.random.default_rng(7)
    renders = _renders(60, seed=7, p_style=0.0)
    ok = [J.judge(J.degrade(r.image, rng), r.caption).ok for r in renders]
    assert np.mean(ok) >= 0.85


def test_judge_rejects_a_wrong_colour(renders):
    for r in renders[:30]:
        used = {o.color for o in r.scene.objects}
        other = next(c for c in world.COLORS if c not in used)
        v = J.judge(r.image, _replace(r.scene, 0, color=other))
        assert not v.ok and not v.objects[0].color_ok
        assert any(e.color == r.scene.objects[0].color for e in v.extras)  # the real object is an extra


def test_judge_rejects_a_wrong_position(renders):
    for r in renders[:30]:
        taken = {o.position for o in r.scene.objects}
        other = next(p for p in world.POSITIONS if p not in taken)
        v = J.judge(r.image, _replace(r.scene, 0, position=other))
        assert not v.ok and v.objects[0].color_ok and not v.objects[0].position_ok


def test_judge_rejects_a_wrong_shape(renders):
    rejected = []
    for r in renders[:40]:
        other = world.SHAPES[(world.SHAPES.index(r.scene.objects[0].shape) + 1) % len(world.SHAPES)]
        rejected.append(not J.judge(r.image, _replace(r.scene, 0, shape=other)).ok)
    assert np.mean(rejected) >= 0.95


def test_judge_flags_an_extra_object():
    (r,) = _renders(1, seed=3, p_scene=0.0, p_style=0.0, max_objects=1)
    scene = world.Scene(objects=(world.WorldObject("red", "circle", "on the left"),))
    two = world.Scene(objects=(*scene.objects, world.WorldObject("blue", "square", "on the right")))
    image = world.render(two, 64).image
    assert J.judge(world.render(scene, 64).image, scene).ok
    v = J.judge(image, scene)
    assert v.objects[0].ok and not v.ok and [e.color for e in v.extras] == ["blue"]


@pytest.mark.parametrize("backdrop", [None, *world.SCENES])
def test_empty_backgrounds_hold_no_objects(backdrop):
    for seed in range(3):
        image = world.render(world.Scene(objects=(), scene=backdrop), 64, np.random.default_rng(seed)).image
        assert J.detect(image) == []


def test_detect_other_sizes_and_pil_input():
    scene = world.Scene(objects=(world.WorldObject("purple", "star", "at the top", "big"),), style="striped")
    for size in (48, 128):
        image = world.render(scene, size).image
        (obj,) = J.detect(Image.fromarray(image))
        assert (obj.color, obj.shape) == ("purple", "star") and obj.mask.shape == (size, size)
        assert J.position_ok("at the top", obj.centroid)


def test_judge_rejects_text_outside_the_grammar():
    with pytest.raises(ValueError, match="grammar"):
        J.judge(np.zeros((64, 64, 3), np.uint8), "a photo of a cat")


def test_classifier_constants_match_the_features():
    clf = J._SHAPE_CLASSIFIER
    assert len(clf.mean) == len(clf.std) == len(J.FEATURE_NAMES)
    assert len(clf.weights) == len(J.FEATURE_NAMES) + 1 and len(clf.weights[0]) == len(world.SHAPES)


def test_position_bands_contain_the_world_positions():
    for phrase, centre in world.POSITIONS.items():
        assert J.position_ok(phrase, centre)
        others = [p for p in world.POSITIONS if p != phrase]
        assert not any(J.position_ok(p, centre) for p in others)


# ---------------------------------------------------------------------------------------------------------------
# Prompt set.


def test_prompt_set_size_kinds_and_determinism():
    prompts = prompt_set()
    assert len(prompts) >= 100
    assert prompt_set() == prompts
    assert {p.kind for p in prompts} == set(KINDS)
    assert len({p.prompt for p in prompts}) == len(prompts)
    for p in prompts:
        assert world.parse_prompt(p.prompt) == p.scene
        held = any((o.color, o.shape) in world.HELD_OUT_PAIRS for o in p.scene.objects)
        assert held == p.kind.startswith("held_out")
        assert len(p.scene.objects) == (1 if p.kind.endswith("single") else 2) or p.kind == "styled"
        assert bool(p.scene.scene or p.scene.style) == (p.kind == "styled")


def test_single_prompts_cover_every_attribute():
    singles = [p.scene.objects[0] for p in prompt_set() if p.kind == "single"]
    assert {(o.color, o.shape) for o in singles} == {
        (c, s) for c in world.COLORS for s in world.SHAPES if (c, s) not in world.HELD_OUT_PAIRS
    }
    assert {o.position for o in singles} == set(world.POSITIONS)
    assert {o.size for o in singles} == {None, "small", "big"}
    held = {(o.color, o.shape) for p in prompt_set() if p.kind == "held_out_single" for o in p.scene.objects}
    assert held == set(world.HELD_OUT_PAIRS)


# ---------------------------------------------------------------------------------------------------------------
# Scoring (no model: ground-truth renders stand in for generated images, true masks for attention maps).


def test_scores_on_ground_truth_renders():
    prompts = [p for p in prompt_set() if p.kind == "single"][:6] + [p for p in prompt_set() if p.kind == "two"][:6]
    samples, verdicts = [], []
    for p in prompts:
        r = world.render(p.scene, 64)
        maps = tuple({"color": m.astype(np.float32), "shape": m.astype(np.float32)} for m in r.masks)
        samples.append(Sample(prompt=p, seed=0, image=r.image, object_maps=maps))
        verdicts.append(J.judge(r.image, p.scene))
    report = adherence(samples, verdicts)
    assert report["overall"] == 1.0 and report["attributes"] == {"color": 1.0, "shape": 1.0, "position": 1.0}
    assert set(report["per_kind"]) == {"single", "two"}
    att = attention_miou(samples, verdicts)
    assert att["miou"] > 0.85 and att["n_pairs"]["color"] == sum(len(p.scene.objects) for p in prompts)


def test_word_index_picks_the_right_occurrence():
    words = ["a", "red", "circle", "on", "the", "left", "and", "a", "blue", "circle", "on", "the", "right"]
    assert _word_index(words, "circle", 0) == 2 and _word_index(words, "circle", 1) == 9
    assert _word_index(words, "star", 0) is None


def test_generate_samples_on_a_tiny_pipeline(tmp_path):
    from tiny_pipelines import build_sd1, single_thread

    from training.evaluate import generate_samples

    pipe = build_sd1(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    prompts = [p for p in prompt_set() if p.kind == "two"][:2]
    with single_thread():
        samples = generate_samples(pipe, prompts, seeds=1, steps=2, guidance=5.0, keep_word_maps={(0, 0)})
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert [s.prompt for s in samples] == prompts
    for s in samples:
        assert s.image.shape == (size, size, 3) and s.image.dtype == np.uint8
        assert all(set(m) == {"color", "shape"} for m in s.object_maps)
        assert all(np.isfinite(m).all() for d in s.object_maps for m in d.values())
    assert samples[0].word_maps is not None and samples[1].word_maps is None  # kept for the strip figure only
    assert prompts[0].scene.objects[0].color in samples[0].words
    assert samples[0].word_maps.shape == (len(samples[0].words), size, size)
