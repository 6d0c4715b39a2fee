"""Prompt-to-prompt steering: exact when inactive, equal to an independent reference when active, restoring."""

import dataclasses

import numpy as np
import pytest
import torch
from tiny_pipelines import build_sdxl

from explain.capture.recorder import CapturedAttention
from explain.capture.swap import Branch, compose_callbacks
from explain.clip.tokens import build_clip_tokenizer
from explain.diffusion.loading import EMBEDDED_MODEL_DIR, load_pipeline
from explain.maps.aggregation import aggregate, overlay
from explain.steering.edits import AttentionSteering, Replace, Reweight, remove_word, replace_word, word_token_indices
from explain.steering.experiments import (
    SteerResult,
    guidance_sweep,
    steer_drop,
    steer_reweight,
    steer_swap,
    word_overlays,
)

PROMPT = "a ginormous red cube"  # slots: BOS, a, gin/orm/ous, red, cube, EOS
RED = (5,)
STEPS = 2  # PNDM: its PLMS warm-up call counts with the first step (explain.diffusion.steps)
GUIDANCE = [pytest.param(7.5, id="cfg"), pytest.param(1.0, id="no-cfg")]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def generate(pipe, prompts=PROMPT, guidance=7.5, callback=None):
    """Images (B, 3, H, W) float, every prompt from the same seed-0 noise."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    noise = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    return pipe(
        prompts,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        latents=noise.expand(len(prompts), -1, -1, -1).clone(),
        output_type="pt",
        callback_on_step_end=callback,
    ).images


def steered(pipe, *edits, prompts=PROMPT, guidance=7.5):
    with AttentionSteering(pipe, *edits) as steering:
        return generate(pipe, prompts, guidance, steering.callback_on_step_end)


class ReferenceEdit:
    """diffusers' ``AttnProcessor`` path (``attn.get_attention_scores``) with ``edit`` on the conditional half.

    Independent of explain.steering.edits: probabilities of *every* row are computed explicitly, and the edit is a plain
    function of (conditional probabilities (rows, heads, N, T), step).
    """

    def __init__(self, edit, state):
        self.edit, self.state = edit, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        b = hidden_states.shape[0]
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B*heads, N, d)
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        v = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(q, k).unflatten(0, (b, attn.heads)).clone()  # (B, heads, N, T)
        cond = b // 2 if self.state["cfg"] else 0
        probs[cond:] = self.edit(probs[cond:], self.state["step"])
        out = attn.batch_to_head_dim(torch.bmm(probs.flatten(0, 1), v))
        return attn.to_out[1](attn.to_out[0](out))


def reference(pipe, edit, prompts=PROMPT, guidance=7.5):
    state = {"step": 0, "cfg": guidance > 1}

    assert type(pipe.scheduler).__name__ == "PNDMScheduler"  # the step rule below is PNDM's (PLMS)

    def count(pipe, i, t, kwargs):
        state["step"] = i  # the next call, i + 1, finishes step i: call 0 is the PLMS warm-up of step 0
        return kwargs

    originals = dict(pipe.unet.attn_processors)
    pipe.unet.set_attn_processor(
        {key: ReferenceEdit(edit, state) if "attn2" in key else p for key, p in originals.items()}
    )
    try:
        return generate(pipe, prompts, guidance, count)
    finally:
        pipe.unet.set_attn_processor(originals)


# -- scoping -------------------------------------------------------------------------------------------------------
def test_processors_restored_after_context_and_on_error(pipe):
    before = dict(pipe.unet.attn_processors)
    with AttentionSteering(pipe, Reweight(RED, 0.0)):
        during = pipe.unet.attn_processors
        assert {k for k in before if during[k] is not before[k]} == {k for k in before if "attn2" in k}
    assert all(pipe.unet.attn_processors[k] is before[k] for k in before)

    def boom(pipe, i, t, kwargs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), AttentionSteering(pipe, Replace(1)) as steering:
        generate(pipe, [PROMPT, PROMPT], callback=compose_callbacks(steering.callback_on_step_end, boom))
    after = pipe.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def test_step_ranged_edit_needs_the_callback(pipe):
    with pytest.raises(RuntimeError, match="callback_on_step_end"), AttentionSteering(pipe, Reweight(RED, 0, (1, 2))):
        generate(pipe)
    assert not any(type(p).__name__ == "_SteerProcessor" for p in pipe.unet.attn_processors.values())


# -- exact when inactive ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("guidance", GUIDANCE)
def test_inactive_edits_are_bit_identical(pipe, guidance):
    plain = generate(pipe, guidance=guidance)
    assert torch.equal(steered(pipe, Reweight(RED, 1.0), guidance=guidance), plain)  # weight 1
    assert torch.equal(steered(pipe, Reweight(RED, 0.0, (10, 20)), guidance=guidance), plain)  # off-range
    pair = [PROMPT, "a ginormous blue cube"]
    assert torch.equal(steered(pipe, Replace(0), prompts=pair, guidance=guidance), generate(pipe, pair, guidance))


def test_weight_one_helper_equals_plain_generation(pipe):
    plain = pipe(PROMPT, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="np")
    result = steer_reweight(pipe, PROMPT, "red", 1.0, seed=0, steps=STEPS)
    expected = (np.clip(plain.images[0], 0, 1) * 255).round().astype(np.uint8)
    assert np.array_equal(result.baseline, expected) and np.array_equal(result.edited, expected)
    assert result.mean_abs_difference == 0.0 and not result.difference.any()


@pytest.mark.parametrize("guidance", GUIDANCE)
def test_explicit_path_matches_fused_attention(pipe, guidance):
    """Replacing a row's maps by an identical row's forces the explicit softmax path without changing the maths."""
    pair = [PROMPT, PROMPT]
    torch.testing.assert_close(
        steered(pipe, Replace(10), prompts=pair, guidance=guidance),
        generate(pipe, pair, guidance),
        atol=1e-5,
        rtol=0,
    )


# -- active edits equal an independent implementation ----------------------------------------------------------
@pytest.mark.parametrize("guidance", GUIDANCE)
@pytest.mark.parametrize("weight", [0.0, 2.5])
def test_reweight_matches_reference(pipe, guidance, weight):
    def scale_red(probs, step):
        probs[..., list(RED)] *= weight
        return probs

    got = steered(pipe, Reweight(RED, weight), guidance=guidance)
    assert (got - generate(pipe, guidance=guidance)).abs().max() > 1e-4  # the edit does something
    torch.testing.assert_close(got, reference(pipe, scale_red, guidance=guidance), atol=1e-5, rtol=0)


def test_reweight_step_range_matches_reference(pipe):
    def step_one_zero(probs, step):
        if step == 1:
            probs[..., list(RED)] = 0
        return probs

    got = steered(pipe, Reweight(RED, 0.0, (1, 2)))
    torch.testing.assert_close(got, reference(pipe, step_one_zero), atol=1e-5, rtol=0)
    assert not torch.equal(got, steered(pipe, Reweight(RED, 0.0)))


@pytest.mark.parametrize("guidance", GUIDANCE)
def test_swap_matches_reference(pipe, guidance):
    pair = [PROMPT, "a ginormous blue cube"]

    def first_step_source_maps(probs, step):
        if step < 1:
            probs[1] = probs[0]
        return probs

    got = steered(pipe, Replace(1), prompts=pair, guidance=guidance)
    plain = generate(pipe, pair, guidance)
    assert torch.equal(got[0], plain[0])  # the source row is never edited
    assert (got[1] - plain[1]).abs().max() > 1e-4
    torch.testing.assert_close(got, reference(pipe, first_step_source_maps, pair, guidance), atol=1e-5, rtol=0)


# -- helpers and captured (effective) attention -----------------------------------------------------------------
@pytest.mark.parametrize("guidance", GUIDANCE)
def test_weight_zero_changes_image_and_zeroes_the_words_maps(pipe, guidance):
    result = steer_reweight(pipe, PROMPT, "red", 0.0, seed=0, steps=STEPS, guidance=guidance, capture=True)
    assert result.token_indices == RED
    assert result.mean_abs_difference > 0 and result.difference.shape == result.edited.shape
    for name, maps in result.edited_attention.maps.items():  # (steps, 1, tokens, h, w), conditional branch
        base = result.baseline_attention.maps[name]
        assert maps.shape == base.shape and maps.shape[1] == 1
        assert maps[:, :, RED].abs().max() == 0 and base[:, :, RED].min() > 0


@pytest.mark.parametrize("guidance", GUIDANCE)
def test_swap_with_all_steps_gives_the_target_the_sources_maps(pipe, guidance):
    result = steer_swap(pipe, PROMPT, "red", "blue", STEPS, seed=0, steps=STEPS, guidance=guidance, capture=True)
    assert result.edited_prompt == "a ginormous blue cube"
    assert result.mean_abs_difference > 0
    for name, maps in result.edited_attention.maps.items():
        assert torch.equal(maps, result.baseline_attention.maps[name])
    plain = steer_swap(pipe, PROMPT, "red", "blue", 0, seed=0, steps=STEPS, guidance=guidance, capture=True)
    assert not torch.equal(plain.edited_attention.maps[name], plain.baseline_attention.maps[name])
    assert not np.array_equal(plain.edited, result.edited)  # injecting the maps changed the target image
    assert np.array_equal(plain.baseline, result.baseline)


def test_swap_identical_word_with_k0_reproduces_the_source(pipe):
    result = steer_swap(pipe, PROMPT, "red", "red", 0, seed=0, steps=STEPS)
    assert np.array_equal(result.baseline, result.edited) and result.mean_abs_difference == 0.0


def test_drop_remove_vs_zero(pipe):
    removed = steer_drop(pipe, PROMPT, "red", mode="remove", seed=0, steps=STEPS)
    zeroed = steer_drop(pipe, PROMPT, "red", mode="zero", seed=0, steps=STEPS)
    assert removed.edited_prompt == "a ginormous cube" and removed.edits == ()
    assert zeroed.edited_prompt == PROMPT and zeroed.edits == (Reweight(RED, 0.0),)
    assert np.array_equal(removed.baseline, zeroed.baseline)
    assert removed.mean_abs_difference > 0 and zeroed.mean_abs_difference > 0
    assert not np.array_equal(removed.edited, zeroed.edited)
    with pytest.raises(ValueError, match="mode"):
        steer_drop(pipe, PROMPT, "red", mode="delete")


def test_guidance_sweep(pipe):
    sweep = guidance_sweep(pipe, PROMPT, seed=0, scales=(1, 7.5), steps=STEPS)
    assert [scale for scale, _ in sweep] == [1.0, 7.5]
    assert all(image.shape == (128, 128, 3) and image.dtype == np.uint8 for _, image in sweep)
    assert not np.array_equal(sweep[0][1], sweep[1][1])
    assert np.array_equal(sweep[1][1], steer_reweight(pipe, PROMPT, "red", 1.0, 0, STEPS, 7.5).baseline)


# -- words -----------------------------------------------------------------------------------------------------------
def test_word_lookup(pipe):
    tok = pipe.tokenizer
    assert word_token_indices(tok, PROMPT, "ginormous") == (2, 3, 4)  # every BPE sub-token
    assert word_token_indices(tok, "A Red circle and a red star", "RED") == (2, 6)  # every occurrence, any case
    assert word_token_indices(tok, "a red circle on the left", "on the left") == (4, 5, 6)
    assert replace_word("a Red circle, red!", "red", "blue") == "a blue circle, blue!"
    assert remove_word("a red circle, on the left", "circle") == "a red, on the left"


def test_unknown_word_names_the_prompts_words(pipe):
    with pytest.raises(ValueError, match=r"'green' is not a word of the prompt .*'ginormous', 'red', 'cube'"):
        steer_reweight(pipe, PROMPT, "green", 0.0, steps=STEPS)
    with pytest.raises(ValueError, match="not a word"):
        steer_swap(pipe, PROMPT, "green", "blue", 1, steps=STEPS)
    with pytest.raises(ValueError, match="not a word"):
        steer_drop(pipe, PROMPT, "cub", steps=STEPS)  # whole words only


@pytest.mark.parametrize("mode", ["remove", "zero"])
def test_a_word_not_in_the_prompt_is_named_by_its_field_and_echoed_short(pipe, mode):
    with pytest.raises(ValueError) as info:
        steer_drop(pipe, PROMPT, "stripes " * 1250, mode=mode, steps=STEPS)
    assert str(info.value) == (
        "The word to drop 'stripes stripes stripes stripes stripes stripes stripes stri'… (10000 characters) is "
        "not a word of the prompt 'a ginormous red cube'; its words are: 'a', 'ginormous', 'red', 'cube'"
    )
    with pytest.raises(ValueError, match=r"^The old word 'green' is not a word of the prompt"):
        steer_swap(pipe, PROMPT, "green", "blue", 1, steps=STEPS)
    with pytest.raises(ValueError, match=r"the new word 'gin+'… \(2000 characters\) is"):
        steer_swap(pipe, PROMPT, "red", "gin" + "n" * 1997, 1, steps=STEPS)


def test_invalid_edits(pipe):
    with pytest.raises(ValueError, match="equal token length"):  # 'ginormous' is 3 BPE tokens, 'red' 1
        steer_swap(pipe, PROMPT, "red", "ginormous", 1, steps=STEPS)
    with pytest.raises(ValueError, match=r"\[0, 3"):
        steer_reweight(pipe, PROMPT, "red", 3.5, steps=STEPS)
    with pytest.raises(ValueError, match="weight"):
        Reweight(RED, -1.0)
    with pytest.raises(ValueError, match="differ"):
        Replace(1, source=0, target=0)
    with pytest.raises(ValueError, match="row 1"), AttentionSteering(pipe, Replace(1)) as steering:
        generate(pipe, callback=steering.callback_on_step_end)  # one prompt: there is no target row


# -- SDXL ------------------------------------------------------------------------------------------------------------
def test_sdxl(tmp_path):
    pipe = build_sdxl(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    same = steer_reweight(pipe, PROMPT, "red", 1.0, seed=0, steps=STEPS)
    assert same.mean_abs_difference == 0.0
    swap = steer_swap(pipe, PROMPT, "red", "blue", STEPS, seed=0, steps=STEPS, capture=True)
    assert swap.mean_abs_difference > 0
    name = next(iter(swap.edited_attention.maps))
    assert torch.equal(swap.edited_attention.maps[name], swap.baseline_attention.maps[name])


# -- the embedded model: a visible edit ------------------------------------------------------------------------
def colour_mask(image: np.ndarray, colour: str) -> np.ndarray:
    """Pixels clearly of the shapes world's red (220, 40, 40) or blue (40, 80, 220)."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    if colour == "red":
        return (r > 150) & (g < 100) & (b < 100)
    return (b > 150) & (r < 110) & (g < 140)


