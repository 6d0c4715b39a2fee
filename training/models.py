"""Builders for the embedded model's components, and the open_clip -> transformers text-tower conversion."""

from __future__ import annotations

import open_clip
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from explain.clip.model import open_clip_text_to_hf
from training.config import ClipConfig, UNetConfig, VaeConfig

__all__ = ["build_clip", "zero_unused_token_rows", "text_model_from_open_clip", "build_vae", "build_unet"]

BOS_ID, EOS_ID, PAD_ID = 49406, 49407, 0  # CLIP BPE: <|startoftext|>, <|endoftext|>, "!" (open_clip pads with 0)


def build_clip(cfg: ClipConfig) -> open_clip.CLIP:
    """A small open_clip CLIP: ViT image tower over 64x64 images, causal text transformer over 77 BPE tokens."""
    vision = open_clip.CLIPVisionCfg(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        width=cfg.vision_width,
        layers=cfg.vision_layers,
        head_width=cfg.vision_head_width,
    )
    text = open_clip.CLIPTextCfg(
        context_length=cfg.context_length,
        vocab_size=cfg.vocab_size,
        width=cfg.text_width,
        heads=cfg.text_heads,
        layers=cfg.text_layers,
    )
    return open_clip.CLIP(embed_dim=cfg.embed_dim, vision_cfg=vision, text_cfg=text)


@torch.no_grad()
def zero_unused_token_rows(model: open_clip.CLIP, used_ids: torch.Tensor) -> None:
    """Zero the embedding rows of tokens the world never uses.

    They would stay at their random init anyway (no gradient reaches them); zeros make the committed weights
    compress to almost nothing and make unknown words neutral instead of random.
    """
    keep = torch.zeros(model.token_embedding.num_embeddings, dtype=torch.bool)
    keep[used_ids] = True
    model.token_embedding.weight[~keep] = 0.0


def text_model_from_open_clip(model: open_clip.CLIP) -> CLIPTextModel:
    """Convert open_clip's text tower into a transformers ``CLIPTextModel`` with identical outputs.

    ``last_hidden_state`` equals ``ln_final(transformer(x))`` of open_clip (what SD feeds the U-Net) and
    ``pooler_output`` its EOS-token pooling (before ``text_projection``).
    """
    width = model.token_embedding.embedding_dim
    blocks = model.transformer.resblocks
    config = CLIPTextConfig(
        vocab_size=model.token_embedding.num_embeddings,
        hidden_size=width,
        intermediate_size=blocks[0].mlp.c_fc.out_features,
        num_hidden_layers=len(blocks),
        num_attention_heads=blocks[0].attn.num_heads,
        max_position_embeddings=model.positional_embedding.shape[0],
        hidden_act="gelu",  # open_clip's default nn.GELU (not quick_gelu)
        layer_norm_eps=blocks[0].ln_1.eps,
        projection_dim=model.text_projection.shape[1],
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    hf = CLIPTextModel(config)
    text_state = {k: v for k, v in model.state_dict().items() if not k.startswith("visual.")}
    missing, unexpected = hf.load_state_dict(open_clip_text_to_hf(text_state), strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise RuntimeError(f"text tower conversion mismatch: missing={missing} unexpected={unexpected}")
    return hf.eval()


def build_vae(cfg: VaeConfig, image_size: int = 64) -> AutoencoderKL:
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=image_size,
    )


def build_unet(cfg: UNetConfig, cross_attention_dim: int, latent_size: int, latent_channels: int = 4):
    """SD-style U-Net: cross-attention down/up blocks at the two finer resolutions, a plain block at the coarsest."""
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.attention_heads,
        norm_num_groups=_groups(cfg.block_out_channels),
    )


def _groups(channels: tuple[int, ...]) -> int:
    """Largest GroupNorm group count <= 32 that divides every block width."""
    return max(g for g in range(1, 33) if all(c % g == 0 for c in channels))
