"""What the CLIP tab shows, as HTML, text and tables: slot chips, the pseudocode with live values, summaries."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from demo.tab_clip.forms import CLIP_CODE_WIDTH, LABEL_CHARS, PADDING_SHOWN
from explain.clip.contrastive import ContrastiveResult
from explain.clip.live import LiveFrame
from explain.clip.tokens import TokenKind, TokenView
from explain.clip.vocabulary import unknown_words_message

__all__ = [
    "short",
    "slot_strip",
    "slot_rows",
    "token_summary",
    "pseudocode",
    "softmax_table",
    "loss_summary",
    "text_state_rows",
    "text_state_summary",
    "live_matrix",
    "loss_curves",
    "temperature_curve",
    "projection_figure",
    "history_table",
    "live_captions",
    "live_status",
]

MATRIX_SIDE = 448  # pixels of the logits picture's matrix (cells shrink as n grows) ...
MIN_CELL = 6  # ... down to this many pixels a cell
DIAGONAL_RGB = (230, 40, 40)  # the true pairs' cells are outlined in red, as in the pseudocode's figure
PAIR_CMAP = "tab20"  # one colour per pair in the projection
LABELLED_PAIRS = 16  # projections of at most this many pairs name their points


def short(text: str) -> str:
    """``text`` cut to :data:`LABEL_CHARS` characters (a plot label)."""
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _row_text(vector) -> str:
    values = np.asarray(vector, dtype=np.float64)[:4]
    return "[" + " ".join(f"{v:+.2f}" for v in values) + " …]"


# -- tokenisation -------------------------------------------------------------------------------------------------------
def slot_strip(view: TokenView, unknown: tuple[str, ...]) -> str:
    """The slots as coloured chips (the first :data:`PADDING_SHOWN` padding slots, then a count), cut tokens last.

    Slots of the ``unknown`` words (never seen by the model) are marked.
    """
    unknown_slots = {slot for w in view.words if w.text.lower() in unknown for slot in w.token_indices}
    chips = []
    n_pad = 0
    for slot, (token, kind) in enumerate(zip(view.tokens, view.kinds, strict=True)):
        if kind is TokenKind.PADDING:
            n_pad += 1
            if n_pad > PADDING_SHOWN:
                continue
        label = html.escape(token.replace("</w>", "·"))
        if slot in unknown_slots:  # a token the model was never trained on
            chips.append(
                f'<span class="slot word unknown" title="slot {slot}: unknown to this model">{slot}:{label}</span>'
            )
        else:
            chips.append(f'<span class="slot {kind.value}" title="slot {slot}">{slot}:{label}</span>')
    if n_pad > PADDING_SHOWN:
        chips.append(f'<span class="slot padding">… ×{n_pad - PADDING_SHOWN} more padding</span>')
    chips += [f'<span class="slot cut">✂ {html.escape(t)}</span>' for t in view.truncated]
    return f'<div class="slot-strip">{"".join(chips)}</div>'


def slot_rows(view: TokenView) -> list[list]:
    """The used (not padding) slots: slot, token, kind, the word it belongs to."""
    word_of = {slot: w.text for w in view.words for slot in w.token_indices}
    return [
        [slot, token, kind.value, word_of.get(slot, "")]
        for slot, (token, kind) in enumerate(zip(view.tokens, view.kinds, strict=True))
        if kind is not TokenKind.PADDING
    ]


def token_summary(view: TokenView, unknown: tuple[str, ...]) -> str:
    """Slots used, words, words the model never saw, and tokens cut off."""
    slots = len(view.ids)
    summary = (
        f"**{view.n_used} of {slots} slots used**: BOS + {view.n_prompt_tokens} prompt tokens + EOS; "
        f"{slots - view.n_used} padding slots. {len(view.words)} words."
    )
    if unknown:
        summary += f"\n\n⚠️ {unknown_words_message(unknown)} (dashed chips)"
    if view.truncated:
        summary += (
            f"\n\n⚠️ **Truncated**: {len(view.truncated)} tokens do not fit and never reach the U-Net: "
            f"`{' '.join(view.truncated)}`"
        )
    return summary


# -- the contrastive pseudocode -----------------------------------------------------------------------------------------
def pseudocode(result: ContrastiveResult, n_pairs: int, override: bool) -> str:
    """The CLIP paper's pseudocode, each line commented with this batch's shapes and values."""
    shapes = result.shapes
    scale_note = "learned" if not override else "set by the slider"
    lines = [
        (f"# n = {n_pairs} (image, text) pairs", ""),
        ("I_f = image_encoder(I)", f"{shapes['I_f']}  I_f[0] = {_row_text(result.I_f[0])}"),
        ("T_f = text_encoder(T)", f"{shapes['T_f']}  T_f[0] = {_row_text(result.T_f[0])}"),
        (
            "I_e = l2_normalize(np.dot(I_f, W_i), axis=1)",
            f"{shapes['I_e']}  W_i {shapes['W_i'] if shapes['W_i'] is not None else 'built in'}",
        ),
        (
            "T_e = l2_normalize(np.dot(T_f, W_t), axis=1)",
            f"{shapes['T_e']}  |T_e[0]| = {float(result.T_e[0].norm()):.3f}",
        ),
        (
            "logits = np.dot(I_e, T_e.T) * np.exp(t)",
            f"{[n_pairs, n_pairs]}  exp(t) = {result.logit_scale:.2f} ({scale_note}; learned t = {result.t:.3f})",
        ),
        ("labels = np.arange(n)", f"{result.labels.tolist()}"),
        ("loss_i = cross_entropy_loss(logits, labels, axis=0)", f"{result.loss_i:.4f}  (over images: text → image)"),
        ("loss_t = cross_entropy_loss(logits, labels, axis=1)", f"{result.loss_t:.4f}  (over texts: image → text)"),
        ("loss = (loss_i + loss_t) / 2", f"{result.loss:.4f}"),
    ]
    return "\n".join(f"{line:<{CLIP_CODE_WIDTH}}# {note}" for line, note in lines).replace("# \n", "\n")


def softmax_table(probs) -> dict:
    """An (n, n) softmax as a table: a row per image I1.., a column per caption T1.., values to 3 places."""
    header = [""] + [f"T{j + 1}" for j in range(len(probs))]
    rows = [[f"I{i + 1}"] + [round(float(p), 3) for p in row] for i, row in enumerate(probs)]
    return {"headers": header, "data": rows}


def loss_summary(result: ContrastiveResult, n_pairs: int) -> str:
    """The loss, its two halves, and how many images pick their own caption."""
    return (
        f"**loss = {result.loss:.3f}** (loss_i {result.loss_i:.3f}, loss_t {result.loss_t:.3f}). "
        f"{result.matched} of {n_pairs} images pick their own caption; mean matched logit "
        f"{result.mean_matched_logit:.2f} vs mean other {result.mean_other_logit:.2f}."
    )


# -- what the U-Net gets ------------------------------------------------------------------------------------------------
def text_state_rows(view: TokenView, norms, pooled_slot: int) -> list[list]:
    """The used slots and a few padding ones: slot, token, kind, ‖h‖, and which one CLIP pools."""
    return [
        [
            slot,
            view.tokens[slot],
            view.kinds[slot].value,
            round(float(norms[slot]), 2),
            "← pooled: T_f" if slot == pooled_slot else "",
        ]
        for slot in range(min(len(view.tokens), view.n_used + PADDING_SHOWN))
    ]


def text_state_summary(shapes: dict, pooled_slot: int, cross_attention_dim: int, joint: bool = False) -> str:
    """All rows go to the U-Net (cross-attention K and V; on SD3 / Flux, the joint sequence); CLIP's loss sees only
    the pooled one."""
    _, slots, width = shapes["hidden_states"]
    if joint:
        return (
            f"**The transformer gets every row** of the model's own text encoders (this tab shows the embedded "
            f"CLIP's `[1, {slots}, {width}]`). There is no cross-attention: the text rows are projected to width "
            f"{cross_attention_dim} and **joined to the image tokens in one sequence** (MMDiT joint attention), so "
            f"text also attends to the image.\n\n**CLIP's loss sees one row**: slot {pooled_slot} (EOS), `T_f` "
            f"`[1, {shapes['pooled'][1]}]`, projected by `W_t` to `T_e` `[1, {shapes['embedding'][1]}]`."
        )
    return (
        f"**The U-Net gets all {slots} rows**: `encoder_hidden_states` of shape "
        f"`[1, {slots}, {width}]` (the text encoder's `last_hidden_state`; this model's "
        f"cross-attention expects width {cross_attention_dim}). These become K and V in every "
        f"cross-attention layer.\n\n**CLIP's loss sees one row**: slot {pooled_slot} (EOS), "
        f"`T_f` `[1, {shapes['pooled'][1]}]`, projected by `W_t` to `T_e` `[1, {shapes['embedding'][1]}]`."
    )


# -- live training ------------------------------------------------------------------------------------------------------
def live_matrix(frame: LiveFrame) -> np.ndarray:
    """The ``n x n`` logits (rows images, columns captions) as a picture, each image beside its row.

    Colours are min-max per frame (viridis); the true pairs' diagonal cells are outlined in red.
    """
    n = len(frame.logits)
    cell = max(MIN_CELL, MATRIX_SIDE // n)
    logits = frame.logits.astype(np.float64)
    span = float(np.ptp(logits))
    unit = (logits - logits.min()) / span if span > 0 else np.zeros_like(logits)
    grid = (colormaps["viridis"](unit)[..., :3] * 255).round().astype(np.uint8).repeat(cell, 0).repeat(cell, 1)
    edge = max(1, cell // 10)
    for k in range(n):
        box = grid[k * cell : (k + 1) * cell, k * cell : (k + 1) * cell]
        box[:edge], box[-edge:], box[:, :edge], box[:, -edge:] = (DIAGONAL_RGB,) * 4
    thumbs = [
        np.asarray(Image.fromarray(im).resize((cell, cell), Image.Resampling.NEAREST)) for im in frame.batch.images
    ]
    gap = np.full((n * cell, edge, 3), 255, np.uint8)
    return np.concatenate([np.concatenate(thumbs, axis=0), gap, grid], axis=1)


def loss_curves(history: list[LiveFrame]) -> pd.DataFrame:
    """loss_i, loss_t and their mean per frame, long format (step, value, curve) for a line plot."""
    rows = [
        (f.step, value, name)
        for f in history
        for name, value in (("loss_i (text → image)", f.loss_i), ("loss_t (image → text)", f.loss_t), ("loss", f.loss))
    ]
    return pd.DataFrame(rows, columns=["step", "value", "curve"])


def temperature_curve(history: list[LiveFrame]) -> pd.DataFrame:
    """The temperature 1 / exp(t) per frame."""
    return pd.DataFrame([(f.step, f.temperature) for f in history], columns=["step", "temperature"])


def projection_figure(frame: LiveFrame) -> Figure:
    """Images (circles) and captions (triangles) in the 2-D picture of the joint space; pair k in one colour, a line
    from each image to the caption it is trained with."""
    n = len(frame.image_xy)
    colors = colormaps[PAIR_CMAP](np.arange(n) % colormaps[PAIR_CMAP].N)
    fig = Figure(figsize=(5.5, 4.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    image, text = frame.image_xy, frame.text_xy
    for k, j in enumerate(frame.batch.targets):
        ax.plot([image[k, 0], text[j, 0]], [image[k, 1], text[j, 1]], color=colors[k], lw=1, alpha=0.6)
    ax.scatter(image[:, 0], image[:, 1], c=colors, marker="o", s=90, edgecolors="black", label="images I_e")
    ax.scatter(text[:, 0], text[:, 1], c=colors, marker="^", s=90, edgecolors="black", label="captions T_e")
    if n <= LABELLED_PAIRS:
        for k in range(n):
            ax.annotate(f"I{k + 1}", image[k], textcoords="offset points", xytext=(5, 4), fontsize=9)
            ax.annotate(f"T{k + 1}", text[k], textcoords="offset points", xytext=(5, -10), fontsize=9)
    ax.legend(loc="best", fontsize=9)
    ax.set_title(f"Joint space at step {frame.step}: 2 axes show {frame.explained:.0%} of the spread", fontsize=11)
    return fig


def history_table(history: list[LiveFrame]) -> dict:
    """One row per frame: step, the losses, the temperature, and the softmax shares of the true / trained pairs."""
    headers = ["step", "loss_i", "loss_t", "loss", "temperature", "diagonal share", "trained-pair share"]
    rows = [
        [f.step, *(round(v, 4) for v in (f.loss_i, f.loss_t, f.loss, f.temperature, f.diagonal_share))]
        + [round(f.target_share, 4)]
        for f in history
    ]
    return {"headers": headers, "data": rows}


def live_captions(frame: LiveFrame) -> str:
    """The batch's captions T1..Tn (and, shuffled, which caption each image is trained with)."""
    lines = [f"{k + 1}. {html.escape(c)}" for k, c in enumerate(frame.batch.captions)]
    text = "**The captions** (column j of the matrix is T_j; image I_j is its true pair):\n\n" + "\n".join(lines)
    if frame.batch.shuffled:
        pairs = ", ".join(f"I{k + 1}→T{j + 1}" for k, j in enumerate(frame.batch.targets))
        text += f"\n\n**Shuffled**: each image is trained with another image's caption ({pairs})."
    return text


def live_status(frame: LiveFrame, stopped: bool) -> str:
    """Where the run is: step, losses, temperature and how much of each image's softmax sits on its true caption."""
    status = (
        f"Step **{frame.step} / {frame.steps}** ({frame.seconds:.1f} s): loss **{frame.loss:.3f}** "
        f"(loss_i {frame.loss_i:.3f}, loss_t {frame.loss_t:.3f}); temperature {frame.temperature:.4f} "
        f"(exp(t) = {frame.logit_scale:.1f}). **{frame.diagonal_share:.0%}** of each image's softmax is on its true "
        f"caption (chance: {1 / len(frame.logits):.0%})."
    )
    if frame.batch.shuffled:
        status += f" On the caption it is trained with: **{frame.target_share:.0%}**."
    if stopped:
        status += " ⏹ **Stopped** here."
    return status
