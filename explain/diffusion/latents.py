"""Between pixels and the latents Stable Diffusion's chain runs on: z = scaling_factor · (E(x) − shift).

Rombach et al. 2022 ("High-Resolution Image Synthesis with Latent Diffusion Models"): the VAE encoder outputs a
diagonal Gaussian per latent cell, the decoder maps latents back to pixels; ``vae.config.scaling_factor`` gives the
latents about unit variance, the scale the forward chain (:mod:`explain.diffusion.noising`) assumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from explain.diffusion.noising import ForwardSchedule, forward_chains

__all__ = ["encode_latents", "decode_latents", "rgb_to_pixels", "pixel_and_latent_chains"]


@torch.no_grad()
def encode_latents(
    vae, image: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False
) -> torch.Tensor:
    """VAE-encode pixels to the latents the diffusion chain runs on: ``z = scaling_factor * (E(x) - shift)``.

    Rombach et al. 2022 (latent diffusion): the encoder outputs a diagonal Gaussian ``latent_dist``; we take its mean
    (deterministic) or a sample, then scale by ``vae.config.scaling_factor`` so that latents have about unit variance.

    Args:
        vae: a diffusers ``AutoencoderKL``.
        image: ``(B, 3, H, W)`` in ``[-1, 1]``, ``H, W`` multiples of the pipeline's ``vae_scale_factor``.
        generator, sample: with ``sample=True``, draw from ``latent_dist`` (using ``generator``) instead of its mean.

    Returns:
        Latents ``(B, latent_channels, H / f, W / f)``, ``f`` = ``pipe.vae_scale_factor``.
    """
    image = image.to(device=vae.device, dtype=vae.dtype)
    dist = vae.encode(image).latent_dist
    latents = dist.sample(generator=generator) if sample else dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0  # SD3/Flux VAEs; absent (None) for SD 1/2/XL
    return (latents - shift) * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Invert :func:`encode_latents`: ``x = D(z / scaling_factor + shift)``, pixels ``(B, 3, H, W)`` in ``[-1, 1]``."""
    z = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return vae.decode(z + shift).sample.clamp(-1, 1)


def rgb_to_pixels(rgb) -> torch.Tensor:
    """A PIL image or ``(H, W, 3)`` uint8 array -> ``(1, 3, H, W)`` float32 in ``[-1, 1]``."""
    arr = np.asarray(rgb.convert("RGB") if hasattr(rgb, "convert") else rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got shape {arr.shape} dtype {arr.dtype}")
    unit = torch.from_numpy(arr.astype(np.float32) / np.iinfo(np.uint8).max)  # (H, W, 3) in [0, 1]
    return (unit * 2 - 1).permute(2, 0, 1).unsqueeze(0)


def pixel_and_latent_chains(
    vae, pixels: torch.Tensor, schedule: ForwardSchedule, timesteps: Sequence[int], generator: torch.Generator
) -> dict[tuple[str, str], torch.Tensor]:
    """An image on the forward chain in pixel space and in the VAE's latent space, step by step and in closed form.

    Args:
        vae: a diffusers ``AutoencoderKL``.
        pixels: ``(1, 3, H, W)`` in ``[-1, 1]``, ``H, W`` multiples of the pipeline's ``vae_scale_factor``.
        schedule: the forward chain.
        timesteps: the ``K`` timesteps shown.
        generator: the chains' noise, drawn for the pixel chains first, then for the latent chains.

    Returns:
        ``{(space, method): (1 + K, 3, H, W)}`` pixels in ``[-1, 1]``: x_0, then the frames at ``timesteps``, for
        ``space`` in ``("pixels", "latents")`` and ``method`` in ``("step by step", "closed form")``
        (:func:`explain.diffusion.noising.forward_chains`). Latent frames are decoded by the VAE, one batched call
        per row; their x_0 is the VAE round trip.
    """
    latents = encode_latents(vae, pixels).float().cpu()  # (1, C, H / f, W / f)
    rows: dict[tuple[str, str], torch.Tensor] = {}
    for space, clean in (("pixels", pixels), ("latents", latents)):
        chain, closed = forward_chains(clean, schedule, timesteps, generator)  # (K, 1, C, h, w) each
        for method, frames in (("step by step", chain), ("closed form", closed)):
            batch = torch.cat([clean, *frames])  # (1 + K, C, h, w)
            rows[space, method] = decode_latents(vae, batch).float().cpu() if space == "latents" else batch
    return rows
