"""SD3 / Flux end to end: load_pipeline + describe_pipeline on saved tiny pipelines, recorded_run's seed policy and
recorder choice, and ``python -m explain generate`` (the U-Net's files, word maps per word, --no-capture)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_pipelines import single_thread

from explain.cli import main
from explain.diffusion.loading import ModelLoadError, describe_pipeline, load_pipeline
from explain.engine.run import Capture, recorded_run
from explain.joint import text_layout
from explain.joint.recording import FILM_NOT_RECORDED, pack_latents
from tests.tiny_mmdit import TINY_HW, TINY_T5_SLOTS, build_flux, build_sd3

PROMPT = "a red cube on the grass"
WORDS = ["a", "red", "cube", "on", "the", "grass"]
STEPS, SEED = 2, 7
BUILD = {"sd3": (build_sd3, {}), "sd3_no_t5": (build_sd3, {"with_t5": False}), "flux": (build_flux, {})}
SD3_LAYERS = tuple(f"transformer_blocks.{i}.attn" for i in range(3))  # attn2 of the dual block is not joint
FLUX_LAYERS = ("transformer_blocks.0.attn", "transformer_blocks.1.attn") + tuple(
    f"single_transformer_blocks.{i}.attn" for i in range(2)
)
EXPECTED = {  # kind -> (class, family, latent channels, default side, joint layers, steps, guidance, T5 slots)
    "sd3": ("StableDiffusion3Pipeline", "sd3", 16, 128, SD3_LAYERS, 28, 7.0, 256),
    "sd3_no_t5": ("StableDiffusion3Pipeline", "sd3", 16, 128, SD3_LAYERS, 28, 7.0, 256),
    "flux": ("FluxPipeline", "flux", 4, 1024, FLUX_LAYERS, 4, 0.0, 512),  # schnell-like: no guidance embedding
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """kind -> a diffusers directory written by save_pretrained."""
    dirs = {}
    for kind, (builder, kwargs) in BUILD.items():
        root = tmp_path_factory.mktemp(kind)
        builder(root / "build", **kwargs).save_pretrained(root / "pipe")
        dirs[kind] = root / "pipe"
    return dirs


@pytest.fixture(scope="module")
def loaded(saved):
    return {kind: load_pipeline(str(path), device="cpu") for kind, path in saved.items()}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_joint_pipelines_load_and_describe(loaded, kind):
    pipe = loaded[kind]
    class_name, family, channels, side, layers, steps, guidance, slots = EXPECTED[kind]
    assert type(pipe).__name__ == class_name
    if family == "sd3":  # saved without T5: loaded without it again
        assert (pipe.text_encoder_3 is None) == (kind == "sd3_no_t5")
    info = describe_pipeline(pipe)
    assert (info.family, info.pipeline_class, info.attention) == (family, class_name, "joint")
    assert info.latent_channels == channels == pipe.vae.config.latent_channels
    assert info.default_size == (side, side) and info.vae_scale_factor == 8
    assert info.cross_attention_layers == () and info.joint_layers == layers
    assert info.geometry.multiple == 16  # VAE 8 x 2 latent cells per image token
    assert info.prediction_type == "flow" and info.scheduler == "FlowMatchEulerDiscreteScheduler"
    assert (info.recommended_steps, info.recommended_guidance, info.max_sequence_length) == (steps, guidance, slots)
    assert info.text_encoder_width == pipe.transformer.config.joint_attention_dim
    assert info.scaling_factor == pipe.vae.config.scaling_factor


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ({"_class_name": "KandinskyV22Pipeline"}, "KandinskyV22Pipeline.*supported"),
        ({"_class_name": "FluxPipeline", "transformer": ["my_dit", "MyDiT"]}, "custom code"),
    ],
)
def test_unsupported_or_custom_pipelines_are_refused(tmp_path, index, message):
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=message):
        load_pipeline(str(tmp_path), device="cpu")


def test_pickle_only_joint_weights_are_refused(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match="safetensors only"):
        load_pipeline(str(tmp_path), device="cpu")


def _call(**extra):
    return dict(prompt=PROMPT, num_inference_steps=STEPS, height=TINY_HW, width=TINY_HW, output_type="np", **extra)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_recorded_run_draws_the_pipelines_own_noise_and_records_joint_maps(loaded, kind):
    pipe = loaded[kind]
    call = _call(max_sequence_length=TINY_T5_SLOTS)
    direct = pipe(**call, generator=torch.Generator().manual_seed(SEED)).images
    plain = recorded_run(pipe, call, seed=SEED, capture=Capture.nothing())
    assert np.array_equal(plain.images, direct)  # x_T drawn here == prepare_latents' own draw
    assert plain.noise.shape == (1, pipe.vae.config.latent_channels, TINY_HW // 8, TINY_HW // 8)
    if kind == "flux":
        assert pack_latents(plain.noise).shape == (1, (TINY_HW // 16) ** 2, 4 * pipe.vae.config.latent_channels)

    run = recorded_run(pipe, call, seed=SEED, capture=Capture(concepts=("cube", "sky")))
    assert np.array_equal(run.images, direct)  # capture on: bit-identical
    assert run.captured is None and run.frames == () and run.notes == (FILM_NOT_RECORDED,)
    assert run.joint.words == tuple(WORDS) and run.joint.concepts.concepts == ("cube", "sky")
    assert run.joint.maps.layer_names == EXPECTED[kind][4]
    assert run.steps_done == STEPS and len(run.joint.maps.timesteps) == STEPS


class _UNetStub:
    """Not a joint pipeline (it has a U-Net); never called."""

    unet = object()
    do_classifier_free_guidance = False


def test_concepts_need_a_joint_pipeline():
    with pytest.raises(ValueError, match="SD3 or Flux"):
        recorded_run(_UNetStub(), {"prompt": "x"}, capture=Capture(concepts=("x",)), draw_noise=False)


def _generate(model_dir, out, *extra):
    argv = ["generate", "--model", str(model_dir), "--steps", str(STEPS), "--height", str(TINY_HW)]
    return main([*argv, "--width", str(TINY_HW), "--seed", str(SEED), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def cli_runs(saved, tmp_path_factory):
    """kind -> output directory of a captured CLI run (prompt words as concepts, plus --concept sky)."""
    outs = {}
    for kind in ("sd3", "flux"):
        out = tmp_path_factory.mktemp(f"{kind}-run")
        assert _generate(saved[kind], out, "--prompt", PROMPT, "--concept", "sky") == 0
        outs[kind] = out
    return outs


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_cli_writes_the_unet_formats_from_joint_attention(cli_runs, loaded, kind):
    out = cli_runs[kind]
    assert np.asarray(Image.open(out / "image.png")).shape == (TINY_HW, TINY_HW, 3)
    assert not (out / "film.gif").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["attention"] == "joint" and summary["capture"] is True
    assert summary["normalization"] == "text" and summary["words"] == WORDS
    assert summary["concepts"] == [*WORDS, "sky"] and summary["notes"] == [FILM_NOT_RECORDED]
    assert summary["layers"] == len(EXPECTED[kind][4]) and summary["captured_steps"] == STEPS
    assert summary["capture_bytes"] > 0 and summary["pipeline"] == EXPECTED[kind][0]

    npz = np.load(out / "attention.npz")
    n_words, n_columns = len(WORDS), len(summary["tokens"])
    assert npz["words"].tolist() == WORDS and npz["tokens"].tolist() == summary["tokens"]
    assert str(npz["normalization"]) == "text"
    for name, shape in [("word_maps", (n_words,)), ("word_maps_joint", (n_words,)), ("token_maps", (n_columns,))]:
        assert npz[name].dtype == np.float32 and npz[name].shape == (*shape, TINY_HW, TINY_HW), name
        assert np.isfinite(npz[name]).all() and npz[name].min() >= 0
    assert npz["layer_names"].tolist() == list(EXPECTED[kind][4])
    assert npz["text_mass"].shape == (TINY_HW, TINY_HW) and 0 < npz["text_mass"].mean() < 1
    layout = text_layout(loaded[kind], PROMPT)  # the CLI's default T5 slots: the pipeline's
    position = {int(c): i for i, c in enumerate(npz["columns"])}
    cube = [position[c] for c in layout.word("cube").columns]  # SD3: a CLIP and a T5 column
    assert len(cube) == (2 if kind == "sd3" else 1)
    np.testing.assert_allclose(npz["word_maps"][2], npz["token_maps"][cube].sum(0), rtol=1e-4, atol=1e-6)
    for maps in (npz["word_maps"], npz["word_maps_joint"]):  # maps differ per word, in both normalisations
        for i in range(n_words):
            for j in range(i):
                assert not np.allclose(maps[i], maps[j]), (WORDS[i], WORDS[j])

    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == [f"{i:02d}_{w}.png" for i, w in enumerate(WORDS)]
    concepts = np.load(out / "concepts.npz")
    assert concepts["concepts"].tolist() == [*WORDS, "sky"]
    assert concepts["concept_maps"].shape == (n_words + 1, TINY_HW, TINY_HW)
    assert not np.allclose(concepts["concept_maps"][-1], concepts["concept_maps"][2])  # sky vs cube
    assert len(list((out / "concept_heatmaps").iterdir())) == n_words + 1


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_cli_no_capture_image_is_bit_identical(cli_runs, saved, tmp_path, kind):
    assert _generate(saved[kind], tmp_path, "--prompt", PROMPT, "--no-capture") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png", "summary.json"]
    plain = np.asarray(Image.open(tmp_path / "image.png"))
    assert np.array_equal(plain, np.asarray(Image.open(cli_runs[kind] / "image.png")))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["capture"] is False and summary["capture_bytes"] == 0 and summary["attention"] == "joint"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scheduler", "ddim"], "rectified flow"),
        (["--height", "120"], "not a multiple of 16 (VAE factor 8 x image-token patch 2)"),
    ],
)
def test_cli_joint_argument_errors_exit_2(saved, tmp_path, capsys, args, message):
    assert _generate(saved["flux"], tmp_path, "--prompt", PROMPT, *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
