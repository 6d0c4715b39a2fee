"""Text columns of the joint sequence mapped to words: SD3 (CLIP + T5, T5 optional) and Flux (T5)."""

import pytest
import torch

from explain.joint import text_layout
from tests.tiny_mmdit import TINY_T5_SLOTS, build_flux, build_sd3, build_t5_tokenizer

PROMPT = "A red cube, on the grass in 2024"


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    return {
        "sd3": build_sd3(root / "sd3"),
        "sd3_no_t5": build_sd3(root / "sd3_no_t5", with_t5=False),
        "flux": build_flux(root / "flux"),
    }


def test_tiny_t5_tokenizer_is_t5_shaped(tmp_path):
    tok = build_t5_tokenizer(tmp_path)
    enc = tok("a red cube", padding="max_length", max_length=6, truncation=True)
    assert tok.convert_ids_to_tokens(enc.input_ids) == ["▁a", "▁red", "▁cube", "</s>", "<pad>", "<pad>"]
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 1)
    assert tok("zebra").input_ids[-1] == tok.eos_token_id  # unknown words fall back to characters


def test_sd3_layout_has_clip_then_t5_columns(pipes):
    pipe = pipes["sd3"]
    layout = text_layout(pipe, PROMPT, TINY_T5_SLOTS)
    clip = pipe.tokenizer_max_length
    assert layout.n_text == clip + TINY_T5_SLOTS
    # the pipeline's own sequence has the same length
    embeds, _, _, _ = pipe.encode_prompt(
        PROMPT, PROMPT, PROMPT, do_classifier_free_guidance=False, max_sequence_length=TINY_T5_SLOTS
    )
    assert embeds.shape[1] == layout.n_text
    cube = layout.word("cube")
    assert [layout.tokens[c].encoder for c in cube.columns] == ["clip", "t5"]
    assert layout.tokens[cube.columns[0]].token == "cube</w>" and layout.tokens[cube.columns[1]].token == "▁cube"
    year = layout.word("2024")  # CLIP: one token per digit; tiny T5: "▁" + characters
    assert len([c for c in year.columns if c < clip]) == 4
    assert layout.word(",").columns[0] == layout.word("cube").columns[0] + 1
    assert layout.tokens[0].token == "<|startoftext|>" and layout.tokens[0].used  # BOS kept
    assert not layout.tokens[clip - 1].used  # CLIP padding
    assert layout.tokens[clip].encoder == "t5"


def test_sd3_without_t5_maps_words_to_clip_only(pipes):
    layout = text_layout(pipes["sd3_no_t5"], PROMPT, TINY_T5_SLOTS)
    clip = pipes["sd3_no_t5"].tokenizer_max_length
    assert layout.n_text == clip + TINY_T5_SLOTS  # the zero T5 states are still in the sequence
    assert all(c < clip for word in layout.words for c in word.columns)
    assert all(c < clip for c in layout.used_columns)


def test_flux_layout_is_t5_only(pipes):
    pipe = pipes["flux"]
    layout = text_layout(pipe, PROMPT, TINY_T5_SLOTS)
    assert layout.n_text == TINY_T5_SLOTS
    ids = pipe.tokenizer_2(PROMPT, padding="max_length", max_length=TINY_T5_SLOTS, truncation=True).input_ids
    assert [t.column for t in layout.tokens] == list(range(TINY_T5_SLOTS))
    assert torch.equal(
        torch.tensor([t.used for t in layout.tokens]), torch.tensor(ids) != pipe.tokenizer_2.pad_token_id
    )
    (grass,) = layout.word("grass").columns
    assert layout.tokens[grass].token == "▁grass"
    assert [layout.tokens[c].token for c in layout.word("A").columns][-1] == "A"  # case-sensitive, as T5
    assert [w.text for w in layout.words][:4] == ["A", "red", "cube", ","]
    with pytest.raises(KeyError, match="sky"):
        layout.word("sky")
