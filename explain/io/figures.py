"""Matplotlib figures for the classroom: big fonts, titles that say what to look at.

Object-oriented API only: every builder returns a :class:`matplotlib.figure.Figure` that was never registered with
pyplot (no global state; safe from threads and servers). Save with ``fig.savefig(path)`` (Agg canvas) or hand it to
a UI. Inputs are plain arrays or this package's result dataclasses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from explain.diffusion.markov import DistributionPath, PathSample
    from explain.diffusion.noising import ForwardSchedule

__all__ = [
    "FONT",
    "pixels_to_rgb",
    "markov_figure",
    "schedule_figure",
    "noising_strip_figure",
    "clip_logits_figure",
    "word_heatmap_grid",
]

FONT = {"title": 22, "label": 18, "tick": 15, "cell": 15, "legend": 15, "suptitle": 24}
# One colour per Markov state (rainy blue, sunny gold first); cycles for larger chains.
STATE_COLORS = ("#3a6fb0", "#f2b134", "#5aa55a", "#c2504a", "#8a6bb8", "#6b6b6b")
HEAT_CMAP = "viridis"
OVERLAY_CMAP = "jet"
OVERLAY_ALPHA = 0.5
# Inches per panel: large enough to read from the back of a classroom.
PANEL_INCHES = 3.2


def pixels_to_rgb(x) -> np.ndarray:
    """Torch ``(B, 3, H, W)`` in ``[-1, 1]`` -> ``(B, H, W, 3)`` float in ``[0, 1]`` for ``imshow`` (clipped)."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()


def _style(ax, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> None:
    if title:
        ax.set_title(title, fontsize=FONT["title"])
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=FONT["label"])
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=FONT["label"])
    ax.tick_params(labelsize=FONT["tick"])


def _state_cmap(n_states: int) -> ListedColormap:
    return ListedColormap([STATE_COLORS[k % len(STATE_COLORS)] for k in range(n_states)])


def markov_figure(paths: PathSample, dist: DistributionPath, max_paths_shown: int = 40) -> Figure:
    """Sampled weather paths, and the fraction in each state per day converging to the stationary law.

    Args:
        paths: from :meth:`explain.diffusion.markov.MarkovChain.sample_paths`.
        dist: from :meth:`explain.diffusion.markov.MarkovChain.distribution_after` (same ``T``).
        max_paths_shown: rows of the path raster (all paths still count in the frequencies).

    Returns:
        A figure with 2 axes: path raster, per-step distribution with dashed stationary lines.
    """
    states = paths.states[:max_paths_shown]  # (n_shown, T + 1)
    n_states = len(dist.state_names)
    T = dist.probs.shape[0] - 1
    fig = Figure(figsize=(5 * PANEL_INCHES, 2.2 * PANEL_INCHES), layout="constrained")
    ax_paths, ax_dist = fig.subplots(1, 2)
    ax_paths.imshow(
        states, aspect="auto", interpolation="nearest", cmap=_state_cmap(n_states), vmin=-0.5, vmax=n_states - 0.5
    )
    _style(ax_paths, f"{states.shape[0]} sampled runs (one per row)", "step t", "run")
    handles = [Patch(color=STATE_COLORS[k % len(STATE_COLORS)], label=name) for k, name in enumerate(dist.state_names)]
    ax_paths.legend(
        handles=handles, fontsize=FONT["legend"], loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=n_states
    )

    steps = np.arange(T + 1)
    for k, name in enumerate(dist.state_names):
        color = STATE_COLORS[k % len(STATE_COLORS)]
        ax_dist.plot(steps, dist.probs[:, k], color=color, lw=3, label=f"P({name}), exact")
        if paths.frequencies.shape[0] == T + 1:
            ax_dist.plot(
                steps,
                paths.frequencies[:, k],
                "o",
                color=color,
                ms=6,
                alpha=0.7,
                label=f"{name}: share of {paths.states.shape[0]} runs",
            )
        ax_dist.axhline(dist.stationary[k], color=color, ls="--", lw=2, label=f"π({name}) = {dist.stationary[k]:.3f}")
    ax_dist.set_ylim(0, 1)
    for ax in (ax_paths, ax_dist):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _style(ax_dist, r"$p_{t+1} = p_t\,P$ converges to π", "step t", "probability")
    ax_dist.legend(fontsize=FONT["legend"] - 2, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=n_states)
    fig.suptitle(
        f"Markov chain: tomorrow depends only on today (forgets its start at rate |λ₂| = "
        f"{dist.second_eigenvalue_modulus:.2f} per step)",
        fontsize=FONT["suptitle"] - 2,
    )
    return fig


