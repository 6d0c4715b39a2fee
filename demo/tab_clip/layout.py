"""The CLIP tab's layout: one function per section, each wiring its own events."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from demo.common import IMAGE_FORMAT, MODEL_CONCURRENCY, PLOT_FORMAT, explain, lesson, seed_input
from demo.tab_clip.forms import (
    LIVE_DEFAULTS,
    MAX_LEARNING_RATE,
    MAX_WORLD,
    MIN_LEARNING_RATE,
)
from explain.clip.live import MAX_BATCH, MAX_LOGIT_SCALE
from explain.clip.live import MAX_STEPS as MAX_LIVE_STEPS

__all__ = ["build"]


@dataclass(frozen=True)
class ClipOutputs:
    """The pseudocode section's outputs: created first (render=False), rendered in place."""

    logits: gr.Plot
    loss: gr.Markdown
    code: gr.Code
    image_to_text: gr.Dataframe
    text_to_image: gr.Dataframe

    @property
    def all(self) -> list:
        """In the order of :class:`~demo.tab_clip.forms.ClipRun`."""
        return [self.logits, self.code, self.image_to_text, self.text_to_image, self.loss]


@dataclass(frozen=True)
class BatchForm:
    """The batch of section 2: world samples, captions, uploads and exp(t)."""

    n_world: gr.Slider
    world_seed: gr.Number
    gallery: gr.Gallery
    texts: gr.Textbox
    uploads: gr.File
    override: gr.Checkbox
    scale: gr.Slider
    draw: gr.Button
    run: gr.Button


@dataclass(frozen=True)
class LiveForm:
    """Section 4's controls: what to train and how, Train and Stop."""

    n: gr.Slider
    steps: gr.Slider
    learning_rate: gr.Number
    learn_temperature: gr.Checkbox
    temperature: gr.Slider
    shuffle: gr.Checkbox
    seed: gr.Number
    train: gr.Button
    stop: gr.Button
    note: gr.Markdown

    @property
    def inputs(self) -> list:
        """In the order of :meth:`ClipTab.train_live`'s parameters."""
        return [
            self.n,
            self.steps,
            self.learning_rate,
            self.learn_temperature,
            self.temperature,
            self.shuffle,
            self.seed,
        ]


def build(tab) -> list:
    """Create the tab on ``tab`` (a :class:`ClipTab`; call inside ``gr.Tab``); returns :meth:`ClipTab.on_load`'s
    outputs."""
    lesson("clip")
    tokens = _build_tokens(tab)
    form, outputs = _build_pseudocode(tab)
    states = _build_zero_shot(tab)
    _build_live(tab)
    return [*tokens, form.gallery, form.texts, *outputs.all, *states]


def _build_tokens(tab) -> list:
    """Section 1: the 77 token slots of a prompt; returns the strip, the slot table and the summary."""
    gr.Markdown("### 1 · Tokenisation: the 77 slots")
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                prompt = gr.Textbox(tab.world.default_prompt, label="Prompt", lines=2, scale=4)
                tokenize_btn = gr.Button("Tokenise", variant="primary", scale=1)
            strip = gr.HTML()
            summary = gr.Markdown()
        with gr.Column(scale=1):
            explain(
                "CLIP's tokenizer fills **77 slots**: green **BOS** (start), blue word pieces (`·` ends a word), "
                "red **EOS** (end), grey **padding**. Unknown words are split into pieces. Anything past slot 75 "
                "is **cut** (red dashed) and never reaches the image model."
            )
    with gr.Accordion("Slot table", open=False):
        table = gr.Dataframe(headers=["slot", "token", "kind", "word"], label="Used slots", max_height=320)
    outputs = [strip, table, summary]
    tok_event = dict(fn=tab.tokenize, inputs=[prompt], outputs=outputs, concurrency_id=MODEL_CONCURRENCY)
    tokenize_btn.click(api_name="tokenize", **tok_event)
    prompt.submit(api_visibility="undocumented", **tok_event)
    gr.Examples(
        [[tab.world.default_prompt], ["a ginormous cube"], [", ".join([tab.world.presets[0].prompt] * 12)]],
        inputs=[prompt],
        outputs=outputs,
        fn=tab.tokenize,
        cache_examples=True,
        cache_mode="lazy",
        label="Presets",
        example_labels=["a normal prompt", "an unknown word → split into pieces", "too long → truncated"],
    )
    return outputs


def _build_pseudocode(tab) -> tuple[BatchForm, ClipOutputs]:
    """Section 2: the CLIP paper's pseudocode run on a batch of world samples (and uploads)."""
    gr.Markdown("### 2 · The CLIP pseudocode, run live on a batch")
    outputs = _pseudocode_outputs()
    with gr.Row():
        with gr.Column(scale=2):
            form = _batch_form(tab, outputs)
        with gr.Column(scale=3):
            outputs.logits.render()
            explain(
                "Each image and caption becomes a unit vector; the **logit** of image *i* and caption *j* is their "
                "cosine similarity × exp(t). The loss asks each **row** (image) to pick its caption and each "
                "**column** (caption) to pick its image. Swap two captions: the loss jumps. Lower exp(t): the "
                "softmaxes get softer."
            )
    outputs.code.render()
    with gr.Row():
        with gr.Column(scale=1):
            outputs.image_to_text.render()
        with gr.Column(scale=1):
            outputs.text_to_image.render()
        with gr.Column(scale=1):
            outputs.loss.render()
            explain(
                "**Rows** (image → text) feed loss_t, **columns** (text → image) feed loss_i. A perfect model "
                "puts all probability on the diagonal: loss → 0."
            )
    _wire_pseudocode(tab, form, outputs)
    return form, outputs


