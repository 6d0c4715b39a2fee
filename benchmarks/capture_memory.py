"""Memory of AttentionRecorder on an SD-1.5-shaped U-Net: every per-step map at 512x512, 50 steps.

The bytes held by captured maps depend only on the U-Net's *layout* (which attn2 layers run at which resolution,
how many heads), the latent size, the number of steps and the token columns kept, never on channel widths. So a
narrow U-Net with SD 1.5's exact layout (4 levels, 2 layers per block, 16 cross-attention layers at 64², 32², 16²,
8² for 512x512, 8 heads) gives the bytes of the real model, at a fraction of the compute. Its text encoder is a
tiny random CLIP text model behind the real CLIP tokenizer (so token counts are the real ones).

Runs (``python -m benchmarks.capture_memory`` or ``python benchmarks/capture_memory.py``):

- 512x512, 50 steps, with four recorders stacked on the same generation (prompt tokens / all 77 tokens /
  per-head / pooled to 32), guidance off (the recorder keeps one guidance branch, so bytes do not depend on it
  and the run costs half);
- 256x256 at 10, 25, 50 steps: bytes must scale linearly with steps (and 4x from 256² to 512²);
- 256², 384², 512² at 5 steps: bytes per step per pixel must be constant (the growth law in image size);
- 256x256, 10 steps, with and without capture, guidance on: the time overhead.

Prints one JSON line and writes ``benchmarks/results/capture_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from explain.capture.recorder import AttentionRecorder
from explain.capture.swap import compose_callbacks
from explain.clip.tokens import build_clip_tokenizer, tokenize_prompt

RESULTS = Path(__file__).resolve().parent / "results" / "capture_memory.json"
PROMPT = "a photograph of an astronaut riding a horse"
BUDGET_BYTES = 256 * 2**20
SD15_BLOCK_OUT = (320, 640, 1280, 1280)
WIDTH_DIVISOR = 10  # narrow: (32, 64, 128, 128) channels, same layout
SD15_HEADS = 8  # SD 1.5's unet config: attention_head_dim=8 (read by diffusers as heads)
SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=False,
)


def narrow_sd15_pipeline(workdir: Path) -> StableDiffusionPipeline:
    tokenizer = build_clip_tokenizer(workdir / "tokenizer")
    text_width = 64
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_width,
            intermediate_size=2 * text_width,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    unet = UNet2DConditionModel(
        sample_size=64,
        layers_per_block=2,
        block_out_channels=tuple(c // WIDTH_DIVISOR for c in SD15_BLOCK_OUT),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=SD15_HEADS,
        cross_attention_dim=text_width,
    ).eval()
    vae = AutoencoderKL(  # only its 4 levels matter here (vae_scale_factor 8); latents are never decoded
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        norm_num_groups=4,
        layers_per_block=1,
        latent_channels=4,
    ).eval()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, size: int, steps: int, variants: dict[str, dict], guidance: float = 1.0) -> tuple[dict, float]:
    """One generation with one stacked recorder per variant; returns ({variant: row}, seconds)."""
    recorders = {name: AttentionRecorder(pipe, **kwargs) for name, kwargs in variants.items()}
    peak = dict.fromkeys(recorders, 0)

    def track(_pipe, _i, _t, callback_kwargs):
        for name, rec in recorders.items():
            peak[name] = max(peak[name], rec.nbytes)
        return callback_kwargs

    started = time.perf_counter()
    entered = []
    try:
        for rec in recorders.values():
            entered.append(rec.__enter__())
        callback = compose_callbacks(*(rec.callback_on_step_end for rec in recorders.values()), track)
        pipe(
            PROMPT,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
            callback_on_step_end=callback,
        )
    finally:
        for rec in reversed(entered):  # stacked: leave in reverse order
            rec.__exit__(None, None, None)
    seconds = time.perf_counter() - started
    rows = {}
    for name, rec in recorders.items():
        captured = rec.result()
        rows[name] = {
            "size": size,
            "steps": captured.n_steps,
            "variant": name,
            **{k: str(v) for k, v in variants[name].items()},
            "layers": len(captured.layer_names),
            "bytes": captured.nbytes,
            "MiB": round(captured.nbytes / 2**20, 2),
            "peak_bytes_during_run": max(peak[name], captured.nbytes),
            "map_shapes": sorted({str(tuple(m.shape)) for m in captured.maps.values()}),
        }
    return rows, seconds


def timed(pipe, size: int, steps: int, capture: bool) -> float:
    started = time.perf_counter()
    if capture:
        rows, _ = run(pipe, size, steps, {"prompt_tokens": {}}, guidance=7.5)
    else:
        pipe(
            PROMPT,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=7.5,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        )
    return time.perf_counter() - started


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pipe = narrow_sd15_pipeline(Path(tmp))
    n_used = tokenize_prompt(pipe.tokenizer, PROMPT).n_used
    variants = {
        "prompt_tokens": {"token_count": n_used},
        "all_77_tokens": {},
        "per_head_prompt_tokens": {"token_count": n_used, "per_head": True},
        "prompt_tokens_pooled_32": {"token_count": n_used, "max_resolution": 32},
    }
    big, big_seconds = run(pipe, args.size, args.steps, variants)
    small = [
        run(pipe, args.size // 2, steps, {"prompt_tokens": {"token_count": n_used}})[0]["prompt_tokens"]
        for steps in (10, 25, 50)
    ]
    sizes = [  # bytes per step against image size: proportional to the pixel count (every layer scales with it)
        run(pipe, size, 5, {"prompt_tokens": {"token_count": n_used}})[0]["prompt_tokens"]
        for size in (args.size // 2, 3 * args.size // 4, args.size)
    ]
    overhead = {
        "size": args.size // 2,
        "steps": 10,
        "guidance": 7.5,
        "seconds_without_capture": round(timed(pipe, args.size // 2, 10, capture=False), 2),
        "seconds_with_capture": round(timed(pipe, args.size // 2, 10, capture=True), 2),
    }
    per_step = [row["bytes"] / row["steps"] for row in small]
    report = {
        "benchmark": "capture_memory",
        "prompt": PROMPT,
        "token_count": n_used,
        "unet": {
            "block_out_channels": list(pipe.unet.config.block_out_channels),
            "heads": SD15_HEADS,
            "layout": "SD 1.5 (narrow widths; map bytes do not depend on widths)",
        },
        "runs": list(big.values()) + small,
        "linear_in_steps": len({round(b) for b in per_step}) == 1,
        "size_sweep": [
            {
                "size": row["size"],
                "bytes_per_step": row["bytes"] // row["steps"],
                "bytes_per_step_per_pixel": round(row["bytes"] / row["steps"] / row["size"] ** 2, 4),
            }
            for row in sizes
        ],
        f"bytes_per_step_ratio_{args.size}_vs_{args.size // 2}": round(
            (big["prompt_tokens"]["bytes"] / args.steps) / per_step[0], 3
        ),
        "within_256MiB": {name: row["bytes"] <= BUDGET_BYTES for name, row in big.items()},
        "seconds_big_run_4_recorders": round(big_seconds, 1),
        "overhead": overhead,
        "max_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
