"""build_demo(): the whole app as one gr.Blocks, one module per tab; launch_options(): theme and CSS for launch()."""

from __future__ import annotations

import os
import tempfile

import gradio as gr

from demo.common import CSS, MODEL_CONCURRENCY, TAB_IDS, theme
from demo.tab_attend import AttendTab
from demo.tab_clip import ClipTab
from demo.tab_noise import NoiseTab
from demo.tab_steer import SteerTab
from demo.tab_usecases import UseCasesTab

__all__ = ["build_demo", "launch_options", "QUEUE_MAX_SIZE", "TITLE"]

TITLE = "Stable Diffusion Attention Explorer"
QUEUE_MAX_SIZE = 32  # waiting requests; more get "queue full" instead of an endless wait


def launch_options() -> dict:
    """Keyword arguments for ``demo.launch`` that shape the look (Gradio 6 takes theme and CSS there)."""
    return {"theme": theme(), "css": CSS, "footer_links": ["api", "gradio", "settings"]}


def build_demo(engine=None) -> gr.Blocks:
    """The app on ``engine`` (an :class:`explain.session.Engine`; default: the embedded model).

    Building reads only config files (image-size limits, the chain length T); weights load on first use, or
    earlier with ``engine.start_warm_up()``.
    Presets are cached lazily in ``GRADIO_EXAMPLES_CACHE`` (default here: a fresh temp folder per process, so a
    changed app never shows stale cached results).
    """
    from explain.session import Engine

    engine = engine if engine is not None else Engine()
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", tempfile.mkdtemp(prefix="sd-explorer-examples-"))
    limits, T = engine.limits()  # from config files: the weights load later (Engine.start_warm_up / first use)
    model = engine.model or "the embedded tiny shapes model"
    attend = AttendTab(engine)
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(
            f"# {TITLE}\nHow a text prompt becomes a picture, one step at a time. Model: **{model}** "
            f"({limits[1][0]} × {limits[1][1]} px). Each tab starts with a short lesson; every view explains itself."
        )
        clip, noise = ClipTab(engine), NoiseTab(engine)
        with gr.Tabs() as tabs:
            with gr.Tab("1 · Prompt → CLIP", id=TAB_IDS[0]):
                clip_outputs = clip.build()
            with gr.Tab("2 · Forward noising", id=TAB_IDS[1]) as noise_tab:
                noise_inputs, noise_outputs = noise.build(T)
            with gr.Tab("3 · Denoise & attend", id=TAB_IDS[2]):
                attend_parts = attend.build(limits)
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
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=1)
    return demo
