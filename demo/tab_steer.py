"""Tab 4, Steer with words: prompt-to-prompt edits (re-weight, swap, drop), a guidance-scale sweep, and the causal
check of a word's map (delete the word: does the image change where its map points?), same seed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import gradio as gr
import numpy as np

from demo.common import IMAGE_FORMAT, MODEL_CONCURRENCY, explain, lesson, seed_input, user_errors
from explain.clip.vocabulary import prompt_unknown_words, unknown_words_message
from explain.engine.requests import MAX_GUIDANCE, MAX_STEPS, GenerationRequest, guidance_scales
from explain.engine.session import request_pipeline
from explain.maps.score import DAAM_TAU
from explain.steering.causal import delete_word
from explain.steering.edits import MAX_WEIGHT
from explain.steering.experiments import guidance_sweep, steer_drop, steer_reweight, steer_swap, word_overlays

__all__ = ["SteerTab", "Steered", "Causal"]

DIFF_GAIN = 3  # differences are faint: shown x3
STEER_STEPS = 15


class Steered(NamedTuple):
    """One experiment's outputs: the images side by side, the word's maps before and after, a summary."""

    images: list
    maps: list
    summary: str


class Causal(NamedTuple):
    """The causal check: the images and the change beside the word's map, and the numbers."""

    images: list
    correlation: float | None
    inside: float | None
    outside: float | None
    summary: str


@dataclass(frozen=True)
class Shared:
    """The settings every experiment shares (the prompt row at the top of the tab)."""

    prompt: gr.Textbox
    seed: gr.Number
    steps: gr.Slider
    guidance: gr.Slider
    default_guidance: float  # the model's own default (5 for the embedded model)

    @property
    def common(self) -> list:
        """Seed, steps and guidance: the inputs after each experiment's own."""
        return [self.seed, self.steps, self.guidance]


