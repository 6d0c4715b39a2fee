"""Resident memory over 100 sequential generations through the app (the classroom-link case), as a figure.

The app is served in-process on a loopback port and driven by ``gradio_client`` (``/generate``, 64x64, varying
prompts and seeds); after each generation the process's resident set size (``/proc/self/statm``) and the size of
the Gradio cache folder are read. A plateau means memory stops growing once caches are warm: the test suite asserts
< +10 % between generation 20 and 100 (``tests/test_robustness.py``); this draws the curve.

Run: ``python -m benchmarks.plateau [--n 100] [--steps 25]``; writes ``benchmarks/results/plateau.json`` and
``benchmarks/results/memory_plateau.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = (
    "a big red circle on the left and a small blue triangle on the right",
    "a small green star at the top",
    "a yellow heart in the center at night",
    "a purple square at the bottom and an orange circle at the top",
)


def rss_bytes() -> int:
    """Resident set size of this process (``/proc/self/statm``, second field, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run(n: int, steps: int) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="sd-explorer-plateau-"))
    os.environ["GRADIO_TEMP_DIR"] = str(cache)  # read by Gradio when it saves outputs
    from gradio_client import Client

    from demo.app import serve_local
    from explain.engine.session import Engine

    demo, url = serve_local(Engine())
    rss, cache_bytes, seconds = [], [], []
    try:
        client = Client(url, verbose=False)
        for i in range(n):
            started = time.perf_counter()
            client.predict(PROMPTS[i % len(PROMPTS)], "", i, steps, 5.0, "default", 64, 64, api_name="/generate")
            seconds.append(round(time.perf_counter() - started, 3))
            rss.append(rss_bytes())
            cache_bytes.append(folder_bytes(cache))
    finally:
        demo.close()
    at = {k: rss[k - 1] for k in (20, n) if k <= n}
    return {
        "benchmark": "memory_plateau",
        "generations": n,
        "steps": steps,
        "rss_MiB": [round(b / 2**20, 1) for b in rss],
        "cache_MiB": [round(b / 2**20, 2) for b in cache_bytes],
        "seconds": seconds,
        "growth_20_to_n_pct": round(100 * (at[n] / at[20] - 1), 2) if 20 in at else None,
    }


def plot(report: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    x = range(1, report["generations"] + 1)
    fig = Figure(figsize=(7, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(x, report["rss_MiB"], color="#1f5fa8", label="resident memory (MiB)")
    ax.set_xlabel("generation (through gradio_client, /generate)")
    ax.set_ylabel("MiB")
    if report["generations"] >= 20:
        ax.axvline(20, color="#999", lw=0.8, ls="--")
        ax.set_title(
            f"Memory plateau: {report['growth_20_to_n_pct']:+.1f} % from generation 20 to {report['generations']}"
        )
    twin = ax.twinx()
    twin.plot(x, report["cache_MiB"], color="#d1842f", label="Gradio cache folder (MiB)")
    twin.set_ylabel("cache MiB")
    fig.legend(loc="upper left", bbox_to_anchor=(0.08, 0.88), fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args(argv)
    report = run(args.n, args.steps)
    report["figure"] = str(plot(report, RESULTS / "memory_plateau.png").relative_to(RESULTS.parents[1]))
    (RESULTS / "plateau.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("rss_MiB", "cache_MiB", "seconds")}))
    return report


if __name__ == "__main__":
    main()
