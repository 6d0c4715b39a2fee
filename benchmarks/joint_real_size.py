"""Joint-attention capture at real widths and token counts: time and peak memory of transformer calls, for a GPU.

Builds random-weight transformers with the real configs' widths (FLUX.1-schnell: 24 heads x 128, T5 512 tokens,
4096 image tokens at 1024x1024; SD3.5-medium: 24 heads x 64, 77 + 256 text tokens, the same image tokens, CFG
batch of 2) but only ``--blocks`` blocks of each kind, and times ``--steps`` transformer calls plainly and inside a
:class:`~explain.joint.JointAttentionRecorder` (prompt-sized ``--columns`` kept), then compares the recorder's held
bytes with the memory law (:func:`~explain.joint.held_bytes`). The pipeline around the transformer is a stand-in
exposing only what the capture reads (``current_timestep``, the CFG flag, the image-token geometry).

Run: ``python -m benchmarks.joint_real_size [--family flux|sd3] [--blocks 2] [--steps 4] [--device cuda]``; prints
JSON. ``--tiny`` shrinks every width for a CPU smoke run.
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

from explain.joint import JointAttentionRecorder, held_bytes

SIDE = 1024  # pixels


def _flux(blocks: int, tiny: bool, device, dtype):
    heads, head_dim, t5_width = (2, 16, 32) if tiny else (24, 128, 4096)  # FLUX.1: 24 x 128, T5-XXL 4096
    rope = (4, 6, 6) if tiny else (16, 56, 56)
    model = FluxTransformer2DModel(
        num_layers=blocks,
        num_single_layers=blocks,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=t5_width,
        pooled_projection_dim=768,
        in_channels=64,
        axes_dims_rope=rope,
    ).to(device, dtype)
    side = SIDE // 16  # VAE /8, 2x2 packing
    n_text = 512  # FluxPipeline's max_sequence_length default
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).flatten(0, 1).float().to(device)
    inputs = dict(
        hidden_states=torch.randn(1, side * side, 64, device=device, dtype=dtype),
        encoder_hidden_states=torch.randn(1, n_text, t5_width, device=device, dtype=dtype),
        pooled_projections=torch.randn(1, 768, device=device, dtype=dtype),
        img_ids=img_ids,
        txt_ids=torch.zeros(n_text, 3, device=device),
    )
    shim = SimpleNamespace(image_processor=SimpleNamespace(config=SimpleNamespace(vae_scale_factor=16)))
    return model, inputs, shim, lambda t: {"timestep": torch.full((1,), t / 1000, device=device, dtype=dtype)}


def _sd3(blocks: int, tiny: bool, device, dtype):
    heads, head_dim, t5_width = (2, 8, 48) if tiny else (24, 64, 4096)  # SD3.5-medium: 24 x 64
    model = SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=blocks,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=t5_width,
        caption_projection_dim=heads * head_dim,
        pooled_projection_dim=2048,
        pos_embed_max_size=384,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    ).to(device, dtype)
    latent = SIDE // 8
    inputs = dict(
        hidden_states=torch.randn(2, 16, latent, latent, device=device, dtype=dtype),  # CFG: [negative, positive]
        encoder_hidden_states=torch.randn(2, 77 + 256, t5_width, device=device, dtype=dtype),
        pooled_projections=torch.randn(2, 2048, device=device, dtype=dtype),
    )
    shim = SimpleNamespace(image_processor=SimpleNamespace(config=SimpleNamespace(vae_scale_factor=8)))
    shim.do_classifier_free_guidance = True
    return model, inputs, shim, lambda t: {"timestep": torch.full((2,), float(t), device=device)}


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _run(model, inputs, shim, timestep, steps, device, recorder=None) -> tuple[float, int]:
    """Seconds and peak bytes of ``steps`` transformer calls (with ``recorder`` open around them and its result)."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        if recorder is not None:
            recorder.__enter__()
        try:
            for i in range(steps):
                shim.current_timestep = torch.tensor(1000.0 * (steps - i) / steps)
                model(**inputs, **timestep(float(shim.current_timestep)))
        finally:
            if recorder is not None:
                recorder.__exit__(None, None, None)
        if recorder is not None:
            recorder.result()
    _sync(device)
    return time.perf_counter() - start, torch.cuda.max_memory_allocated() if cuda else 0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("flux", "sd3"), default="flux")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--columns", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    dtype = torch.bfloat16 if torch.device(args.device).type == "cuda" else torch.float32
    build = _flux if args.family == "flux" else _sd3
    model, inputs, shim, timestep = build(args.blocks, args.tiny, args.device, dtype)
    shim.transformer = model
    shim.default_sample_size, shim.vae_scale_factor = SIDE // 8, 8
    plain, captured = [], []
    for _ in range(args.repeats):
        plain.append(_run(model, inputs, shim, timestep, args.steps, args.device))
        recorder = JointAttentionRecorder(shim, columns=range(args.columns), height=SIDE, width=SIDE)
        captured.append(_run(model, inputs, shim, timestep, args.steps, args.device, recorder))
    maps = recorder.result()
    n_image = (SIDE // 16) ** 2
    result = {
        "family": args.family,
        "device": args.device,
        "blocks_of_each_kind": args.blocks,
        "layers_recorded": len(maps.layer_names),
        "steps": args.steps,
        "plain_s": min(t for t, _ in plain),
        "capture_s": min(t for t, _ in captured),
        "plain_peak_bytes": max(m for _, m in plain),
        "capture_peak_bytes": max(m for _, m in captured),
        "held_bytes": maps.nbytes,
        "memory_law_bytes": held_bytes(len(maps.layer_names), n_image, args.columns),
    }
    result["overhead_percent"] = 100 * (result["capture_s"] / result["plain_s"] - 1)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
