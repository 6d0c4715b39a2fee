"""Rebuild the embedded model from scratch: ``python -m training.build [--preset cpu|gpu|smoke]``.

Stages (each resumable: skipped when its output exists, unless ``--force``):
``data`` (render the world) -> ``clip`` (contrastive CLIP) and ``vae`` (independent of each other) -> ``encode``
(latents and per-token text states, computed once) -> ``unet`` (DDPM training) -> ``package`` (diffusers
pipeline directory, default ``models/tiny-shapes-sd``). Fixed seeds throughout; loss curves are written as PNG.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from training.common import pick_device
from training.config import TrainConfig, preset
from training.data import WorldData, render_split

STAGES = ("data", "clip", "vae", "encode", "unet", "package")
# Optional: "decoder" fine-tunes only the VAE decoder on the encoded latents (after encode; latents unchanged).
OPTIONAL_STAGES = ("decoder",)
TASK_STAGES = ("inpaint", "upscale", "package-tasks")  # the use-case U-Nets, fine-tuned from the text-to-image one
REPO = Path(__file__).resolve().parents[1]
_CHECK_PROMPTS = {  # a prompt of each world for the packaged text tower's check against open_clip
    "shapes": "a big red circle on the left and a small blue triangle on the right",
    "emoji": "a cat wearing sunglasses on the left and a bowl of ramen on the right",
}


def _save_data(d: WorldData, path: Path) -> None:
    np.savez(path, images=d.images, captions=np.array(d.captions), obj_tokens=d.obj_tokens, obj_masks=d.obj_masks)


def _load_data(path: Path) -> WorldData:
    z = np.load(path)
    return WorldData(z["images"], [str(c) for c in z["captions"]], z["obj_tokens"], z["obj_masks"])


def _stage_data(cfg: TrainConfig, work: Path) -> None:
    for split, n in (("train", cfg.n_train), ("val", cfg.n_val)):
        t = time.time()
        d = render_split(
            n, cfg.seed, split, cfg.image_size, cfg.max_objects, world_name=cfg.world, latent_factor=cfg.latent_factor
        )
        _save_data(d, work / f"data_{split}.npz")
        print(f"[data] {split}: {n} scenes in {time.time() - t:.1f}s", flush=True)


def _stage_encode(cfg: TrainConfig, work: Path, device: torch.device) -> None:
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    from training.models import build_clip, text_model_from_open_clip
    from training.train_clip import tokenize
    from training.train_unet import encode_latents, encode_text_states

    data = _load_data(work / "data_train.npz")
    clip = build_clip(cfg.clip)
    clip.load_state_dict(load_file(work / "clip" / "clip.safetensors"))
    text_model = text_model_from_open_clip(clip).to(device)
    vae = AutoencoderKL.from_pretrained(work / "vae").to(device).eval()
    t = time.time()
    captions, inverse = np.unique(np.array(data.captions), return_inverse=True)
    states = encode_text_states(text_model, tokenize(list(captions)).to(device))  # (U, 77, width)
    empty = encode_text_states(text_model, tokenize([""]).to(device))[0]  # (77, width)
    latents = encode_latents(vae, torch.as_tensor(data.images), device)  # (N, C, h, w)
    save_file(
        {
            "latents": latents.float().cpu().contiguous(),
            "unique_states": states.cpu().contiguous(),
            "state_index": torch.as_tensor(inverse, dtype=torch.int64),
            "empty_state": empty.cpu().contiguous(),
        },
        work / "encoded.safetensors",
    )
    print(f"[encode] {len(captions)} unique captions, {len(latents)} latents in {time.time() - t:.1f}s", flush=True)


def _stage_unet(cfg: TrainConfig, work: Path, device: torch.device, name: str, init: Path | None = None) -> None:
    from safetensors.torch import load_file

    from training.train_unet import train_unet

    enc = load_file(work / "encoded.safetensors", device=str(device))
    states = enc["unique_states"][enc["state_index"]]  # (N, 77, width) float16
    data = _load_data(work / "data_train.npz")
    train_unet(cfg, enc["latents"], states, enc["empty_state"], data, work, device, name=name, init=init)


def _stage_task(cfg: TrainConfig, work: Path, device: torch.device, task: str, base: str) -> None:
    from safetensors.torch import load_file

    from training.train_tasks import train_inpaint, train_upscale

    enc = load_file(work / "encoded.safetensors", device=str(device))
    states = enc["unique_states"][enc["state_index"]]  # (N, 77, width) float16
    data = _load_data(work / "data_train.npz")
    args = (cfg, enc["latents"], states, enc["empty_state"], data, work / base)
    if task == "inpaint":
        train_inpaint(*args, work / "vae", work, device)
    else:
        train_upscale(*args, work, device)


def run(
    cfg: TrainConfig,
    work: Path,
    out: Path,
    stages: list[str],
    device: torch.device,
    force: bool,
    unet_name: str,
    tasks_out: Path | None = None,
    init_unet: Path | None = None,
    init_clip: Path | None = None,
    init_vae: Path | None = None,
):
    work.mkdir(parents=True, exist_ok=True)
    (work / f"config_{cfg.name}.json").write_text(json.dumps(cfg.to_dict(), indent=1, default=str))
    outputs = {
        "data": work / "data_val.npz",
        "clip": work / "clip" / "clip.safetensors",
        "vae": work / "vae" / "config.json",
        "encode": work / "encoded.safetensors",
        "unet": work / f"{unet_name}_log.json",  # written when the stage ends (checkpoints come before it)
        "decoder": work / "decoder_log.json",
        "package": None,
        "inpaint": work / "unet_inpaint" / "config.json",
        "upscale": work / "unet_upscale" / "config.json",
        "package-tasks": None,
    }
    for stage in stages:
        done = outputs[stage]
        if done is not None and done.exists() and not force:
            print(f"[{stage}] done already ({done}); --force to redo", flush=True)
            continue
        t = time.time()
        if stage == "data":
            _stage_data(cfg, work)
        elif stage in ("clip", "vae"):
            from training.train_clip import train_clip
            from training.train_vae import train_vae

            data, val = _load_data(work / "data_train.npz"), _load_data(work / "data_val.npz")
            init = init_clip if stage == "clip" else init_vae
            (train_clip if stage == "clip" else train_vae)(cfg, data, val, work / stage, device, init)
        elif stage == "encode":
            _stage_encode(cfg, work, device)
        elif stage == "unet":
            _stage_unet(cfg, work, device, unet_name, init_unet)
        elif stage == "decoder":
            from safetensors.torch import load_file

            from training.train_vae import finetune_decoder

            latents = load_file(work / "encoded.safetensors")["latents"]
            data, val = _load_data(work / "data_train.npz"), _load_data(work / "data_val.npz")
            finetune_decoder(cfg, latents, data, val, work / "vae", device)
        elif stage == "package":
            from training.package import package_pipeline, verify_text_tower

            package_pipeline(work, out, cfg, unet_name)
            check = verify_text_tower(out, [_CHECK_PROMPTS[cfg.world], ""])
            print(f"[package] {out}: text tower check {check}", flush=True)
            if not check["ids_equal"] or check["max_abs_state_diff"] > 1e-2:
                raise SystemExit(f"packaged text tower differs from open_clip: {check}")
        elif stage in ("inpaint", "upscale"):
            _stage_task(cfg, work, device, stage, unet_name)
        elif stage == "package-tasks":
            from training.package import package_tasks

            package_tasks(work, tasks_out or out.parent / "tiny-shapes-tasks")
        print(f"[{stage}] finished in {time.time() - t:.1f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.build", description=__doc__)
    p.add_argument("--preset", default="cpu", help="smoke | cpu | gpu")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "build")
    p.add_argument(
        "--out", type=Path, default=None, help="default: models/tiny-shapes-sd, world presets tiny-world-sd"
    )
    p.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated subset of {','.join(STAGES + OPTIONAL_STAGES + TASK_STAGES)} (default: the text-to-image model)",
    )
    p.add_argument("--tasks-out", type=Path, default=REPO / "models" / "tiny-shapes-tasks")
    p.add_argument("--device", default=None)
    p.add_argument("--force", action="store_true")
    p.add_argument("--unet-name", default="unet", help="folder name of the U-Net run (to train variants side by side)")
    p.add_argument("--grounding-weight", type=float, default=None, help="override the token grounding loss weight")
    p.add_argument("--grounding-pixel-weight", type=float, default=None, help="override the pixel grounding weight")
    p.add_argument("--ema-decay", type=float, default=None, help="override the U-Net EMA decay (short fine-tunes)")
    p.add_argument("--batch-size", type=int, default=None, help="override the U-Net batch size")
    p.add_argument("--unet-steps", type=int, default=None)
    p.add_argument("--unet-lr", type=float, default=None)
    p.add_argument("--unet-warmup", type=int, default=None)
    p.add_argument("--clip-steps", type=int, default=None)
    p.add_argument("--vae-steps", type=int, default=None)
    p.add_argument("--latent-channels", type=int, default=None, help="override the VAE's latent channels (4 or 8)")
    p.add_argument("--clip-batch-size", type=int, default=None)
    p.add_argument("--init-unet", type=Path, default=None, help="start the U-Net from these weights (fine-tuning)")
    p.add_argument("--init-clip", type=Path, default=None, help="warm-start CLIP (pipeline dir or clip.safetensors)")
    p.add_argument("--init-vae", type=Path, default=None, help="continue the VAE from this diffusers folder")
    p.add_argument("--n-train", type=int, default=None, help="override the number of training scenes")
    p.add_argument("--budget", action="append", default=[], help="stage=seconds wall-clock cap, e.g. unet=300")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    known = STAGES + OPTIONAL_STAGES + TASK_STAGES
    bad = [s for s in stages if s not in known]
    if bad:
        p.error(f"unknown stage(s) {bad}; known: {', '.join(known)}")
    cfg = preset(args.preset)
    if args.out is None:
        args.out = REPO / "models" / ("tiny-world-sd" if cfg.world == "emoji" else "tiny-shapes-sd")
    unet_fields = {  # command-line option (argparse dest) -> UNetConfig field it overrides
        "grounding_weight": "grounding_weight",
        "grounding_pixel_weight": "grounding_pixel_weight",
        "ema_decay": "ema_decay",
        "batch_size": "batch_size",
        "unet_steps": "steps",
        "unet_lr": "lr",
        "unet_warmup": "warmup",
    }
    unet_over = {field: getattr(args, dest) for dest, field in unet_fields.items() if getattr(args, dest) is not None}
    clip_over = {
        f: getattr(args, f"clip_{f}") for f in ("steps", "batch_size") if getattr(args, f"clip_{f}") is not None
    }
    if clip_over:
        cfg = dataclasses.replace(cfg, clip=dataclasses.replace(cfg.clip, **clip_over))
    vae_over = {
        f: getattr(args, a)
        for a, f in (("vae_steps", "steps"), ("latent_channels", "latent_channels"))
        if getattr(args, a) is not None
    }
    if vae_over:
        cfg = dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, **vae_over))
    if args.n_train is not None:
        cfg = dataclasses.replace(cfg, n_train=args.n_train)
    if unet_over:
        cfg = dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, **unet_over))
    if args.budget:
        budgets = {k: float(v) for k, v in (b.split("=") for b in args.budget)}
        cfg = dataclasses.replace(cfg, time_budget_s=budgets)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print(f"[build] preset={cfg.name} device={device} stages={stages} work={args.work}", flush=True)
    run(
        cfg,
        args.work,
        args.out,
        stages,
        device,
        args.force,
        args.unet_name,
        args.tasks_out,
        args.init_unet,
        args.init_clip,
        args.init_vae,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
