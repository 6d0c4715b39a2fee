"""What enters the U-Net in each task, read off the real tensors of a run.

The U-Net is the same engine in every task; what changes is its *input*. Its first convolution ``conv_in`` takes a
``sample`` of ``unet.config.in_channels`` channels, and pipelines build that sample by concatenating tensors along
the channel axis (diffusers source, ``torch.cat([...], dim=1)`` right before ``self.unet(...)``):

==================  ====================================================================  ========
task                ``sample`` channels                                                   in
==================  ====================================================================  ========
text-to-image       noisy latent x_t                                                      4
img2img (SDEdit)    noisy latent x_t (started part-way up the forward chain)              4
inpainting, 9-ch    noisy latent x_t | mask (1 = fill) | VAE latent of the masked image    4+1+4
inpainting, blend   noisy latent x_t (known region overwritten by q(x_t | x_0) each step) 4
super-resolution    noisy latent x_t | low-res RGB image, noised to ``noise_level``        4+3
==================  ====================================================================  ========

(Rombach et al. 2022, Sec. 3.3 and 4.5: "concatenation" conditioning next to cross-attention.) Text always enters
through cross-attention (``encoder_hidden_states``); the upscaler also gets ``class_labels`` = its noise level.

:class:`UNetInputRecorder` observes the real tensors through a forward pre-hook on the U-Net (a public torch API),
registered on ``__enter__`` and removed in ``finally``; it returns nothing, so the U-Net computes exactly what it
would without it. :func:`input_layout` splits the observed sample by the pipeline's documented concatenation order
and checks the channel counts against the observed tensor.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import asdict, dataclass

import numpy as np
import torch
from diffusers import StableDiffusionUpscalePipeline
from matplotlib.figure import Figure

from explain.io.figures import FONT

__all__ = ["UNetInputChannel", "UNetInputRecorder", "input_layout", "layout_records", "input_layout_figure"]


@dataclass(frozen=True)
class UNetInputChannel:
    """One row of the U-Net input table.

    Attributes:
        name: What it is ("noisy latent x_t", "mask", ...).
        channels: Channels it occupies in the U-Net ``sample`` (0 for inputs passed as other arguments).
        shape: Observed shape of this part, e.g. (B, 4, h, w); B counts both guidance halves.
        description: How the pipeline made it.
        argument: The U-Net forward argument carrying it (``sample``, ``timestep``, ``encoder_hidden_states``,
            ``class_labels``).
        first_channel: Index of its first channel in ``sample`` (None outside ``sample``).
        value_range: (min, max) of the observed values.
    """

    name: str
    channels: int
    shape: tuple[int, ...]
    description: str
    argument: str = "sample"
    first_channel: int | None = None
    value_range: tuple[float, float] = (math.nan, math.nan)


class UNetInputRecorder:
    """Context manager recording what the U-Net is called with (first call in full, timesteps of every call).

    Example:
        >>> with UNetInputRecorder(pipe.unet) as inputs:
        ...     pipe(...)
        >>> inputs.sample.shape   # (B, in_channels, h, w), the first call's sample, float32 on the CPU
    """

    def __init__(self, unet):
        self.unet = unet
        self._handle = None
        self.sample: torch.Tensor | None = None  # (B, C_in, h, w) of the first call
        self.encoder_hidden_states: torch.Tensor | None = None  # (B, T, D) of the first call
        self.class_labels: torch.Tensor | None = None  # (B,) of the first call, or None
        self.timesteps: list[float] = []  # every call's timestep, in call order
        self.calls = 0

    def __enter__(self) -> UNetInputRecorder:
        if self._handle is not None:
            raise RuntimeError("UNetInputRecorder is already active")
        self._handle = self.unet.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @torch.no_grad()
    def _hook(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        context = args[2] if len(args) > 2 else kwargs.get("encoder_hidden_states")
        labels = kwargs.get("class_labels")
        t = torch.as_tensor(timestep).reshape(-1)
        self.timesteps.append(float(t[0]))
        if self.calls == 0:
            self.sample = sample.detach().float().cpu().clone()
            self.encoder_hidden_states = None if context is None else context.detach().float().cpu().clone()
            self.class_labels = None if labels is None else labels.detach().cpu().clone()
        self.calls += 1
        return None  # inputs unchanged

    @property
    def first_timesteps(self) -> tuple[int, ...]:
        """Distinct timesteps in the order the U-Net first saw them (one per sampler step for 1st-order solvers)."""
        seen: dict[int, None] = {}
        for t in self.timesteps:
            seen.setdefault(int(round(t)), None)
        return tuple(seen)


def _sample_parts(pipe) -> list[tuple[str, int, str]]:
    """(name, channels, description) of each concatenated part of ``sample``, in the pipeline's order."""

    latent = pipe.vae.config.latent_channels
    total = pipe.unet.config.in_channels
    noisy = "noisy latent x_t"
    noisy_text = "the sample being denoised, scaled by scheduler.scale_model_input; [negative, positive] halves"
    if isinstance(pipe, StableDiffusionUpscalePipeline):
        return [
            (noisy, latent, noisy_text + "; starts as pure noise x_T"),
            (
                "low-res image",
                total - latent,
                "the input RGB image in [-1, 1] at latent size, noised to noise_level by low_res_scheduler "
                "(q(x_t | x_0) on pixels); concatenated, not encoded",
            ),
        ]
    inpainting = "Inpaint" in type(pipe).__name__
    if inpainting and total == 2 * latent + 1:
        return [
            (noisy, latent, noisy_text),
            ("mask", 1, "1 = fill in, 0 = keep; the mask resized to latent size (nearest)"),
            (
                "masked-image latent",
                latent,
                "VAE latent (x scaling_factor) of the image with the fill region set to 0 (grey)",
            ),
        ]
    if total == latent:
        if inpainting:
            noisy_text += (
                "; the U-Net never sees the mask: after every step the pipeline overwrites the keep region "
                "with the image latent noised to the next step's level, q(x_t | x_0)"
            )
        return [(noisy, latent, noisy_text)]
    raise ValueError(f"no known input layout for {type(pipe).__name__} with a {total}-channel U-Net")


