"""The use-cases tab's layout: an overview, then one section per task with its inputs, results and events."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import numpy as np

from demo.common import IMAGE_FORMAT, MODEL_CONCURRENCY, PLOT_FORMAT, explain, lesson, seed_input
from demo.tab_usecases.forms import (
    DEFAULT_STEPS,
    INPAINT_MODES,
    SAMPLE_SEED,
    STYLE_CHOICES,
    TASKS,
    WorldSample,
    world_sample,
)
from explain.engine.requests import MAX_STEPS

__all__ = ["build"]


@dataclass(frozen=True)
class RunViews:
    """The explanation views every task shares: U-Net input figure, word-map gallery, summary."""

    plot: gr.Plot
    gallery: gr.Gallery
    summary: gr.Markdown

    @property
    def all(self) -> list:
        return [self.plot, self.gallery, self.summary]


def build(tab) -> None:
    """Create the tab on ``tab`` (a :class:`UseCasesTab`; call inside ``gr.Tab``)."""
    lesson("usecases")
    _overview()
    sample = world_sample()  # every task starts from it
    with gr.Tabs():
        with gr.Tab("Super-resolution", id="upscale"):
            _build_upscale(tab, sample)
        with gr.Tab("Style transfer", id="stylize"):
            _build_stylize(tab, sample)
        with gr.Tab("Inpainting", id="inpaint"):
            _build_inpaint(tab, sample)
        with gr.Tab("Outpainting", id="outpaint"):
            _build_outpaint(tab, sample)
        with gr.Tab("Edit where a word attends", id="attend_edit"):
            _build_attend_edit(tab)


def _overview() -> None:
    """The table of what each task feeds the U-Net."""
    with gr.Row():
        with gr.Column(scale=3):
            header = "| task | where the chain starts | cross-attention (text) | what else is fed to the U-Net |"
            rows = "\n".join("| " + " | ".join(row) + " |" for row in TASKS)
            gr.Markdown(f"#### One U-Net, different conditioning\n{header}\n|---|---|---|---|\n{rows}")
        with gr.Column(scale=1):
            explain(
                "Each section below runs one task on the embedded model and shows the result, the U-Net input "
                "read from the run's real tensors, and where each word was attended to."
            )


# -- shared parts -------------------------------------------------------------------------------------------------------
def _views(prefix: str) -> RunViews:
    """The shared explanation views: U-Net input figure, word-map gallery, summary."""
    with gr.Row():
        with gr.Column(scale=3):
            plot = gr.Plot(label="U-Net input of this run", format=PLOT_FORMAT, elem_id=f"{prefix}-layout")
        with gr.Column(scale=1):
            explain(
                "Every channel of the U-Net's `sample` as it was really fed (first step, prompt half), and the "
                "other inputs below it: what this task adds to the 4 latent channels of text-to-image."
            )
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(
                label="Cross-attention per word over the result (red = strong)",
                elem_id=f"{prefix}-maps",
                elem_classes=["pixels"],
                columns=6,
                height="auto",
                format=IMAGE_FORMAT,
                object_fit="contain",
            )
        with gr.Column(scale=1):
            explain(
                "Where each prompt word was attended to, summed over steps, layers and heads (DAAM): the text "
                "still steers through cross-attention, whatever else conditions the U-Net."
            )
    summary = gr.Markdown(elem_id=f"{prefix}-summary")
    return RunViews(plot, gallery, summary)


def _big(label: str, elem_id: str, interactive: bool = False, **kwargs) -> gr.Image:
    """A large image view. An input one hands uploads over in their own mode (16-bit, RGBA...): the library
    converts them and says so in the notes (unreadable files are refused by ``demo.common.check_inputs``)."""
    options = {"type": "pil", "image_mode": None} if interactive else {"type": "numpy"}
    return gr.Image(
        label=label,
        elem_id=elem_id,
        elem_classes=["pixels", "usecase-big"],
        format=IMAGE_FORMAT,
        height=320,
        interactive=interactive,
        **options,
        **kwargs,
    )


def _common_inputs(prefix: str, seed_default: int = 0) -> tuple[gr.Number, gr.Slider]:
    """The seed and steps of a task."""
    with gr.Row():
        seed = seed_input(seed_default, label="seed", elem_id=f"{prefix}-seed")
        steps = gr.Slider(1, MAX_STEPS, value=DEFAULT_STEPS, step=1, label="steps", elem_id=f"{prefix}-steps")
    return seed, steps


def _sample_picker(prefix: str) -> tuple[gr.Number, gr.Button]:
    """Which world sample to load, and the button that loads it."""
    with gr.Row():
        sample_seed = seed_input(SAMPLE_SEED, label="world sample #", scale=1)
        button = gr.Button("Load world sample", scale=1, elem_id=f"{prefix}-sample")
    return sample_seed, button


def _sample_button(tab, prefix: str, image, prompt) -> None:
    """Load a world sample (and its caption as the prompt) into a task's image."""
    sample_seed, button = _sample_picker(prefix)
    button.click(tab.sample, [sample_seed], [image, prompt], api_visibility="undocumented", queue=False)


