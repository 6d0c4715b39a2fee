"""Train a tiny CLIP live: the seed's contrastive loss minimised step by step on shapes-world pairs.

Radford et al. 2021 ("Learning Transferable Visual Models From Natural Language Supervision", Fig. 3) train
an image and a text encoder so that in a batch of ``n`` (image, text) pairs the matching pairs score highest::

    I_e = l2_normalize(image_encoder(I) @ W_i)      # [n, d_e]
    T_e = l2_normalize(text_encoder(T) @ W_t)       # [n, d_e]
    logits = I_e @ T_e.T * exp(t)                   # [n, n]   t: learned log-scale (temperature 1 / exp(t))
    loss = (CE(logits, labels, axis=0) + CE(logits, labels, axis=1)) / 2

:func:`train_clip_live` builds a fresh, randomly initialised open_clip ``CLIP``
(:func:`explain.clip.model.build_open_clip`, sized by :class:`LiveClipConfig`: one step costs about 0.03 s of CPU
time; its token table holds only the BPE ids the captions use), draws ``n`` scenes of the shapes world
(:mod:`explain.world`) with distinct captions once, and minimises :func:`explain.clip.contrastive.contrastive_loss`
with Adam (gradient norm clipped at 1), yielding a :class:`LiveFrame` every few steps: the ``n x n`` logits and both softmaxes, ``loss_i``,
``loss_t``, ``loss``, the temperature, the share of the softmax on the diagonal and a 2-D PCA picture of the joint
space (:mod:`explain.clip.projection`). As in the paper, ``t`` is clipped so that ``exp(t)`` never exceeds
:data:`MAX_LOGIT_SCALE`.

*Shuffled captions* train on wrong pairs (image ``k`` with caption ``targets[k]``, a derangement): the model
learns those just as well, and the diagonal (the true pairs) stays low, so the diagonal is what the loss asks
for, not something the images "contain".

Example:
    >>> for frame in train_clip_live(LiveTraining(n=8, steps=150)):
    ...     print(frame.step, round(frame.loss, 3), round(frame.diagonal_share, 2))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import open_clip
import torch

from explain.clip.contrastive import contrastive_loss, cross_entropy_loss
from explain.clip.model import build_open_clip
from explain.clip.projection import PROJECTION_MODES, JointProjection
from explain.world import render, sample_scene

__all__ = [
    "MAX_LOGIT_SCALE",
    "MAX_BATCH",
    "MAX_STEPS",
    "LiveClipConfig",
    "LiveTraining",
    "LiveBatch",
    "LiveFrame",
    "train_clip_live",
]

MAX_LOGIT_SCALE = 100.0  # Radford et al. 2021, Sec. 2.5: exp(t) clipped at 100 "to prevent training instability"
MAX_BATCH = 64  # largest n offered (an n x n matrix still readable on screen)
MAX_STEPS = 2000  # longest live run offered
CLIP_INIT_TEMPERATURE = 0.07  # Radford et al. 2021, Sec. 2.5: t initialised to log(1 / 0.07)
TOKENIZER_NAME = "ViT-B-32"  # open_clip's CLIP BPE tokenizer (ships its vocabulary: works offline)
_SCENE_TRIES_PER_PAIR = 50  # draws allowed per wanted pair before giving up on distinct captions


@dataclass(frozen=True)
class LiveClipConfig:
    """Size of the CLIP trained live (both towers are open_clip transformers).

    Attributes:
        image_size: Side of the square images in pixels (scenes are drawn at this size).
        patch_size: ViT patch side: ``(image_size / patch_size)²`` image tokens.
        width: Width of both towers.
        layers: Transformer blocks per tower.
        heads: Attention heads per block (head width ``width / heads``).
        embed_dim: ``d_e``, the joint space.
        context_length: Text token slots (captions must fit; checked).
    """

    image_size: int = 32
    patch_size: int = 8
    width: int = 64
    layers: int = 2
    heads: int = 2
    embed_dim: int = 32
    context_length: int = 32

    @classmethod
    def tiny(cls) -> LiveClipConfig:
        """Smallest useful model (tests of the plumbing)."""
        return cls(width=32, layers=1, embed_dim=16)

    def open_clip_config(self, vocab_size: int) -> dict:
        """The config dict :func:`explain.clip.model.build_open_clip` takes (the embedded CLIP's format)."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "width": self.width,
                "layers": self.layers,
                "head_width": self.width // self.heads,
            },
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": vocab_size,
                "width": self.width,
                "heads": self.heads,
                "layers": self.layers,
            },
        }


