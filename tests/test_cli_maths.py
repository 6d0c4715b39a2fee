"""The maths subcommands (markov, noise, clip), their argument errors, and the figures they draw."""

import ast
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler
from matplotlib.figure import Figure
from PIL import Image

import explain.cli
from explain.cli.clip import run_clip
from explain.cli.noise import default_timesteps, run_noise
from explain.diffusion.markov import WeatherChain
from explain.diffusion.noising import ForwardSchedule
from explain.io.figures import (
    clip_logits_figure,
    markov_figure,
    noising_strip_figure,
    schedule_figure,
    word_heatmap_grid,
)

Z = 5.0  # two-sided z bound for statistical checks with fixed seeds
MY_SUBCOMMANDS = ("noise", "markov", "clip")
SD_SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli(monkeypatch, capsys):
    """``main(argv) -> exit code`` over this module's subcommands only (others are tested elsewhere)."""
    monkeypatch.setattr(explain.cli, "SUBCOMMANDS", MY_SUBCOMMANDS)

    def invoke(argv):
        try:
            return explain.cli.main([str(a) for a in argv])
        except SystemExit as stop:  # argparse errors
            return stop.code

    return invoke


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "error" in err[0]
    return err[0]


@pytest.fixture
def shapes_png(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    pixels = np.full((24, 32, 3), 230, dtype=np.uint8)
    pixels[4:16, 3:13] = (220, 40, 40)
    pixels[8:22, 18:30] = (40, 60, 200)
    pixels += rng.integers(0, 10, size=pixels.shape, dtype=np.uint8)
    path = tmp_path / "shapes.png"
    Image.fromarray(pixels).save(path)
    return path


def assert_png(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) > 100


# ---------------------------------------------------------------- markov


def test_markov_writes_exact_distribution_and_frequencies(cli, tmp_path, capsys):
    out = tmp_path / "markov"
    assert cli(["markov", "--steps", 12, "--out", out, "--paths", 4000, "--seed", 3]) == 0
    assert_png(out / "markov.png")
    doc = json.loads((out / "markov.json").read_text())
    probs = np.array(doc["distribution"])
    assert probs.shape == (13, 2) and doc["states"] == ["rainy", "sunny"]
    np.testing.assert_allclose(probs[0], [1, 0])
    np.testing.assert_allclose(probs[1], [0.7, 0.3])
    np.testing.assert_allclose(probs[2], [0.61, 0.39])
    np.testing.assert_allclose(doc["stationary"], [4 / 7, 3 / 7], atol=1e-12)
    assert doc["second_eigenvalue_modulus"] == pytest.approx(0.3)
    freqs = np.array(doc["empirical_frequencies"])
    se = np.sqrt(probs * (1 - probs) / doc["paths"]) + 1e-12
    assert np.all(np.abs(freqs - probs) <= Z * se)
    assert "stationary: rainy 0.5714" in capsys.readouterr().out
    # Same seed, same sample.
    again = tmp_path / "again"
    assert cli(["markov", "--steps", 12, "--out", again, "--paths", 4000, "--seed", 3]) == 0
    assert json.loads((again / "markov.json").read_text())["empirical_frequencies"] == doc["empirical_frequencies"]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["markov", "--steps", "0", "--out", "OUT"], "--steps"),
        (["markov", "--steps", "abc", "--out", "OUT"], "--steps"),
        (["markov", "--out", "OUT"], "--steps"),
        (["markov", "--steps", "5", "--out", "OUT", "--start", "snowy"], "--start"),
        (["markov", "--steps", "5", "--out", "OUT", "--paths", "-3"], "--paths"),
    ],
)
def test_markov_bad_arguments_exit_2_with_one_line(cli, capsys, tmp_path, argv, fragment):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert cli(argv) == 2
    assert fragment in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_out_that_is_a_file_is_a_user_error(cli, capsys, tmp_path):
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    assert cli(["markov", "--steps", 3, "--out", not_a_dir]) == 2
    assert "not a directory" in one_error_line(capsys)


# ---------------------------------------------------------------- noise


