"""Tab 3 (and the tabs around it) on SD3 / Flux: the kinds of word map of joint attention (explain.maps.joint_views),
the handlers on tiny random MMDiT pipelines built in code, and clear answers where an experiment does not apply."""

import json
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from tiny_mmdit import TINY_HW, build_flux, build_sd3

from demo.tab_attend import AttendTab
from demo.tab_clip import ClipTab
from demo.tab_steer import SteerTab
from explain.engine.requests import GenerationRequest
from explain.engine.session import Engine, generate
from explain.joint.recording import FILM_NOT_RECORDED
from explain.maps.joint_views import JOINT_MAP_KINDS, joint_image_maps, joint_layer_shapes
from explain.maps.views import word_maps
from explain.steering.causal import delete_word
from explain.steering.experiments import steer_reweight, steer_swap

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a red cube on the grass"
CONTENT = ["red", "cube", "grass"]  # the tab hides function words by default
STEPS, SEED = 2, 3


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """kind -> an Engine on a saved tiny pipeline (the app's loading path)."""
    out = {}
    for kind, builder in (("sd3", build_sd3), ("flux", build_flux)):
        root = tmp_path_factory.mktemp(kind)
        builder(root / "build").save_pretrained(root / "pipe")
        out[kind] = Engine(str(root / "pipe"), device="cpu")
    return out


@pytest.fixture(scope="module")
def results(engines):
    """kind -> a GenerationResult of the session's generate (what tab 3 runs)."""
    request = GenerationRequest(PROMPT, seed=SEED, steps=STEPS, guidance=2.0, height=TINY_HW, width=TINY_HW)
    return {kind: generate(engine.pipeline(), request) for kind, engine in engines.items()}


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_a_joint_run_records_token_and_concept_maps_and_says_what_it_did_not(results, kind):
    result = results[kind]
    assert result.captured is None and result.frames == ()
    assert result.joint is not None and result.notes == (FILM_NOT_RECORDED,)
    assert result.joint.concepts.concepts == ("a", "red", "cube", "on", "the", "grass")  # the prompt's words
    assert not result.joint.maps.per_head  # heads averaged while recording (memory)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_the_three_kinds_of_map_obey_their_definitions(results, kind):
    joint = results[kind].joint
    text, share = (joint_image_maps(joint, k) for k in ("text", "joint"))
    concept = joint_image_maps(joint, "concept")
    assert text.word_maps.shape == (6, TINY_HW, TINY_HW) == concept.word_maps.shape
    # on the token grid: TEXT = JOINT / (text mass) with mass <= 1, so renormalised maps are never smaller
    grid_text, grid_share = joint.word_maps(joint.normalization), joint.word_maps(type(joint.normalization)("joint"))
    assert torch.all(grid_text >= grid_share - 1e-6) and torch.any(grid_text > grid_share * 1.5)
    assert not torch.allclose(text.word_maps, share.word_maps)
    # ConceptAttention: a softmax over the concepts at every image token
    grid_concept = joint.concepts.maps()[0]
    torch.testing.assert_close(grid_concept.sum(0), torch.ones(joint.concepts.grid_hw))
    assert not torch.allclose(concept.word_maps[1], concept.word_maps[2])  # "red" and "cube" differ
    with pytest.raises(ValueError, match="unknown map kind"):
        joint_image_maps(joint, "cross")


def test_word_maps_reads_joint_runs_and_refuses_what_does_not_apply(results):
    result = results["sd3"]
    view = word_maps(result, kind="concept", skip_words=("a", "on", "the"), threshold=0.4)
    assert view.words == tuple(CONTENT) and view.maps.shape == (3, TINY_HW, TINY_HW)
    assert view.layers == result.joint.concepts.layer_names and len(view.masks) == 3
    assert word_maps(result, kind="text").layers == result.joint.maps.layer_names
    for kwargs, message in (
        ({"steps": [0]}, "averaged over the steps"),
        ({"parts": ["down"]}, "no U-Net"),
        ({"heads": [0]}, "mean over heads"),
        ({"layers": ["nope"]}, "no text maps recorded for layers"),
    ):
        with pytest.raises(ValueError, match=message):
            word_maps(result, **kwargs)