def _range(x: torch.Tensor) -> tuple[float, float]:
    return (round(float(x.min()), 4), round(float(x.max()), 4)) if x.numel() else (math.nan, math.nan)


def input_layout(pipe, recorder: UNetInputRecorder) -> tuple[UNetInputChannel, ...]:
    """The U-Net input table of a run, from the tensors ``recorder`` observed.

    Raises:
        RuntimeError: Nothing was observed, or the observed channel count differs from the documented layout.
    """
    sample = recorder.sample
    if sample is None:
        raise RuntimeError("the U-Net was never called inside the UNetInputRecorder block")
    parts = _sample_parts(pipe)
    if sum(n for _, n, _ in parts) != sample.shape[1]:
        raise RuntimeError(f"observed {sample.shape[1]} input channels; the layout says {parts}")
    rows = []
    start = 0
    for name, n, text in parts:
        piece = sample[:, start : start + n]  # (B, n, h, w)
        rows.append(UNetInputChannel(name, n, tuple(piece.shape), text, "sample", start, _range(piece)))
        start += n
    t = torch.tensor(recorder.timesteps[:1])
    rows.append(
        UNetInputChannel(
            "timestep t",
            0,
            (),
            f"first call t = {int(t[0])}; enters through the sinusoidal time embedding added in every ResNet block",
            "timestep",
            None,
            _range(torch.tensor(recorder.timesteps)),
        )
    )
    context = recorder.encoder_hidden_states
    if context is not None:
        rows.append(
            UNetInputChannel(
                "text embeddings",
                0,
                tuple(context.shape),
                f"text encoder output, {context.shape[-1]} wide per token slot; the keys and values of every "
                "cross-attention (attn2) layer",
                "encoder_hidden_states",
                None,
                _range(context),
            )
        )
    if recorder.class_labels is not None:
        labels = recorder.class_labels
        rows.append(
            UNetInputChannel(
                "noise level (class label)",
                0,
                tuple(labels.shape),
                f"noise_level = {int(labels.reshape(-1)[0])}: tells the U-Net how noisy the low-res channels are "
                "(class embedding added to the time embedding)",
                "class_labels",
                None,
                _range(labels.float()),
            )
        )
    return tuple(rows)


def layout_records(table: tuple[UNetInputChannel, ...]) -> list[dict]:
    """JSON-ready rows (lists instead of tuples, NaN as None)."""
    out = []
    for row in table:
        record = asdict(row)
        record["shape"] = list(row.shape)
        record["value_range"] = [None if math.isnan(v) else v for v in row.value_range]
        out.append(record)
    return out


PART_COLORS = ("#3a6fb0", "#c2504a", "#5aa55a", "#8a6bb8", "#f2b134")


def input_layout_figure(table: tuple[UNetInputChannel, ...], sample: torch.Tensor, title: str | None = None):
    """Every channel of the observed U-Net ``sample`` (prompt-conditioned half), grouped and coloured by part, above
    the input table.

    Args:
        table: From :func:`input_layout`.
        sample: The observed (B, C, h, w) sample (``UNetInputRecorder.sample``).
        title: Figure title.

    Returns:
        A matplotlib Figure (not registered with pyplot).
    """

    image = sample[-1].float().numpy()  # (C, h, w): the last batch row is the prompt-conditioned branch
    channels = image.shape[0]
    parts = [row for row in table if row.argument == "sample"]
    n_rows = len(table)
    fig = Figure(figsize=(max(12.0, 1.6 * channels), 2.6 + 0.35 * n_rows + 0.3), layout="constrained")
    grid = fig.add_gridspec(2, channels, height_ratios=[2.2, 0.35 * n_rows + 0.3])
    for c in range(channels):
        ax = fig.add_subplot(grid[0, c])
        part_index = next(
            i for i, row in enumerate(parts) if row.first_channel <= c < row.first_channel + row.channels
        )
        part = parts[part_index]
        lim = float(np.abs(image[c]).max()) or 1.0
        ax.imshow(image[c], cmap="coolwarm", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        colour = PART_COLORS[part_index % len(PART_COLORS)]
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(4)
        ax.set_title(f"ch {c}\n{textwrap.shorten(part.name, 18)}", fontsize=FONT["tick"] - 3, color=colour)
    table_ax = fig.add_subplot(grid[1, :])
    table_ax.axis("off")
    cells = [
        [
            row.name,
            row.argument,
            str(row.channels) if row.argument == "sample" else "-",
            "x".join(map(str, row.shape)) or "scalar",
            textwrap.shorten(row.description, 110),
        ]
        for row in table
    ]
    mpl_table = table_ax.table(
        cellText=cells,
        colLabels=["input", "argument", "channels", "shape", "what it is"],
        loc="upper center",
        cellLoc="left",
        colWidths=[0.15, 0.15, 0.06, 0.08, 0.56],
    )
    mpl_table.auto_set_font_size(False)
    mpl_table.set_fontsize(8)
    mpl_table.scale(1, 1.4)
    for i, _ in enumerate(parts):
        mpl_table[i + 1, 0].set_facecolor(PART_COLORS[i % len(PART_COLORS)] + "55")
    fig.suptitle(
        title or f"U-Net input: sample with {channels} channels (prompt-conditioned half shown)",
        fontsize=FONT["label"],
    )
    return fig
