"""Tab 3's classroom sections (score the map; guidance taken apart): their components and events."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from demo.common import IMAGE_FORMAT, MODEL_CONCURRENCY, explain
from demo.tab_attend.forms import FUNCTION_WORDS, SCORE_BRUSH
from explain.engine.requests import MAX_STEPS
from explain.maps.score import LEADERBOARD_HEADERS, Leaderboard
from explain.world.content import WorldContent

__all__ = ["ScoreSection", "GuidanceSection", "build_score", "build_guidance", "wire"]

GUIDANCE_STEP = 4  # the step taken apart by default: early enough that the prompt still shapes the layout
NAME_CHARS = 40  # a leaderboard name's length


@dataclass(frozen=True)
class ScoreSection:
    """Paint where a word's object is; the IoUs, the agreement picture and the session's leaderboard."""

    board: gr.State
    editor: gr.ImageEditor
    word: gr.Dropdown
    name: gr.Textbox
    score: gr.Button
    iou: gr.Number
    true_iou: gr.Number
    agreement: gr.Image
    leaderboard: gr.Dataframe
    summary: gr.Markdown

    @property
    def outputs(self) -> list:
        """In the order of :class:`~demo.tab_attend.forms.Scored`."""
        return [self.iou, self.true_iou, self.agreement, self.leaderboard, self.board, self.summary]


@dataclass(frozen=True)
class GuidanceSection:
    """The step to take apart, its button, and the four predictions, their x̂₀, the word maps and the checks."""

    step: gr.Slider
    run: gr.Button
    predictions: gr.Gallery
    x0: gr.Gallery
    maps: gr.Gallery
    error: gr.Number
    summary: gr.Markdown

    @property
    def outputs(self) -> list:
        """In the order of :class:`~demo.tab_attend.forms.GuidanceViews`."""
        return [self.predictions, self.x0, self.maps, self.error, self.summary]


def _gallery(label: str, elem_id: str, columns: int = 4) -> gr.Gallery:
    return gr.Gallery(
        elem_classes=["pixels"],
        label=label,
        elem_id=elem_id,
        columns=columns,
        height="auto",
        format=IMAGE_FORMAT,
        object_fit="contain",
    )


def build_score(world: WorldContent) -> ScoreSection:
    """Score the map: paint the word's object on the generated image; the IoU with the word's thresholded map.
    The word picker offers the content words of ``world``'s default prompt."""
    gr.Markdown("### Score the map: where do *you* think the word is?")
    board = gr.State(Leaderboard())
    with gr.Row():
        with gr.Column(scale=2):
            editor = gr.ImageEditor(
                label="Paint where the word's object is (the generated image appears here)",
                type="pil",
                sources=None,
                transforms=(),
                format=IMAGE_FORMAT,
                brush=gr.Brush(default_size=6, colors=[SCORE_BRUSH], color_mode="fixed"),
                height=380,
                elem_id="attend-score-editor",
                elem_classes=["pixels"],
            )
        with gr.Column(scale=2):
            with gr.Row():
                words = list(dict.fromkeys(w for w in world.default_prompt.split() if w not in FUNCTION_WORDS))
                word = gr.Dropdown(
                    words,
                    value=world.focus_word,
                    allow_custom_value=True,
                    label="Word (of the prompt)",
                    elem_id="attend-word",
                )
                name = gr.Textbox("", label="Your name (for the leaderboard)", max_length=NAME_CHARS)
            score = gr.Button("Score", variant="primary", elem_id="attend-score")
            with gr.Row():
                iou = gr.Number(label="IoU with the word's map", interactive=False, elem_id="attend-score-iou")
                true_iou = gr.Number(label="Map's IoU with the true mask", placeholder="not known", interactive=False)
            agreement = gr.Image(
                label="Green: both; red: only the map; blue: only your painting",
                format=IMAGE_FORMAT,
                interactive=False,
                height=200,
                elem_classes=["pixels"],
            )
        with gr.Column(scale=1):
            explain(
                "Paint the object the word names, then **Score**: the word's map (the steps and feature-map "
                "sizes chosen above, all heads, min-max, above the mask threshold) is compared with your painting "
                "by IoU = |A ∩ B| / |A ∪ B|. Which layers and steps locate 'circle' best? The board keeps your "
                "best ten."
            )
    summary = gr.Markdown(elem_id="attend-score-summary")
    leaderboard = gr.Dataframe(headers=list(LEADERBOARD_HEADERS), label="Leaderboard (this session)", max_height=300)
    return ScoreSection(board, editor, word, name, score, iou, true_iou, agreement, leaderboard, summary)


def build_guidance() -> GuidanceSection:
    """Guidance taken apart: one step's ε_u, ε_c, their difference and the guided ε̃, and the x̂₀ of each."""
    gr.Markdown("### Guidance taken apart: the two predictions of one step")
    with gr.Row():
        step = gr.Slider(0, MAX_STEPS, value=GUIDANCE_STEP, step=1, label="Step to take apart (0 = first)", scale=3)
        run = gr.Button("Take it apart", variant="primary", scale=1, elem_id="attend-guidance")
    with gr.Row():
        with gr.Column(scale=4):
            predictions = _gallery("The U-Net's predictions at this step (signed: grey = 0)", "attend-guidance-eps")
            x0 = _gallery("The clean image x̂₀ each prediction gives", "attend-guidance-x0")
            maps = _gallery(
                "Word maps: the prompt's (conditional) beside the negative prompt's", "attend-guidance-maps"
            )
        with gr.Column(scale=1):
            explain(
                "With the prompt's settings above, the U-Net runs twice per step on the same x_t: once with the "
                "**negative** (or empty) prompt (ε_u), once with the **prompt** (ε_c). Guidance moves from ε_u past "
                "ε_c: ε̃ = ε_u + g (ε_c − ε_u). The difference is the prompt's push; g scales it."
            )
            error = gr.Number(label="Recombination error max |ε_u + g(ε_c − ε_u) − ε̃|", interactive=False)
            summary = gr.Markdown()
    return GuidanceSection(step, run, predictions, x0, maps, error, summary)


def wire(classroom, ui, scoring: ScoreSection, guidance: GuidanceSection, finished: list) -> list:
    """Score and take apart; after each event of ``finished`` (a new result in the session) the editor gets its
    image and the word menu its words. Returns those follow-up events."""
    m = ui.maps
    score_inputs = [scoring.editor, scoring.word, scoring.name, m.step, m.all_steps, m.downsamples, m.threshold]
    scoring.score.click(
        classroom.score_map,
        [*score_inputs, ui.state, scoring.board],
        scoring.outputs,
        api_name="score_map",
    )
    setups = [
        event.success(
            classroom.score_setup, [ui.state, scoring.word], [scoring.editor, scoring.word], api_visibility="private"
        )
        for event in finished
    ]
    guidance.run.click(
        classroom.guidance_parts,
        [*ui.form.inputs, guidance.step],
        guidance.outputs,
        api_name="guidance_parts",
        concurrency_id=MODEL_CONCURRENCY,
    )
    return setups
