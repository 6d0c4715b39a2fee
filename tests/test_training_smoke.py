"""World v2's build runs end to end at smoke size, resumes a stopped U-Net, and packages a loadable pipeline."""

import json

import pytest

from training.build import main as build


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("world")
    out = work / "pipe"
    assert build(["--preset", "world-smoke", "--work", str(work), "--out", str(out), "--threads", "1"]) == 0
    return work, out


def test_the_packaged_world_model_loads_and_generates_128px(built):
    from explain.diffusion.loading import load_pipeline

    _, out = built
    assert json.loads((out / "explorer.json").read_text())["world"] == "emoji"
    pipe = load_pipeline(str(out))
    assert pipe.vae_scale_factor == 8  # SD's factor: 128 x 128 images, 16 x 16 latents
    image = pipe("a cat wearing sunglasses", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (128, 128, 3)


def test_a_stopped_unet_run_resumes_where_it_was(built, capsys):
    work, out = built
    log = json.loads((work / "unet_log.json").read_text())
    assert log["steps_done"] == 3 and (work / "unet_resume.pt").exists()
    args = ["--preset", "world-smoke", "--work", str(work), "--out", str(out), "--threads", "1"]
    assert build([*args, "--stages", "unet", "--force", "--unet-steps", "5"]) == 0
    assert "resumed at step 3" in capsys.readouterr().out
    assert json.loads((work / "unet_log.json").read_text())["steps_done"] == 5
