"""Tab 3's classroom handlers: score a painted mask against a word's map, and take one step's guidance apart.

:class:`Classroom` is held by :class:`~demo.tab_attend.handlers.AttendTab` (``tab.classroom``): it scores the
session's last generation (:func:`explain.maps.score.score_word`) and runs :func:`explain.engine.guidance.guidance_parts`
under the engine's lock, stoppable by the tab's Stop like a generation.
"""

from __future__ import annotations

import gradio as gr
import numpy as np

from demo.common import user_errors
from demo.tab_attend import views
from demo.tab_attend.forms import FUNCTION_WORDS, GuidanceViews, Scored, ScoreSetup, form_request, whole_number
from explain.engine.guidance import guidance_parts
from explain.engine.session import request_pipeline
from explain.maps.aggregation import aggregate
from explain.maps.score import DAAM_TAU, Leaderboard, resize_mask, score_word
from explain.world.judging import judge

__all__ = ["Classroom", "painted_mask", "judged_mask", "content_words"]

MIN_ALPHA = 0  # a layer pixel is painted when its alpha is above this (any brush stroke)
WHITE = 128  # layers without alpha (an uploaded mask): white (luminance >= half the 8-bit range) is painted


def painted_mask(editor) -> np.ndarray:
    """(H, W) bool: the union of the editor's layers (brush strokes: alpha above 0; layers without alpha: white).

    Layers of other sizes are brought to the first one's by coverage (:func:`explain.maps.score.resize_mask`).
    """
    layers = [layer for layer in ((editor or {}).get("layers") or []) if layer is not None]
    if not layers:
        raise gr.Error(
            "Nothing painted yet: paint over the image where the word's object is, then press Score.",
            title="Please check the input",
        )
    masks = []
    for layer in layers:
        if "A" in layer.getbands():
            masks.append(np.asarray(layer.getchannel("A")) > MIN_ALPHA)
        else:
            masks.append(np.asarray(layer.convert("L")) >= WHITE)
    return np.logical_or.reduce([resize_mask(mask, masks[0].shape) for mask in masks])


def judged_mask(result, word: str) -> np.ndarray | None:
    """The true mask of ``word``'s object in the generated image, as the shapes world's judge finds it.

    Known for colour, shape and size words of prompts in the world's grammar whose object the judge finds
    (:func:`explain.world.judging.judge`); None otherwise.
    """
    prompt = getattr(result.request, "prompt", None)
    if not prompt:
        return None
    try:
        verdict = judge(np.asarray(result.image.convert("RGB")), prompt)
    except ValueError:  # not a prompt of the shapes world: nobody knows the object's mask
        return None
    wanted = str(word).strip().lower()
    for obj in verdict.objects:
        if wanted in (obj.expected.color, obj.expected.shape, obj.expected.size) and obj.detected is not None:
            return obj.matched_mask
    return None


def content_words(result) -> list[str]:
    """The prompt's words a student would score (function words and punctuation left out), each once."""
    words = [w.text.lower() for w in result.view.words if any(c.isalnum() for c in w.text)]
    return list(dict.fromkeys(w for w in words if w not in FUNCTION_WORDS))


class Classroom:
    """ "Score the map" and "Guidance taken apart" of the Denoise & attend tab (``tab``: its AttendTab)."""

    def __init__(self, tab):
        self.tab = tab
        self.engine = tab.engine

    # -- score the map ----------------------------------------------------------------------------------------------
    def score_setup(self, result, word) -> ScoreSetup:
        """After a generation: its image in the editor (nothing painted) and its words (the chosen one kept)."""
        if result is None:
            return ScoreSetup(gr.skip(), gr.skip())
        words = content_words(result)
        value = word if word in words else (words[0] if words else None)
        editor = {"background": result.image, "layers": [], "composite": result.image}
        return ScoreSetup(editor, gr.update(choices=words, value=value))

    def score_map(self, editor, word, name, step, all_steps, downsamples, threshold, result, board) -> Scored:
        """IoU of the painted mask with ``word``'s thresholded map (the steps and feature-map sizes chosen above),
        and of the map with the judged true mask; the session's leaderboard."""
        result = self.tab._need(result)
        painted = painted_mask(editor)
        word = "" if word is None else str(word)
        first = None if all_steps else whole_number(step, "step")
        steps = None if first is None else (first, first + 1)  # the one step the maps above show
        factors = [whole_number(d, "feature-map size") for d in downsamples] if downsamples else None
        tau = float(threshold) if threshold else DAAM_TAU  # "0 = no mask" in the views; the DAAM default here
        with user_errors():
            score = score_word(
                result,
                word,
                painted,
                steps=steps,
                downsamples=factors,
                true_mask=judged_mask(result, word),
                tau=tau,
            )
        entry = score.entry((name or "").strip())
        board = (board if isinstance(board, Leaderboard) else Leaderboard()).add(entry)
        return Scored(
            iou=round(score.iou, 4),
            true_iou=None if score.true_iou is None else round(score.true_iou, 4),
            agreement=views.enlarged(score.agreement_image()),
            leaderboard=views.leaderboard_table(board),
            board=board,
            summary=views.score_summary(score, board.rank(entry), len(board.entries)),
        )

    # -- guidance taken apart ---------------------------------------------------------------------------------------
    def guidance_parts(
        self, prompt, negative, seed, steps, guidance, scheduler, height, width, step, request: gr.Request = None
    ) -> GuidanceViews:
        """Generate with the form's settings and take step ``step``'s classifier-free guidance apart."""
        req = form_request(prompt, negative, seed, steps, guidance, scheduler, height, width)
        pipe = self.engine.pipeline()
        with user_errors():
            size = req.validate(pipe)
        k = whole_number(step, "step to take apart")
        session, (stop, progress) = self.tab.start_run(request)
        try:
            with user_errors():
                parts = guidance_parts(
                    request_pipeline(pipe, req.scheduler),
                    req.prompt,
                    k,
                    negative_prompt=req.negative,
                    seed=req.seed,
                    steps=req.steps,
                    guidance=req.guidance,
                    height=size[0],
                    width=size[1],
                    preview=self.engine.latent_preview(),
                    lock=self.engine.lock,
                    stop=stop,
                    progress=progress,
                )
        finally:
            self.tab.end_run(session, stop)
        prompt_maps = aggregate(parts.run.captured, parts.run.view)
        return GuidanceViews(
            predictions=views.guidance_predictions(parts),
            x0=views.guidance_x0(parts),
            maps=views.guidance_maps(parts, prompt_maps, FUNCTION_WORDS),
            recombination_error=parts.recombination_error,
            summary=views.guidance_summary(parts),
        )
