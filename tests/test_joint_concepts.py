"""ConceptAttention maps on tiny SD3 and Flux pipelines: image unchanged, shapes, per-concept maps, and a parity
check of the concept stream against the model's own text stream."""

import pytest
import torch

from explain.joint import ConceptAttentionRecorder, JointAttentionRecorder, JointCapture, LayerKind
from tests.tiny_mmdit import TINY_HW, TINY_T5_SLOTS, generate, reloaded

PROMPT = "a red cube on the grass"
CONCEPTS = ("cube", "grass", "sky")  # "sky" is not in the prompt: maps for any word


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    return {kind: reloaded(kind, tmp_path_factory.mktemp(kind)) for kind in ("sd3", "sd3_no_t5", "flux")}


def _concepts(pipe, concepts=CONCEPTS, **kwargs):
    kwargs = {"max_sequence_length": TINY_T5_SLOTS, **kwargs}
    return ConceptAttentionRecorder(pipe, concepts, height=TINY_HW, width=TINY_HW, **kwargs)


@pytest.mark.parametrize("kind", ["sd3", "sd3_no_t5", "flux"])
def test_concept_maps_leave_the_image_unchanged_and_separate_concepts(pipes, kind):
    pipe = pipes[kind]
    plain = generate(pipe, PROMPT)
    con = _concepts(pipe)
    tokens = JointAttentionRecorder(pipe, height=TINY_HW, width=TINY_HW)
    with JointCapture(pipe, con, tokens):  # both kinds of map from one generation
        captured = generate(pipe, PROMPT)
    assert torch.equal(plain, captured)
    maps = con.result()
    joint_layers = [n for n, k in tokens.result().kinds.items() if k is LayerKind.JOINT]
    assert maps.layer_names == tuple(joint_layers)  # Flux: double-stream blocks only
    heat = maps.maps()
    assert heat.shape == (1, len(CONCEPTS), *maps.grid_hw)
    torch.testing.assert_close(heat.sum(dim=1), torch.ones(1, *maps.grid_hw))  # softmax over concepts
    assert (maps.concept_map("cube") - maps.concept_map("sky")).abs().max() > 1e-3
    assert (maps.concept_map("cube") - maps.concept_map("grass")).abs().max() > 1e-3


def test_per_head_scores_sum_to_the_full_dot_product(pipes):
    pipe = pipes["flux"]
    per_head, summed = _concepts(pipe, per_head=True, per_step=True), _concepts(pipe)
    with JointCapture(pipe, per_head, summed):
        generate(pipe, PROMPT, steps=3)
    per_head, summed = per_head.result(), summed.result()
    for name in summed.layer_names:
        assert per_head.scores[name].shape[:3] == (3, 1, pipe.transformer.config.num_attention_heads)
        full = per_head.scores[name].sum(dim=2, keepdim=True).mean(dim=0, keepdim=True)
        torch.testing.assert_close(full, summed.scores[name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(per_head.maps(), summed.maps(), rtol=1e-4, atol=1e-6)


def test_a_subset_of_joint_layers_gives_the_same_scores(pipes):
    pipe = pipes["sd3"]
    every, last = _concepts(pipe), _concepts(pipe, layers=["transformer_blocks.2.attn"])
    with JointCapture(pipe, every, last):
        generate(pipe, PROMPT)
    every, last = every.result(), last.result()
    assert last.layer_names == ("transformer_blocks.2.attn",)
    assert torch.equal(last.scores["transformer_blocks.2.attn"], every.scores["transformer_blocks.2.attn"])
    with pytest.raises(ValueError, match="not joint layers"), _concepts(pipe, layers=["transformer_blocks.0.attn2"]):
        pass


class _KeepOutputs:
    """A sink keeping the model's own attention outputs of the image and text tokens at every joint layer."""

    def __init__(self):
        self.outputs = {}

    def bind(self, capture):
        pass

    def on_transformer_call(self, step, timestep, rows):
        pass

    def on_call(self, call):
        if call.kind is LayerKind.JOINT:
            out = call.tensors.heads_out
            self.outputs[(call.name, call.step)] = (out[:, call.image].clone(), out[:, call.text].clone())


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_concept_stream_mirrors_the_models_text_stream(pipes, kind):
    """Fed the prompt's own text embeddings and pooled vector, the concept tokens attend to [image; themselves] =
    the text tokens' own keys, so their outputs must be the text tokens' outputs in every block and step: this checks
    the whole concept stream (AdaLN, projections, QK norms, gates, feed-forward, time embedding) against the model."""
    pipe = pipes[kind]
    if kind == "flux":
        embeds, pooled, _ = pipe.encode_prompt(PROMPT, PROMPT, max_sequence_length=TINY_T5_SLOTS)
    else:
        embeds, _, pooled, _ = pipe.encode_prompt(
            PROMPT, PROMPT, PROMPT, do_classifier_free_guidance=False, max_sequence_length=TINY_T5_SLOTS
        )
    names = tuple(f"t{i}" for i in range(embeds.shape[1]))
    con = _concepts(pipe, names, embeddings=embeds[0], pooled=pooled[0], per_step=True)
    keep = _KeepOutputs()
    with JointCapture(pipe, con, keep):
        generate(pipe, PROMPT, guidance_scale=1.0)  # no CFG: the batch is the prompt's
    maps = con.result()
    for (name, step), (o_image, o_text) in keep.outputs.items():
        expected = o_text.float() @ o_image.float().transpose(-1, -2)  # (B, T, N): φ with o_c = o_text
        ours = maps.scores[name][step][:, 0].flatten(-2)  # (B, C = T, N)
        torch.testing.assert_close(ours, expected, rtol=2e-3, atol=2e-4)


def test_the_stream_stops_after_the_last_recorded_layer_without_changing_its_scores(pipes):
    """With ``layers=`` the concept stream runs only up to the last recorded block (later blocks would update a
    stream no φ reads); the recorded block's φ is bitwise the one of a recorder that runs through every block."""
    pipe = pipes["flux"]
    every, first = _concepts(pipe), _concepts(pipe, layers=["transformer_blocks.0.attn"])
    with JointCapture(pipe, every, first):
        generate(pipe, PROMPT)
        assert first._run == ("transformer_blocks.0.attn",) and len(every._run) > 1
    recorders, (every, first) = (every, first), (every.result(), first.result())
    assert not any(r._streams for r in recorders)  # every step's stream ended at its last layer
    assert first.layer_names == ("transformer_blocks.0.attn",)
    assert torch.equal(first.scores["transformer_blocks.0.attn"], every.scores["transformer_blocks.0.attn"])


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_deferred_steps_as_one_batch_equal_the_stream_advanced_call_by_call(pipes, kind):
    """The stream is advanced for all kept steps at once (``work_bytes`` large) or as the model runs (``work_bytes``
    0: every call flushes): the same φ per step up to float32 rounding, and the same maps."""
    pipe = pipes[kind]
    batched, immediate = _concepts(pipe, per_step=True), _concepts(pipe, per_step=True, work_bytes=0)
    with JointCapture(pipe, batched, immediate):
        generate(pipe, PROMPT, steps=3)
        assert len(batched._deferred) == 3 * len(batched._run) and not immediate._deferred
    batched, immediate = batched.result(), immediate.result()
    for name in batched.layer_names:
        assert batched.scores[name].shape[0] == 3
        torch.testing.assert_close(batched.scores[name], immediate.scores[name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched.maps(), immediate.maps(), rtol=1e-4, atol=1e-6)
