"""What the text encoder sees: CLIP's 77 token slots, and which slots make up each word.

Stable Diffusion conditions the U-Net on one embedding per token *slot*: ``tokenizer.model_max_length`` slots
(77 for CLIP), filled as ``[BOS, prompt tokens..., EOS, padding...]``. Prompts longer than the slots are cut
(the pipeline tokenises with ``truncation=True``), so words beyond slot 75 never reach the U-Net.

CLIP's byte-level BPE (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision"; Sennrich et al. 2016 for BPE) marks the last sub-token of every pre-tokenised word with the
suffix ``</w>``. A word is therefore a run of tokens up to and including one that ends in ``</w>``; punctuation
is split off by CLIP's pre-tokeniser and so becomes its own word.

Example:
    >>> view = tokenize_prompt(pipe.tokenizer, "a ginormous cube")
    >>> [(w.text, w.token_indices) for w in view.words]
    [('a', (1,)), ('ginormous', (2, 3, 4)), ('cube', (5,))]
"""

from __future__ import annotations

import enum
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TokenKind", "Word", "TokenView", "tokenize_prompt", "build_clip_tokenizer", "END_OF_WORD"]

END_OF_WORD = "</w>"  # CLIP BPE's end-of-word suffix (open_clip.tokenizer.SimpleTokenizer.bpe)
CLIP_BPE_BUDGET = 49152  # SimpleTokenizer keeps merges[1 : 49152 - 256 - 2 + 1] of the BPE file


class TokenKind(enum.Enum):
    """Role of one token slot."""

    BOS = "bos"
    WORD = "word"
    EOS = "eos"
    PADDING = "padding"


@dataclass(frozen=True)
class Word:
    """One word of the prompt and the token slots it occupies.

    Attributes:
        text: The word as text (sub-tokens joined, end-of-word marker removed).
        token_indices: Slot indices into ``TokenView.ids`` (slot 0 is BOS), in order.
        is_punctuation: True when the word has no letter or digit.
    """

    text: str
    token_indices: tuple[int, ...]
    is_punctuation: bool


@dataclass(frozen=True)
class TokenView:
    """The prompt as the text encoder sees it.

    Attributes:
        prompt: The prompt.
        ids: All ``model_max_length`` token ids, exactly as the pipeline's ``encode_prompt`` builds them.
        tokens: The token strings of ``ids`` (BPE form, e.g. ``'cube</w>'``).
        kinds: The role of every slot.
        n_prompt_tokens: Prompt tokens that fit between BOS and EOS.
        truncated: Token strings that did not fit and were dropped.
        words: Words with their slot indices (only words that fit, a word cut by truncation included).
    """

    prompt: str
    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    kinds: tuple[TokenKind, ...]
    n_prompt_tokens: int
    truncated: tuple[str, ...]
    words: tuple[Word, ...]

    @property
    def n_used(self) -> int:
        """Slots from BOS to EOS inclusive: the attention columns worth keeping (``token_count``)."""
        return self.n_prompt_tokens + 2

    @property
    def used_tokens(self) -> tuple[str, ...]:
        """Token strings of the slots BOS..EOS."""
        return self.tokens[: self.n_used]


def _is_punctuation(text: str) -> bool:
    return not any(ch.isalnum() for ch in text)


def _untruncated_tokens(tokenizer, prompt: str) -> list[str]:
    # verbose=False: an over-long prompt is expected here, the pipeline truncates it
    ids = tokenizer(prompt, add_special_tokens=False, truncation=False, padding=False, verbose=False).input_ids
    return tokenizer.convert_ids_to_tokens(ids)