def _wire_pseudocode(tab, form: BatchForm, outputs: ClipOutputs) -> None:
    """Draw samples; run CLIP on the button, and again when exp(t) or its override changes."""
    form.draw.click(
        tab.sample_batch,
        [form.n_world, form.world_seed],
        [form.gallery, form.texts],
        api_name="clip_samples",
        concurrency_id=MODEL_CONCURRENCY,
    )
    inputs = [form.n_world, form.world_seed, form.uploads, form.texts, form.override, form.scale]
    form.run.click(tab.run_clip, inputs, outputs.all, api_name="clip_batch", concurrency_id=MODEL_CONCURRENCY)
    gr.on(
        [form.scale.release, form.override.input],
        tab.run_clip,
        inputs,
        outputs.all,
        api_visibility="undocumented",
        concurrency_id=MODEL_CONCURRENCY,
    )


def _pseudocode_outputs() -> ClipOutputs:
    """Logits plot, loss, pseudocode, row and column softmax tables, not rendered yet."""
    logits_plot = gr.Plot(
        show_label=False,
        label="n × n logits (rows: images, columns: captions)",
        format=PLOT_FORMAT,
        render=False,
        elem_id="clip-logits",
    )
    loss_md = gr.Markdown(render=False)
    code = gr.Code(
        language="python",
        label="The pseudocode, with this batch's values",
        lines=11,
        wrap_lines=True,
        render=False,
    )
    row_df = gr.Dataframe(label="Row softmax (image → text): rows sum to 1; loss_t uses it", render=False)
    col_df = gr.Dataframe(label="Column softmax (text → image): columns sum to 1; loss_i uses it", render=False)
    return ClipOutputs(logits_plot, loss_md, code, row_df, col_df)


def _batch_form(tab, outputs: ClipOutputs) -> BatchForm:
    """The batch: world samples, captions, uploads, exp(t) and the presets (left column of section 2)."""
    with gr.Row():
        n_world = gr.Slider(1, MAX_WORLD, value=4, step=1, label="World samples", scale=2)
        world_seed = seed_input(0, label="Sample seed", scale=1)
        draw = gr.Button("Draw", scale=1)
    gallery = gr.Gallery(
        elem_classes=["pixels"],
        label="Images I1, I2, …",
        columns=MAX_WORLD // 2,
        height=170,
        format="png",
        object_fit="contain",
    )
    texts = gr.Textbox(label="Captions T1, T2, … one per line (empty: the true captions)", lines=4)
    with gr.Accordion("Add your own images", open=False):
        uploads = gr.File(
            label="Images (type one caption line for each)",
            file_count="multiple",
            file_types=["image"],
            height=120,
        )
    with gr.Row():
        override = gr.Checkbox(False, label="Override the learned exp(t)")
        scale = gr.Slider(1, 100, value=10, step=0.5, label="exp(t) = 1 / temperature")
    run = gr.Button("Run CLIP", variant="primary")
    captions = [s.caption for s in tab.clip_world.samples(4, 0)]
    swapped = "\n".join([captions[1], captions[0], *captions[2:]])
    gr.Examples(
        [[4, 0, "", False, 10], [4, 0, swapped, False, 10], [4, 0, "", True, 2]],
        inputs=[n_world, world_seed, texts, override, scale],
        outputs=outputs.all,
        fn=lambda n, seed, text, ovr, sc: tab.run_clip(n, seed, None, text, ovr, sc),
        cache_examples=True,
        cache_mode="lazy",
        label="Presets",
        example_labels=["true captions", "T1 and T2 swapped: the loss jumps", "exp(t) = 2: soft, unsure"],
    )
    return BatchForm(n_world, world_seed, gallery, texts, uploads, override, scale, draw, run)


def _build_zero_shot(tab) -> list:
    """Section 3: zero-shot classification, and the text encoder's hidden states the U-Net attends to."""
    gr.Markdown("### 3 · Zero-shot classification, and the tensor Stable Diffusion really uses")
    with gr.Row():
        _zero_shot_columns(tab)
        with gr.Column(scale=1):
            hs_prompt = gr.Textbox(tab.world.default_prompt, label="Prompt for the U-Net", lines=2)
            hs_btn = gr.Button("Show what the U-Net gets")
            hs_md = gr.Markdown()
            hs_df = gr.Dataframe(
                headers=["slot", "token", "kind", "‖h‖", ""], label="Per-slot hidden states", max_height=300
            )
    hs_btn.click(
        tab.text_states, [hs_prompt], [hs_md, hs_df], api_name="text_states", concurrency_id=MODEL_CONCURRENCY
    )
    return [hs_md, hs_df]


