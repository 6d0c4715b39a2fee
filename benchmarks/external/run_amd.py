"""Capture overhead of attention-map-diffusers 1.0.0 against plain diffusers, in one process, on the embedded model.

Run from the repository root with its venv (``python -m benchmarks.external.venvs amd`` makes it; the package needs
diffusers >= 0.39, so it runs on the system's diffusers and the embedded model as it is)::

    benchmarks/.venvs/amd/bin/python -m benchmarks.external.run_amd \\
        --steps 25 --guidance 5 --repeats 5 --threads 1 --out benchmarks/results/external_amd.json

Tool side of each round, the package's documented API for every step's maps:
``with AttentionCapture(pipe, relations="image->text", timesteps="all") as capture`` around the generation (its
default ``mode="fast"`` keeps diffusers' SDPA and stores Q/K of every attn2 call), then ``capture.compute()`` (the
post-hoc softmax(QKᵀ), head mean) and ``to_legacy()``. The package has no word-map aggregation short of writing PNGs,
so the word map is made here the DAAM way: conditional CFG half, bilinear to the latent grid, mean over layers and
steps, the word's token column.
"""

from __future__ import annotations

import argparse
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import attention_map_diffusers as amd  # noqa: E402
import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402

from benchmarks.external.common import add_arguments, run_benchmark, set_threads, to_uint8, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
COND = 1  # diffusers SD pipelines concatenate [negative, positive] along the batch when CFG is on


def _token_index(pipe: StableDiffusionPipeline, prompt: str, word: str) -> int:
    """Column of ``word`` (a single-token word) in the 77-slot encoder sequence (slot 0 is BOS)."""
    tokens = pipe.tokenizer.tokenize(prompt)
    return tokens.index(f"{word}</w>") + 1


def _word_map(maps: amd.AttentionMaps, token: int, hw: tuple[int, int]) -> tuple[torch.Tensor, int]:
    """Mean over steps and layers of the conditional-branch map of one token column, at latent size ``hw``."""
    legacy = maps.to_legacy("image->text")  # {timestep: {layer: (B, heads=1, h, w, 77)}}
    per_call = [
        F.interpolate(m[COND : COND + 1, :, :, :, token], size=hw, mode="bilinear", align_corners=False)[0, 0]
        for layers in legacy.values()
        for m in layers.values()
    ]
    return torch.stack(per_call).mean(0), len(per_call)  # (h, w)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, default_model=REPO / "models" / "tiny-shapes-sd")
    args = parser.parse_args(argv)
    set_threads(args.threads)

    pipe = StableDiffusionPipeline.from_pretrained(args.model, dtype=torch.float32).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor  # the model's native image size (64)
    latent = (size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
    call = {"num_inference_steps": args.steps, "guidance_scale": args.guidance, "height": size, "width": size}
    if args.guidance <= 1:
        raise SystemExit("--guidance must be > 1: the word map reads the conditional half of the CFG batch")

    def plain(prompt: str, word: str, generator: torch.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        with torch.no_grad():
            images = pipe(prompt, generator=generator, output_type="np", **call).images
        return to_uint8(images[0]), {}

    def tool(prompt: str, word: str, generator: torch.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        with torch.no_grad():
            with amd.AttentionCapture(pipe, relations="image->text", timesteps="all") as capture:
                images = pipe(prompt, generator=generator, output_type="np", **call).images
            start = time.perf_counter()
            maps = capture.compute()
            word_map, n_maps = _word_map(maps, _token_index(pipe, prompt, word), latent)
            maps_s = time.perf_counter() - start
        summary = maps.summary()
        return to_uint8(images[0]), {
            "word": word,
            "heat_map_shape": list(word_map.shape),
            "heat_map_sum": float(word_map.sum()),
            "heat_map_max": float(word_map.max()),
            "records": summary["records"],
            "layers": summary["layers"],
            "timesteps": len(summary["timesteps"]),
            "maps_averaged": n_maps,
            "maps_s": maps_s,
        }

    result = run_benchmark(plain, tool, args.repeats)
    header = {
        "tool": "attention-map-diffusers",
        "tool_version": metadata.version("attention-map-diffusers"),
        "diffusers_version": diffusers.__version__,
        "transformers_version": metadata.version("transformers"),
        "capture": {"relations": "image->text", "timesteps": "all", "mode": "fast", "heads": "mean"},
        "image_size": size,
    }
    write_result(args.out, args, header, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
