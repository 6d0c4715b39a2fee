"""Unknown words are reported: the embedded model's vocabulary is read off its zero embedding rows."""

import pytest
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from explain.clip.tokens import tokenize_prompt
from explain.clip.vocabulary import model_vocabulary, unknown_words, unknown_words_message
from explain.diffusion.loading import EMBEDDED_MODEL_DIR
from explain.world.content import SHAPES


@pytest.fixture(scope="module")
def embedded_text():
    te = CLIPTextModel.from_pretrained(EMBEDDED_MODEL_DIR / "text_encoder", dtype=torch.float32)
    return te, CLIPTokenizer.from_pretrained(EMBEDDED_MODEL_DIR / "tokenizer")


def test_the_embedded_models_words_are_known_and_others_reported(embedded_text):
    te, tok = embedded_text
    vocab = model_vocabulary(te)
    assert vocab is not None and 30 <= len(vocab) <= 80  # a few dozen trained tokens out of 49,408
    assert unknown_words(tokenize_prompt(tok, "a big red circle on the left, outlined"), vocab) == ()
    words = unknown_words(tokenize_prompt(tok, "a unicorn and a Unicorn next to a red circle"), vocab)
    assert words == ("unicorn", "next", "to")
    assert "`unicorn`" in unknown_words_message(("unicorn",))
    assert "is not a word this model has seen" in unknown_words_message(("unicorn",))


def test_a_text_encoder_with_every_row_trained_has_no_vocabulary_to_report(tiny_sd1_dir):
    te = CLIPTextModel.from_pretrained(tiny_sd1_dir / "text_encoder")
    assert model_vocabulary(te) is None
    view = tokenize_prompt(CLIPTokenizer.from_pretrained(tiny_sd1_dir / "tokenizer"), "a unicorn")
    assert unknown_words(view, None) == ()  # None: nothing to report


def test_zeroed_rows_are_what_makes_a_word_unknown(tiny_sd1_dir):
    te = CLIPTextModel.from_pretrained(tiny_sd1_dir / "text_encoder")
    tok = CLIPTokenizer.from_pretrained(tiny_sd1_dir / "tokenizer")
    view = tokenize_prompt(tok, "a cat wearing sunglasses")
    cat = next(w for w in view.words if w.text == "cat")
    with torch.no_grad():
        te.get_input_embeddings().weight[[view.ids[i] for i in cat.token_indices]] = 0.0
    assert unknown_words(view, model_vocabulary(te)) == ("cat",)
    assert unknown_words_message(()) == ""


def test_the_cli_reports_unknown_words_of_the_embedded_model(tmp_path, capsys):
    import json

    from explain.cli import main

    out = tmp_path / "run"
    argv = ["generate", "--prompt", "a red unicorn on the left", "--steps", "2", "--no-capture", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unknown_words"] == ["unicorn"]
    err = capsys.readouterr().err
    assert "`unicorn` is not a word this model has seen" in err
    assert f'Try: "{SHAPES.suggestion}"' in err  # an in-world prompt of the embedded (shapes) model


def test_the_vocabulary_is_cached_per_weight_and_refreshed_after_an_in_place_change(tiny_sd1_dir):
    from explain.clip.vocabulary import vocabulary_of

    te = CLIPTextModel.from_pretrained(tiny_sd1_dir / "text_encoder")
    assert vocabulary_of(te) is None and vocabulary_of(te) is None  # second call: the cache, no tensor comparison
    with torch.no_grad():
        te.get_input_embeddings().weight[5] = 0.0
    vocab = vocabulary_of(te)
    assert vocab is not None and 5 not in vocab.known_ids and vocabulary_of(te) is vocab
