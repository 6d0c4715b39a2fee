"""Task U-Nets for the use cases, fine-tuned from the text-to-image U-Net: the U-Net stays the engine and only
its conditioning changes (extra input channels, a class label).

- **Inpainting** (SD-inpainting's design, Rombach et al. 2022): input = 4 noisy-latent + 1 mask + 4 masked-image
  latent channels (``StableDiffusionInpaintPipeline``'s order), trained with random masks: rectangles, object
  silhouettes, outpainting borders, and the full canvas (which keeps text-to-image ability).
- **Super-resolution** (the SD x4 upscaler's design): input = 4 noisy-latent + 3 low-resolution image channels
  (the low-res image lives at latent size, since the VAE upsamples by its own factor); the low-res image is noised
  by a second scheduler at ``noise_level``, which enters the U-Net as its class label.

New input channels start at zero, so training starts from exactly the text-to-image model.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from training.data import WorldData
from training.train_clip import images_to_tensor
from training.train_unet import Batch, diffusion_loop, text_batch

__all__ = ["widen_unet", "random_masks", "train_inpaint", "train_upscale", "make_low_res_scheduler", "MAX_NOISE_LEVEL"]

MAX_NOISE_LEVEL = 350  # the SD x4 upscaler's max_noise_level


def make_low_res_scheduler() -> DDPMScheduler:
    """The SD x4 upscaler's ``low_res_scheduler`` (linear betas 1e-4 .. 0.02)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear")


def widen_unet(base: UNet2DConditionModel, in_channels: int, num_class_embeds: int | None = None):
    """A copy of ``base`` with more input channels (new ones zero-initialised) and optional class embeddings."""
    config = dict(base.config)
    config.update(in_channels=in_channels, num_class_embeds=num_class_embeds)
    unet = UNet2DConditionModel.from_config(config)
    state = base.state_dict()
    w = state["conv_in.weight"]  # (out, C, 3, 3)
    wide = torch.zeros(w.shape[0], in_channels, *w.shape[2:], dtype=w.dtype)
    wide[:, : w.shape[1]] = w
    state["conv_in.weight"] = wide
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("class_embedding") for k in missing):
        raise RuntimeError(f"cannot widen U-Net: missing={missing} unexpected={unexpected}")
    if num_class_embeds is not None:
        torch.nn.init.zeros_(unet.class_embedding.weight)  # noise level starts as "no information"
    return unet


def random_masks(obj_masks: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Random inpainting masks (1 = fill in), (B, 1, size, size) float.

    Kinds, each with probability 1/5: a rectangle, an object's silhouette (dilated), an outpainting border (one
    side, or all sides as a zoom-out), two rectangles, and the whole canvas.

    Args:
        obj_masks: (B, O, s, s) uint8 object coverage at latent size (0..255).
    """
    b, device = obj_masks.shape[0], obj_masks.device
    r = lambda *shape: torch.rand(*shape, generator=gen).to(device)  # noqa: E731
    yy = torch.arange(size, device=device).view(1, size, 1) / size  # (1, S, 1)
    xx = torch.arange(size, device=device).view(1, 1, size) / size  # (1, 1, S)

    def rect() -> torch.Tensor:
        x0, y0 = r(b, 1, 1) * 0.7, r(b, 1, 1) * 0.7
        w, h = 0.2 + r(b, 1, 1) * 0.5, 0.2 + r(b, 1, 1) * 0.5
        return ((xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)).float()  # (B, S, S)

    side = (r(b, 1, 1) * 5).long()  # 0 left, 1 right, 2 top, 3 bottom, 4 all sides
    band = 0.15 + r(b, 1, 1) * 0.25
    sides = [xx < band, xx >= 1 - band, yy < band, yy >= 1 - band]
    border = torch.stack([m.expand(b, size, size) for m in sides], dim=1).float()  # (B, 4, S, S)
    border = _pick(border, side)  # (B, S, S)
    valid = obj_masks.flatten(2).amax(-1) > 0  # (B, O)
    choice = (r(b, valid.shape[1]) * valid).argmax(1)  # a random present object
    obj = obj_masks[torch.arange(b, device=device), choice].float()[:, None] / 255.0  # (B, 1, s, s)
    obj = F.max_pool2d(F.interpolate(obj, size=(size, size), mode="nearest"), 5, 1, 2)[:, 0] > 0.5
    kind = (r(b) * 5).long().view(b, 1, 1)  # which of the five kinds
    options = torch.stack([rect(), obj.float(), border, torch.maximum(rect(), rect()), torch.ones_like(border)], 1)
    masks = options.gather(1, kind[:, :, :, None].expand(b, 1, size, size))  # (B, 1, S, S)
    return masks


def _pick(border: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """border (B, 4, S, S), side (B, 1, 1) in 0..4 -> (B, S, S): that side's band, or all four for side 4."""
    one = border.gather(1, side.clamp(max=3)[:, :, :, None].expand(-1, 1, *border.shape[-2:]))[:, 0]
    return torch.where(side == 4, border.amax(1), one)


