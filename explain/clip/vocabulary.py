"""Which words a model has seen: unknown words are reported, never silently ignored.

The embedded models are trained on a procedural world whose captions use a few dozen words; every token the world
never uses keeps an all-zero row in the text encoder's embedding table (``training.models.zero_unused_token_rows``),
so the model's vocabulary can be read off its weights. A word with a zero-row token gets no meaning of its own:
its hidden state is the position's alone, so its attention map is not about it. Real checkpoints have no zero rows:
their vocabulary is all of CLIP's BPE (``None`` here: nothing to report).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from explain.clip.tokens import TokenView, tokenize_prompt

__all__ = [
    "Vocabulary",
    "model_vocabulary",
    "vocabulary_of",
    "unknown_words",
    "prompt_unknown_words",
    "unknown_words_message",
]


@dataclass(frozen=True)
class Vocabulary:
    """The token ids a model was trained on (rows of its embedding table that are not all zero)."""

    known_ids: frozenset[int]

    def __len__(self) -> int:
        return len(self.known_ids)


@torch.no_grad()
def model_vocabulary(text_encoder) -> Vocabulary | None:
    """The vocabulary of a text encoder (a transformers ``CLIPTextModel``); None when every token row is used."""
    weight = text_encoder.get_input_embeddings().weight  # (V, width)
    used = weight.abs().amax(dim=1) > 0  # (V,)
    if bool(used.all()):
        return None
    return Vocabulary(frozenset(torch.nonzero(used).flatten().tolist()))


_CACHE: dict[int, tuple[weakref.ref, int, Vocabulary | None]] = {}  # id(weight) -> (weight, _version, vocabulary)


def vocabulary_of(text_encoder) -> Vocabulary | None:
    """:func:`model_vocabulary`, computed once per weight tensor (again only after it is changed in place).

    Keyed by the tensor's identity (tensors compare element-wise, so they cannot be dictionary keys themselves).
    """
    if text_encoder is None:
        return None
    weight = text_encoder.get_input_embeddings().weight
    hit = _CACHE.get(id(weight))
    if hit is None or hit[0]() is not weight or hit[1] != weight._version:
        hit = (weakref.ref(weight), weight._version, model_vocabulary(text_encoder))
        for key in [k for k, v in _CACHE.items() if v[0]() is None]:  # forget weights that are gone
            del _CACHE[key]
        _CACHE[id(weight)] = hit
    return hit[2]


def unknown_words(view: TokenView, vocabulary: Vocabulary | None) -> tuple[str, ...]:
    """Words of a tokenised prompt with a token the model never saw, in prompt order, each once."""
    if vocabulary is None:
        return ()
    out: list[str] = []
    for w in view.words:
        if w.is_punctuation or w.text.lower() in out:
            continue
        if any(view.ids[i] not in vocabulary.known_ids for i in w.token_indices):
            out.append(w.text.lower())
    return tuple(out)


def prompt_unknown_words(pipe, *prompts: str) -> tuple[str, ...]:
    """Unknown words of one or more prompts for a pipeline (its tokenizer and text encoder), each once."""
    vocabulary = vocabulary_of(getattr(pipe, "text_encoder", None))
    out: list[str] = []
    for prompt in prompts:
        if prompt:
            out += [w for w in unknown_words(tokenize_prompt(pipe.tokenizer, prompt), vocabulary) if w not in out]
    return tuple(out)


def unknown_words_message(words: tuple[str, ...] | list[str]) -> str:
    """One line for the UI and the CLI; empty when every word is known."""
    if not words:
        return ""
    quoted = ", ".join(f"`{w}`" for w in words)
    if len(words) == 1:
        return f"{quoted} is not a word this model has seen; it gets no attention of its own."
    return f"{quoted} are not words this model has seen; they get no attention of their own."