def tokenize_prompt(tokenizer, prompt: str) -> TokenView:
    """Tokenise ``prompt`` the way Stable Diffusion pipelines do and explain every slot.

    Args:
        tokenizer: A CLIP BPE tokenizer (``pipe.tokenizer``; for SDXL the first of its two tokenizers, whose
            slots line up with the second's).
        prompt: The prompt.

    Returns:
        The slot-by-slot view, with words mapped to their sub-token slots.
    """
    n_slots = tokenizer.model_max_length
    ids = tokenizer(prompt, padding="max_length", max_length=n_slots, truncation=True).input_ids  # (n_slots,)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    all_prompt_tokens = _untruncated_tokens(tokenizer, prompt)  # without BOS/EOS
    n_fit = n_slots - 2  # BOS and EOS take one slot each
    n_prompt = min(len(all_prompt_tokens), n_fit)
    eos_slot = n_prompt + 1
    if ids[0] != tokenizer.bos_token_id or ids[eos_slot] != tokenizer.eos_token_id:
        raise ValueError(f"unexpected layout from {type(tokenizer).__name__}: {tokens[: eos_slot + 1]}")

    kinds = [TokenKind.BOS] + [TokenKind.WORD] * n_prompt + [TokenKind.EOS]
    kinds += [TokenKind.PADDING] * (n_slots - len(kinds))

    words: list[Word] = []
    run: list[int] = []
    for slot in range(1, eos_slot):
        run.append(slot)
        if tokens[slot].endswith(END_OF_WORD) or slot == eos_slot - 1:
            text = tokenizer.decode([ids[i] for i in run]).strip()
            words.append(Word(text=text, token_indices=tuple(run), is_punctuation=_is_punctuation(text)))
            run = []

    return TokenView(
        prompt=prompt,
        ids=tuple(ids),
        tokens=tuple(tokens),
        kinds=tuple(kinds),
        n_prompt_tokens=n_prompt,
        truncated=tuple(all_prompt_tokens[n_fit:]),
        words=tuple(words),
    )


def build_clip_tokenizer(directory: str | Path, *, pad_token: str = "<|endoftext|>"):
    """Build the OpenAI CLIP BPE tokenizer offline from the vocabulary open_clip ships.

    Rebuilds the vocabulary exactly as ``open_clip.tokenizer.SimpleTokenizer`` does: the 256 byte symbols of
    ``bytes_to_unicode()``, the same symbols with ``</w>``, one entry per merge (merges are lines
    ``[1 : 49152 - 256 - 2 + 1]`` of ``bpe_simple_vocab_16e6.txt.gz``), then the start/end-of-text tokens. Writes
    ``vocab.json`` and ``merges.txt`` (the files of ``openai/clip-vit-large-patch14``) into ``directory``, loads
    them as a ``transformers.CLIPTokenizer`` with ``model_max_length`` = open_clip's context length, and saves the
    tokenizer there, so ``CLIPTokenizer.from_pretrained(directory)`` works afterwards.

    Args:
        directory: Where to write the tokenizer files (created if needed).
        pad_token: ``"<|endoftext|>"`` as in SD 1.x; SD 2.x and SDXL's second tokenizer pad with ``"!"``.

    Returns:
        The tokenizer; ids equal open_clip's ``tokenize`` up to EOS (open_clip pads with 0, HF with the pad id).
    """
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with gzip.open(default_bpe()) as bpe:
        lines = bpe.read().decode("utf-8").split("\n")
    n_byte_symbols = len(bytes_to_unicode())  # 256
    n_specials = 2  # <|startoftext|>, <|endoftext|>
    merges = lines[1 : CLIP_BPE_BUDGET - n_byte_symbols - n_specials + 1]  # SimpleTokenizer's slice: 48,894 merges
    vocab = list(bytes_to_unicode().values())
    vocab += [symbol + END_OF_WORD for symbol in vocab]
    vocab += ["".join(merge.split()) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if len(set(vocab)) != len(vocab):
        raise ValueError("duplicate entries in the rebuilt CLIP vocabulary")

    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(
        directory, model_max_length=DEFAULT_CONTEXT_LENGTH, pad_token=pad_token, local_files_only=True
    )
    tokenizer.save_pretrained(directory)
    return tokenizer
