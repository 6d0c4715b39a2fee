"""``python -m explain markov``: the seed's weather chain, sampled and computed exactly.

Writes ``markov.png`` (sampled paths; per-step distribution converging to the stationary law) and ``markov.json``
(exact distribution per step, empirical frequencies, stationary distribution, TV distance, ``|lambda_2|``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from explain.cli import positive_int
from explain.io.formats import write_json

__all__ = ["add_parser", "run", "run_markov"]

FIGURE_NAME = "markov.png"
JSON_NAME = "markov.json"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``markov`` on the top-level subparsers."""
    from explain.diffusion.markov import WEATHER_STATES

    parser = subparsers.add_parser(
        "markov",
        help="the 2-state weather Markov chain: sampled paths, p_t, stationary law",
        description="Sample the weather chain (rainy/sunny) and compute p_{t+1} = p_t P exactly.",
    )
    parser.add_argument("--steps", type=positive_int, required=True, help="number of steps T")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--paths", type=positive_int, default=500, help="number of sampled paths (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--start", choices=WEATHER_STATES, default=WEATHER_STATES[0], help="start state")
    parser.set_defaults(run=run)
    return parser


def _out_dir(path: Path) -> Path:
    from explain.cli import CliError

    if path.exists() and not path.is_dir():
        raise CliError(f"--out {path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_markov(steps: int, out_dir: Path, n_paths: int, seed: int, start: str) -> dict:
    """Sample, compute, write ``markov.png`` and ``markov.json`` into ``out_dir``; return the JSON document."""
    import numpy as np

    from explain.diffusion.markov import WeatherChain
    from explain.io.figures import markov_figure

    chain = WeatherChain()
    paths = chain.sample_paths(n_paths, steps, start, np.random.default_rng(seed))
    dist = chain.distribution_after(steps, start)
    fig = markov_figure(paths, dist)
    fig.savefig(out_dir / FIGURE_NAME)
    doc = {
        "states": list(chain.states),
        "transition": chain.transition.tolist(),
        "start": start,
        "steps": steps,
        "paths": n_paths,
        "seed": seed,
        "distribution": dist.probs.tolist(),
        "empirical_frequencies": paths.frequencies.tolist(),
        "stationary": dist.stationary.tolist(),
        "tv_to_stationary": dist.tv_to_stationary.tolist(),
        "second_eigenvalue_modulus": dist.second_eigenvalue_modulus,
    }
    write_json(out_dir / JSON_NAME, doc)
    return doc


def run(args: argparse.Namespace) -> int:
    """Entry point for ``python -m explain markov``."""
    out_dir = _out_dir(args.out)
    doc = run_markov(args.steps, out_dir, args.paths, args.seed, args.start)
    final = ", ".join(f"{s} {p:.4f}" for s, p in zip(doc["states"], doc["distribution"][-1], strict=True))
    stationary = ", ".join(f"{s} {p:.4f}" for s, p in zip(doc["states"], doc["stationary"], strict=True))
    print(f"p_{args.steps}: {final}; stationary: {stationary}")
    print(f"wrote {out_dir / FIGURE_NAME} and {out_dir / JSON_NAME}")
    return 0
