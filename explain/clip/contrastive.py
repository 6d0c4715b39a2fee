"""CLIP's contrastive objective, the seed's pseudocode run literally on an open_clip model (Radford et al. 2021).

The paper's Figure 3 pseudocode, which this module follows line by line::

    I_f = image_encoder(I)                       # [n, d_i]  features BEFORE the projection
    T_f = text_encoder(T)                        # [n, d_t]
    I_e = l2_normalize(np.dot(I_f, W_i), axis=1) # [n, d_e]  joint multimodal embedding
    T_e = l2_normalize(np.dot(T_f, W_t), axis=1) # [n, d_e]
    logits = np.dot(I_e, T_e.T) * np.exp(t)      # [n, n]    rows: images, columns: texts
    labels = np.arange(n)                        # image k belongs with text k
    loss_i = cross_entropy_loss(logits, labels, axis=0)
    loss_t = cross_entropy_loss(logits, labels, axis=1)
    loss   = (loss_i + loss_t) / 2

Which direction is which: ``logits[i, j]`` compares image ``i`` with text ``j``.

* ``loss_i`` (``axis=0``) normalises over the **image** axis: for each text (column), which image? That is
  **text -> image** retrieval, ``F.cross_entropy(logits.T, labels)``, open_clip's ``logits_per_text`` term.
* ``loss_t`` (``axis=1``) normalises over the **text** axis: for each image (row), which text? That is
  **image -> text**, the zero-shot classification direction, ``F.cross_entropy(logits, labels)``, open_clip's
  ``logits_per_image`` term.

The mean of the two equals open_clip's ``ClipLoss`` (tested to 1e-5).

Where open_clip keeps the pieces (open_clip 3.x): the ViT tower's pooled, ``ln_post``-normalised class token is
``I_f`` and ``model.visual.proj`` (``[width, embed_dim]``) is ``W_i``; the text tower's final-layer-normed hidden
state at the end-of-text token is ``T_f`` and ``model.text_projection`` is ``W_t``; ``model.logit_scale`` is ``t``
(a *log* scale: the logits are multiplied by ``exp(t)``, i.e. divided by the temperature ``1 / exp(t)``). Towers
whose projection is built into the tower (ModifiedResNet's attention pool, timm heads) have no separate ``W_i``: the
result then says so and uses the identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import nn

__all__ = [
    "ContrastiveResult",
    "TextHiddenStates",
    "contrastive_step",
    "contrastive_loss",
    "cross_entropy_loss",
    "text_hidden_states",
    "zero_shot",
]


@dataclass(frozen=True, eq=False)
class ContrastiveResult:
    """Every intermediate of the pseudocode for one batch of ``n`` (image, text) pairs.

    Attributes:
        I_f: image features before projection, ``[n, d_i]``.
        T_f: text features before projection (end-of-text token), ``[n, d_t]``.
        W_i: image projection ``[d_i, d_e]``, or ``None`` when the tower has no separate projection.
        W_t: text projection ``[d_t, d_e]``, or ``None`` likewise.
        b_t: bias of the text projection when it is an ``nn.Linear`` with bias, else ``None``, ``[d_e]``.
        I_e, T_e: L2-normalised joint embeddings, ``[n, d_e]``.
        logits: ``I_e @ T_e.T * exp(t)``, ``[n, n]``, rows images, columns texts.
        t: the model's learned log-scale ``model.logit_scale``.
        logit_scale: the multiplier actually used, ``exp(t)`` or ``1 / temperature_override``.
        probs_image_to_text: row softmax of ``logits`` (each row sums to 1), ``[n, n]``.
        probs_text_to_image: column softmax of ``logits`` (each column sums to 1), ``[n, n]``.
        labels: ``arange(n)``, ``[n]``.
        loss_i: cross-entropy along axis 0 (over images, text -> image).
        loss_t: cross-entropy along axis 1 (over texts, image -> text).
        loss: ``(loss_i + loss_t) / 2``.
        image_projection: where ``W_i`` came from (or why there is none).
        text_projection: where ``W_t`` came from (or why there is none).
    """

    I_f: torch.Tensor  # [n, d_i]
    T_f: torch.Tensor  # [n, d_t]
    W_i: torch.Tensor | None  # [d_i, d_e]
    W_t: torch.Tensor | None  # [d_t, d_e]
    b_t: torch.Tensor | None  # [d_e]
    I_e: torch.Tensor  # [n, d_e]
    T_e: torch.Tensor  # [n, d_e]
    logits: torch.Tensor  # [n, n]
    t: float
    logit_scale: float
    probs_image_to_text: torch.Tensor  # [n, n]
    probs_text_to_image: torch.Tensor  # [n, n]
    labels: torch.Tensor  # [n]
    loss_i: float
    loss_t: float
    loss: float
    image_projection: str
    text_projection: str

    @property
    def shapes(self) -> dict[str, list[int] | None]:
        """Shapes of the features, projections (None: built into the tower) and embeddings, by pseudocode name."""
        named = {"I_f": self.I_f, "T_f": self.T_f, "W_i": self.W_i, "W_t": self.W_t, "I_e": self.I_e, "T_e": self.T_e}
        return {name: None if x is None else list(x.shape) for name, x in named.items()}

    @property
    def matched(self) -> int:
        """Images whose highest logit is their own caption (the diagonal wins its row)."""
        return int((self.logits.argmax(dim=1) == self.labels.to(self.logits.device)).sum())

    @property
    def mean_matched_logit(self) -> float:
        """Mean logit of the matched pairs (the diagonal)."""
        return float(self.logits.diagonal().mean())

    @property
    def mean_other_logit(self) -> float:
        """Mean logit of the unmatched pairs (off the diagonal; 0 for a batch of one)."""
        n = self.logits.shape[0]
        return float((self.logits.sum() - self.logits.diagonal().sum()) / max(1, n * n - n))


@dataclass(frozen=True, eq=False)
class TextHiddenStates:
    """The text tower's per-token output vs its pooled embedding.

    Stable Diffusion's U-Net cross-attends to *all* ``hidden_states`` (one vector per token slot, padding included:
    SD v1 uses ``CLIPTextModel.last_hidden_state``, the same tensor); CLIP's contrastive loss sees only the pooled
    end-of-text vector, projected.

    Attributes:
        tokens: token ids, ``[n, L]`` (``L`` = context length, 77 for CLIP).
        hidden_states: after the final layer norm, ``[n, L, width]``.
        pooled_index: which slot is pooled (the end-of-text token for ``argmax`` pooling), ``[n]``.
        pooled: ``hidden_states[k, pooled_index[k]]``, ``[n, width]`` (= ``T_f``).
        embedding: ``pooled`` projected to the joint space (not normalised), ``[n, d_e]``.
    """

    tokens: torch.Tensor  # [n, L]
    hidden_states: torch.Tensor  # [n, L, width]
    pooled_index: torch.Tensor  # [n]
    pooled: torch.Tensor  # [n, width]
    embedding: torch.Tensor  # [n, d_e]

    @property
    def shapes(self) -> dict[str, list[int]]:
        """Shapes of ``hidden_states`` ([n, L, width]), ``pooled`` ([n, width]) and ``embedding`` ([n, d_e])."""
        return {name: list(getattr(self, name).shape) for name in ("hidden_states", "pooled", "embedding")}

    @property
    def slot_norms(self) -> torch.Tensor:
        """‖h‖ of every slot's hidden state, ``[n, L]``."""
        return self.hidden_states.norm(dim=-1)


