"""Shared test setup: nothing may try the network; one embedded-model engine and one tiny SD-1 model per session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402  (the environment above is set before anything imports huggingface_hub)


@pytest.fixture(scope="session")
def engine():
    """The embedded model's :class:`explain.engine.session.Engine`, loaded once for the whole session."""
    from explain.engine.session import Engine

    return Engine()


@pytest.fixture(scope="session")
def tiny_sd1_dir(tmp_path_factory):
    """A tiny random SD-1 pipeline (tests/tiny_pipelines.py) saved with ``save_pretrained``: a real model directory."""
    from tiny_pipelines import build_sd1

    work = tmp_path_factory.mktemp("sd1")
    build_sd1(work).save_pretrained(work / "pipe")
    return work / "pipe"
