"""The diffusion forward process: a fixed Markov chain of ``T`` Gaussian steps (Ho et al. 2020, "DDPM").

One transition, the same kind at every step (eq. 2)::

    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)      i.e. x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps

Composing Gaussians gives the closed form (eq. 4), with ``alpha_t = 1 - beta_t`` and ``alpha_bar_t = prod alpha_s``::

    q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)

so one can jump to any ``t`` directly (what training and diffusers' ``scheduler.add_noise`` do). The signal-to-noise
ratio is ``SNR(t) = alpha_bar_t / (1 - alpha_bar_t)`` (Kingma et al. 2021, "Variational Diffusion Models").

Indexing follows diffusers: timestep ``t`` runs ``0 .. T-1`` and ``alpha_bar[t] = prod_{s <= t} (1 - beta[s])``, so
the state at timestep ``t`` has gone through ``t + 1`` transitions; ``x0`` is the clean data before any step.

Stable Diffusion runs this chain on VAE latents (``z = scaling_factor * E(x)``, Rombach et al. 2022), not pixels; the
same code works on both. img2img's ``strength`` says where on this chain the sampler starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "ForwardSchedule",
    "ChainTrajectory",
    "MomentComparison",
    "ForgettingResult",
    "StrengthStart",
    "step_chain",
    "closed_form",
    "compare_moments",
    "forgetting",
    "strength_to_start_step",
    "forward_chains",
]


@dataclass(frozen=True, eq=False)
class ForwardSchedule:
    """The fixed noise schedule of a diffusers scheduler (float64 tensors indexed by diffusers timestep ``t``)."""

    betas: torch.Tensor  # (T,) beta_t
    alphas: torch.Tensor  # (T,) alpha_t = 1 - beta_t
    alpha_bars: torch.Tensor  # (T,) alpha_bar_t = prod_{s<=t} alpha_s, the scheduler's alphas_cumprod
    snr: torch.Tensor  # (T,) alpha_bar_t / (1 - alpha_bar_t)

    @property
    def num_train_timesteps(self) -> int:
        """``T``, the chain length."""
        return int(self.betas.shape[0])

    @classmethod
    def from_scheduler(cls, scheduler) -> ForwardSchedule:
        """Read ``betas`` and ``alphas_cumprod`` from any DDPM-family diffusers scheduler.

        Raises:
            ValueError: for schedulers without a beta schedule (e.g. flow matching), or inconsistent lengths.
        """
        betas = getattr(scheduler, "betas", None)
        alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
        if betas is None or alphas_cumprod is None:
            raise ValueError(
                f"{type(scheduler).__name__} has no betas/alphas_cumprod: it is not a DDPM-style forward chain"
            )
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        alpha_bars = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
        num_train = int(scheduler.config.num_train_timesteps)
        if betas.shape != (num_train,) or alpha_bars.shape != (num_train,):
            raise ValueError(
                f"expected {num_train} betas and alphas_cumprod, got {tuple(betas.shape)}, {tuple(alpha_bars.shape)}"
            )
        return cls(betas, 1.0 - betas, alpha_bars, alpha_bars / (1.0 - alpha_bars))


@dataclass(frozen=True, eq=False)
class ChainTrajectory:
    """States of one run of the step-by-step chain, recorded at chosen timesteps (``frames[k]`` is ``x_{t_k}``)."""

    timesteps: tuple[int, ...]  # (K,) recorded diffusers timesteps, increasing
    frames: torch.Tensor  # (K, *x0.shape)


@dataclass(frozen=True, eq=False)
class MomentComparison:
    """Step chain vs closed form vs theory: per timestep, the signal coefficient and the noise variance.

    With ``N`` chains from the same ``x0`` (``D`` elements): ``coef`` is the least-squares slope of the per-element
    sample mean on ``x0`` (theory ``sqrt(alpha_bar_t)``); ``var`` is the per-element sample variance averaged over
    elements (theory ``1 - alpha_bar_t``). The standard errors under the theory are ``sqrt((1 - abar) / (N sum x0^2))``
    and ``(1 - abar) sqrt(2 / ((N - 1) D))``, so ``(estimate - theory) / se`` is approximately standard normal.
    """

    timesteps: tuple[int, ...]  # (K,)
    theory_coef: np.ndarray  # (K,) sqrt(alpha_bar_t)
    theory_var: np.ndarray  # (K,) 1 - alpha_bar_t
    chain_coef: np.ndarray  # (K,) estimated from the step-by-step chain
    chain_var: np.ndarray  # (K,)
    closed_coef: np.ndarray  # (K,) estimated from closed-form samples
    closed_var: np.ndarray  # (K,)
    coef_se: np.ndarray  # (K,) standard error of a coef estimate
    var_se: np.ndarray  # (K,) standard error of a var estimate
    n_samples: int  # N
    n_elements: int  # D


@dataclass(frozen=True, eq=False)
class ForgettingResult:
    """Evidence that the chain forgets where it started: two starts ``a`` and ``b``; statistics over elements.

    Theory: ``corr(x_t, x_0) = sqrt(abar) s0 / sqrt(abar s0^2 + 1 - abar)`` (``s0`` the std of ``x_0``);
    ``KL(q(x_t|a) || q(x_t|b)) / D = abar mean((a - b)^2) / (2 (1 - abar))``: how well ``x_t`` could still tell the two
    starts apart, in nats per element. For ``N(0, I)``: mean 0, std 1, correlations 0, KL 0.
    """

    timesteps: tuple[int, ...]  # (K,)
    signal_coef: np.ndarray  # (K,) sqrt(alpha_bar_t): what is left of x0 in x_t
    mean_a: np.ndarray  # (K,) mean over elements of x_t started at a
    std_a: np.ndarray  # (K,)
    mean_b: np.ndarray  # (K,)
    std_b: np.ndarray  # (K,)
    corr_start_a: np.ndarray  # (K,) Pearson correlation of x_t with its own start
    corr_start_b: np.ndarray  # (K,)
    corr_start_a_theory: np.ndarray  # (K,)
    corr_start_b_theory: np.ndarray  # (K,)
    corr_ab: np.ndarray  # (K,) correlation between the two chains' states (independent noise)
    kl_ab_per_dim: np.ndarray  # (K,) KL(q(x_t|a) || q(x_t|b)) / D
    kl_prior_a_per_dim: np.ndarray  # (K,) KL(q(x_t|a) || N(0, I)) / D


@dataclass(frozen=True)
class StrengthStart:
    """Where img2img starts on the forward chain for a given ``strength`` (mirrors diffusers ``get_timesteps``).

    ``strength`` 1 starts from (almost) pure noise, 0 does not denoise at all; the input is noised with
    ``q(x_t | x_0)`` at ``start_timestep`` (``None`` when no sampler step runs, then ``alpha_bar`` is 1).
    """

    strength: float
    num_inference_steps: int  # the sampler's step count n
    t_start: int  # sampler steps skipped: n - min(int(n * strength), n)
    denoising_steps: int  # sampler steps that run
    start_timestep: int | None
    timesteps: tuple[int, ...]  # the sampler timesteps that run, in order
    alpha_bar: float  # at start_timestep
    signal_coef: float  # sqrt(alpha_bar)
    noise_std: float  # sqrt(1 - alpha_bar)


def _check_timesteps(timesteps: Iterable[int], schedule: ForwardSchedule) -> tuple[int, ...]:
    ts = tuple(sorted({int(t) for t in timesteps}))
    if not ts:
        raise ValueError("need at least one timestep")
    if ts[0] < 0 or ts[-1] >= schedule.num_train_timesteps:
        raise ValueError(f"timesteps must lie in 0..{schedule.num_train_timesteps - 1}, got {list(ts)}")
    return ts


def step_chain(
    x0: torch.Tensor,
    schedule: ForwardSchedule,
    generator: torch.Generator | None = None,
    record_at: Iterable[int] | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> ChainTrajectory:
    """Run the forward chain one transition at a time: ``x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps``.

    Every step samples the same kind of transition ``q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)``
    (Ho et al. 2020 eq. 2), with fresh ``eps ~ N(0, I)``; nothing but the previous state is used.

    Args:
        x0: clean data, any shape (pixels ``(B, 3, H, W)`` in ``[-1, 1]`` or latents ``(B, C, h, w)``).
        schedule: the betas.
        generator: torch generator for reproducible noise.
        record_at: diffusers timesteps to keep (default: only the last, ``T - 1``); the chain stops at the largest.
        callback: called as ``callback(t, x_t)`` after every step (k-diffusion style), e.g. to accumulate statistics.
    """
    ts = _check_timesteps([schedule.num_train_timesteps - 1] if record_at is None else record_at, schedule)
    wanted = set(ts)
    frames = []
    x = x0
    sqrt_alphas = schedule.alphas.sqrt().tolist()
    sqrt_betas = schedule.betas.sqrt().tolist()
    for t in range(ts[-1] + 1):
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        x = eps.mul_(sqrt_betas[t]).add_(x, alpha=sqrt_alphas[t])  # q(x_t | x_{t-1}); a fresh tensor every step
        if callback is not None:
            callback(t, x)
        if t in wanted:
            frames.append(x)
    return ChainTrajectory(ts, torch.stack(frames))


def closed_form(
    x0: torch.Tensor, t: int | torch.Tensor, schedule: ForwardSchedule, noise: torch.Tensor
) -> torch.Tensor:
    """Jump straight to timestep ``t``: ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise``.

    This is ``q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)``, Ho et al. 2020 eq. 4; identical to
    diffusers' ``scheduler.add_noise(x0, noise, t)``.

    Args:
        x0: clean data ``(B, ...)``.
        t: one timestep, or one per batch element ``(B,)``.
        schedule: the schedule.
        noise: ``eps ~ N(0, I)``, same shape as ``x0``.
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
    abar = schedule.alpha_bars[torch.as_tensor(t, dtype=torch.long)].to(dtype=x0.dtype, device=x0.device)
    if abar.ndim == 1:
        abar = abar.reshape(-1, *([1] * (x0.ndim - 1)))  # (B, 1, ..., 1)
    return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise


