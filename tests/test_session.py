"""explain.engine.session on a tiny SD-1 pipeline: validation, streaming, stopping, isolation, map views, exports."""

import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_pipelines import single_thread

from explain.diffusion.loading import load_pipeline
from explain.engine.requests import MAX_STEPS, SCHEDULER_CHOICES, GenerationRequest
from explain.engine.session import (
    Engine,
    GenerationResult,
    StepUpdate,
    generate,
    generate_stream,
    request_pipeline,
    size_limits,
)
from explain.io.exports import export_film_gif, export_grid_png, export_maps_npz, export_settings_json
from explain.maps.views import layer_shapes, word_maps

PROMPT = "a big red circle on the left"
STEPS = 3


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def model_dir(tiny_sd1_dir):
    return tiny_sd1_dir


@pytest.fixture(scope="module")
def pipe(model_dir):
    return load_pipeline(str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def result(pipe):
    return generate(pipe, GenerationRequest(PROMPT, seed=1, steps=STEPS, scheduler="DDIM"))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"prompt": "red " * 80}, "tokens long"),
        ({"negative": "blue " * 80}, "negative prompt"),
        ({"steps": 0}, "steps"),
        ({"steps": MAX_STEPS + 1}, "steps"),
        ({"guidance": -1.0}, "guidance"),
        ({"seed": -3}, "seed"),
        ({"scheduler": "magic"}, "unknown scheduler"),
        ({"height": 100}, "multiple of 64"),
        ({"width": 4096}, "height|width"),
    ],
)
def test_validate_rejects_bad_input_with_a_clear_message(pipe, fields, message):
    request = GenerationRequest(**{"prompt": PROMPT, **fields})
    with pytest.raises(ValueError, match=message):
        request.validate(pipe)


def test_validate_returns_the_size(pipe):
    multiple, default_hw, max_side = size_limits(pipe)
    assert (multiple, default_hw, max_side) == (64, (128, 128), 256)  # VAE x8, U-Net /8, twice the default side
    assert GenerationRequest(PROMPT).validate(pipe) == default_hw
    assert GenerationRequest(PROMPT, height=64, width=192).validate(pipe) == (64, 192)


def test_engine_reads_limits_from_configs_without_loading(model_dir, pipe):
    engine = Engine(str(model_dir), device="cpu")
    limits, chain_length, joint = engine.limits()
    assert not engine.loaded and not joint  # a U-Net model
    assert limits == size_limits(pipe)
    assert chain_length == pipe.scheduler.config.num_train_timesteps


def test_warm_up_runs_one_step_at_the_smallest_size(model_dir):
    """A real checkpoint's warm-up must not be a full-size generation (SD 1.5 on a CPU: 83 s to the first step)."""
    engine = Engine(str(model_dir), device="cpu")
    pipe = engine.pipeline()
    latent_sides = []
    hook = pipe.unet.register_forward_pre_hook(lambda _, args: latent_sides.append(tuple(args[0].shape[-2:])))
    try:
        engine.warm_up()
    finally:
        hook.remove()
    smallest = size_limits(pipe).multiple // pipe.vae_scale_factor
    assert smallest < pipe.unet.config.sample_size  # the tiny model's default is larger than its smallest size
    assert latent_sides and set(latent_sides) == {(smallest, smallest)}
    assert len(latent_sides) <= 2  # one step (PNDM's PLMS start adds one warm-up call)


def test_stream_yields_one_preview_per_step_then_the_result(pipe):
    items = list(generate_stream(pipe, GenerationRequest(PROMPT, seed=1, steps=STEPS, scheduler="DDIM")))
    updates, final = items[:-1], items[-1]
    assert [u.step for u in updates] == list(range(STEPS))
    assert all(isinstance(u, StepUpdate) and u.total == STEPS for u in updates)
    assert updates[0].preview.shape == (128, 128, 3) and updates[0].preview.dtype == np.uint8
    assert isinstance(final, GenerationResult)
    assert not final.interrupted and final.steps_done == STEPS
    assert final.captured.n_steps == STEPS and len(final.frames) == STEPS
    assert final.captured.per_head  # heads can be filtered
    assert final.image.size == (128, 128)


def test_same_request_same_image_and_the_shared_pipeline_is_untouched(pipe, result):
    scheduler, processors = pipe.scheduler, dict(pipe.unet.attn_processors)
    again = generate(pipe, result.request)
    assert np.array_equal(np.asarray(again.image), np.asarray(result.image))
    assert result.scheduler == "DDIMScheduler"
    assert pipe.scheduler is scheduler and type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert dict(pipe.unet.attn_processors) == processors  # recorders restored


def test_request_pipeline_shares_weights_but_not_the_scheduler(pipe):
    copy = request_pipeline(pipe, "Euler")
    assert copy.unet is pipe.unet and copy.vae is pipe.vae and copy.text_encoder is pipe.text_encoder
    assert copy.scheduler is not pipe.scheduler
    assert type(copy.scheduler).__name__ == "EulerDiscreteScheduler"
    assert set(SCHEDULER_CHOICES) >= {"DDIM", "DPM-Solver++", "Euler", "Euler-a", "Heun"}


