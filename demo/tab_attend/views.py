"""What the Denoise & attend tab shows, as text and gallery values: statuses, map captions, the Q/K/V table."""

from __future__ import annotations

import numpy as np

from demo.tab_attend.forms import MapQuery
from explain.clip.vocabulary import unknown_words_message
from explain.engine.session import StepUpdate
from explain.maps.aggregation import overlay
from explain.maps.joint_views import JOINT_MAP_KINDS, JointLayerShapes
from explain.maps.score import LEADERBOARD_HEADERS, Leaderboard, MapScore
from explain.maps.views import LayerShapes, MapView

__all__ = [
    "step_status",
    "done_status",
    "word_gallery",
    "map_info",
    "qkv_table",
    "joint_qkv_table",
    "leaderboard_table",
    "enlarged",
    "score_summary",
    "guidance_predictions",
    "guidance_x0",
    "guidance_maps",
    "guidance_summary",
]

ENLARGED_SIDE = 256  # pixels: small pictures (a 64 x 64 agreement map) are shown at least this big
PREDICTION_SYMBOLS = {"epsilon": "ε", "v_prediction": "v", "sample": "x̂₀"}  # what the U-Net predicts


def step_status(item: StepUpdate) -> str:
    """The status line while denoising: the step, its timestep, the time so far and what the preview shows."""
    what = "predicted clean image x̂₀" if item.source == "x0" else "noisy latent x_t"
    return (
        f"Step **{item.step + 1} / {item.total}** (t = {item.timestep:.0f}), {item.elapsed:.1f} s. Showing the {what}."
    )


def done_status(result, suggestion: str = "") -> str:
    """The status of a finished (or stopped) generation; words the model never saw are named, with ``suggestion``
    (a prompt of the model's world) to try instead."""
    stopped = f" **Stopped early** after {result.steps_done} steps." if result.interrupted else ""
    status = (
        f"Done: {result.steps_done} steps with {result.scheduler} in {result.seconds:.1f} s "
        f"(seed {result.request.seed}, guidance {result.request.guidance:g}).{stopped}"
    )
    if result.unknown_words:  # never silent: the model has no meaning for these words
        status += f"\n\n⚠️ {unknown_words_message(result.unknown_words)} The presets below use only words it knows"
        status += f", e.g. “{suggestion}”." if suggestion else "."
    if result.joint is not None:
        status += (
            "\n\nJoint attention (SD3 / Flux): the maps are averaged over all steps and heads while they are "
            "recorded; choose the kind of map under the maps."
        )
    for note in result.notes:  # what was asked for but not recorded, and why
        status += f"\n\nℹ️ Not shown: {note}."
    return status


def word_gallery(view: MapView, masks: bool = False) -> list[tuple[np.ndarray, str]]:
    """The view's overlays (or masks), each captioned with its word."""
    images = view.masks if masks else view.overlays
    return [(image, f"“{word}”") for image, word in zip(images or (), view.words, strict=False)]


def map_info(result, view: MapView, query: MapQuery) -> str:
    """What the maps show: which steps, how many layers, which heads, which normalisation (and, on SD3 / Flux, which
    kind of map)."""
    if result.joint is not None:
        kind = query.joint_kind or "text"
        return (
            f"Showing **{JOINT_MAP_KINDS[kind]}**, all {len(result.joint.maps.timesteps)} steps, {len(view.layers)} "
            f"joint-attention layers, all heads, {query.normalization} normalisation."
        )
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


def joint_qkv_table(s: JointLayerShapes) -> str:
    """The Q/K/V arithmetic of one joint-attention layer (MMDiT) as a markdown table."""
    f = _fmt_shape
    h, w = s.grid_hw
    n = s.n_image + s.n_text
    dual = s.kind == "joint"
    text_rows = (
        [
            f"| text tokens | text encoders, {s.n_text} tokens | {f(s.n_text, s.text_dim)} |",
            f"| Q, K, V of the text | W′_q, W′_k, W′_v {f(s.text_dim, s.inner_dim)} | {f(s.n_text, s.inner_dim)} each |",
        ]
        if dual
        else [f"| (single stream) | text and image share W_q, W_k, W_v | the {s.n_text} text rows come first |"]
    )
    return "\n".join(
        [
            f"**`{s.name}`** ({'dual-stream' if dual else 'single-stream'} block): {s.heads} heads × {s.head_dim} dims; "
            f"image-token grid {h} × {w} = {s.n_image} tokens, {s.n_text} text tokens.",
            "",
            "| tensor | from | shape |",
            "|---|---|---|",
            f"| image tokens | the latent, in patches | {f(s.n_image, s.image_dim)} |",
            f"| Q, K, V of the image | W_q, W_k, W_v {f(s.image_dim, s.inner_dim)} | {f(s.n_image, s.inner_dim)} each |",
            *text_rows,
            f"| **Q, K, V** joined | [text; image] | **{f(n, s.inner_dim)}** each |",
            f"| **A** = softmax(Q_h K_hᵀ / √{s.head_dim}) | every token attends to every token | **{f(s.heads, n, n)}** |",
            f"| word maps | A's image rows × text columns | {f(s.heads, s.n_image, s.n_text)} |",
            "",
            "Unlike a U-Net's cross-attention, the text tokens also attend to the image, and each image token's "
            "softmax is shared between image and text keys: 'renormalised over the text' rescales its text part "
            "to sum to 1.",
        ]
    )