@dataclass(frozen=True, eq=False)
class _Projection:
    weight: torch.Tensor | None  # [d_in, d_e]
    bias: torch.Tensor | None  # [d_e]
    note: str

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.weight is None else x @ self.weight
        return y if self.bias is None else y + self.bias


def _projection(proj: nn.Parameter | nn.Linear | None, name: str) -> _Projection:
    if proj is None:
        return _Projection(None, None, f"{name} is None: no separate projection, identity used")
    if isinstance(proj, nn.Linear):
        note = f"{name} is nn.Linear: W = weight.T" + (" plus bias" if proj.bias is not None else "")
        return _Projection(proj.weight.T, proj.bias, note)
    return _Projection(proj, None, f"{name}: [{proj.shape[0]}, {proj.shape[1]}] matrix, x @ W")


def _image_tower(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, _Projection]:
    """``I_f`` and ``W_i``: mirrors ``VisionTransformer.forward`` (embeds, transformer, pool) and stops before proj."""

    visual = model.visual
    if isinstance(visual, VisionTransformer):
        x = visual._embeds(images)  # [n, 1 + grid**2, width]
        x = visual.transformer(x)
        pooled, _ = visual._pool(x)  # [n, width]
        return pooled, _projection(visual.proj, "visual.proj")
    note = f"{type(visual).__name__} projects inside the tower: I_f is already in the joint space, W_i = identity"
    return model.encode_image(images), _Projection(None, None, note)


