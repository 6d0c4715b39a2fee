"""``python -m explain noise``: the forward chain on one image, in pixel space and in the VAE's latent space.

Writes ``noising_strip.png`` (frames at the chosen timesteps: step-by-step chain vs closed form, pixels and decoded
latents), ``schedule.png`` (alpha_bar_t and SNR with the chosen timesteps marked) and ``noise_stats.json`` (chain vs
closed-form moments against theory, and how much of the start survives).

The schedule and VAE come from the model (``--model``, default the embedded one). If it cannot be loaded, or with
``--pixel-only``, only pixel space is shown and the scheduler config is read on its own when available
(else diffusers' ``DDPMScheduler()`` defaults, the linear schedule of Ho et al. 2020).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from explain.cli import positive_int
from explain.diffusion.geometry import vae_factor
from explain.io.formats import write_json

__all__ = ["add_parser", "run", "run_noise", "default_timesteps"]

STRIP_NAME = "noising_strip.png"
SCHEDULE_NAME = "schedule.png"
JSON_NAME = "noise_stats.json"
# Default timesteps as fractions of the chain (T = 1000 gives 0 50 100 250 500 999).
DEFAULT_T_FRACTIONS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``noise`` on the top-level subparsers."""
    parser = subparsers.add_parser(
        "noise",
        help="the forward noising chain on an image (pixels and latents), schedule curves, statistics",
        description="Noise an image step by step, q(x_t | x_{t-1}), and in closed form, q(x_t | x_0).",
    )
    parser.add_argument("--image", type=Path, required=True, help="input image file")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--model", default=None, help="diffusers model dir or Hub id (default: embedded model)")
    parser.add_argument("--t", type=int, nargs="+", default=None, help="timesteps to show (default: 0 .. T-1 spread)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--pixel-only", action="store_true", help="skip the VAE latent space")
    parser.add_argument("--max-side", type=positive_int, default=256, help="resize so the longer side <= this")
    parser.add_argument("--stat-samples", type=positive_int, default=256, help="chains sampled for the moments")
    parser.add_argument("--stat-elements", type=positive_int, default=512, help="elements used for the moments")
    parser.set_defaults(run=run)
    return parser


def default_timesteps(num_train_timesteps: int) -> list[int]:
    """Spread timesteps over the chain: ``round(f * (T - 1))`` for ``DEFAULT_T_FRACTIONS``."""
    return sorted({round(f * (num_train_timesteps - 1)) for f in DEFAULT_T_FRACTIONS})


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    from explain.cli import CliError

    if not path.is_file():
        raise CliError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise CliError(f"not a readable image: {path} ({err})") from None


def _fit(image, max_side: int, multiple: int = 1):
    """Shrink (never enlarge) so the longer side <= max_side, then crop each side to a multiple of ``multiple``."""
    from PIL import Image

    scale = min(1.0, max_side / max(image.size))
    width, height = (max(multiple, round(s * scale)) for s in image.size)
    image = image.resize((width, height), Image.Resampling.LANCZOS) if scale < 1 else image
    return image.crop((0, 0, width - width % multiple, height - height % multiple))


def _moments_doc(m) -> dict:
    return {
        "timesteps": list(m.timesteps),
        "n_samples": m.n_samples,
        "n_elements": m.n_elements,
        "theory_coef_sqrt_alpha_bar": m.theory_coef.tolist(),
        "chain_coef": m.chain_coef.tolist(),
        "closed_form_coef": m.closed_coef.tolist(),
        "coef_standard_error": m.coef_se.tolist(),
        "theory_var_one_minus_alpha_bar": m.theory_var.tolist(),
        "chain_var": m.chain_var.tolist(),
        "closed_form_var": m.closed_var.tolist(),
        "var_standard_error": m.var_se.tolist(),
    }


def _forgetting_doc(f) -> dict:
    return {k: (list(v) if k == "timesteps" else v.tolist()) for k, v in vars(f).items()}


