"""Tab 1, Prompt → CLIP: tokenisation, the CLIP contrastive pseudocode with live values, zero-shot, U-Net input."""

from __future__ import annotations

import html

import gradio as gr
import numpy as np
import torch
from PIL import Image

from demo.common import MODEL_CONCURRENCY, PLOT_FORMAT, explain, lesson, open_image, user_errors
from explain.clip.contrastive import contrastive_step, text_hidden_states, zero_shot
from explain.clip.tokens import TokenKind, tokenize_prompt
from explain.clip.vocabulary import unknown_words, unknown_words_message, vocabulary_of
from explain.io.figures import clip_logits_figure
from explain.world import Scene, WorldObject, make_batch, render

__all__ = ["ClipTab"]

MAX_WORLD = 8
MAX_UPLOADS = 8
PADDING_SHOWN = 3  # padding slots drawn before the "... xN" chip
LABEL_CHARS = 34  # text labels on the logits plot are cut to this many characters
DEFAULT_PROMPT = "a big red circle on the left and a small blue triangle on the right"
SHAPE_CLASSES = "\n".join(
    f"a red {shape} in the center" for shape in ("circle", "square", "triangle", "star", "heart", "diamond")
)
COLOR_CLASSES = "\n".join(
    f"a {color} star in the center" for color in ("red", "green", "blue", "yellow", "purple", "orange")
)
DEFAULT_CLASSES = SHAPE_CLASSES
CLIP_CODE_WIDTH = 53  # column where the live-value comments start