class SteerTab:
    """Handlers and layout of the steering tab (calls explain.steering.edits on a per-request pipeline copy)."""

    def __init__(self, engine):
        self.engine = engine
        self.world = engine.world()  # the prompt and presets of the model's world (explain.world.content)

    def _checked(self, prompt: str, seed, steps, guidance):
        """A validated request and a per-request pipeline copy (fresh scheduler)."""

        pipe = self.engine.pipeline()
        try:
            request = GenerationRequest(prompt or "", seed=int(seed), steps=int(steps), guidance=float(guidance))
        except (TypeError, ValueError) as err:
            raise gr.Error(f"seed and steps must be whole numbers ({err}).") from err
        with user_errors():
            request.validate(pipe)
        return request, request_pipeline(pipe)

    def _outputs(self, result, label: str, word: str | None, edited_word: str | None = None) -> Steered:
        """Gallery (baseline, edited, difference), maps gallery (word before/after) and a one-line summary."""

        images = [
            (result.baseline, "baseline"),
            (result.edited, label),
            (result.amplified_difference(DIFF_GAIN), f"|difference| ×{DIFF_GAIN}"),
        ]
        maps = []
        if word:
            after_word = edited_word or word
            shown = word_overlays(result, self.engine.pipeline().tokenizer, after_word)
            if shown.before is not None:
                maps.append((shown.before, f"“{word}” before"))
            if shown.after is not None:
                maps.append((shown.after, f"“{after_word}” after"))
        summary = (
            f"Baseline: “{result.baseline_prompt}”. Edited: “{result.edited_prompt}”. "
            f"Mean |difference| = **{result.mean_abs_difference:.3f}** (pixels in 0…1, same seed, same noise)."
        )
        unknown = prompt_unknown_words(self.engine.pipeline(), result.baseline_prompt, result.edited_prompt)
        if unknown:
            summary += f"\n\n⚠️ {unknown_words_message(unknown)} Try “{self.world.suggestion}”."
        return Steered(images, maps, summary)

    def reweight(self, prompt, word, weight, seed, steps, guidance) -> Steered:
        """Scale one word's cross-attention by ``weight`` (0…3) and compare with the unedited image."""

        request, pipe = self._checked(prompt, seed, steps, guidance)
        with user_errors():  # the library call holds the engine's lock for the pipeline run
            result = steer_reweight(
                pipe,
                request.prompt,
                word or "",
                float(weight),
                request.seed,
                request.steps,
                request.guidance,
                capture=True,
                lock=self.engine.lock,
            )
        return self._outputs(result, f"“{word}” ×{float(weight):g}", word)

    def swap(self, prompt, old_word, new_word, k_steps, seed, steps, guidance) -> Steered:
        """Replace a word; the new prompt keeps the old prompt's attention maps for the first ``k_steps`` steps."""

        request, pipe = self._checked(prompt, seed, steps, guidance)
        if not (new_word or "").strip():
            raise gr.Error("Type the new word.")
        with user_errors():  # the library call holds the engine's lock for the pipeline run
            result = steer_swap(
                pipe,
                request.prompt,
                old_word or "",
                new_word,
                int(k_steps),
                request.seed,
                request.steps,
                request.guidance,
                capture=True,
                lock=self.engine.lock,
            )
        return self._outputs(result, f"“{new_word}”, k = {int(k_steps)}", old_word, new_word)

    def drop(self, prompt, word, mode, seed, steps, guidance) -> Steered:
        """Drop a word: delete it from the text, or keep the text and zero its attention."""

        request, pipe = self._checked(prompt, seed, steps, guidance)
        with user_errors():  # the library call holds the engine's lock for the pipeline run
            result = steer_drop(
                pipe,
                request.prompt,
                word or "",
                mode,
                request.seed,
                request.steps,
                request.guidance,
                capture=True,
                lock=self.engine.lock,
            )
        label = f"“{word}” deleted" if mode == "remove" else f"“{word}” ×0"
        return self._outputs(result, label, word)

    def sweep(self, prompt, seed, steps, scales: str):
        """The same prompt and noise under several guidance scales."""

        with user_errors():
            values = guidance_scales(scales)
        request, pipe = self._checked(prompt, seed, steps, max(values))
        with user_errors():  # the library call holds the engine's lock for the pipeline run
            strip = guidance_sweep(pipe, request.prompt, request.seed, values, request.steps, lock=self.engine.lock)
        return [(image, f"guidance {scale:g}" + (" (off)" if scale <= 1 else "")) for scale, image in strip]

    def causal(self, prompt, word, mode, tau, seed, steps, guidance) -> Causal:
        """Same seed, the word deleted: where did the image change, against the word's thresholded map?"""

        request, pipe = self._checked(prompt, seed, steps, guidance)
        run = (request.prompt, word or "", mode, request.seed, request.steps, request.guidance)
        with user_errors():  # the library call holds the engine's lock for each pipeline run
            r = delete_word(pipe, *run, tau=float(tau), lock=self.engine.lock)
        images = [(r.baseline, "with the word"), (r.edited, f"without “{r.word}”"), (r.change_image(), "change")]
        images += [(r.map_overlay(), f"“{r.word}”'s map"), (r.word_mask.astype(np.uint8) * 255, f"map > {r.tau:g}")]
        summary = (
            f"Change inside the mask: **{_shown(r.share_inside)}** of the total, on {r.mask_area:.1%} of the pixels "
            f"(concentration ×{_shown(r.concentration, '.1f')}); r(change, map) = {_shown(r.correlation)}. A "
            "faithful map: far more than its area's share of the change lies inside it."
        )
        return Causal(images, r.correlation, r.share_inside, r.share_outside, summary)

    # -- layout -----------------------------------------------------------------------------------------------------

    def build(self) -> None:
        """Create the tab's components and events (call inside ``gr.Tab``)."""
        lesson("steer")
        with gr.Row():
            prompt = gr.Textbox(
                self.world.default_prompt, label="Prompt (shared by every experiment below)", lines=2, scale=3
            )
            seed = seed_input(0, label="Seed", scale=1)
            steps = gr.Slider(1, MAX_STEPS, value=STEER_STEPS, step=1, label="Steps", scale=1)
            g = self.engine.recommended_guidance()  # the model's own default (5 for the embedded model)
            guidance = gr.Slider(0, MAX_GUIDANCE, value=g, step=0.5, label="Guidance", scale=1)
        ui = Shared(prompt, seed, steps, guidance, g)
        self._build_reweight(ui)
        self._build_swap(ui)
        self._build_drop(ui)
        self._build_causal(ui)
        self._build_sweep(ui)

    def _build_reweight(self, ui: Shared) -> None:
        """Re-weight a word: its attention columns ×w."""
        g = ui.default_guidance
        prompt, steer = self.world.default_prompt, self.world.steer
        with gr.Tab("Re-weight a word"):
            with gr.Row():
                rw_word = gr.Textbox(steer.reweight[0][0], label="Word (or phrase) of the prompt")
                rw_weight = gr.Slider(0, MAX_WEIGHT, value=0, step=0.1, label="Attention weight ×")
                rw_btn = gr.Button("Re-weight", variant="primary")
            rw_out = _results_row(
                "×0 silences the word's attention columns, ×1 changes nothing, ×3 shouts it. Only *where the "
                "word paints* is changed; the noise and every other word stay the same.",
                "reweight",
            )
            rw_inputs = [ui.prompt, rw_word, rw_weight, *ui.common]
            rw_btn.click(self.reweight, rw_inputs, rw_out, api_name="steer_reweight", concurrency_id=MODEL_CONCURRENCY)
            _presets(
                rw_inputs,
                rw_out,
                self.reweight,
                [[prompt, word, weight, 0, 12, g] for word, weight in steer.reweight],
                [f"'{word}' ×{weight:g}" for word, weight in steer.reweight],
            )

    def _build_swap(self, ui: Shared) -> None:
        """Swap a word, keeping the old maps for the first k steps."""
        g = ui.default_guidance
        prompt, steer = self.world.default_prompt, self.world.steer
        with gr.Tab("Swap a word"):
            with gr.Row():
                sw_old = gr.Textbox(steer.swap[0][0], label="Old word")
                sw_new = gr.Textbox(steer.swap[0][1], label="New word (same number of tokens)")
                sw_k = gr.Slider(0, MAX_STEPS, value=6, step=1, label="Keep the old maps for the first k steps")
                sw_btn = gr.Button("Swap", variant="primary")
            sw_out = _results_row(
                "Keeping the first k steps' maps keeps the **layout** (where things are) while the new word "
                "brings new **content**. k = 0 is a fresh picture of the new prompt; large k keeps more of the "
                "old one.",
                "swap",
            )
            sw_inputs = [ui.prompt, sw_old, sw_new, sw_k, *ui.common]
            sw_btn.click(self.swap, sw_inputs, sw_out, api_name="steer_swap", concurrency_id=MODEL_CONCURRENCY)
            _presets(
                sw_inputs,
                sw_out,
                self.swap,
                [[prompt, old, new, k, 0, 12, g] for old, new, k in steer.swap],
                [f"{old} → {new}, k = {k}" for old, new, k in steer.swap],
            )

    def _build_drop(self, ui: Shared) -> None:
        """Drop a word: delete it from the text, or zero its attention."""
        g = ui.default_guidance
        prompt, steer = self.world.default_prompt, self.world.steer
        with gr.Tab("Drop a word"):
            with gr.Row():
                dr_word = gr.Textbox(steer.delete, label="Word to drop")
                dr_mode = gr.Radio(
                    [("delete it from the text", "remove"), ("keep the text, attention ×0", "zero")],
                    value="remove",
                    label="How",
                )
                dr_btn = gr.Button("Drop", variant="primary")
            dr_out = _results_row(
                "Deleting changes the whole sentence CLIP reads. Zeroing keeps the sentence but cuts the word's "
                "own columns: its meaning can still leak in through later tokens, which all 'read' the earlier "
                "ones.",
                "drop",
            )
            dr_inputs = [ui.prompt, dr_word, dr_mode, *ui.common]
            dr_btn.click(self.drop, dr_inputs, dr_out, api_name="steer_drop", concurrency_id=MODEL_CONCURRENCY)
            _presets(
                dr_inputs,
                dr_out,
                self.drop,
                [[prompt, steer.delete, "remove", 0, 12, g], [prompt, steer.delete, "zero", 0, 12, g]],
                [f"delete '{steer.delete}'", f"'{steer.delete}' attention ×0"],
            )

    def _build_causal(self, ui: Shared) -> None:
        """Delete the word, same seed: is the change where the word's map points?"""
        with gr.Tab("Causal check of a map"):
            with gr.Row():
                word = gr.Textbox(self.world.steer.causal, label="Word to drop")
                mode = gr.Radio(
                    [("delete it from the text", "remove"), ("attention ×0", "zero")], value="remove", label="How"
                )
                tau = gr.Slider(0.05, 0.95, value=DAAM_TAU, step=0.05, label="Mask threshold τ")
                run = gr.Button("Check", variant="primary", elem_id="steer-causal")
            with gr.Row():
                images = _gallery("With, without, the change, the word's map and mask", 5, height=260, scale=4)
                with gr.Column(scale=1):
                    correlation = gr.Number(label="r(change, map)", interactive=False)
                    inside = gr.Number(label="Share of the change inside the mask", interactive=False)
                    outside = gr.Number(label="Share outside", interactive=False)
            summary = gr.Markdown()
            explain(
                "A map says *these pixels listen to the word*. The causal test: make the same picture without the "
                "word and see where it changes. If the map is faithful, the change gathers inside its mask."
            )
            run.click(
                self.causal,
                [ui.prompt, word, mode, tau, *ui.common],
                [images, correlation, inside, outside, summary],
                api_name="causal_check",
                concurrency_id=MODEL_CONCURRENCY,
            )

    def _build_sweep(self, ui: Shared) -> None:
        """The same seed under several guidance scales."""
        with gr.Tab("Guidance sweep"):
            with gr.Row():
                gs_scales = gr.Textbox("1, 3, 7.5, 12", label="Guidance scales (comma separated)")
                gs_btn = gr.Button("Sweep", variant="primary")
            with gr.Row():
                gs_strip = _gallery("Same seed, growing guidance", 4, height=260, scale=4)
                with gr.Column(scale=1):
                    explain(
                        "Guidance 1 is the plain model. Higher guidance follows the prompt harder (cleaner shapes, "
                        "stronger colours) until it overshoots into harsh, oversaturated images."
                    )
            gs_inputs = [ui.prompt, ui.seed, ui.steps, gs_scales]
            gs_btn.click(
                self.sweep, gs_inputs, [gs_strip], api_name="guidance_sweep", concurrency_id=MODEL_CONCURRENCY
            )
            _presets(
                gs_inputs,
                [gs_strip],
                self.sweep,
                [[self.world.default_prompt, 0, 10, "1, 3, 7.5, 12"]],
                ["guidance 1, 3, 7.5, 12"],
            )


def _shown(value: float | None, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def _gallery(label: str, columns: int, **kwargs) -> gr.Gallery:
    """An image gallery of this tab (pixel-exact, PNG)."""
    return gr.Gallery(
        elem_classes=["pixels"], label=label, columns=columns, format=IMAGE_FORMAT, object_fit="contain", **kwargs
    )


def _results_row(note: str, key: str) -> list:
    """One experiment's outputs: the images side by side, the word's maps before and after, a summary."""
    with gr.Row():
        with gr.Column(scale=3):
            images = _gallery("Same seed, side by side", 3, height=280, elem_id=f"steer-{key}-images")
        with gr.Column(scale=2):
            maps = _gallery("The word's attention, before and after", 2, height=280)
        with gr.Column(scale=1):
            summary = gr.Markdown()
            explain(note)
    return [images, maps, summary]


def _presets(inputs, outputs, fn, rows, what) -> None:
    """Lazily cached one-click presets of an experiment."""
    gr.Examples(
        rows,
        inputs=inputs,
        outputs=outputs,
        fn=fn,
        cache_examples=True,
        cache_mode="lazy",
        label="Presets",
        example_labels=what,
    )
