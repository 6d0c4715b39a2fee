"""Shared harness for the external baselines: arguments, the interleaved timing loop, image comparison, JSON.

Imported by ``run_daam.py`` and ``run_amd.py`` inside their own venvs, so it needs only torch and numpy (no diffusers,
no project code). Protocol: one pipeline, the same prompts and seeds for plain and tool; each round generates every
prompt once plainly and once with the tool, alternating which goes first; an untimed warm-up round comes first. The
reported ratio is the median of the per-round ratios tool / plain (both in the same process, so drift cancels).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["PROMPTS", "SEED", "Generate", "add_arguments", "run_benchmark", "set_threads", "to_uint8", "write_result"]

# (prompt, word whose heat map is the evidence), in the embedded model's grammar.
PROMPTS: tuple[tuple[str, str], ...] = (
    ("a big red circle on the left and a small blue triangle on the right", "circle"),
    ("a small green star at the top", "star"),
)
SEED = 1234

# prompt, word, generator -> (image as uint8 HxWx3, evidence dict; "maps_s": seconds spent making maps after generating)
Generate = Callable[[str, str, torch.Generator], tuple[np.ndarray, dict[str, Any]]]


def add_arguments(parser: argparse.ArgumentParser, default_model: Path, default_out: Path | None = None) -> None:
    parser.add_argument("--model", type=Path, default=default_model, help="a diffusers StableDiffusionPipeline dir")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (each: every prompt plain + tool)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=default_out, required=default_out is None, help="result JSON path")


def set_threads(n: int) -> None:
    """Pin torch to ``n`` intra-op threads and one inter-op thread (set before any parallel work)."""
    torch.set_num_threads(n)
    torch.set_num_interop_threads(1)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] (diffusers ``output_type='np'``) -> uint8, rounded as diffusers' ``numpy_to_pil``."""
    return (np.asarray(images) * 255).round().astype(np.uint8)


def _timed(fn: Generate, prompt: str, word: str) -> tuple[float, np.ndarray, dict[str, Any]]:
    generator = torch.Generator("cpu").manual_seed(SEED)
    start = time.perf_counter()
    image, evidence = fn(prompt, word, generator)
    return time.perf_counter() - start, image, evidence


def run_benchmark(plain: Generate, tool: Generate, repeats: int) -> dict[str, Any]:
    """Interleaved rounds of plain and tool generations; medians, per-round times, image difference, evidence."""
    for prompt, word in PROMPTS[:1]:  # warm-up: first-call allocations and lazy imports, untimed
        _timed(plain, prompt, word)
        _timed(tool, prompt, word)
    plain_s: list[float] = []
    tool_s: list[float] = []
    maps_s: list[float] = []  # part of tool_s spent after generation, turning the capture into word maps
    max_diff = 0
    evidence: dict[str, Any] = {}
    for r in range(repeats):
        totals = {"plain": 0.0, "tool": 0.0, "maps": 0.0}
        for prompt, word in PROMPTS:
            images = {}
            for name in ("plain", "tool") if r % 2 == 0 else ("tool", "plain"):
                seconds, images[name], ev = _timed(plain if name == "plain" else tool, prompt, word)
                totals[name] += seconds
                if name == "tool":
                    totals["maps"] += ev.get("maps_s", 0.0)
                    evidence[word] = ev
            diff = np.abs(images["plain"].astype(np.int16) - images["tool"].astype(np.int16))
            max_diff = max(max_diff, int(diff.max()))
        plain_s.append(totals["plain"])
        tool_s.append(totals["tool"])
        maps_s.append(totals["maps"])
        print(f"round {r}: plain {totals['plain']:.3f} s, tool {totals['tool']:.3f} s", flush=True)
    ratios = [t / p for t, p in zip(tool_s, plain_s, strict=True)]
    return {
        "plain_median_s": statistics.median(plain_s),
        "tool_median_s": statistics.median(tool_s),
        "ratio": statistics.median(ratios),
        "overhead_pct": 100 * (statistics.median(ratios) - 1),
        "plain_round_s": plain_s,
        "tool_round_s": tool_s,
        "round_ratios": ratios,
        "tool_maps_round_s": maps_s,
        "ratio_generation_only": statistics.median(
            [(t - m) / p for t, m, p in zip(tool_s, maps_s, plain_s, strict=True)]
        ),
        "max_abs_diff_255": max_diff,
        "bit_identical": max_diff == 0,
        "evidence": evidence,
    }


def write_result(out: Path, args: argparse.Namespace, header: dict[str, Any], result: dict[str, Any]) -> None:
    """Write the result JSON: tool/version header, run settings, then the measurements."""
    settings = {
        "model": str(args.model),
        "steps": args.steps,
        "guidance": args.guidance,
        "repeats": args.repeats,
        "threads": args.threads,
        "prompts": [p for p, _ in PROMPTS],
        "seed": SEED,
        "images_per_call": 1,
        "dtype": "float32",
        "device": "cpu",
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "protocol": "per round: each prompt plain and tool (order alternating by round); 1 untimed warm-up; "
        "ratio = median over rounds of tool/plain round totals",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**header, **settings, **result}, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("plain_median_s", "tool_median_s", "ratio", "ratio_generation_only", "max_abs_diff_255")
            }
        )
    )