# -- score the map ------------------------------------------------------------------------------------------------------
def enlarged(picture: np.ndarray, min_side: int = ENLARGED_SIDE) -> np.ndarray:
    """``picture`` repeated pixel by pixel (nearest) until its shorter side is at least ``min_side``."""
    factor = max(1, -(-min_side // min(picture.shape[:2])))
    return picture.repeat(factor, axis=0).repeat(factor, axis=1)


def leaderboard_table(board: Leaderboard) -> dict:
    """The session's leaderboard as a table (rank, name, word, layers, steps, IoU, true IoU)."""
    rows = [[*row[:-1], "not known" if row[-1] is None else row[-1]] for row in board.rows()]
    return {"headers": list(LEADERBOARD_HEADERS), "data": rows}


def score_summary(score: MapScore, rank: int | None, entries: int) -> str:
    """The IoUs in words: with the map, with the true mask (or "not known"), and the place on the board."""
    steps = f"steps {score.steps[0]}–{score.steps[1]}"  # [start, stop), as the leaderboard writes them
    text = (
        f"IoU of your painting with “{score.word}”'s map (min-max, above τ = {score.tau:g}; {score.layers}, "
        f"{steps}) = **{score.iou:.3f}**."
    )
    if score.true_iou is None:
        text += " True mask of the object: **not known** (the world's judge knows it only for colour, shape and size words of world prompts whose object it finds)."
    else:
        text += (
            f" The map against the object's true mask (found by the world's judge): **{score.true_iou:.3f}**; "
            f"your painting against it: {score.painted_vs_true:.3f}."
        )
    place = f"place **{rank}** of {entries}" if rank is not None else "not in the top of the board"
    return text + f" Leaderboard: {place}. Green: both agree; red: only the map; blue: only your painting."


# -- guidance taken apart -----------------------------------------------------------------------------------------------
def _names(parts) -> dict[str, str]:
    e, g = PREDICTION_SYMBOLS.get(parts.prediction_type, "ε"), f"{parts.guidance:g}"
    branch = "the negative prompt" if parts.negative_prompt else "the empty prompt"
    return {
        "uncond": f"{e}_u: {branch}",
        "cond": f"{e}_c: the prompt",
        "difference": f"{e}_c − {e}_u: what the prompt adds",
        "guided": f"guided: {e}_u + {g}·({e}_c − {e}_u)",
    }


def guidance_predictions(parts) -> list[tuple[np.ndarray, str]]:
    """The four predictions through the linear latent preview (signed: mid-grey is 0), with their sizes."""
    names = _names(parts)
    return [(p.output_image, f"{names[p.name]} (rms {p.rms:.3f})") for p in parts.parts]


def guidance_x0(parts) -> list[tuple[np.ndarray, str]]:
    """The clean image x̂₀ each prediction gives (the difference's: Δx̂₀, signed)."""
    names = _names(parts)
    return [
        (p.image, "Δx̂₀ = x̂₀_c − x̂₀_u (grey = 0)" if p.name == "difference" else f"x̂₀ from {names[p.name]}")
        for p in parts.parts
    ]


def guidance_maps(parts, prompt_maps, skip_words=()) -> list[tuple[np.ndarray, str]]:
    """The prompt's word maps (conditional branch) beside the negative prompt's (unconditional branch)."""
    shown = [
        (overlay(parts.image, heat.numpy()), f"“{word}” (prompt)")
        for word, heat in zip(prompt_maps.words, prompt_maps.word_maps, strict=True)
        if word.lower() not in skip_words
    ]
    if parts.negative_maps is not None:
        shown += [
            (overlay(parts.image, heat), f"“{word}” (negative prompt)")
            for word, heat in zip(parts.negative_words, parts.negative_maps, strict=True)
        ]
    return shown


def guidance_summary(parts) -> str:
    """Which step, its t and ᾱ_t, and the two checks: the parts add up, the step reproduces the pipeline's."""
    text = (
        f"Step **{parts.step + 1}** of {parts.run.steps_done} (t = {parts.timestep:.0f}, ᾱ_t = {parts.alpha_bar:.4f}), "
        f"guidance g = {parts.guidance:g}. The parts add up: max |ε_u + g (ε_c − ε_u) − ε̃| = "
        f"**{parts.recombination_error:.1e}**."
    )
    if parts.step_error is None:
        text += " This sampler draws fresh noise in its step, so the step itself is not replayed."
    else:
        text += f" Stepping the sampler with ε̃ gives the pipeline's own next latents (max difference {parts.step_error:.1e})."
    if not parts.negative_prompt:
        text += " No negative prompt: the unconditional branch reads the empty prompt, which has no words to map."
    return text