def _space_stats(x0, schedule, ts, generator, stat_samples: int, stat_elements: int) -> dict:
    import torch

    from explain.diffusion.noising import compare_moments, forgetting

    flat = x0.reshape(-1)
    pick = torch.randperm(flat.numel(), generator=generator)[:stat_elements]
    moments = compare_moments(flat[pick], schedule, ts, stat_samples, generator)
    forget = forgetting(x0, -x0, schedule, generator, timesteps=ts)
    return {
        "shape": list(x0.shape),
        "moments_step_chain_vs_closed_form": _moments_doc(moments),
        "forgetting_start_vs_negated_start": _forgetting_doc(forget),
    }


def _latent_rows(vae, latents, schedule, ts, generator) -> dict:
    """Strip rows of the latent chain: step chain and closed form decoded by the VAE, and the raw channels 1-3."""
    from explain.diffusion.latents import decode_latents
    from explain.diffusion.noising import forward_chains
    from explain.io.figures import pixels_to_rgb

    z_chain, z_closed = forward_chains(latents, schedule, ts, generator)
    clean = pixels_to_rgb(decode_latents(vae, latents))[0]
    raw = [latents] + list(z_chain)  # first 3 latent channels as colours (latents have ~unit variance)
    return {
        "latents:\nstep chain\n(decoded)": [clean] + [pixels_to_rgb(decode_latents(vae, z))[0] for z in z_chain],
        "latents:\nclosed form\n(decoded)": [clean] + [pixels_to_rgb(decode_latents(vae, z))[0] for z in z_closed],
        "latents:\nstep chain\n(raw ch. 1-3)": [pixels_to_rgb(z[:, :3])[0] for z in raw],
    }


def run_noise(
    image,
    out_dir: Path,
    scheduler,
    vae=None,
    vae_scale_factor: int | None = None,
    timesteps: Sequence[int] | None = None,
    seed: int = 0,
    max_side: int = 256,
    stat_samples: int = 256,
    stat_elements: int = 512,
) -> dict:
    """Noise ``image`` (PIL) on the forward chain of ``scheduler``; with a ``vae``, in latent space too.

    Writes the strip, the schedule curves and the statistics JSON into ``out_dir``; returns the JSON document.

    Args:
        image: a PIL image.
        out_dir: existing output directory.
        scheduler: a DDPM-family diffusers scheduler (its betas define the chain).
        vae: a diffusers ``AutoencoderKL``, or ``None`` for pixel space only.
        vae_scale_factor: ``pipe.vae_scale_factor``; default ``2 ** (len(vae.config.block_out_channels) - 1)``,
            which is how diffusers pipelines compute it.
        timesteps: timesteps to show (default :func:`default_timesteps`).
        seed: noise seed.
        max_side: longest image side used.
        stat_samples: independent chains for the moment comparison.
        stat_elements: image elements (randomly chosen) for the moment comparison.

    Raises:
        ValueError: timesteps outside ``0 .. T-1``.
    """
    import torch

    from explain.diffusion.latents import encode_latents, rgb_to_pixels
    from explain.diffusion.noising import ForwardSchedule, forward_chains
    from explain.io.figures import noising_strip_figure, pixels_to_rgb, schedule_figure

    schedule = ForwardSchedule.from_scheduler(scheduler)
    T = schedule.num_train_timesteps
    ts = sorted(set(default_timesteps(T) if timesteps is None else timesteps))
    if ts[0] < 0 or ts[-1] >= T:
        raise ValueError(f"--t values must lie in 0..{T - 1} for this scheduler, got {ts}")
    generator = torch.Generator().manual_seed(seed)
    columns = ["x₀ (clean)"] + [f"t = {t}" for t in ts]
    doc: dict = dict(scheduler=type(scheduler).__name__, num_train_timesteps=T, timesteps=ts, seed=seed)
    doc.update(alpha_bar=schedule.alpha_bars[ts].tolist(), snr=schedule.snr[ts].tolist())

    # Pixel space: images in [-1, 1], (1, 3, H, W).
    pixels = rgb_to_pixels(_fit(image, max_side))
    chain, closed = forward_chains(pixels, schedule, ts, generator)  # (K, 1, 3, H, W) each
    rows = {
        "pixels:\nstep chain": [pixels_to_rgb(pixels)[0]] + [pixels_to_rgb(f)[0] for f in chain],
        "pixels:\nclosed form": [pixels_to_rgb(pixels)[0]] + [pixels_to_rgb(f)[0] for f in closed],
    }
    doc["pixel"] = _space_stats(pixels, schedule, ts, generator, stat_samples, stat_elements)

    # Latent space: z = scaling_factor * E(x); frames decoded back to pixels to be seen.
    if vae is None:
        doc["latent"] = {"skipped": "no VAE (--pixel-only or the model could not be loaded)"}
    else:
        factor = vae_scale_factor or vae_factor(vae.config)
        latents = encode_latents(vae, rgb_to_pixels(_fit(image, max_side, multiple=factor))).float().cpu()
        rows.update(_latent_rows(vae, latents, schedule, ts, generator))  # latents (1, C, H / f, W / f)
        doc["latent"] = {
            "scaling_factor": vae.config.scaling_factor,
            "vae_scale_factor": factor,
            **_space_stats(latents, schedule, ts, generator, stat_samples, stat_elements),
        }

    strip = noising_strip_figure(columns, rows, title="Forward chain: step by step vs closed form q(x_t | x_0)")
    strip.savefig(out_dir / STRIP_NAME)
    schedule_figure(schedule, ts).savefig(out_dir / SCHEDULE_NAME)
    write_json(out_dir / JSON_NAME, doc)
    return doc


