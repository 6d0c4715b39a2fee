"""explain.engine.requests: the field checks' messages name the field, say what is allowed and echo values short."""

import pytest

from explain.clip.tokens import build_clip_tokenizer
from explain.engine.requests import (
    MAX_GUIDANCE,
    MAX_SCALES,
    guidance_scales,
    number_list,
    prompt_text,
    quoted,
)

LONG_TEXT = ("a big red circle on the left and " * 400)[:10_000]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_clip_tokenizer(tmp_path_factory.mktemp("tok"))


def test_quoted_echoes_short_values_whole_and_long_ones_cut():
    assert quoted("blue") == "'blue'"
    assert quoted(LONG_TEXT) == "'a big red circle on the left and a big red circle on the lef'… (10000 characters)"


@pytest.mark.parametrize(
    ("text", "wrong"),
    [
        ("1, three, 7.5", "'three' is not a number."),
        (
            LONG_TEXT,
            "'a big red circle on the left and a big red circle on the lef'… (10000 characters) is not a number.",
        ),
        ("1, nan", "'nan' is not a number from 0 to 30."),
        ("inf", "'inf' is not a number from 0 to 30."),
        ("1; 45", "'45' is not a number from 0 to 30."),
        ("-1", "'-1' is not a number from 0 to 30."),
        (" , ", "got none."),
        (",".join(["2"] * (MAX_SCALES + 1)), f"got {MAX_SCALES + 1}."),
        (None, "got a NoneType, not text."),
    ],
)
def test_guidance_scales_name_the_field_the_format_and_the_range(text, wrong):
    with pytest.raises(ValueError) as info:
        guidance_scales(text)
    assert str(info.value) == (
        f"guidance scales must be 1 to {MAX_SCALES} numbers from 0 to {MAX_GUIDANCE:g}, separated by commas "
        f"(e.g. 1, 3, 7.5); {wrong}"
    )


def test_guidance_scales_and_number_lists_parse():
    assert guidance_scales("1, 3;7.5 ,12") == [1.0, 3.0, 7.5, 12.0]
    assert number_list("weights", "0.5", 0, 1, 2, "0.5, 1") == [0.5]


def test_the_token_limit_comes_from_the_tokenizer(tokenizer, tmp_path):
    assert prompt_text(tokenizer, "prompt", "a red circle") == "a red circle"
    assert prompt_text(tokenizer, "negative prompt", None, required=False) == ""
    with pytest.raises(ValueError) as info:
        prompt_text(tokenizer, "prompt", "red " * 80)
    assert str(info.value) == (
        "The prompt is 80 tokens long; the text encoder has 77 slots, 75 for words (BOS and EOS take two). "
        "5 tokens would be cut, starting with “red red red red red”. Shorten it."
    )
    short = build_clip_tokenizer(tmp_path)
    short.model_max_length = 8  # another text encoder: the limit follows model_max_length
    with pytest.raises(ValueError) as info:
        prompt_text(short, "content prompt", "a red circle on the left and a blue star")
    assert str(info.value) == (
        "The content prompt is 10 tokens long; the text encoder has 8 slots, 6 for words (BOS and EOS take two). "
        "4 tokens would be cut, starting with “and a blue star”. Shorten it."
    )
