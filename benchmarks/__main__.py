"""All benchmarks, then BENCHMARKS.md: ``python -m benchmarks [--only PARTS] [--quick]``.

Parts (each also runs alone, see its module): ``overhead`` (ours vs plain, :mod:`benchmarks.overhead`),
``external`` (DAAM 0.2.0 and attention-map-diffusers 1.0.0 vs plain, each in its own venv:
:mod:`benchmarks.external`), ``latency`` (:mod:`benchmarks.latency`), ``memory``
(:mod:`benchmarks.capture_memory`), ``plateau`` (:mod:`benchmarks.plateau`), ``profile``
(:mod:`benchmarks.profile`). Each part is a fresh process, run one after another (never two at once: they time
themselves). Results land in ``benchmarks/results/``; ``BENCHMARKS.md`` is rendered from them by
:mod:`benchmarks.report`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PARTS = ("overhead", "external", "latency", "memory", "plateau", "profile")


def _run(args: list[str], python: str | Path = sys.executable) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(REPO)}
    print(f"$ {' '.join(map(str, [Path(python).name, *args]))}", flush=True)
    started = time.perf_counter()
    subprocess.run([str(python), *args], cwd=REPO, env=env, check=True)
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def commands(part: str, quick: bool) -> list[tuple[str | Path, list[str]]]:
    """(interpreter, arguments) of each process a part runs."""
    repeats = ["--repeats", "2" if quick else "15"]
    if part == "overhead":
        return [(sys.executable, ["-m", "benchmarks.overhead", *repeats])]
    if part == "external":
        from benchmarks.external.venvs import venv_python

        runs = [(sys.executable, ["-m", "benchmarks.external.venvs", "all"])]
        runs += [(sys.executable, ["-m", "benchmarks.external.convert"])]
        for tool in ("daam", "amd"):
            out = RESULTS / f"external_{tool}.json"
            runs.append((venv_python(tool), ["-m", f"benchmarks.external.run_{tool}", *repeats, "--out", str(out)]))
        return runs
    if part == "latency":
        return [(sys.executable, ["-m", "benchmarks.latency", "--repeats", "2" if quick else "7"])]
    if part == "memory":
        return [(sys.executable, ["-m", "benchmarks.capture_memory", "--threads", "2"])]
    if part == "plateau":
        return [(sys.executable, ["-m", "benchmarks.plateau", "--n", "25" if quick else "100"])]
    if part == "profile":
        return [(sys.executable, ["-m", "benchmarks.profile", "--repeats", "2" if quick else "5"])]
    raise ValueError(part)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="few repeats (a smoke run, not for the report)")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; known: {', '.join(PARTS)}")
    for part in parts:
        for python, cmd in commands(part, args.quick):
            _run(cmd, python)
    from benchmarks.report import render

    print(f"wrote {render()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
