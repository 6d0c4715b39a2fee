"""The repository is a Hugging Face Space as it is: front matter, the host a Space sets, the shared-link header."""

import re
from pathlib import Path

import gradio as gr
from huggingface_hub import metadata_load

import app
from demo.app import QUEUE_MAX_SIZE, build_demo, shared_note
from explain.engine.requests import MAX_STEPS

REPO = Path(__file__).resolve().parents[1]


def test_the_readme_front_matter_is_a_gradio_space_on_the_pinned_versions():
    meta = metadata_load(REPO / "README.md")
    assert meta["sdk"] == "gradio" and (REPO / meta["app_file"]).is_file()
    pinned = re.search(r"^gradio==(\S+)$", (REPO / "requirements.txt").read_text(), re.M).group(1)
    assert meta["sdk_version"] == pinned == gr.__version__
    assert meta["python_version"] == "3.11"
    assert {"title", "emoji", "colorFrom", "colorTo", "pinned"} <= meta.keys()


def test_the_app_listens_where_a_space_asks(monkeypatch):
    assert app.parse_args([]).host == "127.0.0.1"
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7861")
    args = app.parse_args([])
    assert (args.host, args.port) == ("0.0.0.0", 7861)
    assert app.parse_args(["--host", "127.0.0.2"]).host == "127.0.0.2"  # an explicit option still wins


def _header(demo: gr.Blocks) -> str:
    return next(b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and "Model:" in str(b.value))


def test_the_header_names_the_model_and_a_shared_app_says_what_visitors_share(engine):
    local, shared = build_demo(engine), build_demo(engine, shared=True)
    assert "Model: **the embedded tiny shapes model**" in _header(local)
    assert "queue" not in _header(local)
    note = shared_note(engine.limits())
    assert note in _header(shared)
    assert f"at most {QUEUE_MAX_SIZE}" in note and f"{MAX_STEPS} steps" in note
    assert f"{engine.limits().size.max_side} px" in note