@dataclass(frozen=True)
class LiveTraining:
    """What to train and how.

    Attributes:
        n: Pairs in the batch (the ``n x n`` logits matrix).
        steps: Optimiser steps.
        learning_rate: Adam's learning rate.
        learn_temperature: Learn ``t`` (CLIP) or keep it at ``log(1 / temperature)``.
        temperature: Initial (or fixed) temperature ``1 / exp(t)``.
        shuffle_captions: Train on wrong pairs: image ``k`` with caption ``targets[k]`` (a derangement).
        seed: Seeds the scenes, the initial weights and the caption shuffle.
        frame_every: Yield a frame every this many steps (the first and last always).
        projection: ``"first"`` (PCA axes fixed at the first frame) or ``"track"`` (refitted, aligned).
        max_objects: Objects per scene (1-3).
        config: The model's size.
    """

    n: int = 8
    steps: int = 150
    learning_rate: float = 2e-3
    learn_temperature: bool = True
    temperature: float = CLIP_INIT_TEMPERATURE
    shuffle_captions: bool = False
    seed: int = 0
    frame_every: int = 1
    projection: str = "first"
    max_objects: int = 2
    config: LiveClipConfig = LiveClipConfig()

    def validate(self) -> LiveTraining:
        """Raise ``ValueError`` naming the first bad field; return self."""
        checks = [
            ("batch size n", self.n, 2, MAX_BATCH),
            ("steps", self.steps, 0, MAX_STEPS),
            ("frame_every", self.frame_every, 1, MAX_STEPS),
            ("max_objects", self.max_objects, 1, 3),
        ]
        for field, value, low, high in checks:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{field} must be a whole number from {low} to {high} (got {value!r}).")
        for field, value in (("learning rate", self.learning_rate), ("temperature", self.temperature)):
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and value > 0):
                raise ValueError(f"{field} must be a finite number above 0 (got {value!r}).")
        if 1.0 / self.temperature > MAX_LOGIT_SCALE:
            raise ValueError(f"temperature must be at least {1 / MAX_LOGIT_SCALE:g} (got {self.temperature}).")
        config = self.config
        if config.width % config.heads or config.image_size % config.patch_size:
            raise ValueError(f"config: width must divide by heads and image_size by patch_size (got {config}).")
        if self.projection not in PROJECTION_MODES:
            raise ValueError(f"unknown projection {self.projection!r}; choose from {', '.join(PROJECTION_MODES)}.")
        return self


@dataclass(frozen=True, eq=False)  # holds arrays
class LiveBatch:
    """The pairs of a live run, drawn once.

    Attributes:
        images: (n, S, S, 3) uint8, the scenes as the model sees them.
        captions: The ``n`` captions, in image order (caption ``j`` is the truth for image ``j``).
        targets: Caption index each image is trained with: ``arange(n)``, or a derangement when shuffled.
    """

    images: np.ndarray
    captions: tuple[str, ...]
    targets: tuple[int, ...]

    @property
    def shuffled(self) -> bool:
        return self.targets != tuple(range(len(self.targets)))


