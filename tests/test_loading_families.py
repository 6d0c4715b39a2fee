"""Each family (SD 1.x, SD 2.x v-prediction, SDXL): build, save, reload through load_pipeline, generate, capture."""

import json
import time

import pytest
import torch
from tiny_pipelines import BUILDERS, single_thread

from explain.capture.film import FilmRecorder, initial_noise
from explain.capture.recorder import AttentionRecorder
from explain.capture.swap import compose_callbacks
from explain.clip.tokens import tokenize_prompt
from explain.diffusion import loading
from explain.diffusion.loading import ModelLoadError, describe_pipeline, load_pipeline
from explain.maps.aggregation import aggregate

PROMPT = "a ginormous red cube"
EXPECTED = {  # family -> (pipeline class, prediction type, attn2 layers, film shows x̂₀)
    "sd1": ("StableDiffusionPipeline", "epsilon", 16, False),  # PNDM
    "sd2": ("StableDiffusionPipeline", "v_prediction", 16, True),  # DDIM
    "sdxl": ("StableDiffusionXLPipeline", "epsilon", 17, True),  # Euler; layers 2 + 2x2 + 2 (mid) + 3x2 + 3
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def saved(request, tmp_path_factory):
    family = request.param
    work = tmp_path_factory.mktemp(family)
    BUILDERS[family](work).save_pretrained(work / "pipe")
    return family, work / "pipe"


def test_family_round_trip_and_capture(saved):
    family, path = saved
    pipe = load_pipeline(str(path), device="cpu")
    class_name, prediction, n_layers, has_x0 = EXPECTED[family]
    assert type(pipe).__name__ == class_name

    info = describe_pipeline(pipe)
    assert info.family == family
    assert info.prediction_type == prediction
    assert len(info.cross_attention_layers) == n_layers
    assert info.vae_scale_factor == 8 and info.latent_channels == 4
    assert info.scaling_factor == pipe.vae.config.scaling_factor
    assert info.text_encoder_width == pipe.unet.config.cross_attention_dim
    assert info.default_size == (128, 128)

    height, width = 128, 192  # non-square on every family
    view = tokenize_prompt(pipe.tokenizer, PROMPT)
    generator = torch.Generator().manual_seed(0)
    noise = initial_noise(pipe, 1, height, width, generator)
    film = FilmRecorder(pipe, initial_latents=noise)
    with AttentionRecorder(pipe, token_count=view.n_used) as rec:
        pipe(
            PROMPT,
            num_inference_steps=2,
            height=height,
            width=width,
            generator=generator,
            latents=noise,
            callback_on_step_end=compose_callbacks(rec.callback_on_step_end, film.callback_on_step_end),
        )
    captured = rec.result()

    assert list(captured.layer_names) == [layer.name for layer in info.cross_attention_layers]
    for layer in info.cross_attention_layers:  # the describe() resolutions, scaled to this image size
        h, w = captured.layer_resolutions[layer.name]
        assert (h, w) == (-(-16 // layer.downsample), -(-24 // layer.downsample))
        assert captured.maps[layer.name].shape[1:] == (1, view.n_used, h, w)
    steps = 2  # the steps asked for, whatever the sampler's U-Net calls (PNDM: 3; Euler: 2)
    assert captured.n_steps == steps

    maps = aggregate(captured, view)
    assert maps.words == ("a", "ginormous", "red", "cube")
    assert maps.word_maps.shape == (4, height, width)
    assert maps.token_maps.shape == (view.n_used, height, width)
    assert torch.isfinite(maps.word_maps).all() and maps.word_maps.min() >= 0

    frames = film.frames()
    assert len(frames) == steps
    assert all((f.x0 is not None) == has_x0 for f in frames)


def test_missing_embedded_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "EMBEDDED_MODEL_DIR", tmp_path / "tiny-shapes-sd")
    with pytest.raises(ModelLoadError, match="embedded model is missing"):
        load_pipeline()


def test_directory_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_pipeline(str(tmp_path))


def test_unsupported_pipeline_class(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(ModelLoadError, match="KandinskyV22Pipeline"):
        load_pipeline(str(tmp_path))


def test_hub_id_offline_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        load_pipeline("nobody-here/not-a-cached-model")
    assert time.perf_counter() - started < 5
    message = str(err.value)
    assert "nobody-here/not-a-cached-model" in message
    assert "offline" in message and "directory" in message


def test_not_a_path_nor_a_hub_id():
    with pytest.raises(ModelLoadError, match="neither"):
        load_pipeline("/definitely/not/here")
