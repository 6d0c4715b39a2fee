"""Joint-attention token maps on tiny SD3 (with and without T5) and Flux pipelines, saved and reloaded."""

import pytest
import torch

from explain.joint import JointAttentionRecorder, JointCapture, LayerKind, Normalization, held_bytes, text_layout
from explain.joint.capture import Branch, family_of, joint_layers, layer_kind
from tests.tiny_mmdit import TINY_HW, TINY_T5_SLOTS, generate, reloaded

PROMPT = "a red cube on the grass"
KINDS = ["sd3", "sd3_no_t5", "flux"]


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    return {kind: reloaded(kind, tmp_path_factory.mktemp(kind)) for kind in KINDS}


def _recorder(pipe, **kwargs):
    return JointAttentionRecorder(pipe, height=TINY_HW, width=TINY_HW, **kwargs)


class _KeepQK:
    """A sink keeping every call's Q and K, for an explicit reference."""

    def __init__(self):
        self.calls = []

    def bind(self, capture):
        pass

    def on_transformer_call(self, step, timestep, rows):
        pass

    def on_call(self, call):
        self.calls.append((call.name, call.step, call.tensors.query.clone(), call.tensors.key.clone(), call))


@pytest.mark.parametrize("kind", KINDS)
def test_capture_keeps_the_image_bit_identical_and_restores_processors(pipes, kind):
    pipe = pipes[kind]
    before = dict(pipe.transformer.attn_processors)
    plain = generate(pipe, PROMPT)
    with _recorder(pipe) as rec:
        captured = generate(pipe, PROMPT)
    assert torch.equal(plain, captured)
    assert all(before[key] is proc for key, proc in pipe.transformer.attn_processors.items())
    maps = rec.result()
    assert maps.timesteps == tuple(float(t) for t in pipe.scheduler.timesteps)
    expected_kinds = {LayerKind.JOINT, LayerKind.SINGLE} if kind == "flux" else {LayerKind.JOINT}
    assert set(maps.kinds.values()) == expected_kinds
    if kind != "flux":  # SD3.5's image-only attn2 is not a joint layer
        assert not any(name.endswith("attn2") for name in maps.layer_names)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_the_one_walk_finds_the_joint_layers_of_the_processor_api(pipes, kind):
    """JointCapture walks the module tree once and calls each joint layer's ``set_processor``: the layers it finds are
    the ``attn_processors`` keys whose module has text projections (Flux: or is single-stream), in that order, and
    while it is open exactly those processors are swapped (SD3.5's image-only attn2 keeps its own)."""
    pipe = pipes[kind]
    before = dict(pipe.transformer.attn_processors)
    expected = [
        key.removesuffix(".processor")
        for key in before
        if layer_kind(pipe.transformer, family_of(pipe), key.removesuffix(".processor")) is not None
    ]
    assert list(joint_layers(pipe)) == expected
    with JointCapture(pipe) as capture:
        during = dict(pipe.transformer.attn_processors)
        assert list(capture.layers) == expected
    for key, processor in during.items():
        swapped = key.removesuffix(".processor") in expected
        assert (processor is not before[key]) == swapped
        assert not swapped or processor.original is before[key]
    assert all(before[key] is proc for key, proc in pipe.transformer.attn_processors.items())


