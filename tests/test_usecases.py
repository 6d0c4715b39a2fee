"""Use cases on the embedded model and its task U-Nets (skipped when models/tiny-shapes-tasks is missing), plus the
real-checkpoint loading path on tiny random pipelines saved to disk.

Checked: kept pixels survive inpainting/outpainting bit for bit; the U-Net input table is read from the real tensors
(9 / 7 / 4 channels); img2img starts where explain.diffusion.noising says; attention and film are captured for every task and
capture does not change the output; bad inputs raise ValueError with a message saying what is wrong.
"""

import time

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_pipelines import build_sd1, single_thread

from explain import world
from explain.diffusion.loading import EMBEDDED_MODEL_DIR, ModelLoadError
from explain.diffusion.noising import strength_to_start_step
from explain.usecases import (
    UNetInputRecorder,
    compose_prompt,
    inpaint,
    load_task_pipeline,
    outpaint,
    psnr,
    ssim,
    stylize,
    task_models_available,
    upscale,
)
from explain.usecases.inputs import to_mask, to_rgb, working_size
from explain.usecases.models import load_base

STEPS = 3
CAPTION = "a red circle on the left and a blue star on the right"
needs_models = pytest.mark.skipif(
    not ((EMBEDDED_MODEL_DIR / "model_index.json").is_file() and task_models_available()),
    reason="embedded model or models/tiny-shapes-tasks missing",
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def scene() -> world.RenderedScene:
    objects = (world.WorldObject("red", "circle", "on the left"), world.WorldObject("blue", "star", "on the right"))
    return world.render(world.Scene(objects), 64, np.random.default_rng(1))


@pytest.fixture(scope="module")
def right_box() -> np.ndarray:
    mask = np.zeros((64, 64), bool)
    mask[16:48, 32:64] = True
    return mask


@pytest.fixture(scope="module")
def pipes():
    if not ((EMBEDDED_MODEL_DIR / "model_index.json").is_file() and task_models_available()):
        pytest.skip("embedded model or models/tiny-shapes-tasks missing")
    base = load_base(None, "cpu")
    scaling = base.vae.config.scaling_factor
    out = {
        "base": base,
        "upscale": load_task_pipeline("upscale", base=base),
        "img2img": load_task_pipeline("img2img", base=base),
        "unet": load_task_pipeline("inpaint", mode="unet", base=base),
        "blend": load_task_pipeline("inpaint", mode="blend", base=base),
    }
    out["scaling"] = scaling
    return out


# -- inpainting / outpainting keep pixels exactly ---------------------------------------------------------------


@needs_models
@pytest.mark.parametrize("mode", ["unet", "blend"])
def test_inpaint_keeps_unmasked_pixels_exactly(pipes, scene, right_box, mode):
    result = inpaint(scene.image, right_box, CAPTION, pipe=pipes[mode], steps=STEPS, capture=False)
    out = np.asarray(result.image)
    assert out.shape == scene.image.shape
    assert np.array_equal(out[~right_box], scene.image[~right_box])
    raw = np.asarray(result.raw)
    assert not np.array_equal(raw[~right_box], scene.image[~right_box])  # the VAE alone would not keep them
    assert result.mode == mode


@needs_models
def test_inpaint_odd_size_rgba_input_still_exact(pipes):
    rng = np.random.default_rng(0)
    rgba = np.concatenate([rng.integers(0, 256, (50, 70, 3)), np.full((50, 70, 1), 255)], -1).astype(np.uint8)
    mask = np.zeros((50, 70), bool)
    mask[10:30, 20:50] = True
    result = inpaint(Image.fromarray(rgba, "RGBA"), mask, CAPTION, pipe=pipes["unet"], steps=2, capture=False)
    assert result.image.size == (70, 50)
    assert np.array_equal(np.asarray(result.image)[~mask], rgba[..., :3][~mask])
    assert any("not a multiple of 16" in note for note in result.notes)


@needs_models
@pytest.mark.parametrize(
    ("sides", "zoom", "size"),
    [({"right": 32}, 1.0, (96, 64)), ({"left": 10}, 1.0, (80, 64)), ({}, 2.0, (64, 64))],
)
def test_outpaint_keeps_content_and_fills_border(pipes, scene, sides, zoom, size):
    result = outpaint(scene.image, CAPTION, pipe=pipes["unet"], steps=STEPS, zoom_out=zoom, capture=False, **sides)
    assert result.image.size == size
    x0, y0, x1, y1 = result.box
    content = Image.fromarray(scene.image)
    if zoom > 1:
        content = content.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
    assert np.array_equal(np.asarray(result.image)[y0:y1, x0:x1], np.asarray(content))
    assert result.mask.sum() == size[0] * size[1] - (x1 - x0) * (y1 - y0)
    if sides.get("left") == 10:
        assert any("grown" in note for note in result.notes)  # 74 px -> 80 px, a multiple of 16


# -- the U-Net input table from the real tensors -------------------------------------------------------------------


@needs_models
def test_input_tables_from_observed_tensors(pipes, scene, right_box):
    runs = {
        "unet": inpaint(scene.image, right_box, CAPTION, pipe=pipes["unet"], steps=2, capture=False),
        "blend": inpaint(scene.image, right_box, CAPTION, pipe=pipes["blend"], steps=2, capture=False),
        "upscale": upscale(scene.image, CAPTION, pipe=pipes["upscale"], steps=2, capture=False),
        "img2img": stylize(scene.image, "at night", CAPTION, pipe=pipes["img2img"], steps=4, capture=False),
    }
    expected = {"unet": [4, 1, 4], "blend": [4], "upscale": [4, 3], "img2img": [4]}
    for name, result in runs.items():
        sample_rows = [row for row in result.inputs if row.argument == "sample"]
        assert [row.channels for row in sample_rows] == expected[name], name
        assert result.in_channels == result.input_sample.shape[1] == sum(expected[name])
        assert [row.first_channel for row in sample_rows] == list(np.cumsum([0] + expected[name][:-1]))
        assert result.input_sample.shape[0] == 2  # [negative, positive]
        assert {"timestep", "encoder_hidden_states"} <= {row.argument for row in result.inputs}
    # the mask channel really is the mask at latent size; the low-res channels really are the (noised) image
    observed_mask = runs["unet"].input_sample[1, 4]  # (16, 16)
    expected_mask = torch.from_numpy(right_box.reshape(16, 4, 16, 4).any(axis=(1, 3)).astype(np.float32))
    assert torch.equal(observed_mask, expected_mask)
    labels = [row for row in runs["upscale"].inputs if row.argument == "class_labels"]
    assert len(labels) == 1 and labels[0].value_range == (20.0, 20.0)
    low = torch.from_numpy(np.asarray(runs["upscale"].low_res, np.float32) / 127.5 - 1).permute(2, 0, 1)
    abar = runs["upscale"].low_res_alpha_bar
    assert torch.corrcoef(torch.stack([runs["upscale"].input_sample[1, 4:].flatten(), low.flatten()]))[0, 1] > 0.9
    assert 0.99 < abar < 1.0


@needs_models
def test_input_recorder_removes_its_hook_even_on_error(pipes):
    unet = pipes["base"].unet
    before = len(unet._forward_pre_hooks)
    with pytest.raises(RuntimeError), UNetInputRecorder(unet):
        assert len(unet._forward_pre_hooks) == before + 1
        raise RuntimeError("boom")
    assert len(unet._forward_pre_hooks) == before


# -- where the chain starts --------------------------------------------------------------------------------------


@needs_models
@pytest.mark.parametrize(("strength", "steps"), [(0.6, 10), (0.3, 7), (1.0, 4)])
def test_stylize_start_matches_noising(pipes, scene, strength, steps):
    result = stylize(scene.image, "striped", CAPTION, pipe=pipes["img2img"], strength=strength, steps=steps)
    expected = strength_to_start_step(strength, steps, pipes["img2img"].scheduler)
    assert result.start == expected
    assert result.timesteps_run == expected.timesteps
    assert result.captured.n_steps == expected.denoising_steps == len(result.film)
    assert result.prompt == CAPTION + ", striped"


# -- attention capture works for every task and changes nothing ------------------------------------------------------


@needs_models
def test_attention_and_film_for_every_task(pipes, scene, right_box):
    runs = [
        upscale(scene.image, CAPTION, pipe=pipes["upscale"], steps=STEPS),
        stylize(scene.image, "at night", CAPTION, pipe=pipes["img2img"], strength=1.0, steps=STEPS),
        inpaint(scene.image, right_box, CAPTION, pipe=pipes["unet"], steps=STEPS),
        inpaint(scene.image, right_box, CAPTION, pipe=pipes["blend"], steps=STEPS),
        outpaint(scene.image, CAPTION, pipe=pipes["blend"], right=32, steps=STEPS),
    ]
    for result in runs:
        words = [w.text for w in result.view.words]
        assert result.captured.n_steps == STEPS, result.task
        assert list(result.maps.words) == words
        h, w = result.captured.image_hw
        assert result.maps.word_maps.shape == (len(words), h, w)
        assert torch.isfinite(result.maps.word_maps).all() and result.maps.word_maps.sum() > 0
        assert len(result.film) == STEPS and result.film[-1].source == "x0"
    assert runs[-1].captured.latent_hw == (16, 24)  # the 96x64 canvas


@needs_models
@pytest.mark.parametrize("task", ["upscale", "unet"])
def test_capture_does_not_change_the_output(pipes, scene, right_box, task):
    def go(capture):
        if task == "upscale":
            return upscale(scene.image, CAPTION, pipe=pipes["upscale"], steps=STEPS, capture=capture).image
        return inpaint(scene.image, right_box, CAPTION, pipe=pipes["unet"], steps=STEPS, capture=capture).image

    assert np.array_equal(np.asarray(go(True)), np.asarray(go(False)))


# -- super-resolution specifics ------------------------------------------------------------------------------------


@needs_models
def test_upscaler_shares_the_vae_without_changing_it(pipes, scene):
    assert pipes["base"].vae.config.scaling_factor == pipes["scaling"]  # the pipeline's 0.08333 rewrite undone
    assert pipes["upscale"].vae is pipes["base"].vae
    result = upscale(scene.image, CAPTION, pipe=pipes["upscale"], steps=10, capture=False)
    assert result.low_res.size == (16, 16) and result.image.size == (64, 64)  # from unet.config.sample_size
    assert psnr(result.image, scene.image) > 22  # decoded at the right latent scale (0.08333 gives ~17 dB)


@needs_models
def test_upscale_samples_and_back_projection(pipes, scene):
    result = upscale(scene.image, CAPTION, pipe=pipes["upscale"], steps=STEPS, samples=2, back_projection=3)
    assert len(result.samples) == 2 and result.back_projection == 3
    low = np.asarray(result.low_res, np.float64)
    down = np.asarray(result.image.resize((16, 16), Image.Resampling.BOX), np.float64)
    plain = np.asarray(result.samples[0].resize((16, 16), Image.Resampling.BOX), np.float64)
    assert np.abs(down - low).mean() < np.abs(plain - low).mean()  # consistent with the low-res input


# -- bad inputs ----------------------------------------------------------------------------------------------------


@needs_models
def test_bad_inputs_raise_clear_errors(pipes, scene, right_box):
    with pytest.raises(ValueError, match="empty"):
        inpaint(scene.image, np.zeros((64, 64), bool), CAPTION, pipe=pipes["unet"])
    with pytest.raises(ValueError, match="aspect"):
        inpaint(scene.image, np.ones((32, 64), bool), CAPTION, pipe=pipes["unet"])
    with pytest.raises(ValueError, match="0 denoising steps"):
        stylize(scene.image, "striped", CAPTION, pipe=pipes["img2img"], strength=0.05, steps=10)
    with pytest.raises(ValueError, match=r"\[0.0, 1.0\]"):
        stylize(scene.image, "striped", CAPTION, pipe=pipes["img2img"], strength=1.5)
    with pytest.raises(ValueError, match="noise_level"):
        upscale(scene.image, CAPTION, pipe=pipes["upscale"], noise_level=351)
    with pytest.raises(ValueError, match="StableDiffusionUpscalePipeline"):
        upscale(scene.image, CAPTION, pipe=pipes["img2img"])
    with pytest.raises(ValueError, match="nothing to outpaint"):
        outpaint(scene.image, CAPTION, pipe=pipes["unet"])
    with pytest.raises(ValueError, match=">= 0"):
        outpaint(scene.image, CAPTION, pipe=pipes["unet"], left=-4)
    with pytest.raises(ValueError, match="prompt, style words or a style image"):
        stylize(scene.image, None, None, pipe=pipes["img2img"])


@needs_models
def test_prompts_the_text_encoder_cannot_read_whole_are_refused_not_cut(pipes, scene, right_box):
    slots = pipes["base"].tokenizer.model_max_length  # the limit comes from the tokenizer (77 for CLIP)
    long = "red " * slots
    cut = f"the text encoder has {slots} slots, {slots - 2} for words (BOS and EOS take two). 2 tokens would be cut"
    refused = {
        "prompt": [
            lambda: upscale(scene.image, long, pipe=pipes["upscale"]),
            lambda: inpaint(scene.image, right_box, long, pipe=pipes["unet"]),
            lambda: outpaint(scene.image, long, pipe=pipes["blend"], left=16),
        ],
        "negative prompt": [
            lambda: upscale(scene.image, CAPTION, pipe=pipes["upscale"], negative_prompt=long),
            lambda: stylize(scene.image, "striped", CAPTION, pipe=pipes["img2img"], negative_prompt=long),
        ],
    }
    for field, calls in refused.items():
        for call in calls:
            with pytest.raises(ValueError) as info:
                call()
            assert str(info.value).startswith(f"The {field} is {slots} tokens long; {cut}, starting with “red red”")
    # /stylize appends its style words: a content prompt that fits alone does not fit with them, and they would go
    fits = "red " * (slots - 2)
    with pytest.raises(ValueError) as info:
        stylize(scene.image, "striped", fits, pipe=pipes["img2img"])
    assert str(info.value) == (
        f"The content prompt with the style words 'striped' is {slots} tokens long; {cut}, starting with "
        "“, striped”. Shorten it."
    )


@needs_models
def test_mask_of_other_size_and_full_mask_are_handled(pipes, scene, right_box):
    small = Image.fromarray(right_box[::2, ::2].astype(np.uint8) * 255)  # 32x32, same aspect
    result = inpaint(scene.image, small, CAPTION, pipe=pipes["unet"], steps=2, capture=False)
    assert any("resized 32x32 -> 64x64" in note for note in result.notes)
    assert np.array_equal(result.mask, right_box)
    full = inpaint(scene.image, np.ones((64, 64), bool), CAPTION, pipe=pipes["unet"], steps=2, capture=False)
    assert any("whole image" in note for note in full.notes)


def test_image_conversions_say_what_they_did():
    gray = Image.fromarray(np.full((8, 8), 100, np.uint8), "L")
    rgb, notes = to_rgb(gray)
    assert rgb.mode == "RGB" and np.asarray(rgb)[0, 0].tolist() == [100, 100, 100] and "grayscale" in notes[0]
    sixteen = np.full((8, 8, 3), 65535, np.uint16)
    rgb, notes = to_rgb(sixteen)
    assert np.asarray(rgb).max() == 255 and "16-bit" in notes[0]
    transparent = np.zeros((8, 8, 4), np.uint8)
    rgb, notes = to_rgb(transparent)
    assert np.asarray(rgb).min() == 255 and "white" in notes[0]  # fully transparent -> white
    rgb, _ = to_rgb(Image.fromarray(np.full((8, 8), 30000, np.int32), "I"))  # a 16-bit PNG opens as mode I
    assert np.asarray(rgb)[0, 0, 0] == round(30000 / 257)
    with pytest.raises(ValueError, match="channels last"):
        to_rgb(np.zeros((3, 8, 9), np.uint8))
    with pytest.raises(ValueError, match="not found"):
        to_rgb("/no/such/file.png")
    stroke = np.zeros((8, 8, 4), np.uint8)
    stroke[2:4, 2:4] = 255  # white, opaque stroke on a transparent layer
    mask, _ = to_mask(stroke, (8, 8))
    assert mask.sum() == 4


def test_working_size_rounds_to_the_unet_multiple():
    class Pipe:  # what working_size reads
        vae_scale_factor = 4

        class unet:  # noqa: N801
            class config:  # noqa: N801
                down_block_types = ("a", "b", "c")
                sample_size = 16

    assert working_size(Pipe, (64, 64)) == ((64, 64), ())
    size, notes = working_size(Pipe, (70, 50))
    assert size == (64, 48) and "multiple of 16" in notes[0]
    size, notes = working_size(Pipe, (512, 256))
    assert size == (64, 32) and "native" in notes[0]


def test_compose_prompt_world_grammar():
    assert compose_prompt(CAPTION, ["at night", "outlined"]) == CAPTION + " at night, outlined"
    assert compose_prompt(CAPTION + " on grass", "at sunset") == CAPTION + " at sunset"
    assert compose_prompt("a photo of a cat", "oil painting") == "a photo of a cat, oil painting"
    with pytest.raises(ValueError, match="at most one scene"):
        compose_prompt(CAPTION, ["at night", "on grass"])


# -- metrics ---------------------------------------------------------------------------------------------------


def test_ssim_known_properties():
    rng = np.random.default_rng(0)
    x = rng.random((32, 32, 3))
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    z = np.clip(x + rng.normal(0, 0.3, x.shape), 0, 1)
    assert ssim(x, y) == pytest.approx(ssim(y, x), abs=1e-12)  # symmetric
    assert 1 > ssim(x, y) > ssim(x, z) > -1  # more noise, less similar
    # constant images: sigma = 0, so SSIM is the luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    c1 = 0.01**2
    a, b = np.full((16, 16), 0.2), np.full((16, 16), 0.6)
    assert ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), rel=1e-9)
    assert psnr(x, x) == float("inf")
    assert psnr(np.zeros((4, 4)), np.full((4, 4), 0.1)) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="smaller than"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))


