"""The text half of the joint sequence: which column of the model's text tokens holds which word.

- SD3 / SD3.5 (``StableDiffusion3Pipeline.encode_prompt``): ``[CLIP slots (77: CLIP-L and CLIP-G states side by
  side, zero-padded to T5's width), T5 slots (max_sequence_length)]``. Without ``text_encoder_3`` the T5 slots are
  zeros: they are in the sequence but carry no word.
- Flux (``FluxPipeline.encode_prompt``): the T5 slots only (CLIP-L gives the pooled vector, not tokens).

Tokens are mapped to words through the tokenizers' character offsets (CLIP BPE, Radford et al. 2021; T5
SentencePiece, Kudo & Richardson 2018), so a word tokenised differently by the two encoders (CLIP splits digits
and ``</w>``-terminated sub-words, T5 ``▁``-prefixed pieces) maps to all its columns in both.

Example:
    >>> layout = text_layout(pipe, "a red cube")
    >>> layout.word("cube").columns          # SD3: (3, 79) = CLIP slot 3, T5 slot 2
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

from explain.joint.capture import Family, family_of

__all__ = ["TextToken", "JointWord", "JointTextLayout", "text_layout", "WORD_PATTERN"]

WORD_PATTERN = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")  # words (with inner ' or -) and single punctuation marks


@dataclass(frozen=True)
class TextToken:
    """One text column of the joint sequence.

    Attributes:
        column: Position among the model's T text tokens.
        encoder: ``"clip"`` or ``"t5"``.
        token: Token string.
        span: (start, end) characters of the prompt, or None for special and padding tokens.
        used: False for padding (attention mask 0) and for T5 slots without a T5 encoder.
    """

    column: int
    encoder: str
    token: str
    span: tuple[int, int] | None
    used: bool


@dataclass(frozen=True)
class JointWord:
    """A word of the prompt and its text columns (CLIP's and T5's)."""

    text: str
    span: tuple[int, int]
    columns: tuple[int, ...]


@dataclass(frozen=True)
class JointTextLayout:
    """The model's text tokens for one prompt.

    Attributes:
        prompt: The prompt.
        family: SD3 or FLUX.
        tokens: All T text columns in order.
        words: Words of the prompt that reached the model (with at least one column).
    """

    prompt: str
    family: Family
    tokens: tuple[TextToken, ...]
    words: tuple[JointWord, ...]

    @property
    def n_text(self) -> int:
        return len(self.tokens)

    @property
    def used_columns(self) -> tuple[int, ...]:
        """Columns worth keeping: every non-padding token (BOS/EOS included)."""
        return tuple(t.column for t in self.tokens if t.used)

    def word(self, text: str) -> JointWord:
        """The first word equal to ``text`` (case-insensitive)."""
        for word in self.words:
            if word.text.lower() == text.lower():
                return word
        raise KeyError(f"{text!r} is not a word of {self.prompt!r} (words: {[w.text for w in self.words]})")


def _encode(tokenizer, prompt: str, length: int, encoder: str, offset: int, reaches_model: bool) -> list[TextToken]:
    """Tokenise as the pipelines do (``padding="max_length"``, ``truncation=True``) and keep offsets."""
    enc = tokenizer(
        prompt, padding="max_length", max_length=length, truncation=True, return_offsets_mapping=True
    )  # one sequence of `length` slots
    tokens = tokenizer.convert_ids_to_tokens(enc.input_ids)
    out = []
    for i, (token, mask, (start, end)) in enumerate(zip(tokens, enc.attention_mask, enc.offset_mapping, strict=True)):
        span = (start, end) if end > start else None
        out.append(TextToken(offset + i, encoder, token, span, bool(mask) and reaches_model))
    return out


def _default_max_sequence_length(pipe) -> int:
    return inspect.signature(type(pipe).__call__).parameters["max_sequence_length"].default


def text_layout(pipe, prompt: str, max_sequence_length: int | None = None) -> JointTextLayout:
    """The text columns of ``prompt`` as ``pipe`` builds them, with words mapped to columns.

    Args:
        pipe: ``StableDiffusion3Pipeline`` or ``FluxPipeline``.
        prompt: The prompt (one; for SD3 the same prompt for all three encoders, as by default).
        max_sequence_length: T5 slots, as passed to the pipeline (default: the pipeline's default).
    """
    family = family_of(pipe)
    t5_length = max_sequence_length or _default_max_sequence_length(pipe)
    if family is Family.SD3:
        clip_length = pipe.tokenizer_max_length  # 77: CLIP's slots, first in the sequence
        tokens = _encode(pipe.tokenizer, prompt, clip_length, "clip", 0, True)
        if pipe.tokenizer_3 is not None:
            has_t5 = pipe.text_encoder_3 is not None
            tokens += _encode(pipe.tokenizer_3, prompt, t5_length, "t5", clip_length, has_t5)
        else:
            tokens += [TextToken(clip_length + i, "t5", "", None, False) for i in range(t5_length)]
    else:
        tokens = _encode(pipe.tokenizer_2, prompt, t5_length, "t5", 0, True)
    words = []
    for match in WORD_PATTERN.finditer(prompt):
        start, end = match.span()
        columns = tuple(
            t.column for t in tokens if t.used and t.span is not None and t.span[0] < end and start < t.span[1]
        )
        if columns:
            words.append(JointWord(match.group(), (start, end), columns))
    return JointTextLayout(prompt, family, tuple(tokens), tuple(words))
