"""End-to-end latency of the embedded model, the Gradio round trip, and the app's cold start.

- ``pipeline``: ``pipe(prompt)`` at 64x64, 25 steps, classifier-free guidance, with all-step cross-attention
  capture (:class:`explain.capture.recorder.AttentionRecorder`), torch's default threads (2 on the reference machine).
- ``app_generate``: the app's own path, :func:`explain.engine.session.generate` (capture per head, the per-step x̂₀
  film, streaming updates).
- ``gradio_round_trip``: ``gradio_client.Client.predict(..., api_name="/generate")`` against the app served
  in-process on a loopback port: queueing, streaming, map rendering and file transfer included.
- ``cold_start``: ``python app.py --port P`` in a fresh process until ``GET /`` answers 200.

Each is the median of ``--repeats`` runs after one warm-up. Run: ``python -m benchmarks.latency``; prints JSON
and writes ``benchmarks/results/latency.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

from demo.app import free_port

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "latency.json"
PROMPT = "a big red circle on the left and a small blue triangle on the right"
STEPS = 25
GUIDANCE = 5.0


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 4), [round(t, 4) for t in times]


def pipeline_latency(repeats: int) -> dict:
    from explain.capture.recorder import AttentionRecorder
    from explain.clip.tokens import tokenize_prompt
    from explain.engine.requests import GenerationRequest
    from explain.engine.session import Engine, generate

    engine = Engine(device="cpu")
    pipe = engine.pipeline()  # the app's own pipeline: both rows time the same weights, loaded once
    pipe.set_progress_bar_config(disable=True)
    n_used = tokenize_prompt(pipe.tokenizer, PROMPT).n_used

    def with_capture():
        with AttentionRecorder(pipe, token_count=n_used) as rec:
            pipe(
                PROMPT,
                num_inference_steps=STEPS,
                guidance_scale=GUIDANCE,
                generator=torch.Generator().manual_seed(0),
                callback_on_step_end=rec.callback_on_step_end,
            )
        rec.result()

    request = GenerationRequest(prompt=PROMPT, seed=0, steps=STEPS, guidance=GUIDANCE, height=64, width=64)

    def app_path():
        generate(engine.pipeline(), request, preview=engine.latent_preview())

    pipe_median, pipe_times = _median_time(with_capture, repeats)
    app_median, app_times = _median_time(app_path, repeats)
    return {
        "pipeline": {"median_s": pipe_median, "times_s": pipe_times},
        "app_generate": {"median_s": app_median, "times_s": app_times},
    }


def gradio_round_trip(repeats: int) -> dict:
    from gradio_client import Client

    from demo.app import serve_local
    from explain.engine.session import Engine

    demo, url = serve_local(Engine())
    try:
        client = Client(url, verbose=False)
        args = (PROMPT, "", 0, STEPS, GUIDANCE, "default", 64, 64)
        median, times = _median_time(lambda: client.predict(*args, api_name="/generate"), repeats)
    finally:
        demo.close()
    return {"median_s": median, "times_s": times}


def cold_start(repeats: int, timeout_s: float = 120.0) -> dict:
    """Seconds from spawning ``python app.py`` to the first 200 on ``/`` (a fresh interpreter each time)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    times = []
    for _ in range(repeats):
        port = free_port()
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                if time.perf_counter() - started > timeout_s:
                    raise TimeoutError(f"app.py did not serve within {timeout_s} s")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    time.sleep(0.05)
            times.append(round(time.perf_counter() - started, 3))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {"median_s": round(statistics.median(times), 3), "times_s": times}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cold-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "benchmark": "latency",
        "prompt": PROMPT,
        "size": [64, 64],
        "steps": STEPS,
        "guidance": GUIDANCE,
        "threads": torch.get_num_threads(),
        **pipeline_latency(args.repeats),
        "gradio_round_trip": gradio_round_trip(args.repeats),
        "cold_start": cold_start(args.cold_repeats),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
