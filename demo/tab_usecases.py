"""Tab 5, Use cases: a placeholder (super-resolution, style transfer, inpainting, outpainting come later)."""

from __future__ import annotations

import gradio as gr

from demo.common import explain, lesson

__all__ = ["UseCasesTab"]

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


class UseCasesTab:
    """Static explanation of how conditioning changes per task."""

    def build(self) -> None:
        lesson("usecases")
        with gr.Row():
            with gr.Column(scale=3):
                header = "| task | where the chain starts | cross-attention (text) | what else is fed to the U-Net |"
                rows = "\n".join("| " + " | ".join(row) + " |" for row in TASKS)
                gr.Markdown(f"#### One U-Net, different conditioning\n{header}\n|---|---|---|---|\n{rows}")
            with gr.Column(scale=1):
                explain(
                    "Coming in a later version: interactive super-resolution, style transfer, inpainting and "
                    "outpainting on the embedded model. The table already says what changes for each: the start "
                    "of the chain and the extra inputs; the text always enters through cross-attention."
                )
