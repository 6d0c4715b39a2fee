"""The geometry of a Stable Diffusion pipeline, derived once from its configs: sizes, multiples, attn2 layers.

An image of H x W pixels is encoded to a latent of (H / f, W / f) cells, f the VAE factor (``2 ** (number of VAE
blocks - 1)``, as diffusers pipelines compute ``vae_scale_factor``). The U-Net halves the latent after every down
block but the last (stride-2 convolutions round up), so image sides must be multiples of
``f · 2 ** (number of U-Net blocks - 1)``, and the cross-attention layer at module path ``down_blocks.i`` sees
the latent shrunk by ``2 ** i``, ``mid_block`` by ``2 ** (n - 1)``, ``up_blocks.j`` by ``2 ** (n - 1 - j)``.

:class:`Geometry` holds all of it; :meth:`Geometry.from_configs` reads only config dicts (a fast start without
weights), :meth:`Geometry.from_pipeline` also lists every ``attn2`` layer with its heads, in execution order.

Joint-attention transformers (SD3 / SD3.5, Flux; Esser et al. 2024) have no U-Net and no cross-attention: the
latent is cut into image tokens of ``patch`` x ``patch`` cells (SD3's patch embedding, Flux's 2x2 packing), so sides
are multiples of ``f · patch`` and the default latent is ``pipe.default_sample_size`` a side
(``transformer.config.sample_size`` on SD3, 128 on Flux).

Example:
    >>> geo = Geometry.from_pipeline(pipe)
    >>> geo.default_hw, geo.multiple, geo.latent_hw(64, 96)
    ((64, 64), 32, (8, 12))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "MAX_SIDE_FACTOR",
    "SizeLimits",
    "AttnLayer",
    "Geometry",
    "vae_factor",
    "layer_downsample",
    "positions_hw",
    "context_width",
]

MAX_SIDE_FACTOR = 2  # largest image side: this many times the model's default side
_PART_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}  # execution order of the U-Net's parts


class SizeLimits(NamedTuple):
    """Image sizes a pipeline accepts: sides are multiples of ``multiple`` up to ``max_side`` pixels."""

    multiple: int
    default_hw: tuple[int, int]
    max_side: int


def vae_factor(vae_config: Mapping) -> int:
    """Pixels per latent cell along a side: ``2 ** (len(block_out_channels) - 1)``, as diffusers pipelines compute it."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def layer_downsample(name: str, n_blocks: int) -> int:
    """How many times smaller than the latent the feature map of U-Net layer ``name`` (a module path) is."""
    kind, _, rest = name.partition(".")
    if kind == "down_blocks":
        return 2 ** int(rest.split(".")[0])
    if kind == "up_blocks":
        return 2 ** (n_blocks - 1 - int(rest.split(".")[0]))
    if kind == "mid_block":
        return 2 ** (n_blocks - 1)
    raise ValueError(f"unexpected U-Net layer {name!r}")


def context_width(pipe) -> int:
    """Width of the text states the denoiser takes: a U-Net's ``cross_attention_dim`` (K/V input width), an SD3 /
    Flux transformer's ``joint_attention_dim`` (the text stream's input width, before its own projections)."""
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        width = unet.config.cross_attention_dim
        return int(width[0] if isinstance(width, (list, tuple)) else width)
    return int(pipe.transformer.config.joint_attention_dim)


def positions_hw(latent_hw: tuple[int, int], n: int) -> tuple[int, int]:
    """(h, w) of a U-Net feature map with ``n`` positions: the latent halved k times (stride-2 convs round up)."""
    h, w = latent_hw
    while h * w > n:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != n:
        raise ValueError(
            f"a layer has {n} positions, which no downsampling of the {latent_hw} latent gives; "
            "pass height/width to AttentionRecorder or pass rec.callback_on_step_end to the pipeline"
        )
    return h, w


