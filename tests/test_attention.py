"""AttentionRecorder on a tiny SD-1-shaped pipeline: transparent, restoring, correct per branch, batch, shape, step."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, HeunDiscreteScheduler, StableDiffusionPipeline

from explain.capture.film import initial_noise
from explain.capture.recorder import AttentionRecorder
from explain.capture.swap import Branch, compose_callbacks
from explain.clip.tokens import tokenize_prompt

PROMPT = "a ginormous red cube"
STEPS = 2


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def with_scheduler(pipe, scheduler_class):
    """The same modules under another scheduler (a new pipeline object: the fixture stays untouched)."""
    components = {**pipe.components, "scheduler": scheduler_class.from_config(pipe.scheduler.config)}
    other = StableDiffusionPipeline(**components)
    other.set_progress_bar_config(disable=True)
    return other


def generate(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "pt")
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **kwargs).images


def capture(pipe, recorder_kwargs=None, prompt=PROMPT, **kwargs):
    with AttentionRecorder(pipe, **(recorder_kwargs or {})) as rec:
        images = generate(pipe, prompt, callback_on_step_end=rec.callback_on_step_end, **kwargs)
    return images, rec.result()


@pytest.fixture(scope="module")
def default_run(pipe):
    """(images without capture, images with capture, captured): default recorder, guidance 7.5, all 77 columns."""
    reference = generate(pipe)
    images, captured = capture(pipe)
    return reference, images, captured


def test_capture_is_transparent(default_run):
    reference, images, captured = default_run
    assert torch.equal(images, reference)
    assert captured.n_steps > 0


def test_capture_is_transparent_without_guidance(pipe):
    reference = generate(pipe, guidance_scale=1.0)
    images, captured = capture(pipe, guidance_scale=1.0)
    assert torch.equal(images, reference)
    assert captured.batch_size == 1  # no CFG: the batch is the conditional branch only


def test_processors_restored_after_error(pipe):
    before = dict(pipe.unet.attn_processors)

    def boom(pipe, i, t, kwargs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), AttentionRecorder(pipe) as rec:
        generate(pipe, callback_on_step_end=compose_callbacks(rec.callback_on_step_end, boom))
    after = pipe.unet.attn_processors
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)


def test_only_cross_attention_layers_are_swapped(pipe):
    before = dict(pipe.unet.attn_processors)
    with AttentionRecorder(pipe):
        during = pipe.unet.attn_processors
        swapped = {k for k in before if during[k] is not before[k]}
    assert swapped == {k for k in before if k.endswith("attn2.processor")}
    assert len(swapped) == 16  # SD 1.x has 16 cross-attention layers


def test_probabilities_match_diffusers_attention_scores(pipe):
    """Recorded maps = mean over heads of ``attn.get_attention_scores`` (diffusers' explicit path), cond half."""
    reference: dict[str, list[torch.Tensor]] = {}

    class Reference:
        def __init__(self, original, name):
            self.original, self.name = original, name

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
            q = attn.head_to_batch_dim(attn.to_q(hidden_states))
            k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
            probs = attn.get_attention_scores(q, k)  # (B*heads, N, T)
            b = hidden_states.shape[0]
            reference.setdefault(self.name, []).append(probs.unflatten(0, (b, attn.heads)).mean(1))  # (B, N, T)
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)

    originals = dict(pipe.unet.attn_processors)
    wrapped = {k: Reference(p, k.removesuffix(".processor")) if "attn2" in k else p for k, p in originals.items()}
    pipe.unet.set_attn_processor(wrapped)
    try:
        _, captured = capture(pipe, guidance_scale=7.5)  # the recorder wraps whatever processor is installed
    finally:
        pipe.unet.set_attn_processor(originals)
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
    expected = torch.stack(reference[name])  # (calls, 2B, N, 77) with [uncond, cond]
    calls = expected[:, 1:]  # (calls, 1, N, 77): the cond half
    assert type(pipe.scheduler).__name__ == "PNDMScheduler" and len(calls) == len(pipe.scheduler.timesteps)
    # PNDM: call 0 is the PLMS warm-up of step 0 and is averaged with call 1; then one call per step
    cond = torch.cat([calls[:2].mean(0, keepdim=True), calls[2:]])  # (steps, 1, N, 77)
    h, w = captured.layer_resolutions[name]
    got = captured.maps[name].float()  # (steps, 1, 77, h, w)
    torch.testing.assert_close(got, cond.transpose(-1, -2).unflatten(-1, (h, w)), atol=2e-3, rtol=2e-3)