@pytest.mark.slow
@pytest.mark.skipif(not (EMBEDDED_MODEL_DIR / "model_index.json").is_file(), reason="embedded model not built")
def test_embedded_swap_red_to_blue_keeps_the_place():
    pipe = load_pipeline(None, device="cpu")
    result = steer_swap(pipe, "a red circle on the left", "red", "blue", 3, seed=0, steps=20, guidance=5.0)
    red, blue = colour_mask(result.baseline, "red"), colour_mask(result.edited, "blue")
    width = red.shape[1]
    assert red.sum() > 100 and blue.sum() > 100  # a red object, then a blue one
    assert colour_mask(result.edited, "red").sum() < 10
    red_x, blue_x = np.nonzero(red)[1].mean(), np.nonzero(blue)[1].mean()
    assert red_x < width / 2 and blue_x < width / 2  # on the left ...
    red_y, blue_y = np.nonzero(red)[0].mean(), np.nonzero(blue)[0].mean()
    assert abs(red_x - blue_x) < 3 and abs(red_y - blue_y) < 3  # ... at the same place


# -- what the steer tab shows (hand-built results, no pipeline) --------------------------------------------------------
def _capture(maps: torch.Tensor) -> CapturedAttention:
    """maps: (steps, batch, tokens, h, w), one layer; the image is 4x the latent."""
    hw = tuple(maps.shape[-2:])
    return CapturedAttention(
        maps={"up_blocks.0.attn2": maps.half()},
        layer_resolutions={"up_blocks.0.attn2": hw},
        latent_hw=hw,
        image_hw=(4 * hw[0], 4 * hw[1]),
        timesteps=(999.0,),
        calls_per_step=(1,),
        token_count=maps.shape[2],
        branch=Branch.COND,
        per_head=False,
    )


