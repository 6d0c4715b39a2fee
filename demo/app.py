"""build_demo(): the whole app as one gr.Blocks, one module per tab; launch_options(): how launch() serves it."""

from __future__ import annotations

import os
import socket
import tempfile

import gradio as gr
from starlette.middleware import Middleware

from demo.cache import MemoryPolicy, UploadLimits, UploadQuota, cache_cleanup, delete_old_files
from demo.common import CSS, MAX_FILE_SIZE, MODEL_CONCURRENCY, TAB_IDS, theme
from demo.exiting import remove_at_exit
from demo.guard import guard
from demo.tab_attend import AttendTab
from demo.tab_clip import ClipTab
from demo.tab_noise import NoiseTab
from demo.tab_steer import SteerTab
from demo.tab_usecases import UseCasesTab
from explain.engine.requests import MAX_STEPS
from explain.engine.session import Engine

__all__ = [
    "build_demo",
    "launch_options",
    "shutdown",
    "free_port",
    "serve_local",
    "QUEUE_MAX_SIZE",
    "DELETE_CACHE",
    "UPLOAD_LIMITS",
    "SESSIONS_KEPT",
    "MEMORY",
    "TITLE",
]

TITLE = "Stable Diffusion Attention Explorer"
QUEUE_MAX_SIZE = 32  # waiting requests; more get "queue full" instead of an endless wait
# (every, older than) seconds: the files Gradio cached for the app (previews, maps, downloads) go once an hour old,
# so a long class does not fill the disk; results stay downloadable for an hour.
DELETE_CACHE = (600, 3600)
# uploads kept on disk: 50 MB per client (five at the 10 MB limit), 500 MB for the whole app; the oldest go first
UPLOAD_LIMITS = UploadLimits(per_client=50 * 2**20, total=500 * 2**20, min_age=60)
SESSIONS_KEPT = 64  # sessions whose state (the last generation, updated menus) is kept; the oldest beyond go
# every 30 s: free the state of sessions whose page closed 2 min ago or that were idle an hour; return free memory
MEMORY = MemoryPolicy(every=30, session_idle=3600, closed_grace=120)


def launch_options(
    delete_cache: tuple[float, float] | None = DELETE_CACHE,
    uploads: UploadLimits | None = UPLOAD_LIMITS,
    memory: MemoryPolicy | None = MEMORY,
) -> dict:
    """Keyword arguments for ``demo.launch``: the look (Gradio 6 takes theme and CSS there), the upload limits,
    the sessions kept and the cache cleanup.

    ``max_file_size`` makes the server refuse bigger uploads (HTTP 413; gradio_client refuses them before sending).
    ``uploads``: what uploads may keep on disk, per client and in all (:class:`demo.cache.UploadQuota`).
    ``memory``: how sessions that left are freed and memory handed back (:class:`demo.cache.MemoryPolicy`).
    ``delete_cache`` = (every, older than) in seconds: the files Gradio cached for the app are deleted on that
    schedule while it serves (:func:`demo.cache.cache_cleanup`), and all of them when it stops; None keeps them.
    """
    options = {
        "theme": theme(),
        "css": CSS,
        "footer_links": ["api", "gradio", "settings"],
        "max_file_size": MAX_FILE_SIZE,
        "state_session_capacity": SESSIONS_KEPT,
        "app_kwargs": {},
    }
    if uploads is not None:
        options["app_kwargs"]["middleware"] = [Middleware(UploadQuota, limits=uploads)]
    if delete_cache is not None or memory is not None:
        options["app_kwargs"]["lifespan"] = cache_cleanup(*(delete_cache or (None, None)), memory=memory)
    return options


def shared_note(limits) -> str:
    """The header's line for a public link or a Space: what a visitor shares with the others."""
    side = limits.size.max_side
    return (
        f"Shared app: one generation runs at a time and others wait in a queue of at most {QUEUE_MAX_SIZE}; "
        f"up to {MAX_STEPS} steps and {side} px a side; uploads and results are deleted when the app stops."
    )


def build_demo(engine=None, shared: bool = False) -> gr.Blocks:
    """The app on ``engine`` (an :class:`explain.engine.session.Engine`; default: the embedded model).

    Building reads only config files (image-size limits, the chain length T); weights load on first use, or
    earlier with ``engine.start_warm_up()``.
    Presets are cached lazily in ``GRADIO_EXAMPLES_CACHE`` (default here: a fresh temp folder per process, so a
    changed app never shows stale cached results).
    """

    engine = engine if engine is not None else Engine()
    if "GRADIO_EXAMPLES_CACHE" not in os.environ:  # the app's own folder: it goes when the process ends
        examples = tempfile.mkdtemp(prefix="sd-explorer-examples-")
        remove_at_exit(examples)
        os.environ["GRADIO_EXAMPLES_CACHE"] = examples
    limits = engine.limits()  # from config files: the weights load later (Engine.start_warm_up / first use)
    model = engine.model or "the embedded tiny shapes model"
    note = f"\n\n*{shared_note(limits)}*" if shared else ""
    attend = AttendTab(engine)
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(
            f"# {TITLE}\nHow a text prompt becomes a picture, one step at a time. Model: **{model}** "
            f"({limits.size.default_hw[0]} × {limits.size.default_hw[1]} px). Each tab starts with a short lesson; every view explains itself."
            f"{note}"
        )
        clip, noise = ClipTab(engine), NoiseTab(engine)
        with gr.Tabs() as tabs:
            with gr.Tab("1 · Prompt → CLIP", id=TAB_IDS[0]):
                clip_outputs = clip.build()
            with gr.Tab("2 · Forward noising", id=TAB_IDS[1]) as noise_tab:
                noise_inputs, noise_outputs = noise.build(limits.chain_length)
            with gr.Tab("3 · Denoise & attend", id=TAB_IDS[2]):
                attend_parts = attend.build(limits.size, limits.joint)
            with gr.Tab("4 · Steer with words", id=TAB_IDS[3]):
                SteerTab(engine).build()
            with gr.Tab("5 · Use cases", id=TAB_IDS[4]):
                UseCasesTab(engine).build()
        demo.load(attend.from_url, None, [*attend_parts["inputs"], tabs], api_visibility="undocumented", queue=False)
        # Fill the first views so a projected page never starts empty (deterministic defaults; cheap after warm-up).
        demo.load(clip.on_load, None, clip_outputs, api_visibility="undocumented", concurrency_id=MODEL_CONCURRENCY)
        noise_tab.select(
            noise.on_open, noise_inputs, noise_outputs, api_visibility="undocumented", concurrency_id=MODEL_CONCURRENCY
        )
    guard(demo)  # every request checked at the boundary: "Steps must be a number from 1 to 150; got 0 ..."
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=1)
    return demo


def shutdown(demo: gr.Blocks) -> None:
    """Stop serving ``demo`` and delete every file it handed out (uploads, results, downloads), whatever stopped it.

    The cleanup lifespan does the same when the server shuts down cleanly; this also covers a server thread that
    does not finish in time (open browser connections). Export folders and the examples cache go at exit.
    """
    demo.close(verbose=False)
    delete_old_files(demo, -1)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on at ``host`` right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def serve_local(engine=None, options: dict | None = None) -> tuple[gr.Blocks, str]:
    """Build the app on ``engine`` and serve it in this process on a free loopback port, without blocking.

    For tests and benchmarks. ``options``: ``demo.launch`` keyword arguments (default :func:`launch_options`).
    Returns the Blocks (``.close()`` it) and its local URL.
    """
    demo = build_demo(engine)
    options = launch_options() if options is None else options
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True, **options)
    return demo, url
