"""The forward chain: step-by-step sampling agrees with the closed form, forgets its start, and img2img strength."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
)

from explain.diffusion.latents import decode_latents, encode_latents, pixel_and_latent_chains, rgb_to_pixels
from explain.diffusion.noising import (
    ForwardSchedule,
    closed_form,
    compare_moments,
    forgetting,
    forward_chains,
    step_chain,
    strength_to_start_step,
)
from explain.io.figures import pixels_to_rgb

# Two-sided z bound for statistical checks (P(|Z| > 5) ~ 6e-7): with fixed seeds a failure means a real bug.
Z = 5.0
# Stable Diffusion v1's noise schedule, as in its scheduler/scheduler_config.json.
SD_SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
# Tensors stay below torch's parallel grain size (32768 elements) so the chain runs fast on busy CPUs.
N_SAMPLES, N_ELEMENTS = 2000, 8


@pytest.fixture(scope="module")
def sd_scheduler():
    return DDPMScheduler(**SD_SCHEDULE)


@pytest.fixture(scope="module")
def sd(sd_scheduler):
    return ForwardSchedule.from_scheduler(sd_scheduler)


def test_schedule_from_scheduler(sd_scheduler, sd):
    assert sd.num_train_timesteps == sd_scheduler.config.num_train_timesteps
    np.testing.assert_allclose(sd.betas.numpy(), sd_scheduler.betas.numpy())
    np.testing.assert_allclose(sd.alphas.numpy(), 1 - sd_scheduler.betas.double().numpy())
    # alphas_cumprod is the running product of (1 - beta); float32 rounding over 1000 factors stays below 1e-5.
    np.testing.assert_allclose(sd.alpha_bars.numpy(), np.cumprod(1 - sd.betas.numpy()), rtol=1e-5)
    np.testing.assert_allclose(sd.snr.numpy(), sd.alpha_bars.numpy() / (1 - sd.alpha_bars.numpy()))
    assert np.all(np.diff(sd.snr.numpy()) < 0)  # SNR decreases monotonically along the chain


@pytest.mark.parametrize("cls", [PNDMScheduler, EulerDiscreteScheduler, DDIMScheduler])
def test_schedule_is_the_same_for_every_ddpm_family_scheduler(cls, sd):
    other = ForwardSchedule.from_scheduler(cls(**SD_SCHEDULE))
    torch.testing.assert_close(other.alpha_bars, sd.alpha_bars)


def test_flow_matching_scheduler_is_rejected():
    with pytest.raises(ValueError, match="no betas"):
        ForwardSchedule.from_scheduler(FlowMatchEulerDiscreteScheduler())


def test_closed_form_equals_diffusers_add_noise(sd_scheduler, sd):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 4, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 417, 999])
    torch.testing.assert_close(closed_form(x0, t, sd, noise), sd_scheduler.add_noise(x0, noise, t))
    single = closed_form(x0[:1], 250, sd, noise[:1])
    torch.testing.assert_close(single, sd_scheduler.add_noise(x0[:1], noise[:1], torch.tensor([250])))


def test_chain_indexing_is_exact():
    # All betas 0 except beta_7 = 1: the state is x0 up to timestep 6, and pure noise from timestep 7 on.
    betas = np.zeros(20)
    betas[7] = 1.0
    schedule = ForwardSchedule.from_scheduler(DDPMScheduler(num_train_timesteps=20, trained_betas=betas))
    x_a, x_b = torch.full((2, 5), 0.5), torch.full((2, 5), -0.9)
    run_a = step_chain(x_a, schedule, torch.Generator().manual_seed(3), record_at=[0, 6, 7, 19])
    run_b = step_chain(x_b, schedule, torch.Generator().manual_seed(3), record_at=[19, 7, 6, 0])
    assert run_a.timesteps == run_b.timesteps == (0, 6, 7, 19)
    torch.testing.assert_close(run_a.frames[0], x_a)
    torch.testing.assert_close(run_a.frames[1], x_a)
    torch.testing.assert_close(run_a.frames[2], run_b.frames[2])  # forgotten: same noise, any start
    torch.testing.assert_close(run_a.frames[3], run_b.frames[3])
    noise = torch.randn(x_a.shape)
    torch.testing.assert_close(closed_form(x_a, 6, schedule, noise), x_a)
    torch.testing.assert_close(closed_form(x_a, 7, schedule, noise), noise)


def test_every_step_is_the_same_gaussian_transition(sd):
    # (x_t - sqrt(alpha_t) x_{t-1}) / sqrt(beta_t) must be N(0, 1) and independent of x_{t-1}, at any t.
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4000, 4, generator=g) * 2 - 1  # M = 16000 elements
    ts = [1, 2, 500, 501, 998, 999]
    run = step_chain(x0, sd, g, record_at=ts)
    frames = dict(zip(run.timesteps, run.frames, strict=True))
    m = x0.numel()
    for t in (2, 501, 999):
        prev, cur = frames[t - 1].double(), frames[t].double()
        resid = (cur - sd.alphas[t].sqrt() * prev) / sd.betas[t].sqrt()
        assert abs(float(resid.mean())) < Z / np.sqrt(m)
        assert abs(float(resid.var()) - 1) < Z * np.sqrt(2 / (m - 1))
        corr = float(torch.corrcoef(torch.stack([resid.ravel(), prev.ravel()]))[0, 1])
        assert abs(corr) < Z / np.sqrt(m)


@pytest.mark.parametrize("scheduler_kwargs", [SD_SCHEDULE, {}], ids=["sd-scaled-linear", "ddpm-linear"])
def test_step_chain_moments_match_closed_form(scheduler_kwargs):
    schedule = ForwardSchedule.from_scheduler(DDPMScheduler(**scheduler_kwargs))
    x0 = torch.linspace(-1, 1, N_ELEMENTS)
    ts = [0, 10, 100, 500, 999]
    m = compare_moments(x0, schedule, ts, N_SAMPLES, torch.Generator().manual_seed(2))
    assert m.timesteps == tuple(ts) and (m.n_samples, m.n_elements) == (N_SAMPLES, N_ELEMENTS)
    np.testing.assert_allclose(m.theory_coef, schedule.alpha_bars[ts].sqrt().numpy())
    np.testing.assert_allclose(m.theory_var, 1 - schedule.alpha_bars[ts].numpy())
    for coef, var in ((m.chain_coef, m.chain_var), (m.closed_coef, m.closed_var)):
        assert np.all(np.abs(coef - m.theory_coef) < Z * m.coef_se)
        assert np.all(np.abs(var - m.theory_var) < Z * m.var_se)
    # The test has power: a 10% error in the signal coefficient or the noise variance at t=100 would fail it.
    assert Z * m.coef_se[2] < 0.1 * m.theory_coef[2] and Z * m.var_se[2] < 0.1 * m.theory_var[2]


def test_chain_forgets_its_start(sd):
    g = torch.Generator().manual_seed(4)
    checker = torch.ones(3, 40, 40)
    checker[:, ::2, 1::2] = -1
    checker[:, 1::2, ::2] = -1
    gradient = torch.linspace(-1, 1, checker.numel()).reshape(checker.shape)
    T = sd.num_train_timesteps
    f = forgetting(checker, gradient, sd, g, timesteps=[0, T // 2, T - 1])
    d = checker.numel()
    abar = sd.alpha_bars[list(f.timesteps)].numpy()
    np.testing.assert_allclose(f.signal_coef, np.sqrt(abar))
    # At t = 0 the state is the start; at T - 1 it is (nearly) N(0, I), whatever the start.
    assert f.corr_start_a[0] > 0.99 and f.corr_start_b[0] > 0.99
    assert abs(f.mean_a[-1]) < Z / np.sqrt(d) and abs(f.mean_b[-1]) < Z / np.sqrt(d)
    assert abs(f.std_a[-1] - 1) < 0.05 and abs(f.std_b[-1] - 1) < 0.05
    assert abs(f.corr_start_a[-1]) < 0.1 and abs(f.corr_ab[-1]) < Z / np.sqrt(d)
    # Empirical correlations follow theory (standard error of a correlation ~ 1 / sqrt(D)).
    assert np.all(np.abs(f.corr_start_a - f.corr_start_a_theory) < Z / np.sqrt(d))
    assert np.all(np.abs(f.corr_start_b - f.corr_start_b_theory) < Z / np.sqrt(d))
    # KL between the two conditionals: huge at t=0, tiny at T-1 (SD's schedule keeps sqrt(abar_T) ~ 0.07 of signal).
    assert f.kl_ab_per_dim[0] > 100 and f.kl_ab_per_dim[-1] < 0.01
    assert np.all(np.diff(f.kl_ab_per_dim) < 0) and np.all(np.diff(f.kl_prior_a_per_dim) < 0)


# (num_inference_steps, strength) pairs, including float-rounding cases like 0.29 * 100 = 28.999...
STRENGTHS = [(50, 0.0), (50, 0.05), (50, 0.3), (50, 0.75), (50, 1.0), (100, 0.29), (7, 0.5), (10, 0.99)]


@pytest.mark.parametrize("cls", [DDPMScheduler, PNDMScheduler, DDIMScheduler, EulerDiscreteScheduler])
@pytest.mark.parametrize(("n", "strength"), STRENGTHS)
def test_strength_mirrors_diffusers_img2img(cls, n, strength):
    from diffusers import StableDiffusionImg2ImgPipeline

    scheduler = cls(**SD_SCHEDULE)
    before = scheduler.num_inference_steps
    start = strength_to_start_step(strength, n, scheduler)
    assert scheduler.num_inference_steps == before  # the caller's scheduler is untouched

    reference = cls(**SD_SCHEDULE)
    reference.set_timesteps(n)
    timesteps, steps = StableDiffusionImg2ImgPipeline.get_timesteps(
        SimpleNamespace(scheduler=reference), n, strength, "cpu"
    )
    assert start.timesteps == tuple(int(t) for t in timesteps)
    assert start.denoising_steps == steps
    if len(timesteps):
        abar = float(reference.alphas_cumprod[int(timesteps[0])])
        assert start.start_timestep == int(timesteps[0])
        assert start.alpha_bar == pytest.approx(abar)
        assert start.signal_coef**2 + start.noise_std**2 == pytest.approx(1.0)
    else:
        assert start.start_timestep is None and start.noise_std == 0.0


def test_strength_orders_start_points_and_validates(sd_scheduler):
    starts = [strength_to_start_step(s, 50, sd_scheduler).start_timestep for s in (0.2, 0.5, 0.8, 1.0)]
    assert starts == sorted(starts) and len(set(starts)) == 4
    with pytest.raises(ValueError, match="strength"):
        strength_to_start_step(1.5, 50, sd_scheduler)


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        scaling_factor=0.37,  # not SD's value: proves the config is read
    ).eval()


def test_latents_use_the_vae_config(tiny_vae, sd):
    g = torch.Generator().manual_seed(5)
    image = torch.rand(2, 3, 16, 24, generator=g) * 2 - 1
    factor = 2 ** (len(tiny_vae.config.block_out_channels) - 1)
    z = encode_latents(tiny_vae, image)
    assert z.shape == (2, tiny_vae.config.latent_channels, 16 // factor, 24 // factor)
    with torch.no_grad():
        dist = tiny_vae.encode(image).latent_dist
        torch.testing.assert_close(z, dist.mean * tiny_vae.config.scaling_factor)
        decoded = tiny_vae.decode(dist.mean).sample.clamp(-1, 1)
    torch.testing.assert_close(decode_latents(tiny_vae, z), decoded)
    sampled = encode_latents(tiny_vae, image, generator=torch.Generator().manual_seed(0), sample=True)
    assert sampled.shape == z.shape and not torch.equal(sampled, z)
    # The chain runs on latents exactly as on pixels.
    run = step_chain(z, sd, g, record_at=[10, 999])
    assert run.frames.shape == (2, *z.shape)


def test_pixel_and_latent_chains_run_both_spaces_from_one_generator(tiny_vae, sd):
    pixels = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(3)) * 2 - 1
    ts = [10, 500, 999]
    rows = pixel_and_latent_chains(tiny_vae, pixels, sd, ts, torch.Generator().manual_seed(7))
    assert list(rows) == [
        ("pixels", "step by step"),
        ("pixels", "closed form"),
        ("latents", "step by step"),
        ("latents", "closed form"),
    ]
    assert all(row.shape == (1 + len(ts), 3, 16, 24) for row in rows.values())
    # The same draws by hand: pixel chains first, then the latent chains; latent rows decoded, x_0 included.
    g = torch.Generator().manual_seed(7)
    chain, closed = forward_chains(pixels, sd, ts, g)
    torch.testing.assert_close(rows["pixels", "step by step"], torch.cat([pixels, *chain]))
    torch.testing.assert_close(rows["pixels", "closed form"], torch.cat([pixels, *closed]))
    z0 = encode_latents(tiny_vae, pixels)
    z_chain, _ = forward_chains(z0, sd, ts, g)
    torch.testing.assert_close(rows["latents", "step by step"], decode_latents(tiny_vae, torch.cat([z0, *z_chain])))


def test_rgb_pixel_round_trip():
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    pixels = rgb_to_pixels(rgb)
    assert pixels.shape == (1, 3, 5, 7) and pixels.min() >= -1 and pixels.max() <= 1
    back = np.round(pixels_to_rgb(pixels)[0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(back, rgb)
    with pytest.raises(ValueError, match="uint8"):
        rgb_to_pixels(np.zeros((4, 4), dtype=np.uint8))