def test_word_overlays_show_the_word_before_and_after(tmp_path):
    tokenizer = build_clip_tokenizer(tmp_path)
    before_maps, after_maps = torch.zeros(1, 1, 8, 4, 4), torch.zeros(1, 1, 8, 4, 4)
    before_maps[..., 5, :2, :] = 0.5  # "red" (slot 5) looks at the top half
    before_maps[..., 2:5, :, :2] = 0.25  # "ginormous" (slots 2-4) at the left half
    after_maps[..., 5, :, 2:] = 0.5  # "blue" (slot 5 of the edited prompt) at the right half
    image = np.full((16, 16, 3), 60, np.uint8)
    base, edited = _capture(before_maps), _capture(after_maps)
    result = SteerResult(
        baseline=image,
        edited=image,
        difference=np.array([[[10, 100, 0]]], np.uint8),
        mean_abs_difference=0.0,
        token_indices=RED,
        baseline_prompt=PROMPT,
        edited_prompt="a ginormous blue cube",
        edits=(),
        baseline_attention=base,
        edited_attention=edited,
    )
    shown = word_overlays(result, tokenizer, "blue")
    token_maps = aggregate(base, image_size=(16, 16)).token_maps
    assert np.array_equal(shown.before, overlay(image, token_maps[5].numpy()))
    assert np.array_equal(shown.after, overlay(image, aggregate(edited, image_size=(16, 16)).token_maps[5].numpy()))
    ginormous = word_overlays(dataclasses.replace(result, token_indices=(2, 3, 4)), tokenizer, "blue").before
    assert np.array_equal(ginormous, overlay(image, token_maps[2:5].sum(dim=0).numpy()))  # sub-tokens summed
    dropped = word_overlays(dataclasses.replace(result, edited_prompt="a ginormous cube"), tokenizer, "red")
    assert dropped.before is not None and dropped.after is None  # the word is gone from the edited prompt
    uncaptured = word_overlays(dataclasses.replace(result, baseline_attention=None), tokenizer, "red")
    assert (uncaptured.before, uncaptured.after) == (None, None)
    assert result.amplified_difference(3).tolist() == [[[30, 255, 0]]]  # x3, clipped at 255