def _preset(fn, inputs: list, outputs: list, preset: list, preset_label: str) -> None:
    """A task's one-click preset (``fn`` on the values ``preset``), cached lazily."""
    gr.Examples(
        [preset],
        inputs=inputs,
        outputs=outputs,
        fn=fn,
        cache_examples=True,
        cache_mode="lazy",
        label="Preset",
        example_labels=[preset_label],
    )


# -- the four tasks -----------------------------------------------------------------------------------------------------
def _build_upscale(tab, sample: WorldSample) -> None:
    """Super-resolution: a 16x16 image, ×4."""
    with gr.Row():
        with gr.Column(scale=1):
            image = _big("Image (any size: brought to 16x16)", "upscale-input", interactive=True)
            prompt = gr.Textbox(sample.caption, label="prompt (what the image shows)")
            noise = gr.Slider(0, 350, value=20, step=1, label="noise level added to the low-res image")
            seed, steps = _common_inputs("upscale")
            _sample_button(tab, "upscale", image, prompt)
            run = gr.Button("Upscale ×4", variant="primary", elem_id="upscale-run")
        with gr.Column(scale=3):
            explain(
                "The 16x16 low-res image is concatenated to the noisy latent as 3 extra channels; the "
                "sampler starts from pure noise and the U-Net invents the detail bicubic interpolation cannot."
            )
            with gr.Row():
                low = _big("low-res input (16x16)", "upscale-low")
                bicubic = _big("bicubic ×4", "upscale-bicubic")
                out = _big("super-resolved ×4", "upscale-output")
    inputs, outputs = [image, prompt, noise, seed, steps], [low, bicubic, out, *_views("upscale").all]
    _preset(tab.upscale, inputs, outputs, [sample.image, sample.caption, 20, 0, DEFAULT_STEPS], "world sample → ×4")
    run.click(tab.upscale, inputs, outputs, api_name="upscale", concurrency_id=MODEL_CONCURRENCY)


def _build_stylize(tab, sample: WorldSample) -> None:
    """Style transfer (SDEdit): noise the content to t, denoise with style words."""
    with gr.Row():
        with gr.Column(scale=1):
            image = _big("Content image", "stylize-input", interactive=True)
            styles = gr.CheckboxGroup(STYLE_CHOICES, value=["striped"], label="style words of the world")
            prompt = gr.Textbox(sample.caption, label="content prompt (optional)")
            strength = gr.Slider(
                0.05,
                1.0,
                value=0.6,
                step=0.05,
                label="strength: start at step t = strength · T of the forward chain",
            )
            seed, steps = _common_inputs("stylize")
            _sample_button(tab, "stylize", image, prompt)
            run = gr.Button("Stylize", variant="primary", elem_id="stylize-run")
        with gr.Column(scale=3):
            explain(
                "SDEdit: the content is noised forward to step t, then denoised with the style words in the "
                "prompt. Small t keeps the layout and changes little; t near T keeps almost nothing."
            )
            with gr.Row():
                content = _big("content (as run)", "stylize-content")
                out = _big("stylised", "stylize-output")
            start = gr.Markdown(elem_id="stylize-start")
    inputs = [image, styles, prompt, strength, seed, steps]
    outputs = [content, out, start, *_views("stylize").all]
    preset = [sample.image, ["at night"], sample.caption, 0.6, 0, DEFAULT_STEPS]
    _preset(tab.stylize, inputs, outputs, preset, "world sample, at night")
    run.click(tab.stylize, inputs, outputs, api_name="stylize", concurrency_id=MODEL_CONCURRENCY)


def _inpaint_editor(sample: WorldSample) -> gr.ImageMask:
    """The image with a white brush: the painted region is filled."""
    return gr.ImageMask(
        value={"background": sample.image, "layers": [], "composite": sample.image},
        label="Paint the region to fill (white brush)",
        type="pil",
        image_mode=None,  # uploads keep their mode (16-bit, grayscale): the library converts, with notes
        format=IMAGE_FORMAT,
        brush=gr.Brush(default_size=8, colors=["#ffffff"], color_mode="fixed"),
        height=360,
        elem_id="inpaint-editor",
        elem_classes=["pixels"],
    )