def test_rows_are_probabilities(pipe, default_run):
    """All 77 columns kept: every position's attention sums to 1 over the keys."""
    captured = default_run[2]
    for maps in captured.maps.values():
        assert maps.shape[2] == pipe.tokenizer.model_max_length
        torch.testing.assert_close(maps.float().sum(2), torch.ones_like(maps[:, :, 0]).float(), atol=2e-2, rtol=0)
        assert maps.min() >= 0


def test_token_count_keeps_prompt_columns(pipe, default_run):
    view = tokenize_prompt(pipe.tokenizer, PROMPT)
    full = default_run[2]
    _, kept = capture(pipe, {"token_count": view.n_used})
    name = next(iter(full.maps))
    assert kept.token_count == view.n_used == 8
    # the same probabilities, normalised over all 77 keys (only rounding differs: exp(s - logsumexp) vs softmax)
    torch.testing.assert_close(kept.maps[name], full.maps[name][:, :, : view.n_used], atol=1e-3, rtol=0)
    assert kept.nbytes == sum(m.numel() * 2 for m in kept.maps.values())


def test_cond_and_uncond_branches_differ(pipe):
    kwargs = dict(guidance_scale=7.5, negative_prompt="blue sphere")
    _, cond = capture(pipe, {"branch": Branch.COND}, **kwargs)
    _, uncond = capture(pipe, {"branch": Branch.UNCOND}, **kwargs)
    name = next(iter(cond.maps))
    assert cond.maps[name].shape == uncond.maps[name].shape
    assert not torch.allclose(cond.maps[name].float(), uncond.maps[name].float(), atol=1e-3)


def test_uncond_without_guidance_is_an_error(pipe):
    before = dict(pipe.unet.attn_processors)
    with pytest.raises(ValueError, match="guidance"):
        capture(pipe, {"branch": Branch.UNCOND}, guidance_scale=1.0)
    assert all(pipe.unet.attn_processors[k] is before[k] for k in before)


def test_batch_of_two_prompts(pipe):
    """Per-image maps; image 0 of a batch equals the same image generated alone (same noise)."""
    view = tokenize_prompt(pipe.tokenizer, PROMPT)
    noise = initial_noise(pipe, 1, 128, 128, torch.Generator().manual_seed(3))
    other_noise = initial_noise(pipe, 1, 128, 128, torch.Generator().manual_seed(4))
    rec_kwargs = {"token_count": view.n_used}
    _, alone = capture(pipe, rec_kwargs, latents=noise)
    _, batch = capture(pipe, rec_kwargs, prompt=[PROMPT, "blue sphere"], latents=torch.cat([noise, other_noise]))
    assert batch.batch_size == 2
    for name, maps in batch.maps.items():
        torch.testing.assert_close(maps[:, :1].float(), alone.maps[name].float(), atol=2e-3, rtol=0)
    name = next(iter(batch.maps))
    assert not torch.allclose(batch.maps[name][:, 0].float(), batch.maps[name][:, 1].float(), atol=1e-3)


def test_num_images_per_prompt(pipe):
    _, captured = capture(pipe, num_images_per_prompt=3)
    assert captured.batch_size == 3