def _scheduler_without_pipeline(model: str | None):
    from diffusers import DDPMScheduler

    from explain.diffusion.loading import EMBEDDED_MODEL_DIR

    path = Path(model) if model else EMBEDDED_MODEL_DIR
    if (path / "scheduler" / "scheduler_config.json").is_file():
        return DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    print(f"note: no scheduler config under {path}: using diffusers' DDPMScheduler() defaults (Ho et al. 2020)")
    return DDPMScheduler()


def run(args: argparse.Namespace) -> int:
    """Entry point for ``python -m explain noise``."""
    from explain.cli import CliError

    image = _open_image(args.image)
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out} exists and is not a directory")
    pipe = None
    if not args.pixel_only:
        from explain.diffusion.loading import load_pipeline

        try:
            pipe = load_pipeline(args.model)
        except (OSError, ValueError, RuntimeError) as err:  # ModelLoadError is an OSError
            print(f"note: latent space skipped, model not loaded: {err}")
    scheduler = pipe.scheduler if pipe is not None else _scheduler_without_pipeline(args.model)
    T = scheduler.config.num_train_timesteps
    if args.t is not None and not all(0 <= t < T for t in args.t):
        raise CliError(f"--t values must lie in 0..{T - 1} for this model's scheduler, got {args.t}")
    args.out.mkdir(parents=True, exist_ok=True)
    doc = run_noise(
        image,
        args.out,
        scheduler,
        vae=None if pipe is None else pipe.vae,
        vae_scale_factor=None if pipe is None else pipe.vae_scale_factor,
        timesteps=args.t,
        seed=args.seed,
        max_side=args.max_side,
        stat_samples=args.stat_samples,
        stat_elements=args.stat_elements,
    )
    last = doc["pixel"]["forgetting_start_vs_negated_start"]
    print(f"t = {doc['timesteps']}: alpha_bar = {[round(a, 4) for a in doc['alpha_bar']]}")
    print(f"pixels at t = {doc['timesteps'][-1]}: corr with start {last['corr_start_a'][-1]:.3f}")
    print(f"wrote {args.out / STRIP_NAME}, {args.out / SCHEDULE_NAME}, {args.out / JSON_NAME}")
    return 0