@dataclass(frozen=True)
class AttnLayer:
    """One cross-attention (``attn2``) layer.

    Attributes:
        name: diffusers module path, e.g. ``down_blocks.1.attentions.0.transformer_blocks.0.attn2``.
        heads: Attention heads.
        downsample: How many times smaller than the latent its feature map is (1, 2, 4, ...).
    """

    name: str
    heads: int
    downsample: int

    def feature_hw(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of this layer's feature map for a latent of ``latent_hw`` (stride-2 convolutions round up)."""
        return -(-latent_hw[0] // self.downsample), -(-latent_hw[1] // self.downsample)


@dataclass(frozen=True)
class Geometry:
    """Sizes of one pipeline.

    Attributes:
        sample_hw: Default latent (h, w) (``unet.config.sample_size``).
        vae_factor: Pixels per latent cell along a side (``pipe.vae_scale_factor``).
        n_blocks: U-Net down blocks (``len(unet.config.down_block_types)``; 1 for a transformer: no downsampling).
        layers: Every cross-attention layer in execution order (empty when read from configs alone, and for
            joint-attention transformers, which have none).
        patch: Latent cells per image token along a side (transformers: 2 on SD3 and Flux; 1 for U-Nets).
    """

    sample_hw: tuple[int, int]
    vae_factor: int
    n_blocks: int
    layers: tuple[AttnLayer, ...] = ()
    patch: int = 1

    @classmethod
    def from_configs(cls, unet: Mapping, vae: Mapping) -> Geometry:
        """From the U-Net's and the VAE's config dicts (``config.json`` files: no weights needed)."""
        return cls(
            _pair(unet["sample_size"]), 2 ** (len(vae["block_out_channels"]) - 1), len(unet["block_out_channels"])
        )

    @classmethod
    def from_pipeline(cls, pipe, layers: bool = True) -> Geometry:
        """From a loaded pipeline: its configs plus (``layers``) each ``attn2`` layer's heads, in execution order."""
        if getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is not None:
            return cls._from_transformer(pipe)
        unet = pipe.unet
        n_blocks = len(unet.config.down_block_types)
        found = []
        for key in unet.attn_processors if layers else ():
            name = key.removesuffix(".processor")
            module = unet.get_submodule(name)
            if getattr(module, "is_cross_attention", False):
                found.append(AttnLayer(name, module.heads, layer_downsample(name, n_blocks)))
        found.sort(key=lambda layer: _PART_ORDER[layer.name.split(".")[0]])  # stable: keeps order within a part
        return cls(_pair(unet.config.sample_size), int(pipe.vae_scale_factor), n_blocks, tuple(found))

    @classmethod
    def _from_transformer(cls, pipe) -> Geometry:
        """A joint-attention pipeline: one image token is ``image_processor.config.vae_scale_factor`` x
        ``transformer.config.patch_size`` pixels a side (SD3: 8 x 2; Flux: 16 x 1, the 2x2 packing being in the
        image processor's factor), i.e. ``patch`` latent cells."""
        vae = int(pipe.vae_scale_factor)
        token_side = int(pipe.image_processor.config.vae_scale_factor) * int(pipe.transformer.config.patch_size)
        sample = getattr(pipe.transformer.config, "sample_size", None) or pipe.default_sample_size
        return cls(_pair(sample), vae, 1, (), token_side // vae)

    @property
    def default_hw(self) -> tuple[int, int]:
        """Default image (height, width) in pixels."""
        return self.sample_hw[0] * self.vae_factor, self.sample_hw[1] * self.vae_factor

    @property
    def unet_downsampling(self) -> int:
        """How many times the U-Net halves the latent in total: ``2 ** (n_blocks - 1)``."""
        return 2 ** (self.n_blocks - 1)

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this: the VAE factor times the U-Net's total downsampling (times the
        image-token side ``patch`` of a transformer)."""
        return self.vae_factor * self.unet_downsampling * self.patch

    @property
    def max_side(self) -> int:
        """Largest image side accepted: :data:`MAX_SIDE_FACTOR` times the longer default side."""
        return MAX_SIDE_FACTOR * max(self.default_hw)

    @property
    def limits(self) -> SizeLimits:
        return SizeLimits(self.multiple, self.default_hw, self.max_side)

    def size(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """(height, width) with ``None`` sides filled from the default size."""
        return height or self.default_hw[0], width or self.default_hw[1]

    def latent_hw(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """Latent (h, w) of an image (default size for ``None`` sides)."""
        height, width = self.size(height, width)
        return height // self.vae_factor, width // self.vae_factor

    def image_hw(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """Image (H, W) in pixels of a latent."""
        return latent_hw[0] * self.vae_factor, latent_hw[1] * self.vae_factor

    def layer(self, name: str) -> AttnLayer:
        """The cross-attention layer at module path ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"{name!r} is not a cross-attention layer of this U-Net")


def _pair(sample) -> tuple[int, int]:
    """``sample_size`` is an int (square) or an (h, w) pair in diffusers configs."""
    return (int(sample), int(sample)) if isinstance(sample, int) else (int(sample[0]), int(sample[1]))
