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


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread while a module runs (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    from tiny_pipelines import single_thread

    with single_thread():
        yield


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """A tiny random SD-1 pipeline built in code (tests/tiny_pipelines.py), progress bar off; one per module.

    Modules that need another pipeline define their own ``pipe``."""
    from tiny_pipelines import build_sd1

    pipe = build_sd1(tmp_path_factory.mktemp("sd1"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def url(tmp_path_factory, engine):
    """The app on the session's embedded-model engine, served in this process on a free port (one per module)."""
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(tmp_path_factory.mktemp("examples")))
    from demo.app import serve_local

    demo, local_url = serve_local(engine)
    yield local_url
    demo.close()


@pytest.fixture(scope="module")
def client(url):
    """A ``gradio_client.Client`` of :func:`url` (one browser session)."""
    from gradio_client import Client

    return Client(url, verbose=False)