def test_processors_are_restored_when_generation_raises(pipes):
    pipe = pipes["flux"]
    before = dict(pipe.transformer.attn_processors)
    with pytest.raises(ValueError, match="height and width"), _recorder(pipe):
        generate(pipe, PROMPT, height=2 * TINY_HW)  # 256 image tokens, not the recorder's 8x8 grid
    assert all(before[key] is proc for key, proc in pipe.transformer.attn_processors.items())


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_both_normalisations_equal_an_explicit_softmax(pipes, kind):
    pipe = pipes[kind]
    keep = _KeepQK()
    rec = _recorder(pipe, per_step=True, per_head=True)
    with JointCapture(pipe, rec, keep):
        generate(pipe, PROMPT)
    maps = rec.result()
    assert maps.columns == tuple(range(maps.n_text))
    for name, step, q, k, call in keep.calls:
        scores = q[:, :, call.image].float() @ k.float().transpose(-1, -2) * call.tensors.scale  # (B, H, N, L)
        joint = scores.softmax(dim=-1)[..., call.text]  # (B, H, N, T): share of the whole joint softmax
        text = scores[..., call.text].softmax(dim=-1)  # renormalised over the text tokens
        ours_joint = maps.share[name][step].flatten(-2).transpose(-1, -2)  # (B, H, N, T)
        ours_text = maps.text[name][step].flatten(-2).transpose(-1, -2)
        torch.testing.assert_close(ours_joint, joint, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ours_text, text, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(maps.mass[name][step].flatten(-2), joint.sum(-1), rtol=1e-4, atol=1e-6)
    # what the two normalisations mean: text maps sum to 1 over the text tokens, joint ones to the text mass < 1
    for name in maps.layer_names:
        assert torch.allclose(maps.text[name].sum(dim=3), torch.ones(()), atol=1e-5)
        mass = maps.share[name].sum(dim=3)
        assert torch.allclose(mass, maps.mass[name], atol=1e-5)
        assert mass.min() > 0 and mass.max() < 1


@pytest.mark.parametrize("kind", KINDS)
def test_word_maps_differ_per_word(pipes, kind):
    pipe = pipes[kind]
    layout = text_layout(pipe, PROMPT, TINY_T5_SLOTS)
    with _recorder(pipe, columns=layout.used_columns) as rec:
        generate(pipe, PROMPT)
    maps = rec.result()
    for normalization in Normalization:
        cube = maps.word_map(layout.word("cube"), normalization)
        grass = maps.word_map(layout.word("grass"), normalization)
        assert cube.shape == (1, *maps.grid_hw)
        assert (cube - grass).abs().max() > 1e-4
    assert (maps.word_map(layout.word("cube"), Normalization.JOINT) < maps.word_map(layout.word("cube"))).all()
    with pytest.raises(ValueError, match="not kept"):
        maps.word_map([max(maps.columns) + 1])


def test_step_and_head_means_agree_with_the_kept_axes(pipes):
    pipe = pipes["flux"]
    full, mean = _recorder(pipe, per_step=True, per_head=True), _recorder(pipe)
    with JointCapture(pipe, full, mean):
        generate(pipe, PROMPT, steps=3)
    full, mean = full.result(), mean.result()
    assert full.nbytes > mean.nbytes
    for name in mean.layer_names:
        assert full.share[name].shape[:3] == (3, 1, pipe.transformer.config.num_attention_heads)
        assert mean.share[name].shape[:3] == (1, 1, 1)
        torch.testing.assert_close(full.share[name].mean(dim=(0, 2), keepdim=True), mean.share[name])
        torch.testing.assert_close(full.text[name].mean(dim=(0, 2), keepdim=True), mean.text[name])


def test_sd3_guidance_halves_are_explicit(pipes):
    pipe = pipes["sd3"]
    plain = generate(pipe, PROMPT, guidance_scale=5.0)
    cond, uncond = _recorder(pipe), _recorder(pipe)
    # nested captures: the inner one wraps the outer's processor, which it cannot mirror, so it runs it
    with JointCapture(pipe, cond, branch=Branch.COND), JointCapture(pipe, uncond, branch=Branch.UNCOND):
        captured = generate(pipe, PROMPT, guidance_scale=5.0)
    assert torch.equal(plain, captured)
    name = "transformer_blocks.0.attn"
    assert (cond.result().text[name] - uncond.result().text[name]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="guidance"), JointCapture(pipe, _recorder(pipe), branch=Branch.UNCOND):
        generate(pipe, PROMPT, guidance_scale=1.0)
    with pytest.raises(ValueError, match="COND"):
        JointCapture(pipes["flux"], branch=Branch.UNCOND)


def test_memory_is_bounded_by_the_kept_axes(pipes):
    pipe = pipes["flux"]
    layout = text_layout(pipe, PROMPT, TINY_T5_SLOTS)
    with _recorder(pipe, columns=layout.used_columns, work_bytes=1) as rec:  # flush after every call
        generate(pipe, PROMPT, steps=3)
        assert not rec._pending
    maps = rec.result()
    n_image = TINY_HW**2 // (pipe.vae_scale_factor * 2) ** 2  # Flux: one token per 2x2 latent patch
    assert maps.nbytes == held_bytes(len(maps.layer_names), n_image, len(layout.used_columns))
    assert maps.nbytes == 4 * 4 * 64 * (2 * len(layout.used_columns) + 1)  # the law written out: 4 layers, 64 tokens
    heads = pipe.transformer.config.num_attention_heads
    with _recorder(pipe, columns=layout.used_columns, per_step=True, per_head=True) as rec:
        generate(pipe, PROMPT, steps=3)
    law = held_bytes(4, n_image, len(layout.used_columns), steps=3, heads=heads)
    assert rec.result().nbytes == law


def test_a_subset_of_layers_can_be_recorded(pipes):
    pipe = pipes["flux"]
    chosen = ("transformer_blocks.1.attn", "single_transformer_blocks.1.attn")
    every, some = _recorder(pipe), _recorder(pipe, layers=chosen)
    with JointCapture(pipe, every, some):
        generate(pipe, PROMPT)
    every, some = every.result(), some.result()
    assert some.layer_names == chosen
    for name in chosen:
        assert torch.equal(some.share[name], every.share[name])
    with pytest.raises(ValueError, match="not joint-attention layers"), _recorder(pipe, layers=["norm_out"]):
        pass


def test_a_processor_that_cannot_be_mirrored_runs_itself_and_is_still_recorded(pipes):
    pipe = pipes["flux"]
    plain = generate(pipe, PROMPT)
    outer, inner = _recorder(pipe), _recorder(pipe)
    with JointCapture(pipe, outer), JointCapture(pipe, inner):  # inner wraps outer's capturing processor
        nested = generate(pipe, PROMPT)
    assert torch.equal(plain, nested)
    outer, inner = outer.result(), inner.result()
    for name in outer.layer_names:
        assert torch.equal(outer.share[name], inner.share[name])


def test_only_joint_attention_pipelines_are_accepted():
    class UNetPipeline:
        transformer = None

    with pytest.raises(ValueError, match="not a joint-attention pipeline"):
        JointCapture(UNetPipeline())
