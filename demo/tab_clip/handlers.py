"""The CLIP tab's handlers: plain methods of :class:`ClipTab`, testable without a server."""

from __future__ import annotations

import gradio as gr
import numpy as np
import torch
from PIL import Image

from demo.common import SessionStops, open_image, session_id, user_errors
from demo.tab_clip import layout, views
from demo.tab_clip.forms import (
    MAX_UPLOADS,
    MAX_WORLD,
    Batch,
    ClipRun,
    Live,
    Loaded,
    TextStates,
    Tokens,
    live_training,
)
from explain.clip.contrastive import contrastive_step, text_hidden_states, zero_shot
from explain.clip.live import train_clip_live
from explain.clip.tokens import tokenize_prompt
from explain.clip.vocabulary import unknown_words, vocabulary_of
from explain.diffusion.geometry import context_width
from explain.io.figures import clip_logits_figure
from explain.joint.recording import is_joint_pipeline

__all__ = ["ClipTab"]


class ClipTab:
    """Handlers (plain methods, testable without a server) and the layout of the CLIP tab."""

    def __init__(self, engine):
        self.engine = engine
        self.world = engine.world()  # the pipeline's world: the prompts tokenised (explain.world.content)
        self.clip_world = engine.clip_world()  # the CLIP's world: its samples and zero-shot presets
        self._live = SessionStops()  # session -> the stop flag of its live training run

    def build(self) -> list:
        """Create the tab's components and events (call inside ``gr.Tab``); returns the outputs of :meth:`on_load`."""
        return layout.build(self)

    # -- handlers ---------------------------------------------------------------------------------------------------
    def _token_view(self, prompt: str, empty: str):
        """The pipeline and the tokenisation of ``prompt`` (a gr.Error with ``empty`` when it is blank)."""
        with user_errors():
            if not prompt or not prompt.strip():
                raise ValueError(empty)
            pipe = self.engine.pipeline()
            return pipe, tokenize_prompt(pipe.tokenizer, prompt)

    def tokenize(self, prompt: str) -> Tokens:
        """The 77 slots as coloured chips, a slot table (used slots) and a one-line summary."""

        pipe, view = self._token_view(prompt, "The prompt is empty: type a sentence to tokenise.")
        unknown = unknown_words(view, vocabulary_of(pipe.text_encoder))
        tokens = Tokens(views.slot_strip(view, unknown), views.slot_rows(view), views.token_summary(view, unknown))
        if view.truncated:
            gr.Warning(f"The prompt is too long: {len(view.truncated)} tokens are cut off.")
        return tokens

    def _world(self, n: int, seed: int):
        with user_errors():
            if not 1 <= int(n) <= MAX_WORLD:
                raise ValueError(f"choose 1 to {MAX_WORLD} world samples (got {n})")
            return self.clip_world.samples(int(n), int(seed))  # at the world's size (CLIP's preprocess resizes)

    def sample_batch(self, n: int, seed: int) -> Batch:
        """World samples as a gallery and their true captions (one per line)."""
        scenes = self._world(n, seed)
        gallery = [(s.image, f"I{k + 1}: {s.caption}") for k, s in enumerate(scenes)]
        return Batch(gallery, "\n".join(s.caption for s in scenes))

    def _pairs(self, n: int, seed: int, uploads: list[str] | None, texts: str) -> tuple[list, list[str]]:
        """The batch's images (world samples, then uploads) and one caption per image (default: the true ones)."""
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
        return images, lines

    def run_clip(
        self, n: int, seed: int, uploads: list[str] | None, texts: str, override: bool, scale: float
    ) -> ClipRun:
        """The seed's CLIP pseudocode on (world samples + uploads) x texts; every intermediate shown."""

        images, lines = self._pairs(n, seed, uploads, texts)
        if override and not scale > 0:
            raise gr.Error("exp(t) must be > 0.")
        bundle = self.engine.clip()
        with user_errors():
            batch = torch.stack([bundle.preprocess(im) for im in images])  # [n, 3, S, S]
            result = contrastive_step(
                bundle.model, batch, bundle.tokenizer(lines), temperature_override=1.0 / scale if override else None
            )
        n_pairs = len(images)
        side = bundle.image_size
        thumbs = [np.asarray(im.resize((side, side)), dtype=np.float32) / 255.0 for im in images]
        figure = clip_logits_figure(
            result.logits.cpu().numpy(),
            [f"I{k + 1}" for k in range(n_pairs)],
            [f"T{k + 1}: {views.short(t)}" for k, t in enumerate(lines)],
            images=thumbs,
            title=f"logits = I_e · T_eᵀ × exp(t) = {result.logit_scale:.1f}   (matched pairs boxed)",
        )
        return ClipRun(
            figure=figure,
            code=views.pseudocode(result, n_pairs, override),
            image_to_text=views.softmax_table(result.probs_image_to_text),
            text_to_image=views.softmax_table(result.probs_text_to_image),
            loss=views.loss_summary(result, n_pairs),
        )

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

    def text_states(self, prompt: str) -> TextStates:
        """Per-token hidden states (what the U-Net attends to) vs the pooled EOS vector (what CLIP's loss sees)."""

        pipe, view = self._token_view(prompt, "The prompt is empty.")
        bundle = self.engine.clip()
        states = text_hidden_states(bundle.model, bundle.tokenizer([prompt]))
        pooled = int(states.pooled_index[0])
        return TextStates(
            text=views.text_state_summary(states.shapes, pooled, context_width(pipe), is_joint_pipeline(pipe)),
            states=views.text_state_rows(view, states.slot_norms[0], pooled),
        )

    def train_live(
        self, n, steps, learning_rate, learn_temperature, temperature, shuffle, seed, request: gr.Request = None
    ):
        """Train a fresh tiny CLIP on world pairs (:func:`explain.clip.live.train_clip_live`), a frame at a time.

        Each optimiser chunk runs under the engine's lock (a generation and a live run never share the CPU); the
        session's Stop ends the run after the current step, and its last frame is shown.
        """
        options = live_training(n, steps, learning_rate, learn_temperature, temperature, shuffle, seed)
        session = session_id(request)
        stop = self._live.start(session)
        frames = train_clip_live(options, stop)
        history = []
        try:
            while True:
                with self.engine.lock, user_errors():  # per frame: a generator may resume in another thread
                    frame = next(frames, None)
                if frame is None:
                    return
                history.append(frame)
                yield Live(
                    matrix=views.live_matrix(frame),
                    losses=views.loss_curves(history),
                    temperature=views.temperature_curve(history),
                    projection=views.projection_figure(frame),
                    softmax=views.softmax_table(frame.probs_image_to_text),
                    history=views.history_table(history),
                    captions=views.live_captions(frame),
                    status=views.live_status(frame, stopped=stop.is_set() and frame.step < frame.steps),
                )
        finally:
            frames.close()
            self._live.finish(session, stop)

    def stop_live(self, request: gr.Request = None) -> str:
        """Ask this session's live training run to stop after the current step."""
        if self._live.stop(session_id(request)):
            return "⏹ Stopping after the current step: the last frame stays."
        return "Nothing is training."

    def on_load(self) -> Loaded:
        """What the tab shows when the page opens: the default prompt tokenised, a batch of 4 through CLIP."""
        parts = (
            self.tokenize(self.world.default_prompt),
            self.sample_batch(4, 0),
            self.run_clip(4, 0, None, "", False, 10),
            self.text_states(self.world.default_prompt),
        )
        return Loaded(**{name: value for part in parts for name, value in part._asdict().items()})
