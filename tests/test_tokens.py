"""Token view and the offline CLIP tokenizer: ids must equal open_clip's, words must map to their sub-tokens."""

import pytest
from open_clip.tokenizer import SimpleTokenizer

from explain.clip.tokens import TokenKind, build_clip_tokenizer, tokenize_prompt

PROMPTS = [
    "a photo of a red cube",
    "A Photograph, of an ASTRONAUT riding a horse!!",
    "a ginormous tricerat0ps at 3:45pm -- isn't it?",
    "café déjà vu, naïve façade",
    "   lots   of   spaces   ",
    " ".join(["cube"] * 90),  # longer than the 77 slots
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_clip_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    return SimpleTokenizer()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_equal_open_clip_up_to_eos(tokenizer, open_clip_tokenizer, prompt):
    hf = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    reference = open_clip_tokenizer(prompt)[0].tolist()
    eos = hf.index(tokenizer.eos_token_id)
    assert len(hf) == len(reference) == 77
    assert hf[: eos + 1] == reference[: eos + 1]
    assert reference[eos] == open_clip_tokenizer.eot_token_id
    assert set(hf[eos:]) == {tokenizer.pad_token_id}  # HF pads with <|endoftext|>, open_clip with 0
    assert set(reference[eos + 1 :]) <= {0}


def test_vocabulary_matches_open_clip(tokenizer, open_clip_tokenizer):
    assert len(tokenizer) == open_clip_tokenizer.vocab_size == 49408
    assert tokenizer.bos_token_id == open_clip_tokenizer.sot_token_id
    assert tokenizer.eos_token_id == open_clip_tokenizer.eot_token_id


def test_reload_from_directory(tmp_path):
    from transformers import CLIPTokenizer

    build_clip_tokenizer(tmp_path)
    reloaded = CLIPTokenizer.from_pretrained(tmp_path)
    assert reloaded.model_max_length == 77
    assert reloaded("a red cube").input_ids == [49406, 320, 736, 11353, 49407]


def test_words_merge_bpe_sub_tokens(tokenizer):
    view = tokenize_prompt(tokenizer, "a ginormous, red cube!")
    assert [w.text for w in view.words] == ["a", "ginormous", ",", "red", "cube", "!"]
    ginormous = view.words[1]
    assert ginormous.token_indices == (2, 3, 4)  # 'gin' 'or' 'mous</w>'
    assert [view.tokens[i] for i in ginormous.token_indices] == ["gin", "or", "mous</w>"]
    assert [w.is_punctuation for w in view.words] == [False, False, True, False, False, True]
    assert view.n_prompt_tokens == 8
    assert view.n_used == 10
    assert view.kinds[0] is TokenKind.BOS
    assert view.kinds[1:9] == (TokenKind.WORD,) * 8
    assert view.kinds[9] is TokenKind.EOS
    assert set(view.kinds[10:]) == {TokenKind.PADDING}
    assert len(view.ids) == len(view.tokens) == len(view.kinds) == 77
    assert view.truncated == ()


def test_truncation_reports_dropped_tokens(tokenizer):
    view = tokenize_prompt(tokenizer, " ".join(["cube"] * 80))
    assert view.n_prompt_tokens == 75
    assert view.truncated == ("cube</w>",) * 5
    assert view.kinds[-1] is TokenKind.EOS
    assert len(view.words) == 75


def test_exclamation_padding_tokenizer(tmp_path):
    """SD 2.x / SDXL's second tokenizer pad with '!' (id 0), and split a typed '!' as that same special token:
    kinds come from slot positions, so the prompt's '!' is a word and only the slots after EOS are padding."""
    tok = build_clip_tokenizer(tmp_path, pad_token="!")
    view = tokenize_prompt(tok, "cube!")
    assert view.ids[:4] == (49406, 11353, tok.pad_token_id, 49407)
    assert tok.pad_token_id == 0
    assert view.ids[4:] == (0,) * 73
    assert [w.text for w in view.words] == ["cube", "!"]
    assert view.kinds[3] is TokenKind.EOS and view.kinds[4] is TokenKind.PADDING
