"""The use-cases tab's settings, its world sample, and the named values its handlers return (in output order)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from explain.world import make_batch

__all__ = [
    "TASKS",
    "STYLE_CHOICES",
    "INPAINT_MODES",
    "DEFAULT_STEPS",
    "SAMPLE_SEED",
    "world_sample",
    "WorldSample",
    "EditorValue",
    "EditorMask",
    "Upscaled",
    "Stylized",
    "Inpainted",
    "Outpainted",
    "AttendEdited",
]

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
SAMPLE_SEED = 4  # the world sample shown by default (a deterministic draw)


class WorldSample(NamedTuple):
    """A rendered scene of the shapes world and its caption (the prompt that describes it)."""

    image: np.ndarray
    caption: str


def world_sample(seed: int = SAMPLE_SEED) -> WorldSample:
    """A rendered 64x64 scene of the shapes world and its caption."""

    scene = make_batch(1, int(seed))[0]
    return WorldSample(scene.image, scene.caption)


class EditorValue(NamedTuple):
    """A world sample in the inpainting editor (a gr.ImageMask value, nothing painted) and its caption."""

    editor: dict
    caption: str


class EditorMask(NamedTuple):
    """What the inpainting editor holds: the background image, the fill mask (H, W) uint8 0/255, notes."""

    background: object
    mask: np.ndarray
    notes: tuple[str, ...]


class Upscaled(NamedTuple):
    """Super-resolution: the low-res input, bicubic ×4, the super-resolved image, U-Net input, word maps, summary."""

    low_res: object
    bicubic: object
    image: object
    layout: object
    gallery: list
    summary: str


class Stylized(NamedTuple):
    """Style transfer: the content as run, the stylised image, the start-step note, U-Net input, word maps, summary."""

    content: object
    image: object
    start: str
    layout: object
    gallery: list
    summary: str


class Inpainted(NamedTuple):
    """Inpainting: the mask, the pipeline's raw output, the result, U-Net input, word maps, summary."""

    mask: np.ndarray
    raw: object
    image: object
    layout: object
    gallery: list
    summary: str


class AttendEdited(NamedTuple):
    """Edit where a word attends: before, the word's map, the mask, after, |difference|; the summary."""

    gallery: list
    summary: str


class Outpainted(NamedTuple):
    """Outpainting: the original, the extended image, U-Net input, word maps, summary."""

    original: object
    image: object
    layout: object
    gallery: list
    summary: str
