"""Tiny random-weight Stable Diffusion pipelines, built in code (no network), one per family.

Each builder mirrors the *structure* of the real checkpoint's configs (block types, head layout, linear vs conv
projections, text encoders, scheduler and VAE constants) at small widths, so that code exercised on them meets
the same module paths, CFG batch layout and latent geometry as on the real model:

- SD 1.x (``stable-diffusion-v1-5``): 3 ``CrossAttnDownBlock2D`` + ``DownBlock2D``, 2 layers per block (16 ``attn2``
  layers), ``attention_head_dim`` an int (diffusers reads it as the number of heads), conv projections,
  ``CLIPTextModel`` with quick-GELU, PNDM scheduler, 4-level VAE (scale factor 8).
- SD 2.x (``stable-diffusion-2-1``, 768-v): as SD 1.x but ``use_linear_projection=True``, ``attention_head_dim`` a
  per-block list, ``upcast_attention=True``, GELU text encoder padding with ``"!"``, DDIM with
  ``prediction_type="v_prediction"``.
- SDXL (``stable-diffusion-xl-base-1.0``): ``DownBlock2D`` + 2 ``CrossAttnDownBlock2D``, ``transformer_layers_per_block``
  growing with depth, ``addition_embed_type="text_time"``, two text encoders (the second a
  ``CLIPTextModelWithProjection``) whose penultimate states are concatenated, Euler scheduler.

All use the real CLIP BPE tokenizer (:func:`explain.clip.tokens.build_clip_tokenizer`), so prompts tokenise as on the
real models, and default to 16x16 latents (128x128 images) so a 2-step generation takes well under a second.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from explain.clip.tokens import build_clip_tokenizer

__all__ = ["build_sd1", "build_sd2", "build_sdxl", "BUILDERS", "SD_SCHEDULER_CONFIG", "single_thread"]

# scheduler_config.json shared by the SD 1.x / 2.x / XL checkpoints (keys a class does not use are kept in its
# config, so `OtherScheduler.from_config(pipe.scheduler.config)` behaves as on the real models).
SD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    timestep_spacing="leading",
)
SD_VAE_SCALING = 0.18215  # vae/config.json of SD 1.x and 2.x
SDXL_VAE_SCALING = 0.13025  # vae/config.json of SDXL
NORM_GROUPS = 8  # group-norm groups at our tiny widths (the real models use 32 at 320+ channels)


def _tokenizer(workdir: Path, name: str, pad_token: str = "<|endoftext|>"):
    return build_clip_tokenizer(Path(workdir) / name, pad_token=pad_token)


def _sd_pipeline(vae, text_encoder, tokenizer, unet, scheduler) -> StableDiffusionPipeline:
    """An SD 1.x/2.x pipeline from its components, without safety checker."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def clip_text_encoder(tokenizer, *, hidden: int, act: str, projection: int | None = None, seed: int = 0):
    """A 2-layer CLIP text tower sized to ``tokenizer`` (``projection``: with a projection head, as SDXL / SD3 use)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act=act,
        projection_dim=projection or hidden,
    )
    torch.manual_seed(seed)
    model_class = CLIPTextModel if projection is None else CLIPTextModelWithProjection
    return model_class(config).eval()


def _vae(scaling_factor: float, sample_size: int, seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,  # 4 levels -> vae_scale_factor 8, as in SD
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    ).eval()


def build_sd1(workdir: Path, *, sample_size: int = 16, seed: int = 0) -> StableDiffusionPipeline:
    """An SD-1.5-shaped pipeline with random weights; tokenizer files go to ``workdir``."""
    tokenizer = _tokenizer(workdir, "tokenizer")
    text_encoder = clip_text_encoder(tokenizer, hidden=32, act="quick_gelu", seed=seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=text_encoder.config.hidden_size,
        attention_head_dim=4,  # SD 1.x: an int, read by diffusers as the number of heads
        norm_num_groups=NORM_GROUPS,
    ).eval()
    scheduler = PNDMScheduler.from_config(SD_SCHEDULER_CONFIG)
    vae = _vae(SD_VAE_SCALING, sample_size * 8, seed)
    return _sd_pipeline(vae, text_encoder, tokenizer, unet, scheduler)


def build_sd2(workdir: Path, *, sample_size: int = 16, seed: int = 0) -> StableDiffusionPipeline:
    """An SD-2.1-768-v-shaped pipeline (v-prediction) with random weights."""
    tokenizer = _tokenizer(workdir, "tokenizer", pad_token="!")
    text_encoder = clip_text_encoder(tokenizer, hidden=48, act="gelu", seed=seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=text_encoder.config.hidden_size,
        attention_head_dim=(2, 2, 4, 4),  # SD 2.x: a list (5, 10, 20, 20), heads of width 64 there
        use_linear_projection=True,
        upcast_attention=True,
        norm_num_groups=NORM_GROUPS,
    ).eval()
    scheduler = DDIMScheduler.from_config({**SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction"})
    vae = _vae(SD_VAE_SCALING, sample_size * 8, seed)
    return _sd_pipeline(vae, text_encoder, tokenizer, unet, scheduler)


def build_sdxl(workdir: Path, *, sample_size: int = 16, seed: int = 0) -> StableDiffusionXLPipeline:
    """An SDXL-base-shaped pipeline with random weights."""
    tokenizer = _tokenizer(workdir, "tokenizer")
    tokenizer_2 = _tokenizer(workdir, "tokenizer_2", pad_token="!")
    text_encoder = clip_text_encoder(tokenizer, hidden=32, act="quick_gelu", seed=seed)
    text_encoder_2 = clip_text_encoder(tokenizer_2, hidden=48, act="gelu", projection=48, seed=seed + 1)
    time_embed_dim = 8
    n_time_ids = 6  # original size (2), crop top-left (2), target size (2): SDXL's micro-conditioning
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),  # SDXL: (1, 2, 10)
        attention_head_dim=(2, 2, 4),  # SDXL: (5, 10, 20)
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=n_time_ids * time_embed_dim + text_encoder_2.config.projection_dim,
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        norm_num_groups=NORM_GROUPS,
    ).eval()
    scheduler = EulerDiscreteScheduler.from_config(SD_SCHEDULER_CONFIG)
    vae = _vae(SDXL_VAE_SCALING, sample_size * 8, seed)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )


BUILDERS = {"sd1": build_sd1, "sd2": build_sd2, "sdxl": build_sdxl}


@contextlib.contextmanager
def single_thread():
    """Run torch on one intra-op thread, restoring the previous count.

    Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP's spinning workers make
    every op wait for a descheduled sibling (measured: 77 s vs 17 s for tests/test_attention.py under load).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
