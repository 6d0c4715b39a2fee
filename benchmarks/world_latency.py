"""Latency of a world-v2 model (128 x 128, 25 steps, guidance 5, every step's cross-attention captured).

Bar (issue: world v2): <= 1.5 s on the 2-core reference machine, all weights <= 100 MB. Run:
``python -m benchmarks.world_latency --model DIR``; prints JSON and writes ``benchmarks/results/world_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "world_latency.json"
PROMPT = "a cat wearing sunglasses on the left and a bowl of ramen on the right"


def main(argv: list[str] | None = None) -> int:
    from explain.diffusion.loading import load_pipeline
    from explain.engine.run import Capture, recorded_run
    from explain.maps.aggregation import aggregate

    p = argparse.ArgumentParser(prog="python -m benchmarks.world_latency", description=__doc__)
    p.add_argument("--model", type=Path, default=REPO / "models" / "tiny-world-sd")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(str(args.model))
    call = {"prompt": PROMPT, "num_inference_steps": 25, "guidance_scale": 5.0}

    def once() -> float:
        t = time.perf_counter()
        run = recorded_run(pipe, call, seed=0, capture=Capture(film=False))
        aggregate(run.captured, run.view)
        return time.perf_counter() - t

    once()  # warm-up
    times = [once() for _ in range(args.repeats)]
    weights = sum(f.stat().st_size for f in args.model.rglob("*.safetensors"))
    out = {
        "model": str(args.model),
        "size": list(pipe("x", num_inference_steps=1, output_type="np").images[0].shape[:2]),
        "threads": torch.get_num_threads(),
        "median_s": round(statistics.median(times), 3),
        "runs_s": [round(t, 3) for t in times],
        "weights_mb": round(weights / 1e6, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