def test_noise_pixel_only_cli(cli, capsys, shapes_png, tmp_path):
    out = tmp_path / "noise"
    argv = ["noise", "--image", shapes_png, "--out", out, "--pixel-only", "--t", 0, 100, 999]
    assert cli([*argv, "--stat-samples", 64, "--stat-elements", 64, "--seed", 1]) == 0
    for name in ("noising_strip.png", "schedule.png"):
        assert_png(out / name)
    doc = json.loads((out / "noise_stats.json").read_text())
    assert doc["timesteps"] == [0, 100, 999]
    assert "skipped" in doc["latent"]
    moments = doc["pixel"]["moments_step_chain_vs_closed_form"]
    np.testing.assert_allclose(np.square(moments["theory_coef_sqrt_alpha_bar"]), doc["alpha_bar"], rtol=1e-12)
    assert doc["pixel"]["shape"] == [1, 3, 24, 32]
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "not-an-image", "t-too-large"])
def test_noise_user_errors_exit_2(cli, capsys, shapes_png, tmp_path, case):
    image = {"missing": tmp_path / "nope.png", "not-an-image": tmp_path / "text.png", "t-too-large": shapes_png}[case]
    (tmp_path / "text.png").write_text("not a png")
    t = 10**6 if case == "t-too-large" else 10
    assert cli(["noise", "--image", image, "--out", tmp_path / "o", "--pixel-only", "--t", t]) == 2
    line = one_error_line(capsys)
    assert {"missing": "not found", "not-an-image": "not a readable image", "t-too-large": "--t"}[case] in line


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        scaling_factor=0.37,
    ).eval()


def test_run_noise_in_pixel_and_latent_space(tmp_path, shapes_png, tiny_vae):
    scheduler = DDPMScheduler(**SD_SCHEDULE)
    schedule = ForwardSchedule.from_scheduler(scheduler)
    with Image.open(shapes_png) as im:
        image = im.convert("RGB")
    doc = run_noise(
        image, tmp_path, scheduler, vae=tiny_vae, timesteps=[50, 500, 999], stat_samples=128, stat_elements=64
    )
    assert_png(tmp_path / "noising_strip.png")
    np.testing.assert_allclose(doc["alpha_bar"], schedule.alpha_bars[[50, 500, 999]].numpy())
    assert doc["latent"]["scaling_factor"] == tiny_vae.config.scaling_factor
    factor = doc["latent"]["vae_scale_factor"]
    assert factor == 2 ** (len(tiny_vae.config.block_out_channels) - 1)
    assert doc["latent"]["shape"] == [1, tiny_vae.config.latent_channels, 24 // factor, 32 // factor]
    for space in ("pixel", "latent"):
        m = {k: np.array(v) for k, v in doc[space]["moments_step_chain_vs_closed_form"].items()}
        for var in (m["chain_var"], m["closed_form_var"]):
            assert np.all(np.abs(var - m["theory_var_one_minus_alpha_bar"]) < Z * m["var_standard_error"])
        f = {k: np.array(v) for k, v in doc[space]["forgetting_start_vs_negated_start"].items()}
        n_elements = np.prod(doc[space]["shape"])  # correlation standard error ~ 1 / sqrt(D)
        assert np.all(np.abs(f["corr_start_a"] - f["corr_start_a_theory"]) < Z / np.sqrt(n_elements))
        assert f["corr_start_a"][0] > f["corr_start_a"][-1]


def test_default_timesteps_spread_over_the_chain():
    assert default_timesteps(1000) == [0, 50, 100, 250, 500, 999]
    assert default_timesteps(10)[0] == 0 and default_timesteps(10)[-1] == 9


# ---------------------------------------------------------------- clip


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.CLIPVisionCfg(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
        text_cfg=open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
    ).eval()
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
    return model, open_clip.get_tokenizer("ViT-B-32"), preprocess


def test_run_clip_writes_logits_and_losses(tmp_path, tiny_clip):
    from explain.clip.contrastive import contrastive_step

    model, tokenizer, preprocess = tiny_clip
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
    texts = ["a red circle", "a blue square", "a green star"]
    result = run_clip(images, texts, model, tokenizer, preprocess, tmp_path)
    assert_png(tmp_path / "clip_logits.png")
    doc = json.loads((tmp_path / "clip.json").read_text())
    batch = torch.stack([preprocess(im) for im in images])
    expected = contrastive_step(model, batch, tokenizer(texts))
    np.testing.assert_allclose(doc["logits"], expected.logits.numpy(), atol=1e-5)
    with torch.no_grad():
        reference = float(open_clip.ClipLoss()(*model(batch, tokenizer(texts))))
    assert doc["loss"] == pytest.approx(reference, abs=1e-5) and doc["loss"] == pytest.approx(result.loss)
    assert doc["loss"] == pytest.approx((doc["loss_i"] + doc["loss_t"]) / 2)
    assert doc["shapes"]["W_i"] == [64, 32] and doc["images"] == ["image 1", "image 2", "image 3"]
    assert doc["temperature"] == pytest.approx(1 / doc["logit_scale"])


@pytest.mark.parametrize("case", ["unmatched", "missing", "no-text"])
def test_clip_user_errors_exit_2(cli, capsys, shapes_png, tmp_path, case):
    argv = {
        "unmatched": ["--image", shapes_png, shapes_png, "--text", "one"],
        "missing": ["--image", tmp_path / "nope.png", "--text", "one"],
        "no-text": ["--image", shapes_png],
    }[case]
    assert cli(["clip", *argv, "--out", tmp_path / "o"]) == 2
    line = one_error_line(capsys)
    assert {"unmatched": "matched pairs", "missing": "not found", "no-text": "--text"}[case] in line


# ---------------------------------------------------------------- figures


def assert_detached(fig) -> None:
    assert isinstance(fig, Figure)
    assert fig.canvas.manager is None  # never registered with pyplot


def test_markov_figure_shows_the_exact_distribution():
    chain = WeatherChain()
    dist = chain.distribution_after(15, "rainy")
    fig = markov_figure(chain.sample_paths(100, 15, "rainy", np.random.default_rng(0)), dist)
    assert_detached(fig)
    assert len(fig.axes) == 2
    exact_lines = [line for line in fig.axes[1].lines if line.get_label().endswith("exact")]
    np.testing.assert_allclose(exact_lines[0].get_ydata(), dist.probs[:, 0])
    assert fig.axes[0].images[0].get_array().shape == (40, 16)  # max_paths_shown rows


def test_schedule_and_strip_figures():
    schedule = ForwardSchedule.from_scheduler(DDPMScheduler(**SD_SCHEDULE))
    fig = schedule_figure(schedule, [0, 500, 999])
    assert_detached(fig)
    assert len(fig.axes) == 3 and len(schedule_figure(schedule).axes) == 2
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), schedule.alpha_bars.numpy())
    frames = [np.full((6, 8, 3), v) for v in (0.0, 0.5, 1.0)]
    strip = noising_strip_figure(["x0", "t=1", "t=2"], {"step": frames, "closed": frames})
    assert_detached(strip)
    assert len(strip.axes) == 6 and strip.axes[1].get_title() == "t=1"
    with pytest.raises(ValueError, match="frames for 3 columns"):
        noising_strip_figure(["x0", "t=1", "t=2"], {"step": frames[:2]})