def _text_tower(
    model: nn.Module, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, _Projection]:
    """Hidden states ``[n, L, width]``, pooled index ``[n]``, ``T_f`` ``[n, width]`` and ``W_t``.

    Mirrors ``CLIP.encode_text`` / ``TextTransformer.forward`` and stops before the projection.
    """

    if isinstance(model, CLIP):
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding.to(cast_dtype)  # [n, L, w]
        x = model.transformer(x, attn_mask=model.attn_mask)
        ln_final, pool_type, eos_id = model.ln_final, model.text_pool_type, getattr(model, "text_eos_id", None)
        proj = _projection(model.text_projection, "text_projection")
    elif isinstance(model, CustomTextCLIP) and isinstance(model.text, TextTransformer) and model.text.cls_emb is None:
        text = model.text
        x, attn_mask = text._embeds(tokens)  # [n, L, w]
        x = text.transformer(x, attn_mask=attn_mask)
        ln_final, pool_type, eos_id = text.ln_final, text.pool_type, getattr(text, "eos_id", None)
        proj = _projection(text.text_projection, "text.text_projection")
    else:
        raise TypeError(
            f"unsupported text tower in {type(model).__name__}: need open_clip CLIP, or CustomTextCLIP with a "
            "TextTransformer tower without a class token"
        )
    hidden = ln_final(x)  # [n, L, width]
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    if pool_type == "argmax":  # end-of-text has the largest id in CLIP's vocabulary
        index = tokens.argmax(dim=-1)
    elif pool_type == "eos":
        index = (tokens == eos_id).int().argmax(dim=-1)
    elif pool_type == "first":
        index = torch.zeros_like(rows)
    elif pool_type == "last":
        index = torch.full_like(rows, tokens.shape[1] - 1)
    else:
        raise TypeError(f"unsupported text pool_type {pool_type!r}")
    return hidden, index, hidden[rows, index], proj


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, axis: int) -> torch.Tensor:
    """The pseudocode's ``cross_entropy_loss(logits, labels, axis)``: softmax along ``axis``, mean NLL of the labels.

    ``axis=0``: each column ``j`` is a distribution over rows, the target row is ``labels[j]``.
    ``axis=1``: each row ``i`` is a distribution over columns, the target column is ``labels[i]``.

    Args:
        logits: ``[n, n]``.
        labels: ``[n]`` long.
        axis: 0 or 1.
    """
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 or 1, got {axis}")
    log_probs = torch.log_softmax(logits, dim=axis)  # [n, n]
    # axis 0: index [1, n] picks log p(row = labels[j] | column j); axis 1: [n, 1] picks log p(col = labels[i] | row i)
    index = labels[None, :] if axis == 0 else labels[:, None]
    picked = log_probs.gather(axis, index)
    return -picked.mean()


