"""``python -m explain generate`` on a saved tiny SD-1 pipeline: every file, shape and dtype; bad args exit 2."""

import json

import numpy as np
import pytest
from PIL import Image
from tiny_pipelines import single_thread

from explain.cli import main

HEIGHT, WIDTH, STEPS = 128, 192, 2


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def model_dir(tiny_sd1_dir):
    return str(tiny_sd1_dir)


def generate(model_dir, out, *extra):
    argv = [
        "generate",
        "--model",
        model_dir,
        "--steps",
        str(STEPS),
        "--height",
        str(HEIGHT),
        "--width",
        str(WIDTH),
        "--scheduler",
        "ddim",
        "--out",
        str(out),
        *extra,
    ]
    return main(argv)


@pytest.fixture(scope="module")
def captured_run(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert generate(model_dir, out, "--prompt", "a ginormous red cube", "--seed", "7") == 0
    return out


def test_generate_writes_every_file(captured_run):
    out = captured_run
    image = np.asarray(Image.open(out / "image.png"))
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8

    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompt"] == "a ginormous red cube" and summary["seed"] == 7
    assert summary["words"] == ["a", "ginormous", "red", "cube"]
    assert summary["unknown_words"] == []  # a random text encoder: every token row counts as trained
    assert summary["tokens"] == [
        "<|startoftext|>",
        "a</w>",
        "gin",
        "or",
        "mous</w>",
        "red</w>",
        "cube</w>",
        "<|endoftext|>",
    ]
    assert summary["scheduler"] == "DDIMScheduler"
    assert summary["film_source"] == "x0"
    assert summary["capture_bytes"] > 0
    assert 0 < summary["seconds"]["denoising"] <= summary["seconds"]["total"]

    npz = np.load(out / "attention.npz")
    assert npz["words"].tolist() == summary["words"]
    assert npz["word_maps"].dtype == np.float32 and npz["word_maps"].shape == (4, HEIGHT, WIDTH)
    assert npz["tokens"].tolist() == summary["tokens"]
    assert npz["token_maps"].dtype == np.float32 and npz["token_maps"].shape == (8, HEIGHT, WIDTH)
    # word map = sum of its sub-token maps ('ginormous' = slots 2, 3, 4), not normalised
    np.testing.assert_allclose(npz["word_maps"][1], npz["token_maps"][2:5].sum(0), rtol=1e-5, atol=1e-7)
    assert npz["word_maps"].max() < 1.0
    layers = npz["layer_names"].tolist()
    assert len(layers) == 16 and layers[0] == "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    assert npz["cube"].dtype == np.float16
    assert npz["cube"].shape == (STEPS, 16, 8, HEIGHT // 8, WIDTH // 8)  # (steps, layers, tokens, h, w)
    assert summary["capture_bytes"] == sum(
        STEPS * 8 * (16 // f) * (24 // f) * 2 * n for f, n in ((1, 5), (2, 5), (4, 5), (8, 1))
    )  # float16 maps: 5 layers each at 16x24, 8x12, 4x6 (2 down + 3 up) and the 2x3 mid block

    heatmaps = sorted(p.name for p in (out / "heatmaps").iterdir())
    assert heatmaps == ["00_a.png", "01_ginormous.png", "02_red.png", "03_cube.png"]
    assert np.asarray(Image.open(out / "heatmaps" / "01_ginormous.png")).shape == (HEIGHT, WIDTH, 3)

    gif = Image.open(out / "film.gif")
    assert gif.n_frames == STEPS
    assert gif.size == (5 * WIDTH, HEIGHT)  # x̂₀ + one overlay per word


def test_no_capture_image_is_bit_identical(captured_run, model_dir, tmp_path):
    assert generate(model_dir, tmp_path, "--prompt", "a ginormous red cube", "--seed", "7", "--no-capture") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png", "summary.json"]
    plain = np.asarray(Image.open(tmp_path / "image.png"))
    assert np.array_equal(plain, np.asarray(Image.open(captured_run / "image.png")))
    assert json.loads((tmp_path / "summary.json").read_text())["capture_bytes"] == 0


def test_concept_words_get_open_vocabulary_maps_and_the_image_is_unchanged(captured_run, model_dir, tmp_path):
    extra = ["--concept", "blue", "--concept", "sphere"]
    assert generate(model_dir, tmp_path, "--prompt", "a ginormous red cube", "--seed", "7", *extra) == 0
    image = np.asarray(Image.open(tmp_path / "image.png"))
    assert np.array_equal(image, np.asarray(Image.open(captured_run / "image.png")))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["concepts"] == ["blue", "sphere"] and summary["concept_method"] == "ovam"
    concepts = np.load(tmp_path / "concepts.npz")
    assert concepts["concepts"].tolist() == ["blue", "sphere"] and str(concepts["method"]) == "ovam"
    assert concepts["concept_maps"].dtype == np.float32 and concepts["concept_maps"].shape == (2, HEIGHT, WIDTH)
    assert not np.allclose(concepts["concept_maps"][0], concepts["concept_maps"][1])
    assert concepts["layer_names"].tolist() == np.load(captured_run / "attention.npz")["layer_names"].tolist()
    assert sorted(p.name for p in (tmp_path / "concept_heatmaps").iterdir()) == ["00_blue.png", "01_sphere.png"]


def test_several_prompts_and_seeds(model_dir, tmp_path):
    code = generate(
        model_dir,
        tmp_path,
        "--prompt",
        "a red cube",
        "--prompt",
        "a blue ball",
        "--seed",
        "1",
        "--seed",
        "2",
        "--no-capture",
    )
    assert code == 0
    index = json.loads((tmp_path / "index.json").read_text())
    assert [(e["prompt"], e["seed"], e["dir"]) for e in index] == [
        ("a red cube", 1, "000"),
        ("a red cube", 2, "001"),
        ("a blue ball", 1, "002"),
        ("a blue ball", 2, "003"),
    ]
    images = [np.asarray(Image.open(tmp_path / e["dir"] / "image.png")) for e in index]
    assert not np.array_equal(images[0], images[1])  # seeds differ
    for e in index:
        assert json.loads((tmp_path / e["dir"] / "summary.json").read_text())["seed"] == e["seed"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "  "], "--prompt must not be empty"),
        (["--prompt", "x", "--steps", "0"], "--steps must be >= 1"),
        (["--prompt", "x", "--height", "100"], "not a multiple of 64"),
        (["--prompt", "x", "--seed", "-1"], "--seed must be >= 0"),
        (["--prompt", "x", "--guidance", "-2"], "--guidance must be >= 0"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(model_dir, tmp_path, capsys, args, message):
    assert generate(model_dir, tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("python -m explain generate: error:")


def test_missing_model_is_a_user_error(tmp_path, capsys):
    code = main(["generate", "--prompt", "x", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err


def test_unknown_scheduler_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--prompt", "x", "--scheduler", "magic", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