def _build_inpaint(tab, sample: WorldSample) -> None:
    """Inpainting: fill the painted region, 9-channel U-Net or 4-channel blend."""
    with gr.Row():
        with gr.Column(scale=1):
            editor = _inpaint_editor(sample)
            prompt = gr.Textbox(sample.caption, label="prompt (describe the whole intended image)")
            mode = gr.Radio(INPAINT_MODES, value="unet", label="mode")
            seed, steps = _common_inputs("inpaint")
            sample_seed, load = _sample_picker("inpaint")
            run = gr.Button("Inpaint", variant="primary", elem_id="inpaint-run")
        with gr.Column(scale=3):
            explain(
                "9-channel U-Net: the mask and the latent of the masked image are 5 extra input channels, so "
                "the U-Net sees what is kept. 4-channel blend: an ordinary U-Net; after each step the known "
                "latents are written back outside the mask."
            )
            with gr.Row():
                mask = _big("mask (white = fill)", "inpaint-mask")
                raw = _big("pipeline output (before pasting)", "inpaint-raw")
                out = _big("result (kept pixels exact)", "inpaint-output")
    views = _views("inpaint")
    load.click(tab.editor_sample, [sample_seed], [editor, prompt], api_visibility="undocumented", queue=False)
    inputs, outputs = [editor, prompt, mode, seed, steps], [mask, raw, out, *views.all]
    layer = np.zeros((*sample.image.shape[:2], 4), np.uint8)
    layer[16:48, 32:64] = 255  # the right half's middle: repaint it
    painted = {"background": sample.image, "layers": [layer], "composite": sample.image}
    _preset(
        tab.inpaint, inputs, outputs, [painted, sample.caption, "unet", 0, 20], "world sample, right half repainted"
    )
    run.click(tab.inpaint, inputs, outputs, api_name="inpaint", concurrency_id=MODEL_CONCURRENCY)


def _build_outpaint(tab, sample: WorldSample) -> None:
    """Outpainting: grow the canvas (or shrink the content) and fill the new border."""
    with gr.Row():
        with gr.Column(scale=1):
            image = _big("Image", "outpaint-input", interactive=True)
            prompt = gr.Textbox(sample.caption, label="prompt")
            with gr.Row():
                left = gr.Slider(0, 64, value=0, step=16, label="left px")
                right = gr.Slider(0, 64, value=0, step=16, label="right px")
            with gr.Row():
                top = gr.Slider(0, 64, value=0, step=16, label="top px")
                bottom = gr.Slider(0, 64, value=0, step=16, label="bottom px")
            zoom = gr.Slider(1.0, 3.0, value=1.5, step=0.1, label="zoom out (same canvas, content shrunk)")
            mode = gr.Radio(INPAINT_MODES, value="unet", label="mode")
            seed, steps = _common_inputs("outpaint")
            _sample_button(tab, "outpaint", image, prompt)
            run = gr.Button("Outpaint", variant="primary", elem_id="outpaint-run")
        with gr.Column(scale=3):
            explain(
                "Outpainting is inpainting of a new border: the canvas grows (or the content shrinks), the mask "
                "covers everything new, and the original pixels are pasted back exactly."
            )
            with gr.Row():
                original = _big("original", "outpaint-original")
                out = _big("outpainted", "outpaint-output")
    inputs = [image, prompt, left, right, top, bottom, zoom, mode, seed, steps]
    outputs = [original, out, *_views("outpaint").all]
    preset = [sample.image, sample.caption, 16, 16, 0, 0, 1.0, "unet", 0, DEFAULT_STEPS]
    _preset(tab.outpaint, inputs, outputs, preset, "world sample, 16 px left and right")
    run.click(tab.outpaint, inputs, outputs, api_name="outpaint", concurrency_id=MODEL_CONCURRENCY)


def _build_attend_edit(tab) -> None:
    """Attention as a tool: a word's map becomes the mask of an inpainting edit (the first word swap of the model's
    world, e.g. circle -> square)."""
    world = tab.engine.world()
    old, new, _ = world.steer.swap[0]
    with gr.Row():
        with gr.Column(scale=1):
            prompt = gr.Textbox(world.default_prompt, label="prompt (generated first)")
            word = gr.Textbox(old, label="word (of the prompt: its map is the mask)")
            edited = gr.Textbox(world.default_prompt.replace(old, new), label="edited prompt")
            threshold = gr.Slider(0.05, 0.95, value=0.4, step=0.05, label="mask threshold τ (DAAM: 0.4)")
            dilation = gr.Slider(0, 8, value=2, step=1, label="mask dilation (px)")
            mode = gr.Radio(INPAINT_MODES, value="unet", label="mode")
            seed, steps = _common_inputs("attend-edit", seed_default=1)
            upload = _big("or edit this image (the prompt describes it)", "attend-edit-input", interactive=True)
            run = gr.Button("Edit", variant="primary", elem_id="attend-edit-run")
        with gr.Column(scale=3):
            explain(
                "The step that turns attention into a tool (prompt-to-prompt's local blend, DiffEdit): the "
                "word's heat map, thresholded, is the inpainting mask, and the edited prompt is painted only "
                "there, from the same seed. A loose map edits too much, a tight one too little: move τ."
            )
            gallery = gr.Gallery(
                label="before · map · mask · after · difference",
                elem_classes=["pixels"],
                elem_id="attend-edit-gallery",
                columns=5,
                height="auto",
                format=IMAGE_FORMAT,
                object_fit="contain",
            )
            summary = gr.Markdown(elem_id="attend-edit-summary")
    inputs = [prompt, word, edited, threshold, dilation, mode, seed, steps, upload]
    run.click(tab.attend_edit, inputs, [gallery, summary], api_name="attend_edit", concurrency_id=MODEL_CONCURRENCY)
