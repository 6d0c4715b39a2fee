"""Where the time of an app generation goes: py-spy samples of :func:`explain.engine.session.generate`, summarised.

The embedded model, 64x64, 25 steps, guidance 5, capture per head plus the x̂₀ film, exactly as the Denoise tab
runs it (the pipeline runs in a worker thread, so a sampling profiler that sees every thread is used: py-spy).
Run: ``python -m benchmarks.profile [--label after] [--repeats 5]``; writes ``benchmarks/results/profile_<label>.json``
(seconds per generation; the share of samples inside each stage; the top self-time frames). Profile an older commit from a ``git worktree`` to get a "before".
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "a big red circle on the left and a small blue triangle on the right"
# stage -> substring of a frame "function (file:line)" that marks it (inclusive time)
STAGES = {
    "U-Net forward": "UNet2DConditionModel.forward",
    "cross-attention layers (attn2: output and capture)": "_CaptureProcessor.__call__",
    "capture bookkeeping (step close)": "_close_step",
    "film recorder (x̂₀ per step and its VAE decodes)": "FilmRecorder",
    "VAE decoder (film frames and the final image)": "AutoencoderKL.decode",
    "scheduler step": "step (diffusers/schedulers",
    "text encoder": "CLIPTextModel.forward",
}


def target(repeats: int) -> None:
    """The profiled workload: one warm-up generation, then ``repeats`` timed ones (prints seconds each)."""
    from explain.engine.requests import GenerationRequest
    from explain.engine.session import Engine, generate

    engine = Engine()
    request = GenerationRequest(prompt=PROMPT, seed=0, steps=25, guidance=5.0, height=64, width=64)
    pipe, preview = engine.pipeline(), engine.latent_preview()
    generate(pipe, request, preview=preview)
    for _ in range(repeats):
        started = time.perf_counter()
        generate(pipe, request, preview=preview)
        print(f"generation {time.perf_counter() - started:.4f}", flush=True)


def summarise(raw: str) -> dict:
    """Collapsed stacks (``frame;frame;... count`` per line) -> stage shares and top self frames."""
    stacks = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    busy = [(frames, n) for frames, n in stacks if "generate-stream" in frames[0] or "_worker" in ";".join(frames)]
    total = sum(n for _, n in busy) or 1
    stages = {
        name: round(sum(n for f, n in busy if any(key in fr for fr in f)) / total, 4) for name, key in STAGES.items()
    }
    leaves = Counter()
    for frames, n in busy:
        leaves[frames[-1]] += n
    return {
        "samples_in_worker": total,
        "stage_share": stages,
        "top_self_frames": [{"frame": f, "share": round(n / total, 4)} for f, n in leaves.most_common(15)],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="after")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--target", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.target:
        target(args.repeats)
        return {}
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is needed: pip install -r benchmarks/requirements.txt")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw_path = Path(tmp) / "raw.txt"
        cmd = ["py-spy", "record", "--rate", "500", "--threads", "--format", "raw", "--output", str(raw_path)]
        cmd += ["--", sys.executable, "-m", "benchmarks.profile", "--target", "--repeats", str(args.repeats)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        raw = raw_path.read_text()
    seconds = [float(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("generation ")]
    report = {
        "benchmark": "profile",
        "label": args.label,
        "seconds_per_generation": round(sorted(seconds)[len(seconds) // 2], 4),
        "seconds": seconds,
        **summarise(raw),
    }
    (args.out_dir / f"profile_{args.label}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
