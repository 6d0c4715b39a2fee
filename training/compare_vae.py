"""Compare VAEs on held-out world scenes: ``python -m training.compare_vae --vae DIR [--vae DIR ...] --data VAL.npz``

For the world v2 question "4 or 8 latent channels" (docs/MODEL_CARD.md): each VAE (diffusers ``AutoencoderKL``
directory, as ``training.build --stages vae`` writes it) reconstructs the validation split from its latent mean, and
the report gives PSNR over the whole image, over the sprites (pixels whose 8 x 8 latent cell some object covers:
``obj_masks`` > 0) and over the background, with the latent shape, the per-channel spread of the latents and the
training log (steps, last loss, wall time). Equal steps and equal data make the comparison fair; the U-Net's cost
per step hardly depends on the channels (only its first and last convolutions see them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from training.train_clip import images_to_tensor

__all__ = ["compare", "main"]


def _psnr(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> float | None:
    """PSNR in dB on [0, 1] over the pixels of ``where`` (B, 1, H, W) bool; None when it is empty."""
    if not bool(where.any()):
        return None
    err = (((a.clamp(-1, 1) + 1) / 2 - (b + 1) / 2) ** 2).mean(dim=1, keepdim=True)  # (B, 1, H, W)
    mse = float(err[where].mean())
    return round(10 * float(np.log10(1.0 / max(mse, 1e-12))), 3)


@torch.no_grad()
def evaluate_vae(vae_dir: Path, images: np.ndarray, masks: np.ndarray, batch: int = 64) -> dict:
    """Reconstruction PSNR (all / sprites / background) and latent statistics of one VAE on ``images``."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32).eval()
    recs, xs, lats = [], [], []
    for start in range(0, len(images), batch):
        x = images_to_tensor(torch.as_tensor(images[start : start + batch]), torch.device("cpu"))  # (B, 3, H, W)
        mean = vae.encode(x).latent_dist.mean  # (B, C, h, w)
        recs.append(vae.decode(mean).sample.float())
        xs.append(x)
        lats.append(mean)
    rec, x, lat = torch.cat(recs), torch.cat(xs), torch.cat(lats)
    factor = x.shape[-1] // masks.shape[-1]
    covered = torch.as_tensor(masks.max(axis=1) > 0)[:, None]  # (B, 1, h, w) at latent size
    sprite = covered.repeat_interleave(factor, -2).repeat_interleave(factor, -1)  # (B, 1, H, W)
    log_path = vae_dir / "vae_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    return {
        "vae": str(vae_dir),
        "latent_channels": vae.config.latent_channels,
        "latent_shape": list(lat.shape[1:]),
        "parameters": sum(p.numel() for p in vae.parameters()),
        "psnr_db": _psnr(rec, x, torch.ones_like(sprite)),
        "psnr_sprites_db": _psnr(rec, x, sprite),
        "psnr_background_db": _psnr(rec, x, ~sprite),
        "latent_std_per_channel": [round(float(s), 4) for s in lat.transpose(0, 1).flatten(1).std(dim=1)],
        "scaling_factor": vae.config.scaling_factor,
        "training": {
            **{k: log[k] for k in ("steps_done", "seconds", "val_psnr") if k in log},
            "last_logged_loss": log["history"][-1][1] if log.get("history") else None,
        },
        "images": len(images),
    }


def compare(vae_dirs: list[Path], data: Path, n: int | None = None) -> dict:
    """:func:`evaluate_vae` for each VAE on the first ``n`` scenes (all when None) of ``data``."""
    z = np.load(data)
    images, masks = z["images"][:n], z["obj_masks"][:n]
    return {"data": str(data), "results": [evaluate_vae(Path(d), images, masks) for d in vae_dirs]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.compare_vae", description=__doc__.splitlines()[0])
    parser.add_argument("--vae", type=Path, action="append", required=True, help="a VAE directory (repeat)")
    parser.add_argument("--data", type=Path, required=True, help="a data_val.npz of training.build's data stage")
    parser.add_argument("--n", type=int, default=None, help="scenes to use (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here too")
    args = parser.parse_args(argv)
    report = compare(args.vae, args.data, args.n)
    text = json.dumps(report, indent=1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
