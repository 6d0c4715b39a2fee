"""The use-cases tab's handlers: plain methods of :class:`UseCasesTab` calling :mod:`explain.usecases`."""

from __future__ import annotations

import threading

import gradio as gr
import numpy as np

from demo.common import user_errors
from demo.tab_usecases import layout
from demo.tab_usecases.forms import (
    AttendEdited,
    EditorMask,
    EditorValue,
    Inpainted,
    Outpainted,
    Stylized,
    Upscaled,
    WorldSample,
    world_sample,
)
from explain.diffusion.loading import ModelLoadError
from explain.engine.requests import MAX_STEPS, whole
from explain.engine.session import Engine
from explain.maps.aggregation import overlay
from explain.usecases import inpaint, input_layout_figure, load_task_pipeline, outpaint, stylize, upscale
from explain.usecases.attend_edit import edit_where_attends
from explain.usecases.inputs import to_rgb, union_mask

__all__ = ["UseCasesTab", "world_sample", "editor_mask"]


def editor_mask(value) -> EditorMask:
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
    return EditorMask(background, mask.astype(np.uint8) * 255, notes)


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

    def build(self) -> None:
        """Create the tab's components and events (call inside ``gr.Tab``)."""
        layout.build(self)

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
        return [(image, f"“{word}”") for image, word in zip(maps.word_overlays(result.image), maps.words, strict=True)]

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
        return Upscaled(
            low_res=result.low_res,
            bicubic=result.bicubic,
            image=result.image,
            layout=self.layout_figure(result),
            gallery=self.word_gallery(result),
            summary=self.summary(result, extra),
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
        return Stylized(
            content=result.content,
            image=result.image,
            start=note,
            layout=self.layout_figure(result),
            gallery=self.word_gallery(result),
            summary=self.summary(result),
        )

    def inpaint(self, editor, prompt, mode, seed, steps):
        """Fill the painted region: returns (mask, raw output, result, layout figure, word maps, summary)."""

        painted = editor_mask(editor)
        steps = self._steps(steps)
        pipe = self.task_pipeline("inpaint", mode=mode)
        with user_errors():  # the library call holds the engine's lock for the pipeline run
            result = inpaint(
                painted.background,
                painted.mask,
                prompt or "",
                pipe=pipe,
                seed=int(seed),
                steps=steps,
                lock=self.engine.lock,
            )
        extra = f"Mode **{result.mode}**; {int(result.mask.sum())} pixels filled, the rest kept exactly."
        extra += "".join(f"\n- {note}" for note in painted.notes if note not in result.notes)
        return Inpainted(
            mask=result.mask.astype(np.uint8) * 255,
            raw=result.raw,
            image=result.image,
            layout=self.layout_figure(result),
            gallery=self.word_gallery(result),
            summary=self.summary(result, extra),
        )

    def attend_edit(
        self, prompt, word, edited_prompt, threshold, dilation, mode, seed, steps, image=None
    ) -> AttendEdited:
        """Generate ``prompt`` (or take the uploaded ``image``), inpaint ``edited_prompt`` where ``word`` attends
        (map above ``threshold``, grown by ``dilation`` px), same seed: (before, map, mask, after, difference) and
        the shares of changed pixels."""

        steps = self._steps(steps)
        with user_errors():
            dilation = whole("dilation", dilation, 0, 32)
        pipe = self.task_pipeline("inpaint", mode=mode)
        base = self.engine.pipeline()
        map_pipe = self.task_pipeline("img2img") if image is not None else None
        with user_errors():  # the library call holds the engine's lock for each pipeline run
            r = edit_where_attends(
                prompt or "",
                word or "",
                edited_prompt or "",
                pipe=base,
                inpaint_pipe=pipe,
                seed=int(seed),
                steps=steps,
                guidance=self.engine.recommended_guidance(),
                threshold=float(threshold),
                dilation=dilation,
                image=image,
                map_pipe=map_pipe,
                lock=self.engine.lock,
            )
        before = np.asarray(r.before)
        gallery = [
            (before, "before"),
            (overlay(before, r.word_map, normalise=False), f"“{r.word}”'s map"),
            (r.mask.astype(np.uint8) * 255, f"mask: map > {r.threshold:g}, grown {r.dilation} px"),
            (np.asarray(r.after), "after"),
            (r.difference_image(), "|difference| × 4"),
        ]
        inside = "nothing changed" if r.share_inside is None else f"**{r.share_inside:.1%}** of them inside the mask"
        source = "the uploaded image (maps recorded while re-denoising it)" if image is not None else "the generation"
        summary = (
            f"In {source}, “{r.word}” attended to **{r.mask_area:.1%}** of the image; “{r.edited_prompt}” was inpainted there "
            f"(mode **{r.inpainting.mode}**, {r.inpainting.in_channels}-channel U-Net input, same seed). "
            f"{int(r.changed.sum())} pixels changed by more than 8/255, {inside}: outside the mask every pixel is "
            "the original's."
        )
        return AttendEdited(gallery, summary)

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
        return Outpainted(
            original=result.original,
            image=result.image,
            layout=self.layout_figure(result),
            gallery=self.word_gallery(result),
            summary=self.summary(result, extra),
        )

    @staticmethod
    def sample(seed) -> WorldSample:
        """A world sample and its caption (the prompt that describes it)."""
        return world_sample(int(seed))

    @staticmethod
    def editor_sample(seed) -> EditorValue:
        """A world sample in the inpainting editor (nothing painted yet) and its caption."""
        image, caption = world_sample(int(seed))
        return EditorValue({"background": image, "layers": [], "composite": image}, caption)
