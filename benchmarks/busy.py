"""Other work on the cores, made reproducible: ``n`` processes each doing what a class's server does beside a run.

"Loaded" figures (capture overhead while other processes share the cores) depended on whatever else happened to run;
:func:`busy_cores` starts ``n`` background processes that each loop, on one thread, over float32 matrix products
of a small U-Net's sizes plus a memory sweep (compute and memory traffic, as another generation would), and stops
them on exit, even on error. The benchmark records ``n`` and the load average it saw.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterator

__all__ = ["busy_cores"]


def _spin(stop) -> None:  # pragma: no cover - runs in a child process
    import numpy as np

    os.environ["OMP_NUM_THREADS"] = "1"
    a = np.random.default_rng(0).standard_normal((256, 256), dtype=np.float32)
    sweep = np.zeros(8 * 2**20, dtype=np.float32)  # 32 MB: larger than the caches
    while not stop.is_set():
        for _ in range(20):
            a = np.tanh(a @ a * 1e-2)
        sweep += 1.0


@contextlib.contextmanager
def busy_cores(n: int) -> Iterator[None]:
    """``n`` busy background processes while the block runs (none for ``n`` = 0)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    workers = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(n)]
    env = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the children's numpy/BLAS on one thread each
    try:
        for w in workers:
            w.start()
    finally:
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env
    try:
        yield
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.terminate()