@dataclass(frozen=True, eq=False)  # holds arrays
class LiveFrame:
    """The model after ``step`` optimiser steps, evaluated on the batch.

    Columns are always the captions in their true order, so the diagonal holds the true pairs; the loss is the
    one being minimised (on ``batch.targets``).

    Attributes:
        step: Optimiser steps taken (0: the random initial model).
        steps: Steps the run was asked for.
        logits: (n, n) ``I_e @ T_e.T * exp(t)``, rows images, columns captions.
        probs_image_to_text: (n, n) row softmax (each row sums to 1).
        probs_text_to_image: (n, n) column softmax (each column sums to 1).
        loss_i: Cross-entropy over images (axis 0, text -> image) on the training targets.
        loss_t: Cross-entropy over texts (axis 1, image -> text) on the training targets.
        loss: ``(loss_i + loss_t) / 2``.
        t: The log-scale ``t``.
        logit_scale: ``exp(t)``.
        temperature: ``1 / exp(t)``.
        diagonal_share: Mean over images of the row softmax on the true caption, ``trace(P) / n``.
        target_share: Mean over images of the row softmax on the trained caption (= ``diagonal_share`` unshuffled).
        image_xy: (n, 2) images in the 2-D PCA picture of the joint space.
        text_xy: (n, 2) captions in the same picture.
        explained: Share of the joint points' variance the two axes show in this frame.
        seconds: Time since the run started.
        batch: The pairs (the same object in every frame).
    """

    step: int
    steps: int
    logits: np.ndarray
    probs_image_to_text: np.ndarray
    probs_text_to_image: np.ndarray
    loss_i: float
    loss_t: float
    loss: float
    t: float
    logit_scale: float
    temperature: float
    diagonal_share: float
    target_share: float
    image_xy: np.ndarray
    text_xy: np.ndarray
    explained: float
    seconds: float
    batch: LiveBatch


def _stopped(stop) -> bool:
    if stop is None:
        return False
    return bool(stop.is_set() if hasattr(stop, "is_set") else stop())


def _distinct_scenes(n: int, seed: int, size: int, max_objects: int):
    """``n`` rendered world scenes with distinct captions (two equal captions could never be told apart)."""
    rng = np.random.default_rng(seed)
    scenes, seen = [], set()
    for _ in range(n * _SCENE_TRIES_PER_PAIR):
        scene = render(sample_scene(rng, max_objects=max_objects), size, rng)
        if scene.caption not in seen:
            seen.add(scene.caption)
            scenes.append(scene)
            if len(scenes) == n:
                return scenes
    raise ValueError(f"could not draw {n} scenes with distinct captions; ask for fewer pairs")


def _derangement(n: int, generator: torch.Generator) -> tuple[int, ...]:
    """A random permutation of ``range(n)`` without fixed points (rejection sampling; about e tries)."""
    while True:
        perm = torch.randperm(n, generator=generator)
        if not bool((perm == torch.arange(n)).any()):
            return tuple(int(i) for i in perm)


def _tokens(tokenizer, captions: list[str], context_length: int) -> torch.Tensor:
    """(n, context_length) token ids; refuses captions the context would cut."""
    for caption in captions:
        used = len(tokenizer.encode(caption)) + 2  # + start and end of text
        if used > context_length:
            raise ValueError(f"caption {caption!r} needs {used} token slots; the config has {context_length}")
    return tokenizer(captions)


