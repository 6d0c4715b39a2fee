"""What the app shows of a model's world (explain.world.content): every prompt is a sentence of its world's grammar
made of words its models know, the world comes from the model directory, and the app's forms and presets follow it."""

import json
import shutil

import gradio as gr
import pytest

from explain.diffusion.loading import EMBEDDED_MODEL_DIR
from explain.engine.session import Engine
from explain.world import lexicon
from explain.world.content import EMOJI, SHAPES, WORLDS, model_world, world_content


def _prompts(content):
    return [
        content.default_prompt,
        content.suggestion,
        *(p.prompt for p in content.presets),
        *(z.prompt for z in content.zero_shot),
        *(c for z in content.zero_shot for c in z.candidates),
    ]


@pytest.mark.parametrize("name", sorted(WORLDS))
def test_every_prompt_of_a_world_is_a_sentence_of_its_grammar(name):
    content = WORLDS[name]
    unparsed = [p for p in _prompts(content) if content.module.parse_prompt(p) is None]
    assert unparsed == []
    words = content.default_prompt.split()
    steer = content.steer
    for word in (content.focus_word, steer.delete, steer.causal, *(w for w, _ in steer.reweight)):
        assert word in words, word
    assert all(old in words for old, _, _ in steer.swap)
    for z in content.zero_shot:  # the drawn scene's caption (size aside) is one of the candidates
        assert z.prompt.replace("big ", "") in z.candidates and len(set(z.candidates)) == len(z.candidates)


def test_the_emoji_world_s_prompts_use_only_its_vocabulary_and_include_the_lesson_s_examples():
    known = lexicon.vocabulary_words()
    used = {w for p in _prompts(EMOJI) for w in p.replace(",", " ").split()}
    used |= {new for _, new, _ in EMOJI.steer.swap}
    assert used - known == set()
    presets = {p.prompt for p in EMOJI.presets}
    assert {"a cat wearing sunglasses", "a cute dog", "a bowl of ramen"} <= presets


def test_a_world_draws_its_prompts_and_samples_at_its_size():
    for content, side in ((SHAPES, 64), (EMOJI, 128)):
        image = content.draw(content.default_prompt)
        assert image.shape == (side, side, 3) and image.std() > 10  # something is drawn
        samples = content.samples(3, 0)
        assert len(samples) == 3 and samples[0].image.shape == (side, side, 3)
        assert [s.caption for s in content.samples(3, 0)] == [s.caption for s in samples]  # deterministic in the seed
        assert [s.caption for s in content.samples(3, 1)] != [s.caption for s in samples]
    with pytest.raises(ValueError, match="grammar"):
        EMOJI.draw("a unicorn")


def test_the_world_comes_from_the_model_directory(tmp_path):
    assert model_world(tmp_path) is None  # no explorer.json: not one of ours
    (tmp_path / "explorer.json").write_text(json.dumps({"guidance": 5.0}))
    assert model_world(tmp_path) == "shapes"  # an embedded model from before the key
    (tmp_path / "explorer.json").write_text(json.dumps({"world": "emoji"}))
    assert model_world(tmp_path) == "emoji"
    assert model_world(EMBEDDED_MODEL_DIR) == "shapes"
    assert world_content(None) is EMOJI and world_content("shapes") is SHAPES
    with pytest.raises(ValueError, match="unknown world"):
        world_content("cubes")


@pytest.fixture(scope="module")
def emoji_model(tiny_sd1_dir, tmp_path_factory):
    """The tiny SD-1 pipeline directory, saying it was trained on world v2."""
    model = tmp_path_factory.mktemp("emoji") / "pipe"
    shutil.copytree(tiny_sd1_dir, model)
    (model / "explorer.json").write_text(json.dumps({"world": "emoji"}))
    return model


def test_the_engine_names_the_world_of_its_model_and_of_its_clip(engine, emoji_model, tiny_sd1_dir):
    assert engine.world() is SHAPES and engine.clip_world() is SHAPES
    assert Engine(str(emoji_model)).world() is EMOJI
    assert Engine(str(emoji_model)).clip_world() is SHAPES  # no CLIP of its own: tab 1 uses the embedded one's
    assert Engine(str(tiny_sd1_dir)).world() is EMOJI  # a real checkpoint: plain-English prompts


def _values(demo: gr.Blocks) -> tuple[set, list]:
    """The textboxes' values and every example row of the app."""
    texts, rows = set(), []
    for block in demo.blocks.values():
        if isinstance(block, gr.Textbox):
            texts.add(block.value)
        if isinstance(block, gr.Dataset):
            rows += [str(cell) for sample in block.samples for cell in sample]
    return texts, rows


def test_the_app_s_forms_and_presets_follow_the_model_s_world(emoji_model, engine, monkeypatch, tmp_path):
    from demo.app import build_demo

    monkeypatch.setenv("GRADIO_EXAMPLES_CACHE", str(tmp_path))
    texts, rows = _values(build_demo(Engine(str(emoji_model), device="cpu")))
    assert EMOJI.default_prompt in texts and SHAPES.default_prompt not in texts
    assert "a cat wearing sunglasses" in rows and "a cute dog" in rows
    assert EMOJI.steer.reweight[0][0] in texts and EMOJI.steer.causal in texts  # tab 4 starts on the world's words
    assert "\n".join(SHAPES.default_candidates) in texts  # tab 1's CLIP is the embedded (shapes) one
    texts, rows = _values(build_demo(engine))
    assert SHAPES.default_prompt in texts and "a cat wearing sunglasses" not in rows