def test_stop_ends_the_run_within_a_step_and_the_next_run_works(pipe):
    stop = threading.Event()
    steps = 40
    updates = 0
    lock = threading.RLock()
    final = None
    for item in generate_stream(pipe, GenerationRequest(PROMPT, steps=steps), stop, lock=lock):
        if isinstance(item, StepUpdate):
            updates += 1
            stop.set()  # after the first step
        else:
            final = item
    assert final.interrupted
    assert final.steps_done <= 3 < steps  # the step in progress finishes; the loop skips the rest
    assert final.captured.n_steps == final.steps_done
    assert generate(pipe, GenerationRequest(PROMPT, steps=2, scheduler="DDIM"), lock=lock).steps_done == 2


def test_closing_the_stream_stops_the_worker(pipe):
    stop = threading.Event()
    stream = generate_stream(pipe, GenerationRequest(PROMPT, steps=40), stop)
    assert isinstance(next(stream), StepUpdate)
    stream.close()
    assert stop.is_set()


def test_errors_in_the_worker_reach_the_consumer(pipe):
    with pytest.raises(ValueError, match="prompt is empty"):
        next(generate_stream(pipe, GenerationRequest("")))


def test_word_maps_filters_normalises_and_thresholds(result):
    view = word_maps(result, normalization="minmax", threshold=0.5)
    assert view.words == ("a", "big", "red", "circle", "on", "the", "left")
    assert view.maps.shape == (7, 128, 128) and view.maps.min() >= 0 and view.maps.max() <= 1
    assert len(view.overlays) == 7 and view.overlays[0].shape == (128, 128, 3)
    assert view.masks is not None and len(view.masks) == 7
    content = word_maps(result, skip_words=("a", "on", "the"), normalization="softmax")
    assert content.words == ("big", "red", "circle", "left")
    assert np.allclose(content.maps.sum(axis=0), 1, atol=1e-4)  # softmax over the shown words
    one_step = word_maps(result, steps=[0], parts=["up"], downsamples=[1], heads=[0])
    assert one_step.steps == (0,) and one_step.heads == (0,)
    assert one_step.layers and all(name.startswith("up_blocks") for name in one_step.layers)
    with pytest.raises(ValueError, match="no recorded step"):
        word_maps(result, steps=[STEPS + 5])
    with pytest.raises(ValueError, match="no head"):
        word_maps(result, heads=[99])
    with pytest.raises(ValueError, match="no cross-attention layer"):
        word_maps(result, parts=["mid"], downsamples=[1])


def test_layer_shapes_match_the_module(pipe):
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    shapes = layer_shapes(pipe, name, 128, 128)
    attn = pipe.unet.get_submodule(name)
    assert shapes.feature_hw == (16, 16) and shapes.n_queries == 256  # 128 px / VAE 8 = 16 x 16 latent
    assert shapes.heads == attn.heads and shapes.head_dim * shapes.heads == attn.to_q.out_features
    assert shapes.text_len == 77 and shapes.text_dim == pipe.text_encoder.config.hidden_size
    assert layer_shapes(pipe, "up_blocks.1.attentions.0.transformer_blocks.0.attn2", 128, 192).feature_hw == (4, 6)
    with pytest.raises(ValueError, match="not a cross-attention layer"):
        layer_shapes(pipe, "down_blocks.0.attentions.0.transformer_blocks.0.attn1", 128, 128)


def test_exports(result, pipe, tmp_path):
    from explain.capture.film import LatentPreview

    view = word_maps(result)
    grid = export_grid_png(result, view, tmp_path / "grid.png")
    assert Image.open(grid).format == "PNG"
    film = Image.open(export_film_gif(result, tmp_path / "film.gif"))
    assert film.format == "GIF" and film.n_frames == STEPS
    big = Image.open(export_film_gif(result, tmp_path / "film2.gif", preview=LatentPreview.fit(pipe.vae)))
    assert big.n_frames == STEPS and big.width > 2 * 128
    with np.load(export_maps_npz(result, tmp_path / "maps.npz")) as npz:
        assert {"words", "word_maps", "tokens", "token_maps", "cube", "layer_names", "timesteps"} <= set(npz.files)
        assert npz["cube"].shape[0] == STEPS
    settings = json.loads(export_settings_json(result, tmp_path / "s.json").read_text())
    assert settings["prompt"] == PROMPT and settings["seed"] == 1 and settings["scheduler"] == "DDIM"
    assert settings["scheduler_class"] == "DDIMScheduler" and settings["steps_done"] == STEPS
    assert torch.is_tensor(next(iter(result.captured.maps.values())))


def test_recommended_guidance_comes_from_the_model_directory(tmp_path):
    from explain.diffusion.loading import EMBEDDED_MODEL_DIR

    expected = json.loads((EMBEDDED_MODEL_DIR / "explorer.json").read_text())["guidance"]
    assert Engine().recommended_guidance() == expected == 5.0
    assert Engine(str(tmp_path)).recommended_guidance() == 7.5  # no explorer.json: Stable Diffusion's usual scale
    (tmp_path / "explorer.json").write_text('{"guidance": 3.5}')
    assert Engine(str(tmp_path)).recommended_guidance() == 3.5
