"""One engine: every view generates through explain.engine.run.recorded_run, so one seed gives one image everywhere.

On the embedded model: the CLI (``python -m explain generate``), tab 3's stream, tab 4's steering baseline and the
use-case wrapper give the same pixels for the same seed and settings; a real use case (style transfer) gives the
same pixels from the CLI, from tab 5 and from the library. The seed policy (a CPU generator on every device) is
checked with a fake device.
"""

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image
from tiny_pipelines import single_thread

from demo.tab_attend import AttendTab
from demo.tab_steer import SteerTab
from demo.tab_usecases import UseCasesTab, world_sample
from explain.capture.film import initial_noise
from explain.cli import main
from explain.diffusion.loading import EMBEDDED_MODEL_DIR
from explain.engine.run import SEED_DEVICE, Capture, recorded_run, seed_generator
from explain.usecases import stylize, task_models_available
from explain.usecases.run import run_recorded

pytestmark = pytest.mark.skipif(
    not (EMBEDDED_MODEL_DIR / "model_index.json").is_file(), reason="embedded model missing"
)
PROMPT = "a red circle on the left and a blue star on the right"
SEED, STEPS, GUIDANCE = 7, 4, 5.0


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)


def test_same_seed_same_image_in_cli_tab3_tab4_and_the_usecase_wrapper(engine, tmp_path):
    argv = ["generate", "--prompt", PROMPT, "--seed", str(SEED), "--steps", str(STEPS), "--guidance", str(GUIDANCE)]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    cli = _pixels(Image.open(tmp_path / "image.png"))

    request = gr.Request(session_hash="one-engine")
    tab3 = _pixels(
        list(AttendTab(engine).generate(PROMPT, "", SEED, STEPS, GUIDANCE, "default", 64, 64, request))[-1][0]
    )
    gallery, _, _ = SteerTab(engine).reweight(PROMPT, "red", 0.0, SEED, STEPS, GUIDANCE)
    tab4_baseline = _pixels(gallery[0][0])
    call = dict(prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=64, width=64)
    usecase_wrapper = _pixels(run_recorded(engine.pipeline(), call, seed=SEED, capture=False).image)

    assert cli.shape == (64, 64, 3) and cli.std() > 0  # a real picture, not a blank
    assert np.array_equal(tab3, cli)
    assert np.array_equal(tab4_baseline, cli)
    assert np.array_equal(usecase_wrapper, cli)


@pytest.mark.skipif(not task_models_available(), reason="models/tiny-shapes-tasks missing")
def test_same_seed_same_stylized_image_in_cli_tab5_and_the_library(engine, tmp_path):
    image, caption = world_sample()
    Image.fromarray(image).save(tmp_path / "content.png")
    argv = ["stylize", "--image", str(tmp_path / "content.png"), "--style", "at night", "--prompt", caption]
    assert main([*argv, "--strength", "0.7", "--seed", str(SEED), "--steps", str(STEPS), "--out", str(tmp_path)]) == 0
    cli = _pixels(Image.open(tmp_path / "image.png"))

    tab = UseCasesTab(engine)
    tab5 = _pixels(tab.stylize(image, ["at night"], caption, 0.7, SEED, STEPS)[1])
    pipe = tab.task_pipeline("img2img")
    library = stylize(image, ["at night"], caption, pipe=pipe, strength=0.7, seed=SEED, steps=STEPS, capture=False)

    assert np.array_equal(tab5, cli)
    assert np.array_equal(_pixels(library.image), cli)


def test_seed_generator_is_on_the_cpu_for_every_device():
    """The rule: the seed's generator is a CPU generator whatever the pipeline's device; the draw is then moved."""
    assert seed_generator(3).device == torch.device(SEED_DEVICE) == torch.device("cpu")

    class Unet:  # a pipeline on a device this machine need not have: "meta" stands for cuda / mps
        device = torch.device("meta")
        dtype = torch.float32

        class config:  # noqa: N801
            in_channels = 4
            sample_size = 8
            down_block_types = ("a", "b")

    class FakePipe:
        unet = Unet
        vae_scale_factor = 8

    noise = initial_noise(FakePipe, 1, 64, 64, seed_generator(3))
    assert noise.device == torch.device("meta") and noise.shape == (1, 4, 8, 8)
    on_cpu = initial_noise(
        type("CpuPipe", (FakePipe,), {"unet": type("U", (Unet,), {"device": torch.device("cpu")})}),
        1,
        64,
        64,
        seed_generator(3),
    )
    assert torch.equal(on_cpu, torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(3)))


def test_recorded_run_returns_one_typed_result(engine):
    stop_after_first = []

    def on_frame(frame):
        stop_after_first.append(frame.step)

    run = recorded_run(
        engine.pipeline(),
        dict(prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE),
        seed=SEED,
        capture=Capture(per_head=True, on_frame=on_frame),
        lock=engine.lock,
    )
    assert run.size == (64, 64) and run.steps_done == STEPS and not run.interrupted
    assert run.captured.n_steps == STEPS and run.captured.guided is True and run.captured.per_head
    assert set(run.captured.layer_heads) == set(run.captured.layer_names)
    assert all(m.shape[2] == run.captured.layer_heads[n] for n, m in run.captured.maps.items())
    assert len(run.frames) == STEPS and stop_after_first == list(range(STEPS))
    assert run.noise.shape[0] == 1 and 0 < run.denoise_seconds <= run.seconds
