"""The Denoise & attend tab's components, grouped as its events read and write them."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

__all__ = ["Deferred", "Settings", "MapControls", "Downloads", "AttendUI"]


@dataclass(frozen=True)
class Deferred:
    """The gallery, x_t/x̂₀ pair and film: created first (render=False), rendered in their own sections."""

    gallery: gr.Gallery
    pair: gr.Gallery
    film: gr.Image


@dataclass(frozen=True)
class Settings:
    """The generation form: the request's fields, Generate / Stop and their messages."""

    prompt: gr.Textbox
    negative: gr.Textbox
    seed: gr.Number
    steps: gr.Slider
    guidance: gr.Slider
    scheduler: gr.Dropdown
    height: gr.Slider
    width: gr.Slider
    generate: gr.Button
    stop: gr.Button
    status: gr.Markdown
    stop_note: gr.Markdown  # Stop answers here: `status` belongs to the run

    @property
    def inputs(self) -> list:
        """The generation inputs, in the order of :meth:`AttendTab.generate`'s parameters."""
        return [
            self.prompt,
            self.negative,
            self.seed,
            self.steps,
            self.guidance,
            self.scheduler,
            self.height,
            self.width,
        ]


@dataclass(frozen=True)
class MapControls:
    """Where each word looks: the masks gallery, the map controls and the line saying what is shown."""

    masks: gr.Gallery
    step: gr.Slider
    all_steps: gr.Checkbox
    parts: gr.CheckboxGroup
    downsamples: gr.CheckboxGroup
    heads: gr.Dropdown
    normalization: gr.Radio
    threshold: gr.Slider
    content_only: gr.Checkbox
    kind: gr.Radio  # SD3 / Flux: which map (hidden on U-Net models)
    info: gr.Markdown


@dataclass(frozen=True)
class Downloads:
    """The Q/K/V layer and table, the download buttons and the permalink."""

    layer: gr.Dropdown
    qkv: gr.Markdown
    prepare: gr.Button
    grid: gr.DownloadButton
    film: gr.DownloadButton
    npz: gr.DownloadButton
    settings: gr.DownloadButton
    link: gr.Textbox


@dataclass(frozen=True)
class AttendUI:
    """Every component of the tab that an event reads or writes."""

    state: gr.State
    deferred: Deferred
    form: Settings
    image: gr.Image
    examples: gr.Examples
    maps: MapControls
    downloads: Downloads

    @property
    def gen_outputs(self) -> list:
        """What :meth:`AttendTab.generate` writes, in the order of :class:`~demo.tab_attend.forms.Generated`."""
        d, m, dl = self.deferred, self.maps, self.downloads
        return [self.image, self.form.status, self.state, d.gallery, d.pair, d.film, m.step, m.heads, dl.layer, dl.qkv]

    @property
    def view_inputs(self) -> list:
        """The state and the map controls, in the order of :meth:`AttendTab.maps`' parameters."""
        m = self.maps
        controls = [m.step, m.all_steps, m.parts, m.downsamples, m.heads, m.normalization, m.threshold]
        return [self.state, *controls, m.content_only, m.kind]

    @property
    def view_outputs(self) -> list:
        """What :meth:`AttendTab.maps` writes, in the order of :class:`~demo.tab_attend.forms.MapOutputs`."""
        return [self.deferred.gallery, self.maps.masks, self.deferred.pair, self.maps.info]