# -- loading: wrong classes, offline Hub ids, local "real" checkpoints -------------------------------------------------


def test_offline_hub_upscaler_fails_fast():
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="offline"):
        load_task_pipeline("upscale", "stabilityai/stable-diffusion-x4-upscaler", device="cpu")
    assert time.perf_counter() - started < 10


@needs_models
def test_wrong_pipeline_class_is_refused():
    with pytest.raises(ModelLoadError, match="StableDiffusionUpscalePipeline"):
        load_task_pipeline("upscale", str(EMBEDDED_MODEL_DIR), device="cpu")
    with pytest.raises(ModelLoadError, match="blend"):
        load_task_pipeline("inpaint", str(EMBEDDED_MODEL_DIR), mode="unet", device="cpu")
    with pytest.raises(ValueError, match="unknown task"):
        load_task_pipeline("colorize")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """A tiny SD-1 text-to-image pipeline and an x4-upscaler-shaped pipeline, saved as real checkpoints are."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel

    work = tmp_path_factory.mktemp("tiny")
    sd1 = build_sd1(work)
    sd1.save_pretrained(work / "sd1")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=7,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=sd1.text_encoder.config.hidden_size,
        attention_head_dim=4,
        norm_num_groups=8,
        num_class_embeds=1000,
    ).eval()
    upscaler = StableDiffusionUpscalePipeline(
        vae=sd1.vae,
        text_encoder=sd1.text_encoder,
        tokenizer=sd1.tokenizer,
        unet=unet,
        low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear"),
        scheduler=DDIMScheduler.from_config(sd1.scheduler.config),
        max_noise_level=350,
    )
    upscaler.save_pretrained(work / "x4")
    return {"sd1": str(work / "sd1"), "x4": str(work / "x4")}


def test_real_checkpoint_path_on_local_directories(tiny_dirs, scene, right_box):
    up = load_task_pipeline("upscale", tiny_dirs["x4"], device="cpu")
    result = upscale(scene.image, CAPTION, pipe=up, steps=2)
    assert result.low_res.size == (16, 16) and result.image.size == (128, 128)  # x8 VAE of the tiny checkpoint
    assert result.in_channels == 7 and result.captured.n_steps == 2
    i2i = load_task_pipeline("img2img", tiny_dirs["sd1"], device="cpu")
    styled = stylize(scene.image, "watercolor", "a cat", pipe=i2i, strength=0.5, steps=4)
    assert styled.image.size == (64, 64) and styled.prompt == "a cat, watercolor" and styled.captured is not None
    blend = load_task_pipeline("inpaint", tiny_dirs["sd1"], mode="blend", device="cpu")
    filled = inpaint(scene.image, right_box, "a cat", pipe=blend, steps=2)
    assert filled.mode == "blend" and np.array_equal(np.asarray(filled.image)[~right_box], scene.image[~right_box])