def forward_chains(
    x0: torch.Tensor, schedule: ForwardSchedule, timesteps: Iterable[int], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x0`` at every t of ``timesteps``, both ways: the step chain (eq. 2, one run recorded at each t) and the
    closed form (eq. 4, fresh noise per t); each ``(K, *x0.shape)``. The two have the same distribution."""
    ts = list(timesteps)
    chain = step_chain(x0, schedule, generator, record_at=ts).frames
    closed = torch.stack([closed_form(x0, t, schedule, torch.randn(x0.shape, generator=generator)) for t in ts])
    return chain, closed


def compare_moments(
    x0: torch.Tensor,
    schedule: ForwardSchedule,
    timesteps: Iterable[int],
    n_samples: int,
    generator: torch.Generator | None = None,
) -> MomentComparison:
    """Sample the step chain and the closed form ``n_samples`` times from one ``x0``; compare their moments.

    Checks that composing ``t + 1`` transitions ``q(x_s | x_{s-1})`` gives ``q(x_t | x_0)`` (Ho et al. 2020, eq. 2
    vs eq. 4): mean ``sqrt(alpha_bar_t) x0``, variance ``(1 - alpha_bar_t)``.

    Args:
        x0: one clean sample of any shape (its ``D`` elements are the statistical units).
        schedule, timesteps, generator: the chain, where to compare, the noise source.
        n_samples: ``N >= 2`` independent chains.
    """
    if n_samples < 2:
        raise ValueError("need n_samples >= 2 to estimate a variance")
    ts = _check_timesteps(timesteps, schedule)
    # float32 sampling (4x cheaper noise), float64 statistics: rounding is far below the standard errors
    flat = x0.reshape(1, -1).to(torch.float64)  # (1, D)
    batch = flat.expand(n_samples, -1).to(torch.float32)  # (N, D)
    chain = step_chain(batch, schedule, generator, record_at=ts).frames.to(torch.float64)  # (K, N, D)
    abar = schedule.alpha_bars[list(ts)]  # (K,)
    noise = torch.randn((len(ts), *batch.shape), generator=generator).to(torch.float64)  # (K, N, D)
    closed = abar.sqrt()[:, None, None] * flat + (1 - abar).sqrt()[:, None, None] * noise  # (K, N, D)

    sum_sq = float((flat**2).sum())

    def moments(samples: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        mean = samples.mean(dim=1)  # (K, D)
        coef = (mean * flat).sum(dim=1) / sum_sq if sum_sq > 0 else torch.full((len(ts),), float("nan"))
        var = samples.var(dim=1, unbiased=True).mean(dim=1)  # (K,)
        return coef.numpy(), var.numpy()

    estimates = [*moments(chain), *moments(closed)]  # chain coef, var; closed coef, var
    n_elements = flat.shape[1]
    theory_var = (1 - abar).numpy()
    coef_se = np.sqrt(theory_var / (n_samples * sum_sq)) if sum_sq > 0 else np.full(len(ts), np.nan)
    var_se = theory_var * np.sqrt(2.0 / ((n_samples - 1) * n_elements))
    return MomentComparison(ts, abar.sqrt().numpy(), theory_var, *estimates, coef_se, var_se, n_samples, n_elements)


def _corr(u: torch.Tensor, v: torch.Tensor) -> float:
    u, v = u - u.mean(), v - v.mean()
    denom = float(u.norm() * v.norm())
    return float((u * v).sum()) / denom if denom > 0 else float("nan")


def forgetting(
    x0_a: torch.Tensor,
    x0_b: torch.Tensor,
    schedule: ForwardSchedule,
    generator: torch.Generator | None = None,
    timesteps: Iterable[int] | None = None,
) -> ForgettingResult:
    """Run the chain from two different starts and measure how much of each start survives.

    As ``t -> T`` ``q(x_t | x_0) -> N(0, I)`` for any ``x_0`` (the chain's stationary law): mean 0, std 1,
    correlation with the start ``-> 0``, and the two chains become indistinguishable (KL between them ``-> 0``).
    For Stable Diffusion's schedule ``alpha_bar_{T-1}`` is small but not 0, so a little signal survives (Lin et al.
    2024, "Common Diffusion Noise Schedules and Sample Steps Are Flawed"); the ``*_theory`` fields show how much.

    Args:
        x0_a, x0_b: two starts of the same shape (e.g. two images in ``[-1, 1]``).
        schedule, generator: the chain and the noise source.
        timesteps: where to measure (default: ``0`` and ``T - 1``).
    """
    if x0_a.shape != x0_b.shape:
        raise ValueError(f"starts must have the same shape, got {tuple(x0_a.shape)} and {tuple(x0_b.shape)}")
    ts = _check_timesteps([0, schedule.num_train_timesteps - 1] if timesteps is None else timesteps, schedule)
    a, b = x0_a.reshape(-1).to(torch.float64), x0_b.reshape(-1).to(torch.float64)  # (D,)
    frames_a = step_chain(a, schedule, generator, record_at=ts).frames  # (K, D)
    frames_b = step_chain(b, schedule, generator, record_at=ts).frames  # (K, D)
    abar = schedule.alpha_bars[list(ts)].numpy()  # (K,)

    def corr_theory(x0: torch.Tensor) -> np.ndarray:
        s0 = float(x0.std(unbiased=False))
        return np.sqrt(abar) * s0 / np.sqrt(abar * s0**2 + 1 - abar)

    mean_sq_a = float((a**2).mean())
    kl_prior = 0.5 * ((1 - abar) + abar * mean_sq_a - 1 - np.log(1 - abar))
    return ForgettingResult(
        timesteps=ts,
        signal_coef=np.sqrt(abar),
        mean_a=frames_a.mean(dim=1).numpy(),
        std_a=frames_a.std(dim=1, unbiased=False).numpy(),
        mean_b=frames_b.mean(dim=1).numpy(),
        std_b=frames_b.std(dim=1, unbiased=False).numpy(),
        corr_start_a=np.array([_corr(f, a) for f in frames_a]),
        corr_start_b=np.array([_corr(f, b) for f in frames_b]),
        corr_start_a_theory=corr_theory(a),
        corr_start_b_theory=corr_theory(b),
        corr_ab=np.array([_corr(fa, fb) for fa, fb in zip(frames_a, frames_b, strict=True)]),
        kl_ab_per_dim=abar * float(((a - b) ** 2).mean()) / (2 * (1 - abar)),
        kl_prior_a_per_dim=kl_prior,
    )


def strength_to_start_step(strength: float, num_inference_steps: int, scheduler) -> StrengthStart:
    """img2img ``strength`` is where on the forward chain the sampler starts.

    Mirrors ``StableDiffusionImg2ImgPipeline.get_timesteps`` (diffusers): ``init = min(int(n * strength), n)``,
    ``t_start = max(n - init, 0)``, the sampler runs ``scheduler.timesteps[t_start * order:]`` and the input image
    (latent) is noised with ``q(x_t | x_0)`` at the first of them. The scheduler passed in is not modified (a copy
    built from its config is used).

    Args:
        strength: in ``[0, 1]``.
        num_inference_steps: sampler steps ``n >= 1``.
        scheduler: a diffusers scheduler.

    Raises:
        ValueError: strength outside ``[0, 1]`` (as diffusers does) or ``n < 1``.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"The value of strength should in [0.0, 1.0] but is {strength}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    sched = type(scheduler).from_config(scheduler.config)
    sched.set_timesteps(num_inference_steps)
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init_timestep, 0)
    timesteps = tuple(int(t) for t in sched.timesteps[t_start * sched.order :])
    start = timesteps[0] if timesteps else None
    abar = 1.0 if start is None else float(ForwardSchedule.from_scheduler(sched).alpha_bars[start])
    return StrengthStart(
        strength=float(strength),
        num_inference_steps=num_inference_steps,
        t_start=t_start,
        denoising_steps=num_inference_steps - t_start,
        start_timestep=start,
        timesteps=timesteps,
        alpha_bar=abar,
        signal_coef=abar**0.5,
        noise_std=(1.0 - abar) ** 0.5,
    )
