"""The embedded model's CLIP: one open_clip model whose text tower is the pipeline's ``text_encoder``.

The embedded pipeline directory stores each weight once: the text transformer as a transformers
``CLIPTextModel`` (``text_encoder/``, what Stable Diffusion feeds its U-Net), and in ``clip/`` only what the CLIP
contrastive view needs besides it: the image tower, ``text_projection`` (W_t) and the temperature ``logit_scale``
(t), plus the open_clip config. This module converts between the two layouts (exactly: same outputs) and rebuilds
the full open_clip model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "image_preprocess",
    "ClipBundle",
    "open_clip_text_to_hf",
    "hf_text_to_open_clip",
    "build_open_clip",
    "load_clip",
    "CLIP_SUBDIR",
]

CLIP_SUBDIR = "clip"
CLIP_CONFIG = "open_clip_config.json"
CLIP_WEIGHTS = "clip_extra.safetensors"


@dataclass(frozen=True)
class ClipBundle:
    """A ready CLIP: the open_clip model, its tokenizer (callable: list[str] -> (N, 77) ids) and preprocess.

    ``preprocess`` maps a PIL image to a (3, S, S) float tensor in [-1, 1] (mean = std = 0.5 per channel).
    """

    model: torch.nn.Module
    tokenizer: object
    preprocess: object
    image_size: int


def _layer_keys(i: int) -> list[tuple[str, str]]:
    oc, hf = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
    return [
        (oc + "attn.out_proj.weight", hf + "self_attn.out_proj.weight"),
        (oc + "attn.out_proj.bias", hf + "self_attn.out_proj.bias"),
        (oc + "ln_1.weight", hf + "layer_norm1.weight"),
        (oc + "ln_1.bias", hf + "layer_norm1.bias"),
        (oc + "ln_2.weight", hf + "layer_norm2.weight"),
        (oc + "ln_2.bias", hf + "layer_norm2.bias"),
        (oc + "mlp.c_fc.weight", hf + "mlp.fc1.weight"),
        (oc + "mlp.c_fc.bias", hf + "mlp.fc1.bias"),
        (oc + "mlp.c_proj.weight", hf + "mlp.fc2.weight"),
        (oc + "mlp.c_proj.bias", hf + "mlp.fc2.bias"),
    ]


_GLOBAL_KEYS = [
    ("token_embedding.weight", "embeddings.token_embedding.weight"),
    ("positional_embedding", "embeddings.position_embedding.weight"),
    ("ln_final.weight", "final_layer_norm.weight"),
    ("ln_final.bias", "final_layer_norm.bias"),
]


def _n_layers(state: dict, prefix: str) -> int:
    return len({k.split(".")[2] for k in state if k.startswith(prefix)})


def open_clip_text_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip text-tower keys -> transformers ``CLIPTextModel`` keys (q/k/v split from ``in_proj``)."""
    out = {hf: state[oc] for oc, hf in _GLOBAL_KEYS}
    for i in range(_n_layers(state, "transformer.resblocks.")):
        out.update({hf: state[oc] for oc, hf in _layer_keys(i)})
        for part, w, b in zip(
            ("q", "k", "v"),
            state[f"transformer.resblocks.{i}.attn.in_proj_weight"].chunk(3),
            state[f"transformer.resblocks.{i}.attn.in_proj_bias"].chunk(3),
            strict=True,
        ):
            out[f"encoder.layers.{i}.self_attn.{part}_proj.weight"] = w
            out[f"encoder.layers.{i}.self_attn.{part}_proj.bias"] = b
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def hf_text_to_open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`open_clip_text_to_hf`."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {oc: state[hf] for oc, hf in _GLOBAL_KEYS}
    for i in range(_n_layers(state, "encoder.layers.")):
        out.update({oc: state[hf] for oc, hf in _layer_keys(i)})
        p = f"encoder.layers.{i}.self_attn."
        out[f"transformer.resblocks.{i}.attn.in_proj_weight"] = torch.cat(
            [state[p + f"{x}_proj.weight"] for x in "qkv"]
        )
        out[f"transformer.resblocks.{i}.attn.in_proj_bias"] = torch.cat([state[p + f"{x}_proj.bias"] for x in "qkv"])
    return out


def build_open_clip(config: dict) -> torch.nn.Module:
    """An open_clip ``CLIP`` from the JSON config saved in ``clip/open_clip_config.json``."""
    import open_clip

    return open_clip.CLIP(
        embed_dim=config["embed_dim"],
        vision_cfg=open_clip.CLIPVisionCfg(**config["vision_cfg"]),
        text_cfg=open_clip.CLIPTextCfg(**config["text_cfg"]),
    )


def image_preprocess(image_size: int):
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Lambda(lambda im: im.convert("RGB")),
            transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )


def load_clip(model_dir: str | Path, device: str | torch.device = "cpu") -> ClipBundle:
    """Rebuild the embedded model's full open_clip CLIP from ``model_dir`` (a pipeline dir with ``clip/``)."""
    import open_clip
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    clip_dir = model_dir / CLIP_SUBDIR
    if not (clip_dir / CLIP_CONFIG).exists():
        raise FileNotFoundError(
            f"{model_dir} has no {CLIP_SUBDIR}/{CLIP_CONFIG}: only the embedded model carries a full CLIP "
            "(image tower, projections, temperature)."
        )
    config = json.loads((clip_dir / CLIP_CONFIG).read_text())
    model = build_open_clip(config)
    state = {k: v.float() for k, v in load_file(clip_dir / CLIP_WEIGHTS).items()}
    text_files = sorted((model_dir / "text_encoder").glob("*.safetensors"))
    text_state: dict[str, torch.Tensor] = {}
    for f in text_files:
        text_state.update({k: v.float() for k, v in load_file(f).items()})
    state.update(hf_text_to_open_clip(text_state))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "attn_mask"]
    if missing or unexpected:
        raise RuntimeError(f"CLIP weights do not fit the config: missing={missing} unexpected={unexpected}")
    model = model.to(device).eval()
    size = config["vision_cfg"]["image_size"]
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=config["text_cfg"].get("context_length", 77))
    return ClipBundle(model=model, tokenizer=tokenizer, preprocess=image_preprocess(size), image_size=size)