def schedule_figure(schedule: ForwardSchedule, mark_t: Sequence[int] = ()) -> Figure:
    """How much image is left: ``alpha_bar_t`` (signal fraction) and ``SNR(t) = abar / (1 - abar)`` on a log axis.

    Args:
        schedule: the forward schedule.
        mark_t: timesteps to mark on both curves and list in a table.

    Returns:
        A figure with 2 axes, or 3 when ``mark_t`` is given (the table).
    """
    abar = schedule.alpha_bars.numpy()
    snr = schedule.snr.numpy()
    t = np.arange(abar.shape[0])
    marks = sorted(set(int(m) for m in mark_t))
    n_panels = 3 if marks else 2
    fig = Figure(figsize=(2.1 * n_panels * PANEL_INCHES, 1.8 * PANEL_INCHES), layout="constrained")
    axes = fig.subplots(1, n_panels, width_ratios=[1, 1, 0.8][:n_panels])
    ax_abar, ax_snr = axes[0], axes[1]
    ax_abar.plot(t, abar, lw=3, label="ᾱ_t  (signal)")
    ax_abar.plot(t, 1 - abar, lw=3, ls="--", label="1 − ᾱ_t  (noise)")
    ax_snr.semilogy(t, snr, lw=3, color="#c2504a")
    if marks:
        ax_abar.plot(marks, abar[marks], "o", color="black", ms=9, label="chosen t")
        ax_snr.plot(marks, snr[marks], "o", color="black", ms=9)
        ax_table = axes[2]
        ax_table.set_axis_off()
        cells = [[str(m), f"{abar[m]:.4f}", f"{np.sqrt(abar[m]):.3f}", f"{snr[m]:.3g}"] for m in marks]
        table = ax_table.table(cells, colLabels=["t", "ᾱ_t", "√ᾱ_t", "SNR"], loc="center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(FONT["cell"])
        table.scale(1, 2)
        ax_table.set_title("At the chosen t", fontsize=FONT["title"])
    ax_abar.set_ylim(0, 1.02)
    ax_abar.legend(fontsize=FONT["legend"], loc="center right")
    _style(ax_abar, "Variance: signal vs noise", "timestep t", "fraction of variance")
    _style(ax_snr, "SNR = ᾱ_t / (1 − ᾱ_t)", "timestep t", "SNR (log scale)")
    fig.suptitle(
        f"Forward schedule, T = {abar.shape[0]} steps:  x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε",
        fontsize=FONT["suptitle"],
    )
    return fig


def noising_strip_figure(
    column_labels: Sequence[str], rows: Mapping[str, Sequence[np.ndarray]], title: str | None = None
) -> Figure:
    """A grid of frames: one row per method/space (e.g. "pixels, step by step"), one column per timestep.

    Args:
        column_labels: one per column, e.g. ``["x_0", "t=50", "t=250"]``.
        rows: row label -> frames, each ``(H, W, 3)`` float in ``[0, 1]`` (see :func:`pixels_to_rgb`).
        title: figure title.

    Returns:
        A figure with ``len(rows) * len(column_labels)`` axes.
    """
    n_cols = len(column_labels)
    if n_cols == 0 or not rows:
        raise ValueError("need at least one row and one column")
    for label, frames in rows.items():
        if len(frames) != n_cols:
            raise ValueError(f"row {label!r} has {len(frames)} frames for {n_cols} columns")
    first = np.asarray(next(iter(rows.values()))[0])
    aspect = first.shape[0] / first.shape[1]  # height / width of a frame
    panel = PANEL_INCHES * 0.8
    fig = Figure(figsize=(panel * n_cols + 1.5, panel * aspect * len(rows) + 1.2), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), n_cols, squeeze=False))
    for r, (label, frames) in enumerate(rows.items()):
        for c, frame in enumerate(frames):
            ax = axes[r, c]
            ax.imshow(np.clip(frame, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_labels[c], fontsize=FONT["title"] - 2)
        axes[r, 0].set_ylabel(label, fontsize=FONT["label"] - 2)
    fig.suptitle(title or "The forward chain: the image dissolves into noise", fontsize=FONT["suptitle"])
    return fig


def clip_logits_figure(
    logits: np.ndarray,
    image_labels: Sequence[str],
    text_labels: Sequence[str],
    images: Sequence[np.ndarray] | None = None,
    title: str | None = None,
) -> Figure:
    """The ``n x n`` CLIP logit matrix (rows images, columns texts) with its values; matched pairs boxed.

    Training pushes the boxed diagonal up and everything else in its row and column down.

    Args:
        logits: ``(n_images, n_texts)``.
        image_labels: ``n_images`` row labels.
        text_labels: ``n_texts`` column labels.
        images: optional ``(H, W, 3)`` thumbnails, one per row, drawn to the left.
        title: figure title.

    Returns:
        A figure with 2 axes (heat map, colour bar), plus one per thumbnail.
    """
    logits = np.asarray(logits, dtype=np.float64)
    n_img, n_txt = logits.shape
    if len(image_labels) != n_img or len(text_labels) != n_txt:
        raise ValueError(f"labels ({len(image_labels)}, {len(text_labels)}) do not match logits {logits.shape}")
    thumbs = list(images) if images is not None else []
    if thumbs and len(thumbs) != n_img:
        raise ValueError(f"{len(thumbs)} thumbnails for {n_img} rows")
    side = max(n_img, n_txt)
    fig = Figure(figsize=(PANEL_INCHES * (1.2 + 0.9 * side), PANEL_INCHES * (0.9 + 0.7 * side)), layout="constrained")
    if thumbs:
        grid = fig.add_gridspec(n_img, 2, width_ratios=[1, max(n_txt, 1) * 1.2])
        thumb_axes = [fig.add_subplot(grid[k, 0]) for k in range(n_img)]
        ax = fig.add_subplot(grid[:, 1])
        for k, thumb in enumerate(thumbs):
            thumb_axes[k].imshow(np.clip(thumb, 0, 1))
            thumb_axes[k].set_axis_off()
    else:
        ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(logits, cmap=HEAT_CMAP, aspect="auto")
    lo, hi = float(logits.min()), float(logits.max())
    mid = (lo + hi) / 2
    for i in range(n_img):
        for j in range(n_txt):
            color = "black" if logits[i, j] > mid else "white"
            ax.text(j, i, f"{logits[i, j]:.2f}", ha="center", va="center", fontsize=FONT["cell"], color=color)
    for k in range(min(n_img, n_txt)):
        ax.add_patch(Rectangle((k - 0.5, k - 0.5), 1, 1, fill=False, edgecolor="red", lw=3))
    ax.set_xticks(range(n_txt), [str(s) for s in text_labels], rotation=30, ha="right")
    ax.set_yticks(range(n_img), [str(s) for s in image_labels])
    _style(ax, None, "text", "image")
    cbar = fig.colorbar(im, ax=ax)
    cbar.ax.tick_params(labelsize=FONT["tick"])
    cbar.set_label("logit = exp(t) · cos(I_e, T_e)", fontsize=FONT["label"])
    fig.suptitle(title or "CLIP similarity: matched pairs (boxed) should be brightest", fontsize=FONT["suptitle"])
    return fig


def word_heatmap_grid(
    images: Sequence[np.ndarray],
    maps: Sequence[Sequence[np.ndarray]],
    words: Sequence[str],
    title: str | None = None,
    shared_scale: bool = False,
) -> Figure:
    """Per-word heat maps over each image: row = image, first column the image, then one column per word.

    Args:
        images: ``n`` images ``(H, W, 3)`` float in ``[0, 1]``.
        maps: ``maps[i][w]`` is word ``w``'s map on image ``i``, any ``(h, w)`` (stretched over the image).
        words: column labels, one per map.
        title: figure title.
        shared_scale: one colour scale for all maps of a row (compare words) instead of one per map.

    Returns:
        A figure with ``n * (1 + len(words))`` axes.
    """
    n = len(images)
    if n == 0 or len(maps) != n:
        raise ValueError(f"need one list of maps per image: {len(maps)} lists for {n} images")
    for i, row in enumerate(maps):
        if len(row) != len(words):
            raise ValueError(f"image {i} has {len(row)} maps for {len(words)} words")
    n_cols = 1 + len(words)
    aspect = images[0].shape[0] / images[0].shape[1]  # height / width
    panel = PANEL_INCHES * 0.9
    fig = Figure(figsize=(panel * n_cols, panel * aspect * n + 1.0), layout="constrained")
    axes = fig.subplots(n, n_cols, squeeze=False)
    for i, (image, row) in enumerate(zip(images, maps, strict=True)):
        height, width = image.shape[:2]
        axes[i, 0].imshow(np.clip(image, 0, 1))
        if i == 0:
            axes[i, 0].set_title("image", fontsize=FONT["title"] - 2)
        row_lo = min(float(np.min(m)) for m in row) if row else 0.0
        row_hi = max(float(np.max(m)) for m in row) if row else 1.0
        for w, heat in enumerate(row):
            ax = axes[i, w + 1]
            ax.imshow(np.clip(image, 0, 1))
            vmin, vmax = (row_lo, row_hi) if shared_scale else (float(np.min(heat)), float(np.max(heat)))
            ax.imshow(
                heat,
                cmap=OVERLAY_CMAP,
                alpha=OVERLAY_ALPHA,
                extent=(0, width, height, 0),
                vmin=vmin,
                vmax=vmax,
                interpolation="bilinear",
            )
            if i == 0:
                ax.set_title(f"“{words[w]}”", fontsize=FONT["title"] - 2)
        for ax in axes[i]:
            ax.set_axis_off()
    fig.suptitle(title or "Where each word looks: cross-attention per word", fontsize=FONT["suptitle"])
    return fig
