"""Capture overhead of :class:`explain.capture.recorder.AttentionRecorder` against plain diffusers, in one process.

The same protocol as the external baselines (:mod:`benchmarks.external.common`): the embedded model, 64x64,
25 steps, classifier-free guidance 5, one image per call, torch on one thread; each round generates every prompt
plainly and with the tool, alternating which goes first; the ratio is the median over rounds of tool / plain.
Tool side: all-step capture of the prompt's tokens in every cross-attention layer (7, the 4x4 mid block
included), then the word's DAAM map (:func:`explain.maps.aggregation.aggregate`), timed inside the tool's cost.

Run: ``python -m benchmarks.overhead [--repeats 5] [--steps 25] [--threads 1] [--busy N] [--out FILE]``; writes
``benchmarks/results/overhead_explain.json`` by default. ``--busy N`` runs it while N other processes keep cores
busy (:func:`benchmarks.busy.busy_cores`: the "loaded" figures, reproducible), e.g.
``--threads 2 --busy 2 --out benchmarks/results/overhead_explain_2threads_loaded.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch

from benchmarks.busy import busy_cores
from benchmarks.external.common import add_arguments, run_benchmark, set_threads, to_uint8, write_result
from explain.capture.recorder import AttentionRecorder
from explain.clip.tokens import tokenize_prompt
from explain.diffusion.loading import EMBEDDED_MODEL_DIR, load_pipeline
from explain.maps.aggregation import aggregate

RESULTS = Path(__file__).resolve().parent / "results" / "overhead_explain.json"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, default_model=Path(EMBEDDED_MODEL_DIR), default_out=RESULTS)
    parser.add_argument("--busy", type=int, default=0, help="other processes keeping cores busy meanwhile")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    pipe = load_pipeline(str(args.model), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    call = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}

    def plain(prompt: str, word: str, generator: torch.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        return to_uint8(pipe(prompt, generator=generator, output_type="np", **call).images[0]), {}

    def tool(prompt: str, word: str, generator: torch.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        view = tokenize_prompt(pipe.tokenizer, prompt)
        with AttentionRecorder(pipe, token_count=view.n_used) as rec:
            out = pipe(
                prompt, generator=generator, output_type="np", callback_on_step_end=rec.callback_on_step_end, **call
            )
        start, cpu_start = time.perf_counter(), time.process_time()
        captured = rec.result()
        maps = aggregate(captured, view)  # every step, layer and head: DAAM's word maps
        word_map = maps.word_maps[[w.lower() for w in maps.words].index(word)]
        maps_s, maps_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        return to_uint8(out.images[0]), {
            "word": word,
            "heat_map_shape": list(word_map.shape),
            "heat_map_sum": float(word_map.sum()),
            "layers": len(captured.layer_names),
            "steps": captured.n_steps,
            "maps_s": maps_s,
            "maps_cpu_s": maps_cpu_s,  # CPU seconds of all threads (robust to other processes on the cores)
        }

    load_start = os.getloadavg()[0]
    with busy_cores(args.busy):
        result = run_benchmark(plain, tool, args.repeats)
        load_end = os.getloadavg()[0]
    header = {"tool": "explain (this project)", "tool_version": "main", "diffusers_version": diffusers.__version__}
    header["busy_processes"] = args.busy  # benchmarks.busy: other work on the cores, one thread each
    header["load_average_start_end"] = [load_start, load_end]  # other work on the cores (1-min average)
    write_result(args.out, args, header, result)
    return result


if __name__ == "__main__":
    main()
