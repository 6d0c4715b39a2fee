"""Capture overhead of the joint-attention recorders (:mod:`explain.joint`) on the tiny SD3 and Flux pipelines.

Same process, interleaved: each round generates the prompt plainly and with capture, alternating which goes first;
the ratio is the median over rounds of capture / plain time (torch on one thread), both in wall time and in the
process's CPU time (``time.process_time``), which a shared, oversubscribed machine disturbs much less. Capture side, timed whole:
the recorder's ``with`` block around the pipeline call, then ``result()`` and one word's map. Modes: ``tokens``
(:class:`~explain.joint.JointAttentionRecorder`, all steps, the prompt's used text columns, every joint and
single-stream layer), ``concepts`` (:class:`~explain.joint.ConceptAttentionRecorder`, three concept words, concept
encoding done once outside the timing, as an app would cache it) and ``both`` (one :class:`~explain.joint.JointCapture`).

Run: ``python -m benchmarks.joint_overhead [--rounds 30] [--steps 4] [--out FILE]``; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import diffusers
import torch

from explain.joint import ConceptAttentionRecorder, JointAttentionRecorder, JointCapture, text_layout
from tests.tiny_mmdit import TINY_HW, TINY_T5_SLOTS, build_flux, build_sd3

PROMPT = "a photo of a red cube on the grass"
WORD = "cube"
CONCEPTS = ("cube", "grass", "sky")


def _time(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _bench(pipe, mode: str, rounds: int, steps: int) -> dict:
    call = dict(
        num_inference_steps=steps, height=TINY_HW, width=TINY_HW, max_sequence_length=TINY_T5_SLOTS, output_type="pt"
    )
    layout = text_layout(pipe, PROMPT, TINY_T5_SLOTS)
    embeddings = ConceptAttentionRecorder(
        pipe, CONCEPTS, height=TINY_HW, width=TINY_HW, max_sequence_length=TINY_T5_SLOTS
    ).embeddings

    def plain():
        pipe(PROMPT, generator=torch.Generator().manual_seed(0), **call)

    def captured():
        tokens = JointAttentionRecorder(pipe, columns=layout.used_columns, height=TINY_HW, width=TINY_HW)
        concepts = ConceptAttentionRecorder(pipe, CONCEPTS, height=TINY_HW, width=TINY_HW, embeddings=embeddings)
        sinks = {"tokens": (tokens,), "concepts": (concepts,), "both": (tokens, concepts)}[mode]
        with JointCapture(pipe, *sinks):
            pipe(PROMPT, generator=torch.Generator().manual_seed(0), **call)
        if tokens in sinks:
            tokens.result().word_map(layout.word(WORD))
        if concepts in sinks:
            concepts.result().concept_map(WORD)

    plain(), captured()  # warm-up
    plain_t, capture_t = [], []  # (wall, cpu) per round
    for i in range(rounds):
        if i % 2:
            c, p = _time(captured), _time(plain)
        else:
            p, c = _time(plain), _time(captured)
        plain_t.append(p)
        capture_t.append(c)
    out = {"mode": mode}
    for j, clock in enumerate(("wall", "cpu")):
        ratio = statistics.median(c[j] / p[j] for c, p in zip(capture_t, plain_t, strict=True))
        out[f"{clock}_ratio_median"] = ratio
        out[f"{clock}_overhead_percent"] = 100 * (ratio - 1)
        out[f"{clock}_plain_ms_median"] = 1000 * statistics.median(p[j] for p in plain_t)
        out[f"{clock}_capture_ms_median"] = 1000 * statistics.median(c[j] for c in capture_t)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--modes", default="tokens,concepts,both")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {"diffusers": diffusers.__version__, "torch": torch.__version__, "steps": args.steps, "runs": []}
    results["cpu_count"] = os.cpu_count()
    results["load_average_start"] = list(os.getloadavg())  # 1, 5, 15 min: how shared the machine was
    with tempfile.TemporaryDirectory() as root:
        for name, build in (("sd3", build_sd3), ("flux", build_flux)):
            pipe = build(Path(root) / name)
            pipe.set_progress_bar_config(disable=True)
            for mode in args.modes.split(","):
                run = {"pipeline": name, "rounds": args.rounds, **_bench(pipe, mode, args.rounds, args.steps)}
                results["runs"].append(run)
    results["load_average_end"] = list(os.getloadavg())
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
