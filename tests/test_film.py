"""Film: exact x̂₀ recovery per scheduler, latent→RGB preview, frames from a tiny v-prediction pipeline."""

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)
from tiny_pipelines import SD_SCHEDULER_CONFIG, build_sd2, single_thread

from explain.capture.film import FilmRecorder, LatentPreview, initial_noise, predicted_x0, x0_method

LATENT_SHAPE = (1, 4, 6, 8)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


def run_scheduler(scheduler, steps=5, seed=0):
    """Step a scheduler with random model outputs; yield (t, x_t, step output, model output)."""
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(LATENT_SHAPE, generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_output = torch.randn(LATENT_SHAPE, generator=generator)
        out = scheduler.step(model_output, t, x)
        yield t, x, out, model_output
        x = out.prev_sample


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, EulerDiscreteScheduler])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_inverting_first_order_steps_gives_the_schedulers_x0(scheduler_class, prediction_type):
    scheduler = scheduler_class.from_config({**SD_SCHEDULER_CONFIG, "prediction_type": prediction_type})
    assert x0_method(scheduler) == "invert"
    for t, x_t, out, _ in run_scheduler(scheduler):
        x0 = predicted_x0(scheduler, t, x_t, out.prev_sample)
        torch.testing.assert_close(x0, out.pred_original_sample, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scheduler_class", [DPMSolverMultistepScheduler, UniPCMultistepScheduler])
def test_data_prediction_state_is_x0(scheduler_class):
    """ε-prediction: x̂₀ = (x_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t) (Ho et al. 2020, eq. 15)."""
    scheduler = scheduler_class.from_config(SD_SCHEDULER_CONFIG)
    assert x0_method(scheduler) == "state"
    for t, x_t, _, eps in run_scheduler(scheduler):
        alpha_bar = scheduler.alphas_cumprod[int(t)]
        expected = (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
        torch.testing.assert_close(
            predicted_x0(scheduler, t, None, torch.zeros(LATENT_SHAPE)), expected, atol=1e-4, rtol=1e-4
        )


def test_no_x0_where_it_cannot_be_derived():
    for scheduler in (
        PNDMScheduler.from_config(SD_SCHEDULER_CONFIG),
        HeunDiscreteScheduler.from_config(SD_SCHEDULER_CONFIG),
        DDIMScheduler.from_config({**SD_SCHEDULER_CONFIG, "clip_sample": True}),  # clipped x̂₀ breaks the inversion
    ):
        assert x0_method(scheduler) is None
        t, x_t, out, _ = next(run_scheduler(scheduler))
        assert predicted_x0(scheduler, t, x_t, out.prev_sample) is None
    ddim = DDIMScheduler.from_config(SD_SCHEDULER_CONFIG)
    t, _, out, _ = next(run_scheduler(ddim))
    assert predicted_x0(ddim, t, None, out.prev_sample) is None  # inverting needs x_t


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    pipe = build_sd2(tmp_path_factory.mktemp("sd2"))  # DDIM, v-prediction
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_latent_preview_is_a_fitted_affine_map(pipe):
    preview = LatentPreview.fit(pipe.vae)
    assert preview.weight.shape == (3, pipe.unet.config.in_channels)
    again = LatentPreview.fit(pipe.vae)
    assert torch.equal(preview.weight, again.weight)  # deterministic
    latents = torch.randn(2, 4, 5, 7)
    rgb = preview(latents)
    assert rgb.shape == (2, 5, 7, 3) and rgb.dtype == np.uint8
    manual = torch.einsum("oc,bchw->bhwo", preview.weight, latents) + preview.bias
    expected = ((manual.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert np.array_equal(rgb, expected)


def generate_with_film(pipe, steps=3, seed=0, **film_kwargs):
    generator = torch.Generator().manual_seed(seed)
    noise = initial_noise(pipe, 1, 128, 128, generator)
    film = FilmRecorder(pipe, initial_latents=noise, **film_kwargs)
    out = pipe(
        "a red cube",
        num_inference_steps=steps,
        generator=generator,
        latents=noise,
        output_type="latent",
        callback_on_step_end=film.callback_on_step_end,
    )
    return film, out.images


def test_film_frames_carry_exact_x0(pipe):
    film, final_latents = generate_with_film(pipe)
    frames = film.frames()
    assert [f.step for f in frames] == [0, 1, 2]
    assert [f.timestep for f in frames] == [float(t) for t in pipe.scheduler.timesteps]
    assert all(f.source == "x0" and f.x0 is not None for f in frames)
    assert torch.equal(frames[-1].latents, final_latents)
    # DDIM's last step lands on ᾱ_prev = alphas_cumprod[0] (set_alpha_to_one=False): x_0 ≈ x̂₀ up to its noise
    alpha_bar = pipe.scheduler.final_alpha_cumprod
    residual = final_latents - alpha_bar.sqrt() * frames[-1].x0
    assert residual.abs().max() < (1 - alpha_bar).sqrt() * 10
    assert frames[0].image.shape == (1, 128, 128, 3) and frames[0].image.dtype == np.uint8


def test_film_matches_a_run_without_it(pipe):
    _, with_film = generate_with_film(pipe, seed=5)
    generator = torch.Generator().manual_seed(5)
    noise = initial_noise(pipe, 1, 128, 128, generator)
    plain = pipe("a red cube", num_inference_steps=3, generator=generator, latents=noise, output_type="latent").images
    torch.testing.assert_close(with_film, plain, atol=0, rtol=0)
    reference = pipe(
        "a red cube", num_inference_steps=3, generator=torch.Generator().manual_seed(5), output_type="latent"
    ).images
    torch.testing.assert_close(plain, reference, atol=0, rtol=0)  # initial_noise is the pipeline's own draw


def test_every_and_vae_decoding(pipe):
    streamed = []
    film, _ = generate_with_film(pipe, steps=5, every=2, decode="vae", on_frame=streamed.append)
    frames = film.frames()
    assert [f.step for f in frames] == [0, 2, 4]
    assert [f.step for f in streamed] == [0, 2, 4]
    assert frames[0].image.shape == (1, 128, 128, 3)


def test_streaming_every_third_frame_and_batched_decoding(pipe):
    """Streamed frames are decoded once and reused; the rest are decoded in batches, like one at a time."""
    streamed = []
    film, _ = generate_with_film(pipe, steps=7, decode="vae", on_frame=streamed.append, stream_every=3)
    assert [f.step for f in streamed] == [0, 3, 6]  # the last step (6) is always streamed
    frames = film.frames(batch=3)
    assert [f.step for f in frames] == list(range(7))
    assert all(frames[f.step] is f for f in streamed)  # not decoded a second time
    one_by_one, _ = generate_with_film(pipe, steps=7, decode="vae")
    for batched, single in zip(frames, one_by_one.frames(batch=1), strict=True):
        assert torch.equal(batched.x0, single.x0)
        assert np.abs(batched.image.astype(int) - single.image.astype(int)).max() <= 1  # batched convs may round


def test_heun_records_one_frame_per_step(pipe):
    heun = StableDiffusionPipeline(
        **{**pipe.components, "scheduler": HeunDiscreteScheduler.from_config(pipe.scheduler.config)}
    )
    heun.set_progress_bar_config(disable=True)
    film, _ = generate_with_film(heun, steps=3)
    frames = film.frames()
    assert [f.step for f in frames] == [0, 1, 2]
    assert all(f.source == "latents" and f.x0 is None for f in frames)


@pytest.mark.parametrize("scheduler_class", [PNDMScheduler, HeunDiscreteScheduler])
def test_each_step_is_shown_once_with_its_own_timestep(pipe, scheduler_class):
    """PNDM's PLMS start repeats a timestep and Heun's last step is a lone Euler call: the film still shows steps
    1..N, each once, each at the timestep it starts from (was: PNDM "step 2/4 (t = 334)", "step 3/4 (t = 334)")."""
    from explain.diffusion.steps import StepPlan

    config = (
        {**SD_SCHEDULER_CONFIG, "skip_prk_steps": True} if scheduler_class is PNDMScheduler else pipe.scheduler.config
    )
    other = StableDiffusionPipeline(**{**pipe.components, "scheduler": scheduler_class.from_config(config)})
    other.set_progress_bar_config(disable=True)
    film, _ = generate_with_film(other, steps=3)
    frames = film.frames()
    assert [f.step for f in frames] == [0, 1, 2]
    shown = [f.timestep for f in frames]
    assert len(set(shown)) == 3 and shown == sorted(shown, reverse=True)
    calls = [float(t) for t in other.scheduler.timesteps]  # PNDM: [666, 333, 333, 0]; Heun: 5 calls
    assert len(calls) > 3 and shown[0] == calls[0]
    assert StepPlan.of(other.scheduler).total == 3


def test_film_requires_latents_in_callback(pipe):
    film = FilmRecorder(pipe)
    with pytest.raises(KeyError, match="latents"):
        pipe(
            "a",
            num_inference_steps=1,
            callback_on_step_end=film.callback_on_step_end,
            callback_on_step_end_tensor_inputs=["prompt_embeds"],
            output_type="latent",
        )
