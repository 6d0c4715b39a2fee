"""Stopping a real ``python app.py`` with SIGTERM (a service manager, a container stop, a Space restart) or SIGINT
(Ctrl-C) deletes every file it handed out: uploads, generated pictures and films, downloads, export folders, the
examples cache. What stays in Gradio's cache folder is only what was there before the first request (the pictures
the app itself shows as component defaults).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from explain.diffusion.loading import EMBEDDED_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (EMBEDDED_MODEL_DIR / "model_index.json").is_file(), reason="embedded model missing"),
]


def _files(folder: Path) -> set[Path]:
    return {Path(root) / name for root, _, names in os.walk(folder) for name in names}


def _wait_until_served(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not served within {timeout} s")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_leaves_no_served_file_behind(signum, tmp_path):
    from demo.app import free_port

    cache, temp = tmp_path / "gradio-cache", tmp_path / "tmp"
    cache.mkdir()
    temp.mkdir()
    upload = tmp_path / "upload.png"
    Image.fromarray(np.full((64, 64, 3), (200, 30, 30), np.uint8)).save(upload)
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_EXAMPLES_CACHE"}  # the app makes its own
    env |= {"GRADIO_TEMP_DIR": str(cache), "TMPDIR": str(temp), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env |= {"GRADIO_ANALYTICS_ENABLED": "False", "MPLCONFIGDIR": str(tmp_path / "mpl")}
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    process = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_until_served(url, process)
        before = _files(cache)  # the app's own pictures (component defaults), made while building
        client = Client(url, verbose=False)
        client.predict(handle_file(str(upload)), "a red square\na blue circle", api_name="/zero_shot")
        status = client.predict("a red circle", "", 0, 1, 7.5, "default", 32, 32, api_name="/generate")[1]
        assert status.startswith("Done: 1 steps"), status
        downloads = client.predict(0, True, [], [], [], "softmax", 0.4, True, api_name="/export")
        assert len([d for d in downloads if d]) >= 4  # PNG, GIF, NPZ, JSON (and the permalink)
        served = _files(cache) - before
        assert any(p.name == "upload.png" for p in served), "the upload is not where the app keeps files"
        assert len(served) >= 6 and _files(temp), "the app's results are not where this test looks"
        process.send_signal(signum)
        output, _ = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert _files(cache) <= before, sorted(map(str, _files(cache) - before))[:10]
    assert not _files(temp), sorted(map(str, _files(temp)))[:10]  # export folders, the examples cache


_STUCK = """
import sys, tempfile, threading
from pathlib import Path
from demo.exiting import exit_process, remove_at_exit
folder = Path(tempfile.mkdtemp())
(folder / "result.png").write_bytes(b"x")
remove_at_exit(folder)
print(folder, flush=True)
if sys.argv[1] == "stuck":  # a non-daemon worker that never returns, like an AnyIO thread the loop forgot
    threading.Thread(target=threading.Event().wait, name="AnyIO worker thread").start()
exit_process(3, grace_s=1)
"""


@pytest.mark.parametrize("case", ["stuck", "clean"])
def test_a_stuck_worker_thread_cannot_keep_the_stopped_app_alive(case):
    """Python joins non-daemon threads before atexit: one that never ends would hang the exit and keep the files."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _STUCK, case], cwd=ROOT, capture_output=True, text=True, timeout=60)
    folder = Path(done.stdout.strip())
    assert done.returncode == 3, done.stderr
    assert not folder.exists()  # the app's folders went anyway
    assert time.monotonic() - started < 30
    assert ("did not stop (AnyIO worker thread)" in done.stderr) == (case == "stuck")
