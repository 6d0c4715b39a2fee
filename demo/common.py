"""Shared wiring: the model concurrency group, error translation, layout helpers, lessons, style."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import gradio as gr

__all__ = [
    "MODEL_CONCURRENCY",
    "TAB_IDS",
    "CSS",
    "theme",
    "user_errors",
    "explain",
    "lesson",
    "open_image",
    "export_dir",
    "PLOT_FORMAT",
    "IMAGE_FORMAT",
]

TAB_IDS = ("clip", "noise", "attend", "steer", "usecases")  # tab ids, also the ?tab= values of permalinks
# Every event that runs a model joins this group: a pipeline is not thread-safe, so they run one at a time.
MODEL_CONCURRENCY = "model"
PLOT_FORMAT = "png"  # matplotlib figures as PNG: crisp text, no webp artefacts
IMAGE_FORMAT = "png"  # heat maps are data: lossless
LESSONS_DIR = Path(__file__).resolve().parent / "lessons"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
MAX_UPLOAD_SIDE = 4096

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
    from PIL import Image, UnidentifiedImageError

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
    except (UnidentifiedImageError, OSError) as err:
        raise gr.Error(f"{Path(path).name} could not be read as an image ({err}).") from err


def export_dir() -> Path:
    """A fresh folder under the system temp dir (Gradio serves files from there) for one set of exports."""
    return Path(tempfile.mkdtemp(prefix="sd-explorer-"))