def _short(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _row_text(vector) -> str:
    values = np.asarray(vector, dtype=np.float64)[:4]
    return "[" + " ".join(f"{v:+.2f}" for v in values) + " …]"


class ClipTab:
    """Handlers (plain methods, testable without a server) and the layout of the CLIP tab."""

    def __init__(self, engine):
        self.engine = engine

    # -- handlers ---------------------------------------------------------------------------------------------------
    def tokenize(self, prompt: str) -> tuple[str, list[list], str]:
        """The 77 slots as coloured chips, a slot table (used slots) and a one-line summary."""

        with user_errors():
            if not prompt or not prompt.strip():
                raise ValueError("The prompt is empty: type a sentence to tokenise.")
            pipe = self.engine.pipeline()
            view = tokenize_prompt(pipe.tokenizer, prompt)
        word_of = {slot: w.text for w in view.words for slot in w.token_indices}
        unknown = unknown_words(view, vocabulary_of(pipe.text_encoder))
        unknown_slots = {slot for w in view.words if w.text.lower() in unknown for slot in w.token_indices}
        chips, rows = [], []
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
            if kind is not TokenKind.PADDING:
                rows.append([slot, token, kind.value, word_of.get(slot, "")])
        if n_pad > PADDING_SHOWN:
            chips.append(f'<span class="slot padding">… ×{n_pad - PADDING_SHOWN} more padding</span>')
        chips += [f'<span class="slot cut">✂ {html.escape(t)}</span>' for t in view.truncated]
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
            gr.Warning(f"The prompt is too long: {len(view.truncated)} tokens are cut off.")
        return f'<div class="slot-strip">{"".join(chips)}</div>', rows, summary

    def _world(self, n: int, seed: int):

        with user_errors():
            if not 1 <= int(n) <= MAX_WORLD:
                raise ValueError(f"choose 1 to {MAX_WORLD} world samples (got {n})")
            return make_batch(int(n), int(seed), size=self.engine.clip().image_size)

    def sample_batch(self, n: int, seed: int) -> tuple[list, str]:
        """World samples as a gallery and their true captions (one per line)."""
        scenes = self._world(n, seed)
        gallery = [(s.image, f"I{k + 1}: {s.caption}") for k, s in enumerate(scenes)]
        return gallery, "\n".join(s.caption for s in scenes)

    def run_clip(
        self, n: int, seed: int, uploads: list[str] | None, texts: str, override: bool, scale: float
    ) -> tuple[object, str, list[list], list[list], str]:
        """The seed's CLIP pseudocode on (world samples + uploads) x texts; every intermediate shown."""

        scenes = self._world(n, seed)
        uploads = list(uploads or [])
        if len(uploads) > MAX_UPLOADS:
            raise gr.Error(f"At most {MAX_UPLOADS} uploaded images (got {len(uploads)}).")
        images = [Image.fromarray(s.image) for s in scenes] + [open_image(p, "uploaded image") for p in uploads]
        lines = [t.strip() for t in (texts or "").splitlines() if t.strip()]
        if not lines:
            if uploads:
                raise gr.Error("Type one caption per line: one for each world sample, then one for each upload.")
            lines = [s.caption for s in scenes]
        if len(lines) != len(images):
            raise gr.Error(
                f"{len(images)} images but {len(lines)} captions: give exactly one caption per line per image."
            )
        if override and not scale > 0:
            raise gr.Error("exp(t) must be > 0.")
        bundle = self.engine.clip()
        with user_errors():
            batch = torch.stack([bundle.preprocess(im) for im in images])  # [n, 3, S, S]
            result = contrastive_step(
                bundle.model, batch, bundle.tokenizer(lines), temperature_override=1.0 / scale if override else None
            )
        n_pairs = len(images)
        thumbs = [
            np.asarray(im.resize((bundle.image_size, bundle.image_size)), dtype=np.float32) / 255.0 for im in images
        ]
        logits = result.logits.cpu().numpy()
        fig = clip_logits_figure(
            logits,
            [f"I{k + 1}" for k in range(n_pairs)],
            [f"T{k + 1}: {_short(t)}" for k, t in enumerate(lines)],
            images=thumbs,
            title=f"logits = I_e · T_eᵀ × exp(t) = {result.logit_scale:.1f}   (matched pairs boxed)",
        )
        scale_note = "learned" if not override else "set by the slider"
        code = "\n".join(
            f"{line:<{CLIP_CODE_WIDTH}}# {note}"
            for line, note in [
                (f"# n = {n_pairs} (image, text) pairs", ""),
                ("I_f = image_encoder(I)", f"{list(result.I_f.shape)}  I_f[0] = {_row_text(result.I_f[0])}"),
                ("T_f = text_encoder(T)", f"{list(result.T_f.shape)}  T_f[0] = {_row_text(result.T_f[0])}"),
                (
                    "I_e = l2_normalize(np.dot(I_f, W_i), axis=1)",
                    f"{list(result.I_e.shape)}  W_i {list(result.W_i.shape) if result.W_i is not None else 'built in'}",
                ),
                (
                    "T_e = l2_normalize(np.dot(T_f, W_t), axis=1)",
                    f"{list(result.T_e.shape)}  |T_e[0]| = {float(result.T_e[0].norm()):.3f}",
                ),
                (
                    "logits = np.dot(I_e, T_e.T) * np.exp(t)",
                    f"{list(result.logits.shape)}  exp(t) = {result.logit_scale:.2f} ({scale_note}; learned t = {result.t:.3f})",
                ),
                ("labels = np.arange(n)", f"{result.labels.tolist()}"),
                (
                    "loss_i = cross_entropy_loss(logits, labels, axis=0)",
                    f"{result.loss_i:.4f}  (over images: text → image)",
                ),
                (
                    "loss_t = cross_entropy_loss(logits, labels, axis=1)",
                    f"{result.loss_t:.4f}  (over texts: image → text)",
                ),
                ("loss = (loss_i + loss_t) / 2", f"{result.loss:.4f}"),
            ]
        ).replace("# \n", "\n")
        header = [""] + [f"T{j + 1}" for j in range(n_pairs)]
        rows = [[f"I{i + 1}"] + [round(float(p), 3) for p in row] for i, row in enumerate(result.probs_image_to_text)]
        cols = [[f"I{i + 1}"] + [round(float(p), 3) for p in row] for i, row in enumerate(result.probs_text_to_image)]
        diag = np.diag(logits)
        correct_rows = int((logits.argmax(axis=1) == np.arange(n_pairs)).sum())
        summary = (
            f"**loss = {result.loss:.3f}** (loss_i {result.loss_i:.3f}, loss_t {result.loss_t:.3f}). "
            f"{correct_rows} of {n_pairs} images pick their own caption; mean matched logit {diag.mean():.2f} vs "
            f"mean other {(logits.sum() - diag.sum()) / max(1, n_pairs * n_pairs - n_pairs):.2f}."
        )
        return fig, code, {"headers": header, "data": rows}, {"headers": header, "data": cols}, summary

    def zero_shot(self, image, classes: str) -> dict[str, float]:
        """Zero-shot classification: softmax over the candidate captions of exp(t)·cos(I_e, T_e)."""

        if image is None:
            raise gr.Error("Upload an image (or click a preset) to classify.")
        labels = [c.strip() for c in (classes or "").splitlines() if c.strip()]
        if len(labels) < 2:
            raise gr.Error("Give at least two candidate captions, one per line.")
        bundle = self.engine.clip()
        with user_errors():
            scores = zero_shot(bundle.model, bundle.tokenizer, image, labels, preprocess=bundle.preprocess)
        return dict(scores)

    def text_states(self, prompt: str) -> tuple[str, list[list]]:
        """Per-token hidden states (what the U-Net attends to) vs the pooled EOS vector (what CLIP's loss sees)."""

        with user_errors():
            if not prompt or not prompt.strip():
                raise ValueError("The prompt is empty.")
            pipe = self.engine.pipeline()
            view = tokenize_prompt(pipe.tokenizer, prompt)
        bundle = self.engine.clip()
        states = text_hidden_states(bundle.model, bundle.tokenizer([prompt]))
        hidden = states.hidden_states[0]  # [L, width]
        eos = int(states.pooled_index[0])
        norms = hidden.norm(dim=-1)
        rows = [
            [
                slot,
                view.tokens[slot],
                view.kinds[slot].value,
                round(float(norms[slot]), 2),
                "← pooled: T_f" if slot == eos else "",
            ]
            for slot in range(min(len(view.tokens), view.n_used + PADDING_SHOWN))
        ]
        text = (
            f"**The U-Net gets all {hidden.shape[0]} rows**: `encoder_hidden_states` of shape "
            f"`[1, {hidden.shape[0]}, {hidden.shape[1]}]` (the text encoder's `last_hidden_state`; this model's "
            f"cross-attention expects width {pipe.unet.config.cross_attention_dim}). These become K and V in every "
            f"cross-attention layer.\n\n**CLIP's loss sees one row**: slot {eos} (EOS), `T_f` `[1, {states.pooled.shape[1]}]`, "
            f"projected by `W_t` to `T_e` `[1, {states.embedding.shape[1]}]`."
        )
        return text, rows

    def on_load(self) -> tuple:
        """What the tab shows when the page opens: the default prompt tokenised, a batch of 4 through CLIP."""
        gallery, texts = self.sample_batch(4, 0)
        return (
            *self.tokenize(DEFAULT_PROMPT),
            gallery,
            texts,
            *self.run_clip(4, 0, None, "", False, 10),
            *self.text_states(DEFAULT_PROMPT),
        )

    # -- layout -----------------------------------------------------------------------------------------------------
    def build(self) -> list:
        """Create the tab's components and events (call inside ``gr.Tab``); returns the outputs of :meth:`on_load`."""
        lesson("clip")
        strip, table, summary = self._build_tokens()
        gallery, texts, clip_outputs = self._build_pseudocode()
        hs_md, hs_df = self._build_zero_shot()
        return [strip, table, summary, gallery, texts, *clip_outputs, hs_md, hs_df]

    def _build_tokens(self) -> tuple:
        """Section 1: the 77 token slots of a prompt."""
        gr.Markdown("### 1 · Tokenisation: the 77 slots")
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", lines=2, scale=4)
                    tokenize_btn = gr.Button("Tokenise", variant="primary", scale=1)
                strip = gr.HTML()
                summary = gr.Markdown()
            with gr.Column(scale=1):
                explain(
                    "CLIP's tokenizer fills **77 slots**: green **BOS** (start), blue word pieces (`·` ends a word), "
                    "red **EOS** (end), grey **padding**. Unknown words are split into pieces. Anything past slot 75 "
                    "is **cut** (red dashed) and never reaches the image model."
                )
        tok_outputs = [strip, None, summary]
        with gr.Accordion("Slot table", open=False):
            table = gr.Dataframe(headers=["slot", "token", "kind", "word"], label="Used slots", max_height=320)
        tok_outputs[1] = table
        tok_event = dict(fn=self.tokenize, inputs=[prompt], outputs=tok_outputs, concurrency_id=MODEL_CONCURRENCY)
        tokenize_btn.click(api_name="tokenize", **tok_event)
        prompt.submit(api_visibility="undocumented", **tok_event)
        gr.Examples(
            [[DEFAULT_PROMPT], ["a ginormous cube"], [", ".join(["a big red circle on the left"] * 12)]],
            inputs=[prompt],
            outputs=tok_outputs,
            fn=self.tokenize,
            cache_examples=True,
            cache_mode="lazy",
            label="Presets",
            example_labels=["a normal prompt", "an unknown word → split into pieces", "too long → truncated"],
        )
        return strip, table, summary

    def _build_pseudocode(self) -> tuple:
        """Section 2: the CLIP paper's pseudocode run on a batch of world samples (and uploads)."""
        gr.Markdown("### 2 · The CLIP pseudocode, run live on a batch")
        logits_plot, code, row_df, col_df, loss_md = self._pseudocode_outputs()
        clip_outputs = [logits_plot, code, row_df, col_df, loss_md]
        with gr.Row():
            n_world, world_seed, gallery, texts, uploads, override, scale, sample_btn, run_btn = self._batch_form(
                clip_outputs
            )
            with gr.Column(scale=3):
                logits_plot.render()
                explain(
                    "Each image and caption becomes a unit vector; the **logit** of image *i* and caption *j* is their "
                    "cosine similarity × exp(t). The loss asks each **row** (image) to pick its caption and each "
                    "**column** (caption) to pick its image. Swap two captions: the loss jumps. Lower exp(t): the "
                    "softmaxes get softer."
                )
        code.render()
        with gr.Row():
            with gr.Column(scale=1):
                row_df.render()
            with gr.Column(scale=1):
                col_df.render()
            with gr.Column(scale=1):
                loss_md.render()
                explain(
                    "**Rows** (image → text) feed loss_t, **columns** (text → image) feed loss_i. A perfect model "
                    "puts all probability on the diagonal: loss → 0."
                )
        sample_btn.click(
            self.sample_batch,
            [n_world, world_seed],
            [gallery, texts],
            api_name="clip_samples",
            concurrency_id=MODEL_CONCURRENCY,
        )
        clip_inputs = [n_world, world_seed, uploads, texts, override, scale]
        run_btn.click(
            self.run_clip, clip_inputs, clip_outputs, api_name="clip_batch", concurrency_id=MODEL_CONCURRENCY
        )
        gr.on(
            [scale.release, override.input],
            self.run_clip,
            clip_inputs,
            clip_outputs,
            api_visibility="undocumented",
            concurrency_id=MODEL_CONCURRENCY,
        )
        return gallery, texts, clip_outputs

    @staticmethod
    def _pseudocode_outputs() -> tuple:
        """Logits plot, pseudocode, row and column softmax tables, loss: created first, rendered in place."""
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
        return logits_plot, code, row_df, col_df, loss_md

    def _batch_form(self, clip_outputs: list) -> tuple:
        """The batch: world samples, captions, uploads, exp(t) and the presets (left column of section 2)."""
        with gr.Column(scale=2):
            with gr.Row():
                n_world = gr.Slider(1, MAX_WORLD, value=4, step=1, label="World samples", scale=2)
                world_seed = gr.Number(0, label="Sample seed", precision=0, minimum=0, scale=1)
                sample_btn = gr.Button("Draw", scale=1)
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
            run_btn = gr.Button("Run CLIP", variant="primary")
            captions = [s.caption for s in make_batch(4, 0)]
            swapped = "\n".join([captions[1], captions[0], *captions[2:]])
            gr.Examples(
                [[4, 0, "", False, 10], [4, 0, swapped, False, 10], [4, 0, "", True, 2]],
                inputs=[n_world, world_seed, texts, override, scale],
                outputs=clip_outputs,
                fn=lambda n, seed, text, ovr, sc: self.run_clip(n, seed, None, text, ovr, sc),
                cache_examples=True,
                cache_mode="lazy",
                label="Presets",
                example_labels=["true captions", "T1 and T2 swapped: the loss jumps", "exp(t) = 2: soft, unsure"],
            )
        return n_world, world_seed, gallery, texts, uploads, override, scale, sample_btn, run_btn

    def _build_zero_shot(self) -> tuple:
        """Section 3: zero-shot classification, and the text encoder's hidden states the U-Net attends to."""
        gr.Markdown("### 3 · Zero-shot classification, and the tensor Stable Diffusion really uses")
        with gr.Row():
            with gr.Column(scale=1):
                zs_image = gr.Image(
                    label="Image to classify", type="pil", height=200, format="png", sources=["upload", "clipboard"]
                )
                zs_classes = gr.Textbox(DEFAULT_CLASSES, label="Candidate captions, one per line", lines=6)
                zs_btn = gr.Button("Classify", variant="primary")
            with gr.Column(scale=1):
                zs_label = gr.Label(label="CLIP's guess: softmax over the captions", num_top_classes=6)
                examples = [
                    [render(Scene((WorldObject("red", "heart", "in the center", "big"),))).image, SHAPE_CLASSES],
                    [render(Scene((WorldObject("red", "triangle", "in the center", "big"),))).image, SHAPE_CLASSES],
                    [render(Scene((WorldObject("blue", "star", "in the center", "big"),))).image, COLOR_CLASSES],
                ]
                gr.Examples(
                    examples,
                    inputs=[zs_image, zs_classes],
                    outputs=[zs_label],
                    fn=self.zero_shot,
                    cache_examples=True,
                    cache_mode="lazy",
                    label="Presets: which shape? which colour?",
                    visible_columns=[0],
                )
                explain(
                    "Zero-shot: no training for this task. CLIP embeds the image and every candidate caption and "
                    "picks the caption whose vector points the same way."
                )
            with gr.Column(scale=1):
                hs_prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt for the U-Net", lines=2)
                hs_btn = gr.Button("Show what the U-Net gets")
                hs_md = gr.Markdown()
                hs_df = gr.Dataframe(
                    headers=["slot", "token", "kind", "‖h‖", ""], label="Per-slot hidden states", max_height=300
                )
        zs_btn.click(
            self.zero_shot, [zs_image, zs_classes], [zs_label], api_name="zero_shot", concurrency_id=MODEL_CONCURRENCY
        )
        hs_btn.click(
            self.text_states, [hs_prompt], [hs_md, hs_df], api_name="text_states", concurrency_id=MODEL_CONCURRENCY
        )
        return hs_md, hs_df
