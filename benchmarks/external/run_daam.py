"""Capture overhead of DAAM 0.2.0 against plain diffusers 0.21.2, in one process, on the embedded model.

Run from the repository root with the DAAM venv (``python -m benchmarks.external.venvs daam`` makes it; the legacy
model copy is made by ``benchmarks.external.convert``, and on first use here if missing)::

    benchmarks/.venvs/daam/bin/python -m benchmarks.external.run_daam \\
        --steps 25 --guidance 5 --repeats 5 --threads 1 --out benchmarks/results/external_daam.json

Tool side of each round: ``with trace(pipe)`` around the generation (DAAM swaps every up/down-block attn2 processor
for its own, which materialises softmax(QKᵀ) and accumulates per-head maps over all steps), then
``compute_global_heat_map()`` and ``compute_word_heat_map(word)``. DAAM derives the latent size from the image size
with a hard-coded guess (``4096 if h in (512, 1024) else 9216``); for our 64 px model that finds spatial factors
6/12/24, none of which its aggregation accepts ("No heat maps found"), so the hooker's ``latent_hw`` is set to the
real latent positions (16 x 16 = 256), giving factors 1/2/4 and a 16 x 16 word map.
"""

from __future__ import annotations

import argparse
import os
import time
from importlib import metadata
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import daam  # noqa: E402
import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402

from benchmarks.external.common import add_arguments, run_benchmark, set_threads, to_uint8, write_result  # noqa: E402
from benchmarks.external.convert import DEFAULT_DST, convert  # noqa: E402


def _latent_positions(pipe: StableDiffusionPipeline, height: int, width: int) -> int:
    """Latent h x w of a height x width image (the count DAAM's ``latent_hw`` means)."""
    return (height // pipe.vae_scale_factor) * (width // pipe.vae_scale_factor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, default_model=DEFAULT_DST)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.model == DEFAULT_DST and not (DEFAULT_DST / "model_index.json").exists():
        convert()

    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor  # the model's native image size (64)
    latent_hw = _latent_positions(pipe, size, size)
    call = {"num_inference_steps": args.steps, "guidance_scale": args.guidance, "height": size, "width": size}

    def plain(prompt: str, word: str, generator: torch.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        with torch.no_grad():
            images = pipe(prompt, generator=generator, output_type="np", **call).images
        return to_uint8(images[0]), {}

    def tool(prompt: str, word: str, generator: torch.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        with torch.no_grad(), daam.trace(pipe) as tc:
            tc.latent_hw = latent_hw  # see the module docstring: DAAM's guess is wrong below 512 px
            for hooker in tc.module:
                if hasattr(hooker, "latent_hw"):
                    hooker.latent_hw = latent_hw
            images = pipe(prompt, generator=generator, output_type="np", **call).images
            start = time.perf_counter()
            word_map = tc.compute_global_heat_map().compute_word_heat_map(word).heatmap
            maps_s = time.perf_counter() - start
        return to_uint8(images[0]), {
            "word": word,
            "heat_map_shape": list(word_map.shape),
            "heat_map_sum": float(word_map.sum()),
            "heat_map_max": float(word_map.max()),
            "raw_maps": len(tc.all_heat_maps.ids_to_heatmaps),  # (factor, layer, head) accumulators
            "factors": sorted(tc.all_heat_maps.factors()),
            "layers": len(tc.layer_names),
            "maps_s": maps_s,
        }

    result = run_benchmark(plain, tool, args.repeats)
    header = {
        "tool": "daam",
        "tool_version": metadata.version("daam"),
        "diffusers_version": diffusers.__version__,
        "transformers_version": metadata.version("transformers"),
        "latent_hw_override": latent_hw,
        "image_size": size,
    }
    write_result(args.out, args, header, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
