"""Tab 5, Use cases: super-resolution, style transfer, inpainting and outpainting on the embedded model.

Handlers are plain functions calling :mod:`explain.usecases`; every run shows the result, the U-Net input table read
from the run's actual tensors, and per-word cross-attention maps.
"""

from __future__ import annotations

import threading

import gradio as gr
import numpy as np

from demo.common import IMAGE_FORMAT, MODEL_CONCURRENCY, PLOT_FORMAT, explain, lesson, user_errors
from explain.diffusion.loading import ModelLoadError
from explain.engine.requests import MAX_STEPS, whole
from explain.engine.session import Engine
from explain.maps.aggregation import overlay
from explain.usecases import inpaint, input_layout_figure, load_task_pipeline, outpaint, stylize, upscale
from explain.usecases.inputs import to_rgb, union_mask
from explain.world import make_batch

__all__ = ["UseCasesTab", "world_sample", "editor_mask"]

TASKS = [
    ["text → image", "noise x_T", "prompt tokens (K, V)", "nothing else: the U-Net sees x_t and the text"],
    [
        "img2img / style transfer",
        "your image, noised to t = strength · T",
        "the new prompt (style words)",
        "the start point carries the layout",
    ],
    [
        "inpainting",
        "noise inside the mask",
        "prompt",
        "extra input channels: masked image latents + the mask (9 channels instead of 4)",
    ],
    ["outpainting", "noise outside the old canvas", "prompt", "inpainting with the mask around the border"],
    [
        "super-resolution (x4 upscaler)",
        "noise at the large size",
        "prompt",
        "the low-res image concatenated to x_t, plus a noise-level embedding",
    ],
]
STYLE_CHOICES = ["outlined", "striped", "at night", "on grass", "at sunset"]
INPAINT_MODES = [("9-channel inpainting U-Net", "unet"), ("4-channel blend (text-to-image U-Net)", "blend")]
DEFAULT_STEPS = 20
# For demo.common.CSS (not wired yet): 64x64 results fill their 320 px boxes instead of staying thumbnails
SAMPLE_SEED = 4  # the world sample shown by default (a deterministic draw)


def world_sample(seed: int = SAMPLE_SEED) -> tuple[np.ndarray, str]:
    """A rendered 64x64 scene of the shapes world and its caption."""

    scene = make_batch(1, int(seed))[0]
    return scene.image, scene.caption


def editor_mask(value) -> tuple[object, np.ndarray, tuple[str, ...]]:
    """(background image, fill mask (H, W) uint8 0/255, notes) from a gr.ImageMask value.

    Every layer is read as a mask (:func:`explain.usecases.inputs.union_mask`): white strokes on a transparent layer
    (what the brush paints) or an uploaded black-and-white mask (white = fill, diffusers' convention) mark the region
    to fill. A layer of another size is resized when its aspect ratio matches; otherwise the error says so.
    """

    if not isinstance(value, dict) or value.get("background") is None:
        raise gr.Error("No image given: upload one or load the world sample, then paint the region to fill.")
    background = value["background"]  # PIL image, array or path: the library converts it, with notes
    layers = [layer for layer in value.get("layers") or [] if layer is not None]
    with user_errors():
        size = to_rgb(background)[0].size
        if not layers:
            raise ValueError("mask is empty (nothing painted): paint the region to fill, white marks it.")
        mask, notes = union_mask(layers, size)
    return background, mask.astype(np.uint8) * 255, notes


