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


def train_vae(cfg: TrainConfig, data: WorldData, val: WorldData, out_dir: Path, device: torch.device) -> Path:
    v = cfg.vae
    torch.manual_seed(cfg.seed + 1)
    vae = build_vae(v, cfg.image_size).to(device)
    images = torch.as_tensor(data.images, device=device)
    opt = torch.optim.AdamW(vae.parameters(), lr=v.lr, weight_decay=0.0)
    log = StageLog("vae", out_dir, v.steps, cfg.time_budget_s.get("vae"))
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    for step in range(v.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(log.effective_step(step), v.steps, v.lr, 100)
        idx = torch.randint(0, len(images), (v.batch_size,), generator=gen).to(device)
        x = images_to_tensor(images[idx], device)  # (B, 3, H, W)
        vae.train()
        with autocast(device):
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample()).sample
        rec = rec.float()
        kl = post.kl().mean() / x[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + v.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        log.log(step, loss.item(), every=100)
        if log.over_budget():
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