def train_inpaint(
    cfg, latents, text_states, empty_state, data: WorldData, base_unet: Path, vae_dir: Path, out_dir, device
):
    """Fine-tune a 9-channel inpainting U-Net from the text-to-image one."""
    torch.manual_seed(cfg.seed + 3)
    base = UNet2DConditionModel.from_pretrained(base_unet, torch_dtype=torch.float32)
    unet = widen_unet(base, base.config.in_channels * 2 + 1).to(device)
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32).to(device).eval().requires_grad_(False)
    images = torch.as_tensor(data.images, device=device)
    obj_masks = torch.as_tensor(data.obj_masks, device=device)
    text = text_batch(latents, text_states, empty_state, cfg.unet.caption_dropout, device)
    size = images.shape[1]

    def make(idx: torch.Tensor, gen: torch.Generator) -> Batch:
        b = text(idx, gen)
        x = images_to_tensor(images[idx], device)  # (B, 3, S, S)
        mask = random_masks(obj_masks[idx], size, gen)  # (B, 1, S, S)
        with torch.no_grad():
            masked = vae.encode(x * (mask < 0.5)).latent_dist.mean * vae.config.scaling_factor  # (B, 4, h, w)
        mask_lat = F.interpolate(mask, size=masked.shape[-2:])  # (B, 1, h, w), as the inpaint pipeline does
        return Batch(z0=b.z0, cond=b.cond, keep=b.keep, extra=torch.cat([mask_lat, masked], dim=1))

    return diffusion_loop(unet, cfg, make, len(latents), out_dir, device, "unet_inpaint")


def train_upscale(cfg, latents, text_states, empty_state, data: WorldData, base_unet: Path, out_dir, device):
    """Fine-tune a 7-channel super-resolution U-Net (low-res image at latent size, noise level as class label)."""
    torch.manual_seed(cfg.seed + 4)
    base = UNet2DConditionModel.from_pretrained(base_unet, torch_dtype=torch.float32)
    unet = widen_unet(base, base.config.in_channels + 3, num_class_embeds=1000).to(device)
    low_sched = make_low_res_scheduler()
    images = torch.as_tensor(data.images, device=device)
    text = text_batch(latents, text_states, empty_state, cfg.unet.caption_dropout, device)
    h, w = latents.shape[-2:]

    def make(idx: torch.Tensor, gen: torch.Generator) -> Batch:
        b = text(idx, gen)
        low = F.interpolate(images_to_tensor(images[idx], device), size=(h, w), mode="area")  # (B, 3, h, w)
        level = torch.randint(0, MAX_NOISE_LEVEL + 1, (len(idx),), generator=gen).to(device)
        noisy = low_sched.add_noise(low, torch.randn(low.shape, generator=gen).to(device), level)
        return Batch(z0=b.z0, cond=b.cond, keep=b.keep, extra=noisy, class_labels=level)

    return diffusion_loop(unet, cfg, make, len(latents), out_dir, device, "unet_upscale")
