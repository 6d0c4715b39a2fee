"""Assemble the trained components into a standard diffusers ``StableDiffusionPipeline`` directory.

Layout: ``text_encoder/`` (transformers CLIPTextModel converted from the open_clip text tower), ``tokenizer/``
(CLIPTokenizer rebuilt from open_clip's BPE vocabulary, padding with "!" = id 0 exactly as open_clip does),
``vae/``, ``unet/``, ``scheduler/`` (DPM-Solver++ on the training betas), and ``clip/`` holding only what the
CLIP view needs besides the text tower (image tower, W_t = text_projection, logit_scale), so each weight is
stored once. Weights are float16 safetensors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from explain.clip.model import CLIP_CONFIG, CLIP_SUBDIR, CLIP_WEIGHTS
from explain.clip.tokens import build_clip_tokenizer
from training.models import build_clip, text_model_from_open_clip

__all__ = ["package_pipeline", "verify_text_tower"]


def _fp16(module: torch.nn.Module) -> torch.nn.Module:
    return module.to(torch.float16)


def package_pipeline(work: Path, out: Path, cfg, unet_name: str = "unet") -> Path:
    """Write the pipeline directory ``out`` from the stage outputs in ``work``."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from training.train_unet import make_train_scheduler

    clip = build_clip(cfg.clip)
    clip.load_state_dict(load_file(work / "clip" / "clip.safetensors"))
    text_encoder = text_model_from_open_clip(clip)
    if out.exists():
        shutil.rmtree(out)
    tok_dir = work / "tokenizer"
    tokenizer = build_clip_tokenizer(tok_dir, pad_token="!")
    train_sched = make_train_scheduler(cfg.unet.num_train_timesteps)
    scheduler = DPMSolverMultistepScheduler.from_config(train_sched.config)
    pipe = StableDiffusionPipeline(
        vae=_fp16(AutoencoderKL.from_pretrained(work / "vae")),
        text_encoder=_fp16(text_encoder),
        tokenizer=tokenizer,
        unet=_fp16(UNet2DConditionModel.from_pretrained(work / unet_name)),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    clip_dir = out / CLIP_SUBDIR
    clip_dir.mkdir(parents=True, exist_ok=True)
    extra = {k: v.half().contiguous() for k, v in clip.state_dict().items() if k.startswith("visual.")}
    extra["text_projection"] = clip.text_projection.detach().half().contiguous()
    extra["logit_scale"] = clip.logit_scale.detach().half().reshape(()).contiguous()
    save_file(extra, clip_dir / CLIP_WEIGHTS)
    c = cfg.clip
    config = {
        "embed_dim": c.embed_dim,
        "vision_cfg": {
            "image_size": c.image_size,
            "patch_size": c.patch_size,
            "width": c.vision_width,
            "layers": c.vision_layers,
            "head_width": c.vision_head_width,
        },
        "text_cfg": {
            "context_length": c.context_length,
            "vocab_size": c.vocab_size,
            "width": c.text_width,
            "heads": c.text_heads,
            "layers": c.text_layers,
        },
        "preprocess": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"},
        "text_tower": "../text_encoder (transformers CLIPTextModel; see explain/clip_model.py for the key mapping)",
    }
    (clip_dir / CLIP_CONFIG).write_text(json.dumps(config, indent=1))
    settings = {"guidance": 5.0, "steps": 25, "world": cfg.world}
    (out / "explorer.json").write_text(json.dumps(settings, indent=1) + "\n")
    return out


@torch.no_grad()
def verify_text_tower(model_dir: Path, prompts: list[str]) -> dict:
    """Check the packaged tokenizer/text encoder against the rebuilt open_clip model: ids equal, states close."""
    import open_clip
    from transformers import CLIPTextModel, CLIPTokenizer

    from explain.clip.model import load_clip

    bundle = load_clip(model_dir)
    oc_ids = open_clip.tokenizer.tokenize(prompts)
    hf_tok = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
    hf_ids = hf_tok(prompts, padding="max_length", max_length=hf_tok.model_max_length, return_tensors="pt").input_ids
    te = CLIPTextModel.from_pretrained(model_dir / "text_encoder", torch_dtype=torch.float32)
    hf_states = te(hf_ids).last_hidden_state
    m = bundle.model
    x = m.token_embedding(oc_ids) + m.positional_embedding
    oc_states = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))
    return {
        "ids_equal": bool(torch.equal(oc_ids, hf_ids)),
        "max_abs_state_diff": float((hf_states - oc_states).abs().max()),
    }


def package_tasks(work: Path, out: Path) -> Path:
    """Write the use-case U-Nets (float16) with their scheduler configs into ``out/{inpaint,upscale}``.

    Only the U-Nets are stored: the text encoder, tokenizer and VAE are the embedded pipeline's, so each weight
    is stored once; ``explain`` assembles the task pipelines from both folders.
    """
    from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel

    from training.train_tasks import MAX_NOISE_LEVEL, make_low_res_scheduler
    from training.train_unet import make_train_scheduler

    if out.exists():
        shutil.rmtree(out)
    for task in ("inpaint", "upscale"):
        src = work / f"unet_{task}"
        if not (src / "config.json").exists():
            print(f"[package-tasks] no {src}; skipping {task}", flush=True)
            continue
        _fp16(UNet2DConditionModel.from_pretrained(src)).save_pretrained(out / task / "unet")
        sched = DPMSolverMultistepScheduler.from_config(make_train_scheduler(1000).config)
        sched.save_pretrained(out / task / "scheduler")
        if task == "upscale":
            make_low_res_scheduler().save_pretrained(out / task / "low_res_scheduler")
            (out / task / "upscale_config.json").write_text(json.dumps({"max_noise_level": MAX_NOISE_LEVEL}))
    return out