def test_joint_layer_shapes_follow_the_modules(engines, results):
    pipe, joint = engines["flux"].pipeline(), results["flux"].joint
    dual = joint_layer_shapes(pipe, "transformer_blocks.0.attn", joint)
    single = joint_layer_shapes(pipe, "single_transformer_blocks.0.attn", joint)
    inner = pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim
    assert (dual.kind, single.kind) == ("joint", "single") and dual.inner_dim == inner == single.inner_dim
    assert dual.n_image == joint.maps.grid_hw[0] * joint.maps.grid_hw[1] and dual.n_text == joint.maps.n_text
    assert dual.text_dim == pipe.transformer.config.joint_attention_dim  # the text stream's own input width
    with pytest.raises(ValueError, match="not a joint-attention layer"):
        joint_layer_shapes(pipe, "x_embedder", joint)


@pytest.fixture(scope="module")
def tab(engines):
    return AttendTab(engines["sd3"])


@pytest.fixture(scope="module")
def finished(tab):
    request = gr.Request(session_hash="joint")
    return list(tab.generate(PROMPT, "", SEED, STEPS, 2.0, "default", TINY_HW, TINY_HW, request))[-1]


def test_tab_3_generates_on_sd3_with_maps_and_no_film(finished):
    assert [caption for _, caption in finished.gallery] == [f"“{w}”" for w in CONTENT]
    assert finished.film is None and finished.pair == []
    assert "Joint attention" in finished.status and "film not recorded" in finished.status
    assert finished.step["interactive"] is False and finished.heads["choices"] == []
    assert finished.layer["choices"][0] == "transformer_blocks.0.attn"


def test_tab_3_switches_between_kinds_of_map(tab, finished):
    state = finished.state
    controls = (None, True, [], [], [], "absolute", 0.4, True)
    shown = {kind: tab.maps(state, *controls, kind) for kind in JOINT_MAP_KINDS}
    pictures = {kind: np.stack([np.asarray(im) for im, _ in out.gallery]) for kind, out in shown.items()}
    assert not np.array_equal(pictures["text"], pictures["concept"])
    assert not np.array_equal(pictures["text"], pictures["joint"])
    assert "ConceptAttention" in shown["concept"].info and "renormalised" in shown["text"].info
    assert shown["concept"].pair == [] and len(shown["concept"].masks) == 3


def test_tab_3_qkv_and_downloads_on_sd3(tab, finished, tmp_path):
    table = tab.qkv(finished.state, "transformer_blocks.1.attn")
    assert "dual-stream" in table and "softmax" in table
    with pytest.raises(gr.Error, match="not a joint-attention layer"):
        tab.qkv(finished.state, "down_blocks.0.attentions.0.transformer_blocks.0.attn2")
    files = tab.export(finished.state, None, True, [], [], [], "minmax", 0.4, True, "concept", gr.Request())
    assert files.film is None
    with np.load(files.npz) as npz:
        assert list(npz["words"]) == ["a", "red", "cube", "on", "the", "grass"]
        assert npz["word_maps_joint"].shape == npz["word_maps"].shape == (6, TINY_HW, TINY_HW)
    assert json.loads(Path(files.settings).read_text())["steps_done"] == STEPS


def test_experiments_that_need_cross_attention_say_why_on_joint_models(engines):
    pipe = engines["flux"].pipeline()
    for call in (
        lambda: steer_reweight(pipe, PROMPT, "cube", 2.0, SEED, STEPS, 1.0),
        lambda: steer_swap(pipe, PROMPT, "cube", "ball", 1, SEED, STEPS, 1.0),
        lambda: delete_word(pipe, PROMPT, "cube", seed=SEED, steps=STEPS, guidance=1.0),
    ):
        with pytest.raises(ValueError, match="joint attention instead"):
            call()
    steer = SteerTab(engines["sd3"])
    with pytest.raises(gr.Error, match="joint attention instead"):
        steer.drop(PROMPT, "cube", "zero", SEED, STEPS, 2.0)


def test_clip_tab_text_states_name_the_joint_sequence(engines):
    states = ClipTab(engines["sd3"]).text_states(PROMPT)
    width = engines["sd3"].pipeline().transformer.config.joint_attention_dim
    assert "no cross-attention" in states.text and f"projected to width {width}" in states.text


def test_the_app_offers_the_kinds_of_map_only_for_joint_models(engines, engine):
    from demo.app import build_demo

    def kind_radio(demo):
        (radio,) = [c for c in demo.config["components"] if c.get("props", {}).get("elem_id") == "attend-kind"]
        return radio["props"]

    joint = kind_radio(build_demo(engines["sd3"]))
    assert joint["visible"] is True and [v for _, v in joint["choices"]] == list(JOINT_MAP_KINDS)
    assert kind_radio(build_demo(engine))["visible"] is False  # the embedded U-Net model: cross-attention only
