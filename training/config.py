"""Configs for the embedded model: one dataclass per component, with named presets.

``smoke`` runs in seconds (tests), ``cpu`` is the full rebuild sized for a 2-core CPU (<= 2 h in all),
``gpu`` is the same recipe with more data and steps for a lent accelerator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

__all__ = ["ClipConfig", "VaeConfig", "UNetConfig", "TrainConfig", "preset", "PRESETS"]


@dataclass(frozen=True)
class ClipConfig:
    """open_clip CLIP: a small ViT image tower for the world's images and a text transformer on CLIP's BPE."""

    embed_dim: int = 128
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 192
    vision_layers: int = 4
    vision_head_width: int = 48
    text_width: int = 256
    text_heads: int = 4
    text_layers: int = 4
    context_length: int = 77
    vocab_size: int = 49408
    steps: int = 3000
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int = 200


@dataclass(frozen=True)
class VaeConfig:
    """diffusers AutoencoderKL, 64x64x3 -> 16x16x4 (two downsamplings: factor 4)."""

    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 16
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    kl_weight: float = 1e-6
    crop: int | None = None  # train on random crops of this side (the VAE is convolutional; None: whole images)


@dataclass(frozen=True)
class UNetConfig:
    """diffusers UNet2DConditionModel with cross-attention at 16x16 and 8x8 (and the 4x4 mid block)."""

    block_out_channels: tuple[int, ...] = (64, 128, 192)
    layers_per_block: int = 1
    attention_heads: int = 4  # diffusers' ``attention_head_dim`` is the head count in SD1-style configs
    steps: int = 12000
    batch_size: int = 64
    lr: float = 4e-4
    warmup: int = 500
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    grounding_weight: float = 0.0  # TokenCompose-style token grounding loss (0 = the plain SD recipe)
    grounding_pixel_weight: float = 0.0  # TokenCompose's pixel term (BCE of the token's attention vs the mask)
    num_train_timesteps: int = 1000


@dataclass(frozen=True)
class TrainConfig:
    name: str = "cpu"
    seed: int = 0
    world: str = "shapes"  # training.data.WORLDS: "shapes" (tiny-shapes-sd) or "emoji" (world v2)
    image_size: int = 64
    n_train: int = 40000
    n_val: int = 512
    max_objects: int = 2
    p_three_objects: float = 0.0
    clip: ClipConfig = field(default_factory=ClipConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    time_budget_s: dict[str, float] = field(default_factory=dict)  # optional wall-clock cap per stage

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def latent_factor(self) -> int:
        """The VAE's downsampling factor: one halving per block after the first (diffusers AutoencoderKL)."""
        return 2 ** (len(self.vae.block_out_channels) - 1)


def _smoke() -> TrainConfig:
    return TrainConfig(
        name="smoke",
        n_train=256,
        n_val=32,
        clip=ClipConfig(vision_width=64, vision_layers=1, text_width=64, text_layers=1, steps=3, batch_size=32),
        vae=VaeConfig(block_out_channels=(16, 32, 32), norm_num_groups=8, steps=3, batch_size=16),
        unet=UNetConfig(block_out_channels=(32, 64, 64), steps=3, batch_size=16, warmup=1, grounding_weight=0.1),
    )


# The grounding terms of the committed model (docs/MODEL_CARD.md); --grounding-weight 0 --grounding-pixel-weight 0
# gives the plain Stable Diffusion recipe.
GROUNDING_WEIGHT = 0.05
GROUNDING_PIXEL_WEIGHT = 0.2


def _world(name: str, **kw) -> TrainConfig:
    """World v2 (emoji sprites, 128 x 128): a factor-8 VAE (SD's) -> 16 x 16 x 8 latents (8 channels, not SD's 4:
    at equal steps +1.1 dB overall and +1.9 dB on the sprites, and colours survive, docs/model/vae_channels.json), so
    a U-Net step costs about what the shapes model's did; CLIP sees 128 px images in 16 px patches (64 tokens, as before). The VAE
    trains on 64 px crops (a quarter of the cost per image; it is convolutional, so it applies to 128 px)."""
    clip = ClipConfig(**{"image_size": 128, "patch_size": 16, **kw.pop("clip", {})})
    vae = VaeConfig(**{"block_out_channels": (16, 32, 64, 128), "crop": 64, "latent_channels": 8, **kw.pop("vae", {})})
    unet = UNetConfig(
        **{
            "block_out_channels": (64, 128, 256),
            "grounding_weight": GROUNDING_WEIGHT,
            "grounding_pixel_weight": GROUNDING_PIXEL_WEIGHT,
            **kw.pop("unet", {}),
        }
    )
    return TrainConfig(name=name, world="emoji", image_size=128, max_objects=3, clip=clip, vae=vae, unet=unet, **kw)


PRESETS = {
    "smoke": _smoke,
    "world-smoke": lambda: _world(
        "world-smoke",
        n_train=256,
        n_val=32,
        clip={
            "vision_width": 64,
            "vision_layers": 1,
            "text_width": 64,
            "text_layers": 1,
            "steps": 3,
            "batch_size": 32,
        },
        vae={"block_out_channels": (16, 16, 32, 32), "norm_num_groups": 8, "steps": 3, "batch_size": 8},
        unet={"block_out_channels": (32, 64, 64), "steps": 3, "batch_size": 16, "warmup": 1},
    ),
    # CPU: wall-clock caps per stage (about 2.5 h on 2 cores); stages resume from their checkpoints.
    "world-cpu": lambda: _world(
        "world-cpu",
        n_train=60000,
        clip={"steps": 3000, "batch_size": 256},
        vae={"steps": 6000, "batch_size": 24},
        unet={"steps": 20000, "batch_size": 64, "lr": 4e-4, "warmup": 300, "ema_decay": 0.999},
        time_budget_s={"clip": 1500.0, "vae": 1500.0, "unet": 5400.0},
    ),
    "world-gpu": lambda: _world(
        "world-gpu",
        n_train=200000,
        clip={"steps": 8000, "batch_size": 512, "lr": 1e-3},
        vae={"steps": 10000, "batch_size": 64},
        unet={"steps": 30000, "batch_size": 256, "lr": 6e-4},
    ),
    # Wall-clock caps keep the CPU rebuild inside 2 h on 2 cores (+ a few minutes of rendering and encoding);
    # the learning-rate schedule follows wall-clock progress when a cap binds (training.common.StageLog).
    "cpu": lambda: TrainConfig(
        unet=UNetConfig(grounding_weight=GROUNDING_WEIGHT, grounding_pixel_weight=GROUNDING_PIXEL_WEIGHT),
        time_budget_s={"clip": 1200.0, "vae": 900.0, "unet": 3600.0},
    ),
    "gpu": lambda: TrainConfig(
        name="gpu",
        n_train=120000,
        clip=ClipConfig(steps=8000, batch_size=512, lr=1e-3),
        vae=VaeConfig(steps=8000, batch_size=128),
        unet=UNetConfig(
            steps=20000,
            batch_size=256,
            lr=6e-4,
            ema_decay=0.999,
            grounding_weight=GROUNDING_WEIGHT,
            grounding_pixel_weight=GROUNDING_PIXEL_WEIGHT,
        ),
    ),
}


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    cfg = PRESETS[name]()
    return replace(cfg, **overrides) if overrides else cfg
