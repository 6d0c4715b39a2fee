"""The app's handlers called directly (no server) on the embedded model: outputs, and gr.Error for bad input."""

import json
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from demo.tab_attend import AttendTab
from demo.tab_clip import ClipTab
from demo.tab_noise import NoiseTab
from demo.tab_steer import SteerTab
from explain.engine.session import GenerationResult

PROMPT = "a big red circle on the left and a small blue triangle on the right"
STEPS = 4


@pytest.fixture(scope="module")
def attend(engine):
    return AttendTab(engine)


@pytest.fixture(scope="module")
def generated(attend):
    """(streamed outputs, final outputs) of one generation through the Denoise tab's handler."""
    outputs = list(attend.generate(PROMPT, "", 2, STEPS, 7.5, "DDIM", 64, 64, gr.Request(session_hash="handlers")))
    return outputs[:-1], outputs[-1]


def _not_image(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    return str(path)


# -- CLIP tab ---------------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:The prompt is too long")
def test_tokenize_shows_slots_and_warns_when_truncated(engine):
    html, rows, summary = ClipTab(engine).tokenize("a ginormous cube")
    assert 'class="slot bos"' in html and "padding" in html
    assert [r[2] for r in rows] == ["bos", "word", "word", "word", "word", "word", "eos"]
    assert {r[3] for r in rows if r[2] == "word"} == {"a", "ginormous", "cube"}
    assert summary.startswith("**7 of 77 slots used**")
    _, _, long_summary = ClipTab(engine).tokenize("red " * 90)
    assert "Truncated" in long_summary
    with pytest.raises(gr.Error, match="empty"):
        ClipTab(engine).tokenize("   ")


def test_tokenize_marks_words_the_model_never_saw(engine):
    html, _, summary = ClipTab(engine).tokenize("a red unicorn")
    assert html.count('class="slot word unknown"') == 1 and "unicorn" in html.split("unknown")[-1]
    assert "`unicorn` is not a word this model has seen" in summary
    html, _, summary = ClipTab(engine).tokenize("a red circle")
    assert "unknown" not in html and "not a word" not in summary


def test_clip_batch_runs_the_pseudocode(engine, tmp_path):
    tab = ClipTab(engine)
    gallery, texts = tab.sample_batch(3, 0)
    assert len(gallery) == 3 and len(texts.splitlines()) == 3
    fig, code, rows, cols, summary = tab.run_clip(3, 0, None, "", True, 5.0)
    assert isinstance(fig, Figure)
    for name in ("I_f", "T_f", "I_e", "T_e", "logits", "loss_i", "loss_t", "exp(t) = 5.00"):
        assert name in code
    assert rows["headers"] == ["", "T1", "T2", "T3"]
    probs = np.array([r[1:] for r in rows["data"]], dtype=float)
    assert np.allclose(probs.sum(axis=1), 1, atol=0.01)  # row softmax
    assert np.allclose(np.array([r[1:] for r in cols["data"]], dtype=float).sum(axis=0), 1, atol=0.01)
    assert "loss =" in summary
    upload = tmp_path / "mine.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(upload)
    assert (
        tab.run_clip(1, 0, [str(upload)], texts.splitlines()[0] + "\na black square", False, 10)[2]["headers"][-1]
        == "T2"
    )
    with pytest.raises(gr.Error, match="one caption per line"):
        tab.run_clip(2, 0, None, "only one caption", False, 10)
    with pytest.raises(gr.Error, match="not an image"):
        tab.run_clip(1, 0, [_not_image(tmp_path)], "a\nb", False, 10)
    with pytest.raises(gr.Error, match="world samples"):
        tab.run_clip(0, 0, None, "", False, 10)


def test_zero_shot_and_text_states(engine):
    tab = ClipTab(engine)
    from explain.world import Scene, WorldObject, render

    image = Image.fromarray(render(Scene((WorldObject("red", "heart", "in the center", "big"),))).image)
    scores = tab.zero_shot(image, "a red heart in the center\na red square in the center")
    assert set(scores) == {"a red heart in the center", "a red square in the center"}
    assert abs(sum(scores.values()) - 1) < 1e-5
    with pytest.raises(gr.Error, match="at least two"):
        tab.zero_shot(image, "just one")
    with pytest.raises(gr.Error, match="Upload an image"):
        tab.zero_shot(None, "a\nb")
    text, rows = tab.text_states("a red circle")
    assert "[1, 77," in text and any("pooled" in str(r[-1]) for r in rows)


# -- Noise tab ---------------------------------------------------------------------------------------------------------
def test_markov_and_strength(engine):
    tab = NoiseTab(engine)
    fig, text = tab.markov(10, 50, "sunny", 0)
    assert isinstance(fig, Figure) and "Stationary π" in text
    with pytest.raises(gr.Error, match="T must be"):
        tab.markov(0, 50, "sunny", 0)
    text, fig = tab.strength(0.5, 20)
    assert "run **10**" in text and isinstance(fig, Figure)
    with pytest.raises(gr.Error, match="strength"):
        tab.strength(1.5, 20)


def test_noise_image_and_animation(engine, tmp_path):
    tab = NoiseTab(engine)
    strip, schedule, text = tab.noise_image("world sample", 3, None, 500, 0)
    assert isinstance(strip, Figure) and isinstance(schedule, Figure) and "t = 500" in text
    gif = Image.open(tab.noise_animation("world sample", 3, None, 0))
    assert gif.format == "GIF" and gif.n_frames > 10
    upload = tmp_path / "up.png"
    Image.fromarray(np.full((90, 120, 3), 200, np.uint8)).save(upload)
    assert isinstance(tab.noise_image("upload", 0, str(upload), 10, 0)[0], Figure)
    with pytest.raises(gr.Error, match="t must lie"):
        tab.noise_image("world sample", 3, None, 5000, 0)
    with pytest.raises(gr.Error, match="not an image"):
        tab.noise_image("upload", 0, _not_image(tmp_path), 10, 0)
    with pytest.raises(gr.Error, match="No image"):
        tab.noise_image("upload", 0, None, 10, 0)


# -- Denoise & attend tab -----------------------------------------------------------------------------------------------
def test_generate_streams_previews_then_everything(generated):
    streamed, final = generated
    assert len(streamed) == STEPS
    preview, status, *rest = streamed[0]
    assert preview.shape == (64, 64, 3) and "Step **1 / 4**" in status
    state, gallery, pair, film, *controls = rest  # the previous run's maps, pair and film are cleared meanwhile
    assert (gallery, pair, film) == (None, None, None)
    assert all(isinstance(x, type(gr.skip())) for x in (state, *controls))
    image, status, state, gallery, pair, film, *_updates, qkv = final
    assert isinstance(image, Image.Image) and "Done: 4 steps with DDIMScheduler" in status
    assert isinstance(state, GenerationResult)
    assert [caption for _, caption in gallery] == [
        "“big”",
        "“red”",
        "“circle”",
        "“left”",
        "“small”",
        "“blue”",
        "“triangle”",
        "“right”",
    ]
    assert len(pair) == 2 and Image.open(film).n_frames == STEPS
    assert "**Q** = features · W_q" in qkv and "[256 × 64]" in qkv  # 16 x 16 positions, 64 channels


def test_maps_qkv_export_and_permalink(attend, generated, tmp_path):
    state = generated[1][2]
    gallery, masks, pair, info = attend.maps(state, 1, False, ["up"], [1], ["0", "2"], "softmax", 0.3, False)
    assert "step 2 of 4" in info and "heads 0, 2" in info
    assert len(gallery) == len(masks) == len(state.view.words)
    with pytest.raises(gr.Error, match="no cross-attention layer"):
        attend.maps(state, 0, True, ["mid"], [1], [], "minmax", 0)
    with pytest.raises(gr.Error, match="Generate an image first"):
        attend.maps(None, 0, True, [], [], [], "minmax", 0)
    assert "4 heads" in attend.qkv(state, "mid_block.attentions.0.transformer_blocks.0.attn2")
    with pytest.raises(gr.Error, match="not a cross-attention layer"):
        attend.qkv(state, "nope")
    grid, film, npz, settings, link = attend.export(
        state, 0, True, [], [], [], "minmax", 0.4, True, "cross", gr.Request()
    )
    assert Image.open(grid).format == "PNG" and Image.open(film).format == "GIF"
    assert "cube" in np.load(npz).files and json.loads(Path(settings).read_text())["seed"] == 2
    assert link.startswith("?tab=attend&prompt=a+big+red") and "seed=2" in link and "scheduler=DDIM" in link


def test_generate_rejects_bad_input(attend):
    request = gr.Request(session_hash="bad")
    for args, message in [
        (("", "", 0, 4, 7.5, "default", 64, 64), "prompt is empty"),
        ((PROMPT, "", 0, 0, 7.5, "default", 64, 64), "steps"),
        ((PROMPT, "", 0, 4, 7.5, "default", 4096, 64), "height"),
        ((PROMPT, "", 0.5, 4, 7.5, "default", 64, 64), "whole number"),
        (("word " * 100, "", 0, 4, 7.5, "default", 64, 64), "tokens long"),
    ]:
        with pytest.raises(gr.Error, match=message):
            next(attend.generate(*args, request))
    assert attend.stop(request) == "Nothing is running."


def test_permalink_round_trip(attend):
    link = attend.permalink("a red star", "blurry", 5, 12, 3.0, "Euler", 64, 64)
    query = dict(pair.split("=") for pair in link.lstrip("?").split("&"))
    restored = attend.from_url(gr.Request(query_params={**query, "prompt": "a red star", "negative": "blurry"}))
    assert restored[:8] == ("a red star", "blurry", 5, 12, 3.0, "Euler", 64, 64)
    empty = attend.from_url(gr.Request(query_params={}))
    assert all(isinstance(x, type(gr.skip())) for x in empty)


# -- Steer tab --------------------------------------------------------------------------------------------------------
def test_steer_handlers(engine):
    tab = SteerTab(engine)
    images, maps, summary = tab.reweight(PROMPT, "red", 0.0, 0, 3, 7.5)
    assert [caption for _, caption in images] == ["baseline", "“red” ×0", "|difference| ×3"]
    assert len(maps) == 2 and "Mean |difference|" in summary
    with pytest.raises(gr.Error, match="not a word of the prompt"):
        tab.reweight(PROMPT, "dragon", 2.0, 0, 3, 7.5)
    images, _, summary = tab.swap(PROMPT, "circle", "square", 2, 0, 3, 7.5)
    assert "square on the left" in summary and "not a word this model has seen" not in summary
    _, _, summary = tab.swap(PROMPT, "circle", "unicorn", 2, 0, 3, 7.5)  # swapped in: a word it never saw
    assert "`unicorn` is not a word this model has seen" in summary
    images, _, _ = tab.drop(PROMPT, "blue", "remove", 0, 3, 7.5)
    assert len(images) == 3
    strip = tab.sweep(PROMPT, 0, 3, "1, 7.5")
    assert [caption for _, caption in strip] == ["guidance 1 (off)", "guidance 7.5"]
    with pytest.raises(
        gr.Error, match=r"guidance scales must be 1 to 8 numbers from 0 to 30, .*'lots' is not a number\."
    ):
        tab.sweep(PROMPT, 0, 3, "1, lots")