def test_clip_logits_figure_shows_values():
    logits = np.array([[3.0, -1.0], [0.25, 2.5]])
    fig = clip_logits_figure(logits, ["img a", "img b"], ["text a", "text b"])
    assert_detached(fig)
    assert len(fig.axes) == 2  # heat map + colour bar
    heat = fig.axes[0]
    np.testing.assert_array_equal(heat.images[0].get_array(), logits)
    assert {t.get_text() for t in heat.texts} == {"3.00", "-1.00", "0.25", "2.50"}
    assert [t.get_text() for t in heat.get_xticklabels()] == ["text a", "text b"]
    thumbs = [np.zeros((5, 5, 3))] * 2
    assert len(clip_logits_figure(logits, ["a", "b"], ["x", "y"], images=thumbs).axes) == 4
    with pytest.raises(ValueError, match="labels"):
        clip_logits_figure(logits, ["only one"], ["x", "y"])


def test_word_heatmap_grid():
    images = [np.zeros((16, 24, 3)), np.ones((16, 24, 3))]
    maps = [[np.eye(4), np.ones((4, 4))], [np.zeros((2, 2)), np.eye(2)]]
    fig = word_heatmap_grid(images, maps, ["red", "circle"])
    assert_detached(fig)
    assert len(fig.axes) == 2 * 3
    overlay = fig.axes[1].images[1]
    assert overlay.get_extent() == [0, 24, 16, 0]  # stretched over the image
    with pytest.raises(ValueError, match="2 maps for 3 words"):
        word_heatmap_grid(images, maps, ["a", "b", "c"])


def test_my_modules_never_import_gradio():
    files = [
        "diffusion/noising",
        "diffusion/markov",
        "clip/contrastive",
        "io/figures",
        "cli/noise",
        "cli/markov",
        "cli/clip",
    ]
    for name in files:
        tree = ast.parse((REPO / "explain" / f"{name}.py").read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not any(m.split(".")[0] == "gradio" for m in imported), name
        assert "pyplot" not in " ".join(imported), name