def _zero_shot_columns(tab) -> None:
    """The image and candidate captions, then CLIP's guess and the presets (two columns of section 3)."""
    with gr.Column(scale=1):
        image = gr.Image(
            label="Image to classify", type="pil", height=200, format="png", sources=["upload", "clipboard"]
        )
        classes = gr.Textbox(
            "\n".join(tab.clip_world.default_candidates), label="Candidate captions, one per line", lines=6
        )
        classify = gr.Button("Classify", variant="primary")
    with gr.Column(scale=1):
        label = gr.Label(label="CLIP's guess: softmax over the captions", num_top_classes=6)
        examples = [[tab.clip_world.draw(z.prompt), "\n".join(z.candidates)] for z in tab.clip_world.zero_shot]
        gr.Examples(
            examples,
            inputs=[image, classes],
            outputs=[label],
            fn=tab.zero_shot,
            cache_examples=True,
            cache_mode="lazy",
            label="Presets: " + " ".join(dict.fromkeys(z.label.split(" (")[0] for z in tab.clip_world.zero_shot)),
            visible_columns=[0],
        )
        explain(
            "Zero-shot: no training for this task. CLIP embeds the image and every candidate caption and "
            "picks the caption whose vector points the same way."
        )
    classify.click(tab.zero_shot, [image, classes], [label], api_name="zero_shot", concurrency_id=MODEL_CONCURRENCY)


def _build_live(tab) -> None:
    """Section 4: train a tiny CLIP from scratch, live, and watch the matrix turn diagonal."""
    gr.Markdown("### 4 · Train a tiny CLIP live: watch the matrix turn diagonal")
    with gr.Row():
        with gr.Column(scale=2):
            form = _live_form()
            status = gr.Markdown(elem_id="clip-live-status")
            captions = gr.Markdown()
        with gr.Column(scale=3):
            matrix = gr.Image(
                label="n × n logits (rows: images, columns: captions T1…Tn; true pairs outlined)",
                format=IMAGE_FORMAT,
                interactive=False,
                height=420,
                elem_classes=["pixels"],
                elem_id="clip-live-matrix",
            )
            explain(
                "A fresh, random CLIP (both towers) learns only from this batch, with the seed's loss. At first "
                "every caption looks alike; step by step each image's row lights up on its own caption. Tick "
                "**shuffle captions**: it learns the wrong pairs just as well, so the diagonal is what the loss "
                "asks for, not something the pictures contain."
            )
    with gr.Row():
        losses = gr.LinePlot(x="step", y="value", color="curve", label="Losses", height=260)
        temperature = gr.LinePlot(x="step", y="temperature", label="Temperature 1 / exp(t)", height=260)
        projection = gr.Plot(label="The joint space in 2-D (PCA)", format=PLOT_FORMAT)
    with gr.Row():
        softmax = gr.Dataframe(label="Row softmax (image → text) of the last frame", max_height=300)
        with gr.Accordion("Every frame's numbers", open=False):
            history = gr.Dataframe(label="History", max_height=300)
    outputs = [matrix, losses, temperature, projection, softmax, history, captions, status]
    form.train.click(tab.train_live, form.inputs, outputs, api_name="clip_train", concurrency_id=MODEL_CONCURRENCY)
    form.train.click(lambda: "", None, [form.note], api_visibility="private", queue=False)
    # Stop must not wait behind the run it stops: its own group, no limit
    form.stop.click(tab.stop_live, None, [form.note], api_visibility="undocumented", concurrency_limit=None)


def _live_form() -> LiveForm:
    """Batch size, steps, learning rate, temperature (learned or fixed), shuffle, seed; Train and Stop."""
    d = LIVE_DEFAULTS
    with gr.Row():
        n = gr.Slider(2, MAX_BATCH, value=d["n"], step=1, label="Batch size n (pairs)", elem_id="clip-live-n")
        steps = gr.Slider(1, MAX_LIVE_STEPS, value=d["steps"], step=1, label="Steps", elem_id="clip-live-steps")
    with gr.Row():
        learning_rate = gr.Number(
            d["learning_rate"], label="Learning rate (Adam)", minimum=MIN_LEARNING_RATE, maximum=MAX_LEARNING_RATE
        )
        seed = seed_input(0, label="Seed (pairs, weights, shuffle)")
    with gr.Row():
        learn_temperature = gr.Checkbox(d["learn_temperature"], label="Learn the temperature (CLIP); untick: fixed")
        temperature = gr.Slider(
            1 / MAX_LOGIT_SCALE, 1, value=d["temperature"], step=0.01, label="Temperature 1 / exp(t) at the start"
        )
    shuffle = gr.Checkbox(False, label="Shuffle captions (train on wrong pairs)")
    with gr.Row():
        train = gr.Button("Train live", variant="primary", elem_id="clip-live-train")
        stop = gr.Button("Stop", variant="stop", elem_id="clip-live-stop")
    note = gr.Markdown()
    return LiveForm(n, steps, learning_rate, learn_temperature, temperature, shuffle, seed, train, stop, note)
