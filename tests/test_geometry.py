"""explain.diffusion.geometry on tiny SD-1/SD-2/SDXL pipelines: one geometry, read from configs or a pipeline."""

import json

import pytest
import torch
from tiny_pipelines import BUILDERS, single_thread

from explain.capture.recorder import AttentionRecorder
from explain.diffusion.geometry import Geometry, SizeLimits, layer_downsample, positions_hw


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def pipe(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(request.param)
    pipe = BUILDERS[request.param](work)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(work / "pipe")
    pipe.saved = work / "pipe"
    return pipe


def test_configs_alone_give_the_pipeline_sizes(pipe):
    configs = [json.loads((pipe.saved / part / "config.json").read_text()) for part in ("unet", "vae")]
    from_configs, from_pipe = Geometry.from_configs(*configs), Geometry.from_pipeline(pipe)
    assert from_configs.limits == from_pipe.limits == SizeLimits(from_pipe.multiple, (128, 128), 256)
    assert from_pipe.vae_factor == pipe.vae_scale_factor == 8
    assert from_pipe.multiple == 8 * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    assert from_pipe.latent_hw(64, 96) == (8, 12) and from_pipe.image_hw((8, 12)) == (64, 96)
    assert from_pipe.size(None, 96) == (128, 96) and from_configs.layers == ()


def test_layers_are_the_attn2_layers_in_execution_order_with_their_heads(pipe):
    geometry = Geometry.from_pipeline(pipe)
    names = [layer.name for layer in geometry.layers]
    assert names and all(name.endswith("attn2") for name in names)
    parts = [name.split(".")[0] for name in names]
    assert parts == sorted(parts, key=["down_blocks", "mid_block", "up_blocks"].index)
    for layer in geometry.layers:
        assert layer.heads == pipe.unet.get_submodule(layer.name).heads
    with pytest.raises(ValueError, match="not a cross-attention layer"):
        geometry.layer("mid_block.attentions.0.transformer_blocks.0.attn1")


def test_layer_resolutions_match_what_the_recorder_sees(pipe):
    geometry = Geometry.from_pipeline(pipe)
    with single_thread(), AttentionRecorder(pipe) as recorder:
        pipe(
            "a red cube",
            num_inference_steps=1,
            height=64,
            width=96,
            callback_on_step_end=recorder.callback_on_step_end,
        )
    captured = recorder.result()
    for layer in geometry.layers:
        assert captured.layer_resolutions[layer.name] == layer.feature_hw(geometry.latent_hw(64, 96))
        assert captured.layer_heads[layer.name] == layer.heads


def test_downsampling_from_module_paths_and_positions():
    assert [layer_downsample(f"down_blocks.{i}.attentions.0", 4) for i in range(3)] == [1, 2, 4]
    assert layer_downsample("mid_block.attentions.0", 4) == 8 and layer_downsample("up_blocks.1.attentions.0", 4) == 4
    assert positions_hw((7, 5), 12) == (4, 3)  # stride-2 convolutions round up
    with pytest.raises(ValueError, match="no downsampling"):
        positions_hw((8, 8), 10)
    with pytest.raises(ValueError, match="unexpected U-Net layer"):
        layer_downsample("conv_in", 4)
    assert torch.Size(positions_hw((16, 24), 24)) == torch.Size((4, 6))
