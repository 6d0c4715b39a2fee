"""Files of a use-case run, as ``python -m explain generate`` writes them for text-to-image.

Into one directory:

- ``image.png``            the output
- ``input_layout.json``    the U-Net input table (rows of :class:`~explain.usecases.layout.UNetInputChannel`),
                           the observed ``sample`` shape, where the chain started, the timesteps run
- ``input_layout.png``     every channel of the observed U-Net ``sample`` above the table (matplotlib)
- ``summary.json``         settings, task specifics, notes, seconds
- ``attention.npz``        ``words``, ``word_maps`` (n_words, H, W) float32, ``tokens``, ``token_maps``, ``cube``
                           (steps, layers, tokens, h, w) float16, ``layer_names`` (without capture: absent)
- ``heatmaps/NN_word.png`` one overlay per word;  ``film.gif``  x̂₀ per step with per-word overlays
- task inputs: ``low_res.png`` + ``bicubic.png`` (upscale), ``content.png`` (stylize), ``source.png`` +
  ``mask.png`` + ``raw.png`` (inpaint/outpaint: the pipeline output before the kept pixels were pasted back)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from explain.io.formats import write_json
from explain.io.writers import write_attention_files
from explain.usecases.layout import input_layout_figure, layout_records
from explain.usecases.run import TaskResult

__all__ = ["layout_json", "summary_json", "write_outputs"]


def layout_json(result: TaskResult) -> dict:
    """The U-Net input table and chain start of a run, JSON-ready."""
    start = result.start
    return {
        "task": result.task,
        "pipeline": result.pipeline,
        "in_channels": result.in_channels,
        "sample_shape": list(result.input_sample.shape),
        "rows": layout_records(result.inputs),
        "chain_start": {
            "strength": start.strength,
            "num_inference_steps": start.num_inference_steps,
            "skipped_steps": start.t_start,
            "denoising_steps": start.denoising_steps,
            "start_timestep": start.start_timestep,
            "alpha_bar": round(start.alpha_bar, 6),
            "signal_coef": round(start.signal_coef, 6),
            "noise_std": round(start.noise_std, 6),
        },
        "timesteps_run": list(result.timesteps_run),
    }


def summary_json(result: TaskResult, model: str | None = None) -> dict:
    """Settings, task-specific fields and notes of a run, JSON-ready."""
    summary = {
        "task": result.task,
        "model": model or "embedded",
        "pipeline": result.pipeline,
        "prompt": result.prompt,
        "negative_prompt": result.negative_prompt,
        "seed": result.seed,
        "steps": result.steps,
        "guidance": result.guidance,
        "size": list(result.image.size),
        "tokens": list(result.view.used_tokens),
        "words": [w.text for w in result.view.words],
        "start_step": result.start.t_start,
        "start_timestep": result.start.start_timestep,
        "notes": list(result.notes),
        "capture": result.captured is not None,
        "seconds": round(result.seconds, 4),
    }
    for name in ("noise_level", "low_res_alpha_bar", "back_projection", "strength", "style_words", "mode", "box"):
        if hasattr(result, name):
            value = getattr(result, name)
            summary[name] = list(value) if isinstance(value, tuple) else value
    if getattr(result, "samples", None) is not None:
        summary["samples"] = len(result.samples)
    if getattr(result, "zoom_out", None) is not None:
        summary["zoom_out"] = result.zoom_out
    if getattr(result, "style_guess", None) is not None:
        guess = result.style_guess
        summary["style_guess"] = {"scene": guess.scene, "style": guess.style, "top": [list(guess.probabilities[0])]}
    return summary


def _task_images(result: TaskResult) -> dict[str, Image.Image]:
    images = {}
    for name, field in (("low_res", "low_res"), ("bicubic", "bicubic"), ("content", "content"), ("source", "source")):
        if getattr(result, field, None) is not None:
            images[name] = getattr(result, field)
    if getattr(result, "mask", None) is not None:
        images["mask"] = Image.fromarray(result.mask.astype(np.uint8) * 255)
        images["raw"] = result.raw
    return images


def write_outputs(result: TaskResult, out: str | Path, model: str | None = None) -> dict:
    """Write every file of the module docstring into ``out`` (created); returns the summary written."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.image.save(out / "image.png")
    for name, image in _task_images(result).items():
        image.save(out / f"{name}.png")
    write_json(out / "input_layout.json", layout_json(result))
    figure = input_layout_figure(result.inputs, result.input_sample, title=f"{result.task}: what enters the U-Net")
    figure.savefig(out / "input_layout.png", dpi=80)
    summary = summary_json(result, model)
    if result.captured is not None:
        maps = result.maps
        shown = result.raw if getattr(result, "raw", None) is not None else result.image  # the size maps were made at
        write_attention_files(out, maps, result.captured, shown, result.view, result.film)
        summary.update(
            capture_bytes=result.captured.nbytes,
            captured_steps=result.captured.n_steps,
            film_source="/".join(sorted({frame.source for frame in result.film})),
        )
    write_json(out / "summary.json", summary)
    return summary
