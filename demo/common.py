"""Shared wiring: the model concurrency group, error translation, layout helpers, lessons, style."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
from PIL import Image, UnidentifiedImageError

from demo.exiting import remove_at_exit
from demo.guard import MAX_UPLOAD_SIDE, check_image_file, check_number  # re-exported: the checks live in demo/guard.py
from demo.guard import guard as check_inputs
from explain.engine.requests import MAX_SEED

__all__ = [
    "MODEL_CONCURRENCY",
    "TAB_IDS",
    "CSS",
    "theme",
    "user_errors",
    "seed_input",
    "explain",
    "lesson",
    "open_image",
    "export_dir",
    "export_root",
    "check_image_file",
    "check_inputs",
    "check_number",
    "MAX_FILE_SIZE",
    "MAX_UPLOAD_SIDE",
    "PLOT_FORMAT",
    "IMAGE_FORMAT",
    "session_id",
    "SessionStops",
]

TAB_IDS = ("clip", "noise", "attend", "steer", "usecases")  # tab ids, also the ?tab= values of permalinks
# Every event that runs a model joins this group: a pipeline is not thread-safe, so they run one at a time.
MODEL_CONCURRENCY = "model"
PLOT_FORMAT = "png"  # matplotlib figures as PNG: crisp text, no webp artefacts
IMAGE_FORMAT = "png"  # heat maps are data: lossless
LESSONS_DIR = Path(__file__).resolve().parent / "lessons"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
MAX_FILE_SIZE = "10mb"  # the server refuses bigger uploads (launch(max_file_size=...), demo.app.launch_options)
EXPORT_DIRS_KEPT = 64  # export folders kept on disk; Gradio serves copies from its own cache, so older ones can go

CSS = """
.gradio-container { font-size: 17px; }
.usecase-big img { width: 100%; height: 100%; object-fit: contain; }
.explain { background: #f4f7fb; border-left: 5px solid #3a6fb0; border-radius: 6px; padding: 10px 14px !important; }
.explain p, .explain li { font-size: 16px; line-height: 1.45; }
.lesson { font-size: 17px; }
.lesson code, .explain code { font-size: 15px; }
.slot-strip { display: flex; flex-wrap: wrap; gap: 3px; font-family: ui-monospace, monospace; font-size: 14px; }
.slot { border-radius: 4px; padding: 2px 5px; color: #fff; }
.slot.bos { background: #2e8b57; } .slot.word { background: #3a6fb0; } .slot.eos { background: #c2504a; }
.slot.padding { background: #b8b8b8; } .slot.cut { background: #fff; color: #c2504a; border: 2px dashed #c2504a; }
.slot.unknown { background: #8a8a8a; outline: 2px dashed #e69500; }
#status { font-size: 18px; }
.pixels img { image-rendering: pixelated; }
#attend-image img { width: 100%; height: 100%; object-fit: contain; }
"""


def theme() -> gr.themes.Theme:
    """A calm theme with large text and local fonts (works offline)."""
    return gr.themes.Soft(text_size=gr.themes.sizes.text_lg, spacing_size=gr.themes.sizes.spacing_md)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the explain/ layer's ValueError/KeyError (bad input) into a gr.Error the user sees; the app keeps serving."""
    try:
        yield
    except gr.Error:
        raise
    except (ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise gr.Error(str(message), title="Please check the input") from err


def seed_input(value: int = 0, label: str = "Seed", **kwargs) -> gr.Number:
    """A seed field: whole numbers from 0 to :data:`explain.engine.requests.MAX_SEED`, the one seed range of the app,
    so every seed's message says it ("Seed must be a number from 0 to 4294967295; got -1 ...")."""
    return gr.Number(value, label=label, precision=0, minimum=0, maximum=MAX_SEED, **kwargs)


def explain(text: str) -> gr.Markdown:
    """The one or two sentences that sit beside a view and say what it shows."""
    return gr.Markdown(text, elem_classes=["explain"])


def lesson(name: str) -> gr.Accordion:
    """The tab's lesson (demo/lessons/NAME.md) in an open accordion at the top of the tab."""
    text = (LESSONS_DIR / f"{name}.md").read_text(encoding="utf-8")
    title, _, body = text.partition("\n")
    with gr.Accordion(title.lstrip("# ").strip(), open=True) as box:
        gr.Markdown(
            body.strip(), elem_classes=["lesson"], latex_delimiters=[{"left": "$", "right": "$", "display": False}]
        )
    return box


def open_image(path: str | None, what: str = "image"):
    """An uploaded file as an RGB PIL image, or a gr.Error saying why it is not one."""
    if path is None:
        raise gr.Error(f"No {what} given: upload a PNG or JPEG.")
    if Path(path).suffix.lower() not in IMAGE_SUFFIXES:
        raise gr.Error(f"{Path(path).name} is not an image file; upload a PNG or JPEG ({', '.join(IMAGE_SUFFIXES)}).")
    try:
        with Image.open(path) as im:
            if max(im.size) > MAX_UPLOAD_SIDE:
                raise gr.Error(
                    f"{Path(path).name} is {im.size[0]} x {im.size[1]}; the largest side allowed is {MAX_UPLOAD_SIDE}."
                )
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:  # the message names the server's temp path: not shown
        raise gr.Error(
            f"{what}: {Path(path).name} could not be read as an image ({type(err).__name__}); upload a PNG or JPEG."
        ) from err


class _ExportFolders:
    """Fresh folders for one set of exports each, under one root per process; only the newest ``keep`` stay.

    A handler writes its files into a folder and returns their paths; Gradio copies them into its cache before the
    response is sent, so a folder is no longer needed once ``keep`` newer ones exist. The root goes at exit.
    """

    def __init__(self, keep: int):
        self.keep = keep
        self._root: Path | None = None
        self._folders: deque[Path] = deque()
        self._lock = threading.Lock()

    def root(self) -> Path:
        """The process's export root (created on first use, removed at exit)."""
        with self._lock:
            if self._root is None or not self._root.is_dir():
                self._root = Path(tempfile.mkdtemp(prefix="sd-explorer-"))
                remove_at_exit(self._root)
            return self._root

    def new(self) -> Path:
        """A new empty folder; the oldest beyond ``keep`` are deleted."""
        folder = Path(tempfile.mkdtemp(prefix="export-", dir=self.root()))
        with self._lock:
            self._folders.append(folder)
            old = [self._folders.popleft() for _ in range(max(0, len(self._folders) - self.keep))]
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
        return folder


_EXPORTS = _ExportFolders(EXPORT_DIRS_KEPT)


def export_dir() -> Path:
    """A fresh folder under the system temp dir for one set of exports (the newest EXPORT_DIRS_KEPT are kept)."""
    return _EXPORTS.new()


def export_root() -> Path:
    """The folder that holds every export folder of this process."""
    return _EXPORTS.root()


def session_id(request) -> str:
    """The browser session of a request (``"local"`` when a handler is called without one)."""
    return getattr(request, "session_hash", None) or "local"


class SessionStops:
    """One stop flag per session for a tab's running stream: its Stop button sets the flag of its own session.

    The stream checks the flag between steps and ends after the current one (as tab 3's generation does).
    """

    def __init__(self):
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        """A fresh flag for ``session``'s new run (a previous run of the session keeps its own)."""
        flag = threading.Event()
        with self._lock:
            self._flags[session] = flag
        return flag

    def finish(self, session: str, flag: threading.Event) -> None:
        """Forget ``flag`` once its run ended (unless a newer run of the session replaced it)."""
        with self._lock:
            if self._flags.get(session) is flag:
                del self._flags[session]

    def stop(self, session: str) -> bool:
        """Set ``session``'s flag; False when nothing of the session is running."""
        with self._lock:
            flag = self._flags.get(session)
        if flag is None:
            return False
        flag.set()
        return True
