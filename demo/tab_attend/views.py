"""What the Denoise & attend tab shows, as text and gallery values: statuses, map captions, the Q/K/V table."""

from __future__ import annotations

import numpy as np

from demo.tab_attend.forms import MapQuery
from explain.clip.vocabulary import unknown_words_message
from explain.engine.session import StepUpdate
from explain.maps.views import LayerShapes, MapView

__all__ = ["step_status", "done_status", "word_gallery", "map_info", "qkv_table"]


def step_status(item: StepUpdate) -> str:
    """The status line while denoising: the step, its timestep, the time so far and what the preview shows."""
    what = "predicted clean image x̂₀" if item.source == "x0" else "noisy latent x_t"
    return (
        f"Step **{item.step + 1} / {item.total}** (t = {item.timestep:.0f}), {item.elapsed:.1f} s. Showing the {what}."
    )


def done_status(result) -> str:
    """The status of a finished (or stopped) generation; words the model never saw are named."""
    stopped = f" **Stopped early** after {result.steps_done} steps." if result.interrupted else ""
    status = (
        f"Done: {result.steps_done} steps with {result.scheduler} in {result.seconds:.1f} s "
        f"(seed {result.request.seed}, guidance {result.request.guidance:g}).{stopped}"
    )
    if result.unknown_words:  # never silent: the model has no meaning for these words
        status += f"\n\n⚠️ {unknown_words_message(result.unknown_words)} The presets below use only words it knows."
    return status


def word_gallery(view: MapView, masks: bool = False) -> list[tuple[np.ndarray, str]]:
    """The view's overlays (or masks), each captioned with its word."""
    images = view.masks if masks else view.overlays
    return [(image, f"“{word}”") for image, word in zip(images or (), view.words, strict=False)]


def map_info(result, view: MapView, query: MapQuery) -> str:
    """What the maps show: which steps, how many layers, which heads, which normalisation."""
    when = "all steps" if query.all_steps else f"step {int(query.step) + 1} of {result.captured.n_steps}"
    return (
        f"Showing **{when}**, {len(view.layers)} of {len(result.captured.layer_names)} layers, "
        f"{'all heads' if view.heads is None else 'heads ' + ', '.join(map(str, view.heads))}, "
        f"{query.normalization} normalisation."
    )


def _fmt_shape(*dims: int) -> str:
    return "[" + " × ".join(str(d) for d in dims) + "]"


def qkv_table(s: LayerShapes, unet_batch: int) -> str:
    """The Q/K/V arithmetic of one layer as a markdown table, with the U-Net batch of the run."""
    f = _fmt_shape
    h, w = s.feature_hw
    return "\n".join(
        [
            f"**`{s.name}`**: {s.heads} heads × {s.head_dim} dims; feature map {h} × {w} = {s.n_queries} positions.",
            "",
            "| tensor | from | shape |",
            "|---|---|---|",
            f"| image features | U-Net at this layer | {f(s.n_queries, s.query_dim)} |",
            f"| **Q** = features · W_q | W_q {f(s.query_dim, s.inner_dim)} | **{f(s.n_queries, s.inner_dim)}** |",
            f"| text embeddings | CLIP, {s.text_len} slots | {f(s.text_len, s.text_dim)} |",
            f"| **K** = text · W_k | W_k {f(s.text_dim, s.inner_dim)} | **{f(s.text_len, s.inner_dim)}** |",
            f"| **V** = text · W_v | W_v {f(s.text_dim, s.value_dim)} | **{f(s.text_len, s.value_dim)}** |",
            f"| per head | split {s.inner_dim} = {s.heads} × {s.head_dim} | "
            f"Q_h {f(s.n_queries, s.head_dim)}, K_h {f(s.text_len, s.head_dim)} |",
            f"| **A** = softmax(Q_h K_hᵀ / √{s.head_dim}) | one row per position | "
            f"**{f(s.heads, s.n_queries, s.text_len)}** |",
            f"| out = A V, heads joined, · W_o | W_o {f(s.value_dim, s.out_dim)} | {f(s.n_queries, s.out_dim)} |",
            "",
            f"With guidance on, every tensor has a batch of {unet_batch} in front ([negative, prompt]); "
            "the maps show the prompt half.",
        ]
    )
