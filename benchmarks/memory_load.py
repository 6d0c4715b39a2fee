"""Resident memory of the served app under a class's load: warm-up, 25 clients at once, then 100 generations in a row.

The app is served in-process on a loopback port (:func:`demo.app.serve_local`, the app's own launch options) and
driven by ``gradio_client``. Warm-up: a few generations with their word maps and downloads in one session. Then
25 clients, each its own session, generate at the same time and explore their result (``/maps``, ``/export``), as
a class does when the teacher says "go"; then one client runs 100 generations in a row. After each phase the
resident set size of the app (``/proc/self/statm``; the clients run in a child process) is sampled every 0.5 s,
and after each phase what holds memory is read: the sessions Gradio keeps (``state_holder``), the bytes of arrays
in their ``gr.State`` values, and Python's live GenerationResults. "settled": once more after the app's
housekeeping round (``demo.app.MEMORY``: sessions that left freed, free memory handed back) has run.

Run: ``python -m benchmarks.memory_load [--clients 25] [--n 100] [--steps 20]``; writes
``benchmarks/results/memory_load.json`` and ``benchmarks/results/memory_load.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.plateau import PROMPTS, rss_bytes

RESULTS = Path(__file__).resolve().parent / "results"


def _array_bytes(value, seen: set[int] | None = None, depth: int = 0) -> int:
    """Bytes of the numpy arrays and torch tensors reachable from ``value`` (dataclasses, containers, objects)."""
    import numpy as np
    import torch

    seen = set() if seen is None else seen
    if id(value) in seen or depth > 8:
        return 0
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, dict):
        return sum(_array_bytes(v, seen, depth + 1) for v in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return sum(_array_bytes(v, seen, depth + 1) for v in value)
    fields = getattr(value, "__dict__", None) or {
        k: getattr(value, k) for k in getattr(value, "__slots__", ()) if hasattr(value, k)
    }
    if not fields and hasattr(value, "__dataclass_fields__"):
        fields = {k: getattr(value, k) for k in value.__dataclass_fields__}
    return sum(_array_bytes(v, seen, depth + 1) for v in fields.values())


def holders(demo) -> dict:
    """What holds memory now: sessions kept, bytes of arrays in their gr.State values, live GenerationResults."""
    from explain.engine.session import GenerationResult

    gc.collect()
    sessions = demo.state_holder.session_data
    state_bytes = sum(_array_bytes(v) for s in list(sessions.values()) for v in list(s.state_data.values()))
    return {
        "sessions": len(sessions),
        "state_MiB": round(state_bytes / 2**20, 1),
        "results_alive": sum(isinstance(o, GenerationResult) for o in gc.get_objects()),
        "rss_MiB": round(rss_bytes() / 2**20, 1),
    }


def _explore(client, steps: int) -> None:
    client.predict(0, True, [], [], [], "softmax", 0.4, True, api_name="/maps")
    client.predict(steps - 1, False, [], [], [], "minmax", 0.0, True, api_name="/export")


def _generate(client, i: int, steps: int) -> None:
    client.predict(PROMPTS[i % len(PROMPTS)], "", i, steps, 7.5, "default", 64, 64, api_name="/generate")


def _load(url: str, phase: str, clients: int, n: int, steps: int) -> None:
    """One phase of the load, run in a child process so that the clients' memory is not the server's."""
    from gradio_client import Client

    if phase == "warm-up":
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 600})
        for i in range(n):
            _generate(client, i, steps)
            _explore(client, steps)
    elif phase == "clients":
        barrier = threading.Barrier(clients)

        def one(i: int) -> None:
            client = Client(url, verbose=False, httpx_kwargs={"timeout": 600})  # one client = one browser session
            barrier.wait()
            _generate(client, 100 + i, steps)
            _explore(client, steps)

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(clients)))
    else:
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 600})
        for i in range(n):
            _generate(client, 1000 + i, steps)


def run(clients: int, n: int, steps: int, warm_up: int = 5) -> dict:
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="sd-explorer-memory-")
    from demo.app import MEMORY, serve_local

    demo, url = serve_local()
    trace, phases, done = [], {}, threading.Event()
    start = time.perf_counter()

    def sample() -> None:
        while not done.wait(0.5):
            trace.append((round(time.perf_counter() - start, 1), round(rss_bytes() / 2**20, 1)))

    def mark(phase: str) -> None:
        phases[phase] = holders(demo) | {"t": round(time.perf_counter() - start, 1)}
        print(phase, phases[phase], flush=True)

    def load(*args) -> None:
        child = multiprocessing.get_context("spawn").Process(target=_load, args=(url, *args))
        child.start()
        child.join()
        assert child.exitcode == 0, f"load {args[0]} failed"

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        mark("launch")
        load("warm-up", 1, warm_up, steps)
        mark("warm-up")
        load("clients", clients, 1, steps)
        mark(f"{clients} clients")
        load("sequential", 1, n, steps)
        mark(f"{n} sequential")
        time.sleep(MEMORY.every + 5)  # the app's housekeeping round (demo.app.MEMORY) has run once since
        mark("settled")
    finally:
        done.set()
        demo.close()
    warm_rss = phases["warm-up"]["rss_MiB"]
    return {
        "benchmark": "memory_load",
        "clients": clients,
        "generations": n,
        "steps": steps,
        "phases": phases,
        "growth_after_load_pct": round(100 * (phases[f"{n} sequential"]["rss_MiB"] / warm_rss - 1), 1),
        "growth_settled_pct": round(100 * (phases["settled"]["rss_MiB"] / warm_rss - 1), 1),
        "peak_growth_pct": round(100 * (max(r for _, r in trace) / warm_rss - 1), 1),
        "trace": trace,
    }


def plot(report: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.2), layout="constrained")
    ax = fig.subplots()
    t, rss = zip(*report["trace"], strict=True)
    ax.plot(t, rss, color="#1f5fa8", lw=1, label="resident memory of the app")
    for name, phase in report["phases"].items():
        ax.axvline(phase["t"], color="#999", lw=0.8, ls="--")
        ax.annotate(name, (phase["t"], phase["rss_MiB"]), fontsize=7, rotation=90, va="bottom", ha="right")
    ax.set_xlabel("seconds since launch")
    ax.set_ylabel("MiB")
    ax.set_title(
        f"{report['clients']} clients at once, then {report['generations']} generations: "
        f"{report['growth_after_load_pct']:+.1f} % over warm-up, {report['growth_settled_pct']:+.1f} % settled "
        f"(peak {report['peak_growth_pct']:+.1f} %)",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=25)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    report = run(args.clients, args.n, args.steps)
    report["figure"] = str(plot(report, RESULTS / "memory_load.png").relative_to(RESULTS.parents[1]))
    (RESULTS / "memory_load.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "trace"}))
    return report


if __name__ == "__main__":
    main()