def _compact_ids(tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Token ids renumbered ``0..V-1`` over the ids the captions use, in id order, and ``V``.

    The other rows of the 49 408-row BPE embedding table would get no gradient and only cost optimiser time. Id
    order is kept, so padding (0) stays smallest and end-of-text (the largest BPE id) stays largest: open_clip's
    ``argmax`` pooling still picks the end-of-text slot.
    """
    used, compact = torch.unique(tokens, sorted=True, return_inverse=True)  # used: [V]; compact: like tokens
    return compact, int(used.numel())


def _make_batch(options: LiveTraining, generator: torch.Generator) -> LiveBatch:
    scenes = _distinct_scenes(options.n, options.seed, options.config.image_size, options.max_objects)
    targets = _derangement(options.n, generator) if options.shuffle_captions else tuple(range(options.n))
    return LiveBatch(np.stack([s.image for s in scenes]), tuple(s.caption for s in scenes), targets)


def _pixels(images: np.ndarray) -> torch.Tensor:
    """(n, S, S, 3) uint8 -> (n, 3, S, S) float in [-1, 1] (the embedded CLIP's preprocess: mean = std = 0.5)."""
    unit = torch.from_numpy(images).float() / np.iinfo(np.uint8).max  # [n, S, S, 3] in [0, 1]
    return (unit * 2 - 1).permute(0, 3, 1, 2).contiguous()


def _build_model(options: LiveTraining, vocab_size: int) -> torch.nn.Module:
    """A fresh CLIP from ``options.seed`` (global RNG state left as it was), ``t = log(1 / temperature)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        model = build_open_clip(options.config.open_clip_config(vocab_size))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1.0 / options.temperature))
    model.logit_scale.requires_grad_(options.learn_temperature)
    return model.train()


def _frame(step, options, I_e, T_e, scale, batch, inverse, projection, started) -> LiveFrame:
    """A frame from the batch's embeddings (detached): logits in true caption order, losses on the targets."""
    logits = (I_e @ T_e.T * scale).double()  # [n, n]
    targets = torch.tensor(batch.targets)
    loss_i = float(cross_entropy_loss(logits, inverse, axis=0))  # column j's target row: inverse[j]
    loss_t = float(cross_entropy_loss(logits, targets, axis=1))  # row i's target column: targets[i]
    rows = logits.softmax(dim=1)  # [n, n]
    xy, explained = projection(torch.cat([I_e, T_e]).double().numpy())  # [2n, 2]
    n = len(batch.targets)
    return LiveFrame(
        step=step,
        steps=options.steps,
        logits=logits.float().numpy(),
        probs_image_to_text=rows.float().numpy(),
        probs_text_to_image=logits.softmax(dim=0).float().numpy(),
        loss_i=loss_i,
        loss_t=loss_t,
        loss=(loss_i + loss_t) / 2,
        t=math.log(float(scale)),
        logit_scale=float(scale),
        temperature=1.0 / float(scale),
        diagonal_share=float(rows.diagonal().mean()),
        target_share=float(rows[torch.arange(n), targets].mean()),
        image_xy=xy[:n],
        text_xy=xy[n:],
        explained=explained,
        seconds=time.perf_counter() - started,
        batch=batch,
    )


def train_clip_live(
    options: LiveTraining | None = None, stop: Callable[[], bool] | object | None = None
) -> Iterator[LiveFrame]:
    """Train a fresh tiny CLIP on world pairs with the seed's loss and yield frames as it learns (module docstring).

    Args:
        options: What to train (default :class:`LiveTraining`); validated first (``ValueError``).
        stop: A ``threading.Event`` (or a callable returning True) that ends the run before the next step; the
            frame of the last finished step is yielded last.

    Yields:
        :class:`LiveFrame` at step 0, then every ``frame_every`` steps, and after the last step taken.
    """
    options = (options or LiveTraining()).validate()
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(options.seed)
    tokenizer = open_clip.get_tokenizer(TOKENIZER_NAME, context_length=options.config.context_length)
    batch = _make_batch(options, generator)
    images = _pixels(batch.images)  # [n, 3, S, S]
    tokens = _tokens(tokenizer, list(batch.captions), options.config.context_length)  # [n, L]
    tokens, vocab_size = _compact_ids(tokens)
    inverse = torch.argsort(torch.tensor(batch.targets))  # caption j is trained with image inverse[j]
    model = _build_model(options, vocab_size)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=options.learning_rate)
    projection = JointProjection(options.projection)
    step = 0
    while True:
        I_e, T_e, scale = model(images, tokens)  # [n, d_e], [n, d_e], exp(t)
        detached = (I_e.detach(), T_e.detach(), scale.detach())
        shown = step == options.steps or step % options.frame_every == 0
        if shown:
            yield _frame(step, options, *detached, batch, inverse, projection, started)
        if step == options.steps or _stopped(stop):  # checked after the consumer has seen the frame
            if not shown:
                yield _frame(step, options, *detached, batch, inverse, projection, started)
            return
        loss = contrastive_loss(I_e, T_e[list(batch.targets)], scale)  # image k with caption targets[k]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # gradient-norm clip at 1 (as training.train_clip): at a constant rate Adam could throw a learned batch off
        # again (seed 0, n = 8, unclipped: diagonal share 0.88 at step 150, 0.71 at step 200, 0.995 at step 250)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))  # the paper's clip at 100
        step += 1