def contrastive_loss(I_e: torch.Tensor, T_e: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """The symmetric CLIP loss (Radford et al. 2021, Fig. 3) on already L2-normalised embeddings; differentiable.

    Same arguments and value as open_clip's ``ClipLoss()(image_features, text_features, logit_scale)``: pass what
    ``model(images, tokens)`` returns (normalised features and ``exp(t)``).

    Args:
        I_e: ``[n, d_e]`` normalised image embeddings; row ``k`` pairs with ``T_e[k]``.
        T_e: ``[n, d_e]`` normalised text embeddings.
        logit_scale: the multiplier ``exp(t)`` (not ``t``).

    Returns:
        Scalar ``(loss_i + loss_t) / 2``.
    """
    if I_e.shape != T_e.shape:
        raise ValueError(f"need n matched pairs: I_e {tuple(I_e.shape)} vs T_e {tuple(T_e.shape)}")
    logits = I_e @ T_e.T * logit_scale  # [n, n]
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (cross_entropy_loss(logits, labels, axis=0) + cross_entropy_loss(logits, labels, axis=1)) / 2


@torch.no_grad()
def contrastive_step(
    model: nn.Module,
    images: torch.Tensor,
    texts_tokens: torch.Tensor,
    temperature_override: float | None = None,
) -> ContrastiveResult:
    """Run the CLIP pseudocode on a batch of ``n`` matched pairs and return every intermediate.

    Args:
        model: an ``open_clip.CLIP`` or ``open_clip.CustomTextCLIP`` (call ``model.eval()`` first for inference).
        images: preprocessed images ``[n, 3, H, W]``; image ``k`` belongs with text ``k``.
        texts_tokens: tokenised texts ``[n, L]`` (``tokenizer(texts)``).
        temperature_override: use ``logits = cos / temperature`` instead of the learned ``exp(t)``.

    Returns:
        The result; ``logits`` equal ``model.get_logits(images, texts_tokens)[0]``.

    Raises:
        ValueError: for unmatched batch sizes, a non-positive temperature, or a SigLIP-style model (``logit_bias``),
            whose sigmoid loss is not this softmax loss.
    """
    if images.shape[0] != texts_tokens.shape[0]:
        raise ValueError(f"need n matched pairs: {images.shape[0]} images vs {texts_tokens.shape[0]} texts")
    if getattr(model, "logit_bias", None) is not None:
        raise ValueError("model has a logit_bias (SigLIP): its sigmoid loss is not CLIP's softmax contrastive loss")
    if temperature_override is not None and temperature_override <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature_override}")
    device = _model_device(model)
    images, texts_tokens = images.to(device), texts_tokens.to(device)

    I_f, image_proj = _image_tower(model, images)  # [n, d_i]
    _, _, T_f, text_proj = _text_tower(model, texts_tokens)  # [n, d_t]
    I_e = F.normalize(image_proj.apply(I_f), dim=1)  # [n, d_e]
    T_e = F.normalize(text_proj.apply(T_f), dim=1)  # [n, d_e]
    t = float(model.logit_scale.reshape(()))
    scale = model.logit_scale.exp().reshape(()) if temperature_override is None else 1.0 / temperature_override
    logits = I_e @ T_e.T * scale  # [n, n]
    labels = torch.arange(logits.shape[0], device=device)
    loss_i = cross_entropy_loss(logits, labels, axis=0)  # over images: text -> image
    loss_t = cross_entropy_loss(logits, labels, axis=1)  # over texts: image -> text
    return ContrastiveResult(
        I_f=I_f,
        T_f=T_f,
        W_i=image_proj.weight,
        W_t=text_proj.weight,
        b_t=text_proj.bias,
        I_e=I_e,
        T_e=T_e,
        logits=logits,
        t=t,
        logit_scale=float(scale),
        probs_image_to_text=logits.softmax(dim=1),
        probs_text_to_image=logits.softmax(dim=0),
        labels=labels,
        loss_i=float(loss_i),
        loss_t=float(loss_t),
        loss=float((loss_i + loss_t) / 2),
        image_projection=image_proj.note,
        text_projection=text_proj.note,
    )


@torch.no_grad()
def text_hidden_states(model: nn.Module, tokens: torch.Tensor) -> TextHiddenStates:
    """Per-token hidden states after the final layer norm (what Stable Diffusion feeds the U-Net) vs the pooled one.

    Args:
        model: an open_clip CLIP / CustomTextCLIP.
        tokens: ``[n, L]`` token ids.
    """
    tokens = tokens.to(_model_device(model))
    hidden, index, pooled, proj = _text_tower(model, tokens)
    return TextHiddenStates(tokens, hidden, index, pooled, proj.apply(pooled))


@torch.no_grad()
def zero_shot(
    model: nn.Module,
    tokenizer,
    image,
    class_texts: Sequence[str],
    preprocess=None,
) -> list[tuple[str, float]]:
    """Zero-shot classification (Radford et al. 2021, Sec. 3.1.2): softmax over texts of ``exp(t) cos(I_e, T_e)``.

    Args:
        model: an open_clip CLIP / CustomTextCLIP.
        tokenizer: open_clip tokenizer (``tokenizer(list_of_str) -> [k, L]``).
        image: a preprocessed tensor ``[3, H, W]`` / ``[1, 3, H, W]``, or a PIL image when ``preprocess`` is given.
        class_texts: ``k`` candidate texts, e.g. ``["a photo of a red circle", ...]``.
        preprocess: open_clip's image transform, applied when ``image`` is not a tensor.

    Returns:
        ``[(text, probability)]`` in the order of ``class_texts``; probabilities sum to 1.
    """
    if not class_texts:
        raise ValueError("need at least one class text")
    if not isinstance(image, torch.Tensor):
        if preprocess is None:
            raise ValueError("image is not a tensor: pass preprocess (open_clip's image transform)")
        image = preprocess(image)
    if image.ndim == 3:
        image = image.unsqueeze(0)  # [1, 3, H, W]
    device = _model_device(model)
    I_f, image_proj = _image_tower(model, image.to(device))
    _, _, T_f, text_proj = _text_tower(model, tokenizer(list(class_texts)).to(device))
    I_e = F.normalize(image_proj.apply(I_f), dim=1)  # [1, d_e]
    T_e = F.normalize(text_proj.apply(T_f), dim=1)  # [k, d_e]
    probs = (I_e @ T_e.T * model.logit_scale.exp()).softmax(dim=1)[0]  # [k]
    return [(text, float(p)) for text, p in zip(class_texts, probs, strict=True)]