@pytest.mark.parametrize(("height", "width"), [(128, 192), (192, 128)])
def test_non_square_images(pipe, height, width):
    _, captured = capture(pipe, height=height, width=width)
    scale = pipe.vae_scale_factor
    assert captured.latent_hw == (height // scale, width // scale)
    assert captured.image_hw == (height, width)
    sizes = set(captured.layer_resolutions.values())
    h, w = height // scale, width // scale
    assert sizes == {(h, w), (h // 2, w // 2), (h // 4, w // 4), (h // 8, w // 8)}
    for name, maps in captured.maps.items():
        assert maps.shape[-2:] == captured.layer_resolutions[name]


def test_non_square_without_callback_needs_hints(pipe):
    """No callback: every U-Net call is a step and the latent size comes from the height/width hints."""
    with AttentionRecorder(pipe, height=128, width=192) as rec:
        generate(pipe, height=128, width=192)
    captured = rec.result()
    assert captured.n_steps == len(pipe.scheduler.timesteps)  # PNDM: one U-Net call per timestep entry
    assert captured.layer_resolutions["down_blocks.0.attentions.0.transformer_blocks.0.attn2"] == (16, 24)
    with AttentionRecorder(pipe) as rec:  # hints missing: 16x24 cannot be guessed from 384 positions
        generate(pipe, height=128, width=192)
    with pytest.raises(ValueError, match="height/width"):
        rec.result()


def test_heun_two_unet_calls_per_step(pipe):
    heun = with_scheduler(pipe, HeunDiscreteScheduler)
    steps = 3
    _, captured = capture(heun, num_inference_steps=steps)
    assert len(heun.scheduler.timesteps) == 2 * steps - 1  # U-Net calls
    assert captured.n_steps == steps
    assert captured.calls_per_step == (2, 2, 1)  # the last Heun step is a single Euler call


def test_steps_follow_scheduler_timesteps(pipe):
    ddim = with_scheduler(pipe, DDIMScheduler)
    _, captured = capture(ddim, num_inference_steps=4)
    assert captured.timesteps == tuple(float(t) for t in ddim.scheduler.timesteps)
    assert captured.calls_per_step == (1, 1, 1, 1)


def test_max_resolution_average_pools(pipe, default_run):
    full = default_run[2]
    _, pooled = capture(pipe, {"max_resolution": 8})
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"  # 16x16 -> 8x8
    assert pooled.maps[name].shape[-2:] == (8, 8)
    assert pooled.layer_resolutions[name] == (16, 16)
    expected = F.avg_pool2d(full.maps[name].float().flatten(0, 2), 2).unflatten(0, full.maps[name].shape[:3])
    torch.testing.assert_close(pooled.maps[name].float(), expected, atol=1e-3, rtol=0)
    assert pooled.nbytes < full.nbytes


def test_per_head_maps_average_to_head_mean(pipe, default_run):
    mean = default_run[2]
    _, heads = capture(pipe, {"per_head": True})
    name = "mid_block.attentions.0.transformer_blocks.0.attn2"
    module = pipe.unet.get_submodule(name)
    assert heads.maps[name].shape[2] == module.heads
    torch.testing.assert_close(heads.maps[name].float().mean(2), mean.maps[name].float(), atol=1e-3, rtol=0)


def test_recorder_cannot_be_entered_twice(pipe):
    rec = AttentionRecorder(pipe)
    with rec, pytest.raises(RuntimeError, match="already active"):
        rec.__enter__()


def test_reused_qk_path_records_what_the_generic_path_records(pipe, default_run):
    """Default processors take the Q/K-reusing path; any other processor the generic one: same maps, same images."""

    class PassThrough:  # not AttnProcessor2_0: forces the recorder to let it run and recompute Q and K
        def __init__(self, original):
            self.original = original

        def __call__(self, *args, **kwargs):
            return self.original(*args, **kwargs)

    reference, _, fast = default_run
    originals = dict(pipe.unet.attn_processors)
    pipe.unet.set_attn_processor({k: PassThrough(p) if "attn2" in k else p for k, p in originals.items()})
    try:
        images, generic = capture(pipe)
    finally:
        pipe.unet.set_attn_processor(originals)
    assert torch.equal(images, reference)
    assert fast.maps.keys() == generic.maps.keys()
    for name in fast.maps:
        torch.testing.assert_close(fast.maps[name].float(), generic.maps[name].float(), atol=1e-3, rtol=0)


def test_bulk_and_per_step_materialising_agree(pipe, default_run):
    """work_bytes=0 turns Q/K into maps at every step close; the default gathers the whole (small) run first."""
    _, _, bulk = default_run
    _, stepwise = capture(pipe, {"work_bytes": 0})
    assert stepwise.timesteps == bulk.timesteps
    for name in bulk.maps:
        assert torch.equal(stepwise.maps[name], bulk.maps[name])
