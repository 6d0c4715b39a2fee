"""What the CLIP tab shows, as HTML, text and tables: slot chips, the pseudocode with live values, summaries."""

from __future__ import annotations

import html

import numpy as np

from demo.tab_clip.forms import CLIP_CODE_WIDTH, LABEL_CHARS, PADDING_SHOWN
from explain.clip.contrastive import ContrastiveResult
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
]


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


def text_state_summary(shapes: dict, pooled_slot: int, cross_attention_dim: int) -> str:
    """All rows go to the U-Net (cross-attention K and V); CLIP's loss sees only the pooled one."""
    _, slots, width = shapes["hidden_states"]
    return (
        f"**The U-Net gets all {slots} rows**: `encoder_hidden_states` of shape "
        f"`[1, {slots}, {width}]` (the text encoder's `last_hidden_state`; this model's "
        f"cross-attention expects width {cross_attention_dim}). These become K and V in every "
        f"cross-attention layer.\n\n**CLIP's loss sees one row**: slot {pooled_slot} (EOS), "
        f"`T_f` `[1, {shapes['pooled'][1]}]`, projected by `W_t` to `T_e` `[1, {shapes['embedding'][1]}]`."
    )
