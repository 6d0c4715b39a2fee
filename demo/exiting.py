"""Leaving the process: the app's own temporary folders go, and a stuck worker thread cannot keep it alive.

Python joins every non-daemon thread before it exits, and only then runs ``atexit`` handlers. AnyIO's worker
threads (Gradio runs synchronous handlers in them) are non-daemon and end only when the server's event loop tells
them to; when that loop did not finish inside Gradio's 5 s close timeout (open connections, busy cores), or a
handler still waits on the model, the interpreter waits for them forever and the folders registered for exit stay.
:func:`exit_process` waits a short grace period, then removes those folders itself and ends the process.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import threading
import time
from pathlib import Path

__all__ = ["remove_at_exit", "remove_registered", "stray_threads", "exit_process", "EXIT_GRACE_S"]

EXIT_GRACE_S = 10.0  # how long threads of a stopped server get to finish before the process ends anyway

_registered: list[Path] = []
_lock = threading.Lock()


def remove_at_exit(folder: Path | str) -> None:
    """Delete ``folder`` (recursively, errors ignored) when the process ends, however it ends."""
    with _lock:
        if not _registered:
            atexit.register(remove_registered)
        _registered.append(Path(folder))


def remove_registered() -> None:
    """Delete every folder registered with :func:`remove_at_exit` now (each once)."""
    with _lock:
        folders, _registered[:] = list(_registered), []
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def stray_threads() -> list[threading.Thread]:
    """Non-daemon threads other than the main one that are still running (they would block the exit)."""
    main = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]


def exit_process(code: int, grace_s: float = EXIT_GRACE_S) -> None:
    """End the process with ``code``: normally if no thread is left, else after ``grace_s`` at the latest."""
    deadline = time.monotonic() + grace_s
    for thread in stray_threads():
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = stray_threads()
    if not stuck:
        sys.exit(code)
    names = ", ".join(sorted({t.name for t in stuck}))
    print(f"note: {len(stuck)} worker thread(s) did not stop ({names}); exiting anyway", file=sys.stderr)
    remove_registered()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
