"""``python -m explain upscale|stylize|inpaint|outpaint`` on the embedded model: files written; bad args exit 2."""

import json

import numpy as np
import pytest
from PIL import Image
from tiny_pipelines import single_thread

from explain import world
from explain.cli import main
from explain.diffusion.loading import EMBEDDED_MODEL_DIR
from explain.usecases import task_models_available

pytestmark = pytest.mark.skipif(
    not ((EMBEDDED_MODEL_DIR / "model_index.json").is_file() and task_models_available()),
    reason="embedded model or models/tiny-shapes-tasks missing",
)
CAPTION = "a red circle on the left and a blue star on the right"
COMMON_FILES = {"image.png", "input_layout.json", "input_layout.png", "summary.json", "attention.npz", "film.gif"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    work = tmp_path_factory.mktemp("inputs")
    objects = (world.WorldObject("red", "circle", "on the left"), world.WorldObject("blue", "star", "on the right"))
    image = world.render(world.Scene(objects), 64, np.random.default_rng(1)).image
    Image.fromarray(image).save(work / "scene.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 32:64] = 255
    Image.fromarray(mask).save(work / "mask.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(work / "empty.png")
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(work / "wide.png")
    (work / "not_an_image.png").write_text("hello")
    return {"scene": image, "dir": work}


def _run(out, *argv):
    return main([*argv, "--steps", "2", "--out", str(out)])


@pytest.mark.parametrize(
    ("command", "extra", "channels", "task_files"),
    [
        ("upscale", ["--prompt", CAPTION], 7, {"low_res.png", "bicubic.png"}),
        ("stylize", ["--prompt", CAPTION, "--style", "at night", "--strength", "1.0"], 4, {"content.png"}),
        ("inpaint", ["--prompt", CAPTION, "--mask", "MASK"], 9, {"source.png", "mask.png", "raw.png"}),
        ("outpaint", ["--prompt", CAPTION, "--right", "32", "--mode", "blend"], 4, {"mask.png", "raw.png"}),
    ],
)
def test_subcommand_writes_its_files(files, tmp_path, command, extra, channels, task_files):
    extra = [str(files["dir"] / "mask.png") if a == "MASK" else a for a in extra]
    assert _run(tmp_path, command, "--image", str(files["dir"] / "scene.png"), *extra) == 0
    written = {p.name for p in tmp_path.iterdir()}
    assert COMMON_FILES | task_files <= written
    layout = json.loads((tmp_path / "input_layout.json").read_text())
    assert layout["in_channels"] == channels == layout["sample_shape"][1]
    assert sum(row["channels"] for row in layout["rows"] if row["argument"] == "sample") == channels
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["task"] == command and summary["captured_steps"] == 2
    npz = np.load(tmp_path / "attention.npz")
    assert npz["word_maps"].shape[0] == len(summary["words"])
    assert len(list((tmp_path / "heatmaps").glob("*.png"))) == len(summary["words"])
    image = np.asarray(Image.open(tmp_path / "image.png"))
    if command == "inpaint":
        keep = np.asarray(Image.open(files["dir"] / "mask.png")) < 128
        assert np.array_equal(image[keep], files["scene"][keep])
    if command == "outpaint":
        assert image.shape == (64, 96, 3) and np.array_equal(image[:, :64], files["scene"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inpaint", "--prompt", CAPTION, "--mask", "DIR/empty.png"], "empty"),
        (["inpaint", "--prompt", CAPTION, "--mask", "DIR/wide.png"], "aspect"),
        (["inpaint", "--prompt", CAPTION, "--mask", "DIR/missing.png"], "not a file"),
        (["inpaint", "--prompt", " ", "--mask", "DIR/mask.png"], "must not be empty"),
        (["stylize", "--style", "striped", "--strength", "0.3"], "0 denoising steps"),
        (["stylize", "--style", "striped", "--strength", "1.5"], "[0, 1]"),
        (["outpaint", "--prompt", CAPTION], "nothing to outpaint"),
        (["outpaint", "--prompt", CAPTION, "--zoom-out", "0.5"], "--zoom-out"),
        (["upscale", "--noise-level", "351"], "noise_level"),
        (["upscale", "--model", "stabilityai/stable-diffusion-x4-upscaler"], "offline"),
        (["upscale", "--model", str(EMBEDDED_MODEL_DIR)], "StableDiffusionUpscalePipeline"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(files, tmp_path, capsys, argv, message):
    argv = [a.replace("DIR", str(files["dir"])) for a in argv]
    assert _run(tmp_path / "out", *argv, "--image", str(files["dir"] / "scene.png")) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_image_and_missing_args_exit_2(files, tmp_path, capsys):
    assert _run(tmp_path, "upscale", "--image", str(files["dir"] / "not_an_image.png")) == 2
    assert "not a readable image" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["inpaint", "--image", str(files["dir"] / "scene.png"), "--out", str(tmp_path)])  # no --mask/--prompt
    assert exit_info.value.code == 2
