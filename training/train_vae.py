"""Stage 2: the VAE (Kingma & Welling 2014; SD's AutoencoderKL), 64x64x3 <-> 16x16x4.

Loss: L1 + MSE reconstruction + a tiny KL term (as in SD's first stage, without the adversarial part: flat
shapes need no GAN). ``scaling_factor`` = 1 / std of the latents, so the diffusion model sees unit-variance data
(Rombach et al. 2022, sec. 3 / appendix G).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from training.common import StageLog, autocast, lr_at
from training.config import TrainConfig
from training.data import WorldData
from training.models import build_vae
from training.train_clip import images_to_tensor

__all__ = ["train_vae", "psnr"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (measured on [0, 1])."""
    mse = F.mse_loss((a.clamp(-1, 1) + 1) / 2, (b + 1) / 2).item()
    return 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item()


def _step(opt, loss: torch.Tensor, params: list, log: StageLog, step: int) -> bool:
    """One optimiser step (gradients clipped to norm 1), logged; True when the stage's time budget is spent."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    log.log(step, loss.item(), every=100)
    return log.over_budget()


def _random_crop(x: torch.Tensor, side: int, gen: torch.Generator) -> torch.Tensor:
    """One random ``side`` x ``side`` crop per image (aligned to 8 px, the latent grid of SD's factor)."""
    b, _, h, w = x.shape
    ys = torch.randint(0, (h - side) // 8 + 1, (b,), generator=gen) * 8
    xs = torch.randint(0, (w - side) // 8 + 1, (b,), generator=gen) * 8
    return torch.stack([x[i, :, y : y + side, x0 : x0 + side] for i, (y, x0) in enumerate(zip(ys, xs, strict=True))])


def train_vae(
    cfg: TrainConfig, data: WorldData, val: WorldData, out_dir: Path, device: torch.device, init: Path | None = None
) -> Path:
    """Train and save the VAE (diffusers format) to ``out_dir``; with ``init``, continue from that VAE."""
    v = cfg.vae
    torch.manual_seed(cfg.seed + 1)
    vae = build_vae(v, cfg.image_size)
    if init is not None:
        from diffusers import AutoencoderKL

        vae.load_state_dict(AutoencoderKL.from_pretrained(init, torch_dtype=torch.float32).state_dict())
        print(f"[vae] continuing from {init}", flush=True)
    vae = vae.to(device)
    images = torch.as_tensor(data.images, device=device)
    opt = torch.optim.AdamW(vae.parameters(), lr=v.lr, weight_decay=0.0)
    log = StageLog("vae", out_dir, v.steps, cfg.time_budget_s.get("vae"))
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    for step in range(v.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(log.effective_step(step), v.steps, v.lr, 100)
        idx = torch.randint(0, len(images), (v.batch_size,), generator=gen).to(device)
        x = images_to_tensor(images[idx], device)  # (B, 3, H, W)
        if v.crop and v.crop < x.shape[-1]:
            x = _random_crop(x, v.crop, gen)  # (B, 3, crop, crop)
        vae.train()
        with autocast(device):
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample()).sample
        rec = rec.float()
        kl = post.kl().mean() / x[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + v.kl_weight * kl
        if _step(opt, loss, list(vae.parameters()), log, step):
            break
    vae.eval()
    with torch.no_grad():
        xv = images_to_tensor(torch.as_tensor(val.images[:256], device=device), device)
        mean = vae.encode(xv).latent_dist.mean
        rec = vae.decode(mean).sample
        val_psnr = psnr(rec, xv)
        std = mean.float().std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    print(f"[vae] val PSNR {val_psnr:.2f} dB, latent std {std:.4f} -> scaling_factor {1 / std:.4f}", flush=True)
    vae.save_pretrained(out_dir)
    log.save(val_psnr=val_psnr, scaling_factor=1.0 / std)
    return out_dir


def finetune_decoder(
    cfg: TrainConfig, latents: torch.Tensor, data: WorldData, val: WorldData, vae_dir: Path, device: torch.device
) -> Path:
    """Train only the VAE's decoder on the stored latents (``encode`` stage), then save the VAE in place.

    The encoder, hence every latent the U-Net is trained on, stays exactly as it was; only the pictures it decodes
    get sharper. Crops of ``cfg.vae.crop`` pixels (latent crops of crop / f) keep a step cheap.
    """
    from diffusers import AutoencoderKL

    v = cfg.vae
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32).to(device)
    scale = vae.config.scaling_factor
    f = cfg.latent_factor
    for p in vae.encoder.parameters():
        p.requires_grad_(False)
    for p in vae.quant_conv.parameters():
        p.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=v.lr * 0.5, weight_decay=0.0)
    log = StageLog("decoder", vae_dir.parent, v.steps, cfg.time_budget_s.get("decoder"))
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 5)
    images = torch.as_tensor(data.images)
    lat_crop = (v.crop or cfg.image_size) // f
    for step in range(v.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(log.effective_step(step), v.steps, v.lr * 0.5, 50)
        idx = torch.randint(0, len(latents), (v.batch_size,), generator=gen)
        z = latents[idx].float() / scale  # (B, C, h, w)
        x = images_to_tensor(images[idx], device)  # (B, 3, H, W)
        h = z.shape[-1]
        ys = torch.randint(0, h - lat_crop + 1, (len(idx),), generator=gen)
        xs = torch.randint(0, h - lat_crop + 1, (len(idx),), generator=gen)
        zc = torch.stack(
            [z[i, :, a : a + lat_crop, b : b + lat_crop] for i, (a, b) in enumerate(zip(ys, xs, strict=True))]
        )
        xc = torch.stack(
            [
                x[i, :, a * f : (a + lat_crop) * f, b * f : (b + lat_crop) * f]
                for i, (a, b) in enumerate(zip(ys, xs, strict=True))
            ]
        )
        rec = vae.decode(zc.to(device)).sample.float()
        loss = F.l1_loss(rec, xc) + F.mse_loss(rec, xc)
        if _step(opt, loss, params, log, step):
            break
    vae.eval()
    with torch.no_grad():
        xv = images_to_tensor(torch.as_tensor(val.images[:256], device=device), device)
        val_psnr = psnr(vae.decode(vae.encode(xv).latent_dist.mean).sample, xv)
    print(f"[decoder] val PSNR {val_psnr:.2f} dB (encoder and latents unchanged)", flush=True)
    vae.save_pretrained(vae_dir)
    log.save(val_psnr=val_psnr)
    return vae_dir