class UseCasesTab:
    """Handlers and layout of the use-cases tab (task pipelines share the Engine's components and lock)."""

    def __init__(self, engine=None):
        self._engine = engine
        self._pipes: dict[tuple[str, str], object] = {}
        self._pipes_lock = threading.Lock()

    @property
    def engine(self):
        """The app's Engine; built on first use when the tab was created without one (then it has its own lock)."""
        if self._engine is None:
            with self._pipes_lock:
                if self._engine is None:
                    self._engine = Engine()
        return self._engine

    # -- model ------------------------------------------------------------------------------------------------------
    def task_pipeline(self, task: str, mode: str = "unet"):
        """The task pipeline (``"upscale"``, ``"img2img"``, ``"inpaint"``), built once on the Engine's pipeline."""

        key = (task, mode if task == "inpaint" else "")
        base = self.engine.pipeline()
        with self._pipes_lock:
            if key not in self._pipes:
                try:
                    self._pipes[key] = load_task_pipeline(task, mode=mode, base=base)
                except (ModelLoadError, OSError) as err:
                    raise gr.Error(
                        f"The {task} pipeline could not be loaded for this model ({err}).", title="Model not available"
                    ) from err
            return self._pipes[key]

    @staticmethod
    def _steps(steps) -> int:
        """The form's steps, checked by the library's one limit (:data:`explain.engine.requests.MAX_STEPS`)."""
        with user_errors():
            return whole("steps", steps, 1, MAX_STEPS)

    # -- shared views -----------------------------------------------------------------------------------------------
    @staticmethod
    def word_gallery(result) -> list[tuple[np.ndarray, str]]:
        """Per-word cross-attention overlays over the result image (like the Denoise tab)."""

        maps = result.maps
        if maps is None or not maps.words:
            return []
        image = np.asarray(result.image.convert("RGB"))
        return [(overlay(image, maps.word_maps[i].numpy()), f"“{word}”") for i, word in enumerate(maps.words)]

    @staticmethod
    def layout_figure(result):
        """The U-Net input figure (every channel of the observed sample + the table) of this run."""

        return input_layout_figure(
            result.inputs,
            result.input_sample,
            title=f"{result.pipeline}: U-Net sample with {result.in_channels} channels (prompt-conditioned half)",
        )

    @staticmethod
    def summary(result, extra: str = "") -> str:
        notes = "".join(f"\n- {note}" for note in result.notes)
        return (
            f"**{result.pipeline}**, {len(result.timesteps_run)} U-Net steps, {result.seconds:.1f} s. "
            f"Prompt: “{result.prompt}”. {extra}{notes}"
        )

    # -- handlers ---------------------------------------------------------------------------------------------------
    def upscale(self, image, prompt, noise_level, seed, steps):
        """16x16 low-res → 64x64: returns (low-res, bicubic, super-resolved, layout figure, word maps, summary)."""

        if image is None:
            raise gr.Error("No image given: upload one or load a world sample.")
        steps = self._steps(steps)
        pipe = self.task_pipeline("upscale")
        with user_errors():  # the library call holds the engine's lock for the pipeline run
            result = upscale(
                image,
                prompt or "",
                pipe=pipe,
                seed=int(seed),
                steps=steps,
                noise_level=int(noise_level),
                lock=self.engine.lock,
            )
        extra = (
            f"Low-res noised to level {result.noise_level} (ᾱ = {result.low_res_alpha_bar:.3f}) before concatenation."
        )
        return (
            result.low_res,
            result.bicubic,
            result.image,
            self.layout_figure(result),
            self.word_gallery(result),
            self.summary(result, extra),
        )

    def stylize(self, image, styles, prompt, strength, seed, steps):
        """SDEdit: returns (content as run, stylised, start-step note, layout figure, word maps, summary)."""

        if image is None:
            raise gr.Error("No content image given: upload one or load a world sample.")
        steps = self._steps(steps)
        pipe = self.task_pipeline("img2img")
        with user_errors():  # the library call holds the engine's lock for the pipeline run
            result = stylize(
                image,
                list(styles or []),
                prompt or None,
                pipe=pipe,
                strength=float(strength),
                seed=int(seed),
                steps=steps,
                lock=self.engine.lock,
            )
        start = result.start
        T = int(pipe.scheduler.config.num_train_timesteps)
        note = (
            f"Strength {start.strength:g}: the content is noised to **t = {start.start_timestep} of T = {T}** "
            f"(ᾱ = {start.alpha_bar:.3f}: √ᾱ = {start.signal_coef:.2f} of the content, noise std "
            f"{start.noise_std:.2f}); {start.denoising_steps} of {start.num_inference_steps} sampler steps run, "
            f"{start.t_start} skipped."
        )
        return (
            result.content,
            result.image,
            note,
            self.layout_figure(result),
            self.word_gallery(result),
            self.summary(result),
        )

    def inpaint(self, editor, prompt, mode, seed, steps):
        """Fill the painted region: returns (mask, raw output, result, layout figure, word maps, summary)."""

        background, mask, notes = editor_mask(editor)
        steps = self._steps(steps)
        pipe = self.task_pipeline("inpaint", mode=mode)
        with user_errors():  # the library call holds the engine's lock for the pipeline run
            result = inpaint(
                background, mask, prompt or "", pipe=pipe, seed=int(seed), steps=steps, lock=self.engine.lock
            )
        mask_image = result.mask.astype(np.uint8) * 255
        extra = f"Mode **{result.mode}**; {int(result.mask.sum())} pixels filled, the rest kept exactly."
        extra += "".join(f"\n- {note}" for note in notes if note not in result.notes)
        return (
            mask_image,
            result.raw,
            result.image,
            self.layout_figure(result),
            self.word_gallery(result),
            self.summary(result, extra),
        )

    def outpaint(self, image, prompt, left, right, top, bottom, zoom_out, mode, seed, steps):
        """Extend the canvas: returns (original, result, layout figure, word maps, summary)."""

        if image is None:
            raise gr.Error("No image given: upload one or load a world sample.")
        steps = self._steps(steps)
        pipe = self.task_pipeline("inpaint", mode=mode)
        with user_errors():  # the library call holds the engine's lock for the pipeline run
            result = outpaint(
                image,
                prompt or "",
                pipe=pipe,
                left=int(left),
                right=int(right),
                top=int(top),
                bottom=int(bottom),
                zoom_out=float(zoom_out),
                seed=int(seed),
                steps=steps,
                lock=self.engine.lock,
            )
        extra = f"Kept content at box {result.box} of a {result.image.width}x{result.image.height} canvas."
        return (
            result.original,
            result.image,
            self.layout_figure(result),
            self.word_gallery(result),
            self.summary(result, extra),
        )

    @staticmethod
    def sample(seed):
        """A world sample and its caption (the prompt that describes it)."""
        return world_sample(int(seed))

    @staticmethod
    def editor_sample(seed):
        image, caption = world_sample(int(seed))
        return {"background": image, "layers": [], "composite": image}, caption

    # -- layout -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _views(prefix: str):
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
        return plot, gallery, summary

    @staticmethod
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

    @staticmethod
    def _common_inputs(prefix: str, seed_default: int = 0):
        with gr.Row():
            seed = gr.Number(value=seed_default, precision=0, label="seed", elem_id=f"{prefix}-seed")
            steps = gr.Slider(1, MAX_STEPS, value=DEFAULT_STEPS, step=1, label="steps", elem_id=f"{prefix}-steps")
        return seed, steps

    def build(self) -> None:
        """Create the tab's components and events (call inside ``gr.Tab``)."""
        lesson("usecases")
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
        sample_image, sample_caption = world_sample()
        with gr.Tabs():
            with gr.Tab("Super-resolution", id="upscale"):
                self._build_upscale(sample_image, sample_caption)
            with gr.Tab("Style transfer", id="stylize"):
                self._build_stylize(sample_image, sample_caption)
            with gr.Tab("Inpainting", id="inpaint"):
                self._build_inpaint(sample_image, sample_caption)
            with gr.Tab("Outpainting", id="outpaint"):
                self._build_outpaint(sample_image, sample_caption)

    def _sample_button(self, prefix: str, image, prompt, seed_box):
        with gr.Row():
            sample_seed = gr.Number(value=SAMPLE_SEED, precision=0, label="world sample #", scale=1)
            button = gr.Button("Load world sample", scale=1, elem_id=f"{prefix}-sample")
        button.click(self.sample, [sample_seed], [image, prompt], api_visibility="undocumented", queue=False)
        return sample_seed

    def _build_upscale(self, sample_image, caption) -> None:
        with gr.Row():
            with gr.Column(scale=1):
                image = self._big("Image (any size: brought to 16x16)", "upscale-input", interactive=True)
                prompt = gr.Textbox(caption, label="prompt (what the image shows)")
                noise = gr.Slider(0, 350, value=20, step=1, label="noise level added to the low-res image")
                seed, steps = self._common_inputs("upscale")
                self._sample_button("upscale", image, prompt, seed)
                run = gr.Button("Upscale ×4", variant="primary", elem_id="upscale-run")
            with gr.Column(scale=3):
                explain(
                    "The 16x16 low-res image is concatenated to the noisy latent as 3 extra channels; the "
                    "sampler starts from pure noise and the U-Net invents the detail bicubic interpolation cannot."
                )
                with gr.Row():
                    low = self._big("low-res input (16x16)", "upscale-low")
                    bicubic = self._big("bicubic ×4", "upscale-bicubic")
                    out = self._big("super-resolved ×4", "upscale-output")
        plot, gallery, summary = self._views("upscale")
        inputs = [image, prompt, noise, seed, steps]
        outputs = [low, bicubic, out, plot, gallery, summary]
        gr.Examples(
            [[sample_image, caption, 20, 0, DEFAULT_STEPS]],
            inputs=inputs,
            outputs=outputs,
            fn=self.upscale,
            cache_examples=True,
            cache_mode="lazy",
            label="Preset",
            example_labels=["world sample → ×4"],
        )
        run.click(self.upscale, inputs, outputs, api_name="upscale", concurrency_id=MODEL_CONCURRENCY)

    def _build_stylize(self, sample_image, caption) -> None:
        with gr.Row():
            with gr.Column(scale=1):
                image = self._big("Content image", "stylize-input", interactive=True)
                styles = gr.CheckboxGroup(STYLE_CHOICES, value=["striped"], label="style words of the world")
                prompt = gr.Textbox(caption, label="content prompt (optional)")
                strength = gr.Slider(
                    0.05,
                    1.0,
                    value=0.6,
                    step=0.05,
                    label="strength: start at step t = strength · T of the forward chain",
                )
                seed, steps = self._common_inputs("stylize")
                self._sample_button("stylize", image, prompt, seed)
                run = gr.Button("Stylize", variant="primary", elem_id="stylize-run")
            with gr.Column(scale=3):
                explain(
                    "SDEdit: the content is noised forward to step t, then denoised with the style words in the "
                    "prompt. Small t keeps the layout and changes little; t near T keeps almost nothing."
                )
                with gr.Row():
                    content = self._big("content (as run)", "stylize-content")
                    out = self._big("stylised", "stylize-output")
                start = gr.Markdown(elem_id="stylize-start")
        plot, gallery, summary = self._views("stylize")
        inputs = [image, styles, prompt, strength, seed, steps]
        outputs = [content, out, start, plot, gallery, summary]
        gr.Examples(
            [[sample_image, ["at night"], caption, 0.6, 0, DEFAULT_STEPS]],
            inputs=inputs,
            outputs=outputs,
            fn=self.stylize,
            cache_examples=True,
            cache_mode="lazy",
            label="Preset",
            example_labels=["world sample, at night"],
        )
        run.click(self.stylize, inputs, outputs, api_name="stylize", concurrency_id=MODEL_CONCURRENCY)

    def _build_inpaint(self, sample_image, caption) -> None:
        with gr.Row():
            with gr.Column(scale=1):
                editor = gr.ImageMask(
                    value={"background": sample_image, "layers": [], "composite": sample_image},
                    label="Paint the region to fill (white brush)",
                    type="pil",
                    image_mode=None,  # uploads keep their mode (16-bit, grayscale): the library converts, with notes
                    format=IMAGE_FORMAT,
                    brush=gr.Brush(default_size=8, colors=["#ffffff"], color_mode="fixed"),
                    height=360,
                    elem_id="inpaint-editor",
                    elem_classes=["pixels"],
                )
                prompt = gr.Textbox(caption, label="prompt (describe the whole intended image)")
                mode = gr.Radio(INPAINT_MODES, value="unet", label="mode")
                seed, steps = self._common_inputs("inpaint")
                with gr.Row():
                    sample_seed = gr.Number(value=SAMPLE_SEED, precision=0, label="world sample #", scale=1)
                    load = gr.Button("Load world sample", scale=1, elem_id="inpaint-sample")
                run = gr.Button("Inpaint", variant="primary", elem_id="inpaint-run")
            with gr.Column(scale=3):
                explain(
                    "9-channel U-Net: the mask and the latent of the masked image are 5 extra input channels, so "
                    "the U-Net sees what is kept. 4-channel blend: an ordinary U-Net; after each step the known "
                    "latents are written back outside the mask."
                )
                with gr.Row():
                    mask = self._big("mask (white = fill)", "inpaint-mask")
                    raw = self._big("pipeline output (before pasting)", "inpaint-raw")
                    out = self._big("result (kept pixels exact)", "inpaint-output")
        plot, gallery, summary = self._views("inpaint")
        load.click(self.editor_sample, [sample_seed], [editor, prompt], api_visibility="undocumented", queue=False)
        inputs = [editor, prompt, mode, seed, steps]
        outputs = [mask, raw, out, plot, gallery, summary]
        layer = np.zeros((*sample_image.shape[:2], 4), np.uint8)
        layer[16:48, 32:64] = 255  # the right half's middle: repaint it
        gr.Examples(
            [[{"background": sample_image, "layers": [layer], "composite": sample_image}, caption, "unet", 0, 20]],
            inputs=inputs,
            outputs=outputs,
            fn=self.inpaint,
            cache_examples=True,
            cache_mode="lazy",
            label="Preset",
            example_labels=["world sample, right half repainted"],
        )
        run.click(self.inpaint, inputs, outputs, api_name="inpaint", concurrency_id=MODEL_CONCURRENCY)

    def _build_outpaint(self, sample_image, caption) -> None:
        with gr.Row():
            with gr.Column(scale=1):
                image = self._big("Image", "outpaint-input", interactive=True)
                prompt = gr.Textbox(caption, label="prompt")
                with gr.Row():
                    left = gr.Slider(0, 64, value=0, step=16, label="left px")
                    right = gr.Slider(0, 64, value=0, step=16, label="right px")
                with gr.Row():
                    top = gr.Slider(0, 64, value=0, step=16, label="top px")
                    bottom = gr.Slider(0, 64, value=0, step=16, label="bottom px")
                zoom = gr.Slider(1.0, 3.0, value=1.5, step=0.1, label="zoom out (same canvas, content shrunk)")
                mode = gr.Radio(INPAINT_MODES, value="unet", label="mode")
                seed, steps = self._common_inputs("outpaint")
                self._sample_button("outpaint", image, prompt, seed)
                run = gr.Button("Outpaint", variant="primary", elem_id="outpaint-run")
            with gr.Column(scale=3):
                explain(
                    "Outpainting is inpainting of a new border: the canvas grows (or the content shrinks), the mask "
                    "covers everything new, and the original pixels are pasted back exactly."
                )
                with gr.Row():
                    original = self._big("original", "outpaint-original")
                    out = self._big("outpainted", "outpaint-output")
        plot, gallery, summary = self._views("outpaint")
        inputs = [image, prompt, left, right, top, bottom, zoom, mode, seed, steps]
        outputs = [original, out, plot, gallery, summary]
        gr.Examples(
            [[sample_image, caption, 16, 16, 0, 0, 1.0, "unet", 0, DEFAULT_STEPS]],
            inputs=inputs,
            outputs=outputs,
            fn=self.outpaint,
            cache_examples=True,
            cache_mode="lazy",
            label="Preset",
            example_labels=["world sample, 16 px left and right"],
        )
        run.click(self.outpaint, inputs, outputs, api_name="outpaint", concurrency_id=MODEL_CONCURRENCY)
