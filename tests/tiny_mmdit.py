"""Tiny random-weight joint-attention (MMDiT) pipelines, built in code (no network): SD3/SD3.5 and Flux.

Each builder mirrors the *structure* of the real checkpoint's configs at small widths, so code exercised on them
meets the same module paths, processor classes, token layout and latent geometry as on the real model:

- SD3.5 (``stabilityai/stable-diffusion-3.5-medium``): ``SD3Transformer2DModel`` with ``JointTransformerBlock``\\ s
  (the last one ``context_pre_only``), ``dual_attention_layers`` (an image-only ``attn2`` in the first blocks, as in
  SD3.5) and ``qk_norm="rms_norm"``; patch size 2; three text encoders: CLIP-L and CLIP-G
  (``CLIPTextModelWithProjection``, their 77 slots concatenated channel-wise and zero-padded to T5's width) and T5
  (``T5EncoderModel``, optional: without it the pipeline feeds zeros); pooled projection = CLIP-L + CLIP-G
  projections; ``FlowMatchEulerDiscreteScheduler`` with shift 3; 16-channel VAE with shift and scale factors.
- Flux (``black-forest-labs/FLUX.1-schnell``): ``FluxTransformer2DModel`` with double-stream
  (``transformer_blocks``) and single-stream (``single_transformer_blocks``) blocks, rotary embeddings over
  ``axes_dims_rope`` (summing to the head width), 2x2 latent packing (``in_channels`` = 4 x latent channels), CLIP-L
  for the pooled vector and T5 for the token sequence, no guidance embedding (schnell), shift 1 scheduler.

Tokenizers: CLIP's real BPE (:func:`explain.clip.tokens.build_clip_tokenizer`, offline from open_clip's vocabulary) and a
small SentencePiece-style T5 tokenizer built in code (:func:`build_t5_tokenizer`: a ``tokenizers`` Unigram model
with the Metaspace pre-tokenizer and ``$A </s>`` post-processor of T5, case-sensitive like T5, one piece per test
word plus single characters, so any prompt tokenises). Images are 128x128 (8x8 = 64 image tokens on both), so a 2-step generation
takes well under a second.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from explain.clip.tokens import build_clip_tokenizer
from tests.tiny_pipelines import clip_text_encoder

__all__ = [
    "build_sd3",
    "build_flux",
    "build_t5_tokenizer",
    "save_and_reload",
    "reloaded",
    "generate",
    "T5_WORDS",
    "MMDIT_BUILDERS",
    "TINY_HW",
    "TINY_T5_SLOTS",
]

# Whole-word pieces of the tiny T5 vocabulary; other words fall back to single characters.
T5_WORDS = ("a", "photo", "of", "cat", "dog", "on", "the", "red", "blue", "cube", "sphere", "grass", "sky", "tree")
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)  # scheduler_config.json of SD3 / SD3.5
FLUX_SCHNELL_SCHEDULER = dict(  # scheduler_config.json of FLUX.1-schnell
    num_train_timesteps=1000,
    shift=1.0,
    use_dynamic_shifting=False,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
SD3_VAE = dict(scaling_factor=1.5305, shift_factor=0.0609)  # vae/config.json of SD3 / SD3.5
FLUX_VAE = dict(scaling_factor=0.3611, shift_factor=0.1159)  # vae/config.json of FLUX.1
T5_MAX_LENGTH = 512  # tokenizer_config.json of the T5-XXL tokenizers shipped with SD3 and Flux


def build_t5_tokenizer(directory: str | Path, words: tuple[str, ...] = T5_WORDS) -> T5TokenizerFast:
    """A T5-style SentencePiece Unigram tokenizer built in code, saved to ``directory`` and reloaded.

    Layout as T5's: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2; words start with the ``▁`` metaspace; every sequence
    ends with ``</s>`` (T5 has no BOS); padding with ``<pad>``. Offsets are exact, so words map to token slots.
    """
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + word, -2.0) for word in words]
    vocab += [("▁", -5.0)] + [(ch, -6.0) for ch in string.ascii_letters + string.digits + string.punctuation]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer = T5TokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=T5_MAX_LENGTH,
    )
    directory = Path(directory)
    tokenizer.save_pretrained(directory)
    return T5TokenizerFast.from_pretrained(directory, local_files_only=True)


def _t5(tokenizer, d_model: int, seed: int) -> T5EncoderModel:
    heads = 2
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // heads,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=heads,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",  # T5 v1.1 / XXL
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def _vae(latent_channels: int, factors: dict, seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 4,  # 4 levels -> vae_scale_factor 8, as in SD3 and Flux
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        use_quant_conv=False,  # SD3 and Flux VAEs have no quant convs
        use_post_quant_conv=False,
        **factors,
    ).eval()


def build_sd3(workdir: Path, *, with_t5: bool = True, sample_size: int = 16, seed: int = 0):
    """An SD3.5-medium-shaped pipeline (3 joint blocks, the first with dual attention; T5 optional)."""
    workdir = Path(workdir)
    tokenizer = build_clip_tokenizer(workdir / "tokenizer")
    tokenizer_2 = build_clip_tokenizer(workdir / "tokenizer_2", pad_token="!")
    text_encoder = clip_text_encoder(tokenizer, hidden=16, act="gelu", projection=16, seed=seed)  # CLIP-L: 768
    text_encoder_2 = clip_text_encoder(
        tokenizer_2, hidden=24, act="gelu", projection=24, seed=seed + 1
    )  # CLIP-G: 1280
    t5_width = 48  # T5-XXL: 4096; must hold CLIP-L + CLIP-G channels (16 + 24), which are zero-padded to it
    tokenizer_3 = build_t5_tokenizer(workdir / "tokenizer_3") if with_t5 else None
    text_encoder_3 = _t5(tokenizer_3, t5_width, seed + 2) if with_t5 else None
    heads, head_dim = 2, 8  # SD3.5-medium: 24 x 64
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=16,
        num_layers=3,  # SD3.5-medium: 24
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=t5_width,
        caption_projection_dim=heads * head_dim,
        pooled_projection_dim=text_encoder.config.projection_dim + text_encoder_2.config.projection_dim,
        out_channels=16,
        pos_embed_max_size=sample_size,  # SD3.5-medium: 384
        dual_attention_layers=(0,),  # SD3.5-medium: (0, ..., 12)
        qk_norm="rms_norm",
    ).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
        vae=_vae(16, SD3_VAE, seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def build_flux(workdir: Path, *, sample_size: int = 16, seed: int = 0) -> FluxPipeline:
    """A FLUX.1-schnell-shaped pipeline (2 double-stream + 2 single-stream blocks, rotary embeddings)."""
    workdir = Path(workdir)
    tokenizer = build_clip_tokenizer(workdir / "tokenizer")
    tokenizer_2 = build_t5_tokenizer(workdir / "tokenizer_2")
    text_encoder = clip_text_encoder(
        tokenizer, hidden=16, act="gelu", projection=None, seed=seed
    )  # CLIP-L pooled output: 768
    text_encoder_2 = _t5(tokenizer_2, 32, seed + 1)  # T5-XXL: 4096
    latent_channels = 4  # FLUX.1: 16
    heads, head_dim = 2, 16  # FLUX.1: 24 x 128, rotary axes (16, 56, 56)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # 2x2 packed latents
        num_layers=2,  # FLUX.1: 19
        num_single_layers=2,  # FLUX.1: 38
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=text_encoder_2.config.d_model,
        pooled_projection_dim=text_encoder.config.hidden_size,
        guidance_embeds=False,  # schnell; FLUX.1-dev: True
        axes_dims_rope=(4, 6, 6),  # sums to head_dim
    ).eval()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHNELL_SCHEDULER),
        vae=_vae(latent_channels, FLUX_VAE, seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    return pipe


def save_and_reload(pipe, directory: Path):
    """``save_pretrained`` then ``from_pretrained`` (offline), so tests run the real loading path.

    Components that are None (SD3 without T5) are not saved; they are passed as None again, as a user would.
    """
    pipe.save_pretrained(directory)
    absent = {name: None for name, component in pipe.components.items() if component is None}
    return type(pipe).from_pretrained(directory, local_files_only=True, **absent)


MMDIT_BUILDERS = {"sd3": build_sd3, "flux": build_flux}


TINY_HW = 128  # pixels: 8x8 image tokens on both families
TINY_T5_SLOTS = 16  # max_sequence_length for tests (the real pipelines: 256 for SD3, 512 for Flux)


def reloaded(kind: str, root: Path):
    """A tiny pipeline (``"sd3"``, ``"sd3_no_t5"`` or ``"flux"``), saved and reloaded from ``root``."""
    builder, kwargs = {"sd3": (build_sd3, {}), "sd3_no_t5": (build_sd3, {"with_t5": False}), "flux": (build_flux, {})}[
        kind
    ]
    pipe = builder(Path(root) / "build", **kwargs)
    return save_and_reload(pipe, Path(root) / "saved")


def generate(pipe, prompt: str, *, steps: int = 2, seed: int = 0, **kwargs) -> torch.Tensor:
    """(B, 3, H, W) float image of a short seeded tiny generation."""
    kwargs = {"height": TINY_HW, "width": TINY_HW, "max_sequence_length": TINY_T5_SLOTS, **kwargs}
    generator = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, generator=generator, output_type="pt", **kwargs).images
