"""Load a Stable Diffusion pipeline (SD 1.x, SD 2.x, SDXL, SD3 / SD3.5, Flux) and describe its structure.

Three sources, in this order:

1. ``None``: the embedded model at :data:`EMBEDDED_MODEL_DIR` (a small SD-1-shaped model trained for this app).
2. A local directory holding a diffusers ``model_index.json`` (what ``pipe.save_pretrained(dir)`` writes).
3. A Hugging Face Hub id. Ids known to work:

   - ``stable-diffusion-v1-5/stable-diffusion-v1-5``  (SD 1.5, epsilon prediction, 512x512)
   - ``stabilityai/stable-diffusion-2-1-base``        (SD 2.1 base, OpenCLIP text encoder, 512x512)
   - ``stabilityai/sd-turbo``                         (distilled SD 2.1: run with ``guidance_scale=0``, 1-4 steps;
     without classifier-free guidance there is no unconditional branch to capture)
   - ``stabilityai/stable-diffusion-xl-base-1.0``     (SDXL: two text encoders, 1024x1024)
   - ``stabilityai/stable-diffusion-3.5-medium``      (SD3.5 MMDiT, flow matching, 1024x1024; gated licence)
   - ``black-forest-labs/FLUX.1-schnell``             (Flux MMDiT, distilled: 4 steps, no guidance, 1024x1024)
     (SD3 and Flux have no cross-attention: their word maps come from joint attention, :mod:`explain.joint`)

   Offline (``HF_HUB_OFFLINE=1`` or no route to the Hub) only the local Hugging Face cache is used; a model that
   is not cached fails at once with a message saying how to run offline (download it elsewhere, pass the folder).

Only the classes of :data:`SUPPORTED_PIPELINES` are loaded (SD, SDXL, SD3 and Flux pipelines); no remote code, no
custom pipelines, safetensors weights only.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from explain.diffusion.geometry import Geometry

__all__ = [
    "recommended_settings",
    "read_model_index",
    "check_model_index",
    "check_safetensors",
    "offline_message",
    "SCHEDULERS",
    "scheduler_class",
    "EMBEDDED_MODEL_DIR",
    "ModelLoadError",
    "CrossAttentionLayer",
    "PipelineInfo",
    "load_pipeline",
    "describe_pipeline",
    "default_device",
]

# Scheduler names users type (CLI --scheduler, the app's menu) -> diffusers class names.
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def scheduler_class(name: str):
    """The diffusers scheduler class for a name of :data:`SCHEDULERS` (KeyError naming the choices otherwise)."""
    import diffusers

    if name not in SCHEDULERS:
        raise KeyError(f"unknown scheduler {name!r}; choose from {', '.join(sorted(SCHEDULERS))}")
    return getattr(diffusers, SCHEDULERS[name])


EXPLORER_SETTINGS = "explorer.json"  # optional per-model defaults (guidance, steps) in a model directory
EMBEDDED_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "tiny-shapes-sd"
JOINT_PIPELINES = ("StableDiffusion3Pipeline", "FluxPipeline")  # joint-attention transformers (MMDiT)
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", *JOINT_PIPELINES)
FLUX_DISTILLED_STEPS = 4  # FLUX.1-schnell's model card: 4 steps, guidance 0 (timestep-distilled, no guidance input)
# Libraries a model_index.json component may come from: anything else would be a module of custom code.
COMPONENT_LIBRARIES = ("diffusers", "transformers")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # torch.load / pickle formats: loading them can run code
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PROBE_TIMEOUT_S = 3.0


class ModelLoadError(FileNotFoundError):
    """The model cannot be loaded (missing, offline, unsupported); the message says what to do."""


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One cross-attention (``attn2``) layer of the U-Net.

    Attributes:
        name: diffusers module path, e.g. ``down_blocks.1.attentions.0.transformer_blocks.0.attn2``.
        heads: Number of attention heads.
        downsample: How many times smaller than the latent this layer's feature map is (1, 2, 4, ...).
        resolution: (h, w) of its feature map at the pipeline's default image size.
    """

    name: str
    heads: int
    downsample: int
    resolution: tuple[int, int]


@dataclass(frozen=True)
class PipelineInfo:
    """Structure of a loaded pipeline, read from component configs.

    Attributes:
        family: ``"sd1"``, ``"sd2"`` or ``"sdxl"`` (SD 2.x is told from SD 1.x by its linear transformer
            projections, ``unet.config.use_linear_projection``); ``"sd3"`` (SD3 / SD3.5) or ``"flux"``.
        pipeline_class: Class name of the pipeline.
        latent_channels: ``unet.config.in_channels`` (SD3 / Flux: ``transformer.config.in_channels``, / 4 on Flux).
        vae_scale_factor: Pixels per latent cell along a side (``pipe.vae_scale_factor``).
        scaling_factor: ``vae.config.scaling_factor`` (latents are ``z * scaling_factor``).
        default_size: Default (height, width) in pixels (SD3 / Flux: ``default_sample_size`` x the VAE factor).
        cross_attention_layers: Every ``attn2`` layer in execution order (empty for SD3 / Flux: no cross-attention).
        geometry: Sizes, multiples and layers (:class:`explain.diffusion.geometry.Geometry`).
        text_encoder_width: Width of the text embedding the model attends to (``unet.config.cross_attention_dim``,
            ``transformer.config.joint_attention_dim``).
        model_max_length: Token slots of the (CLIP) tokenizer.
        prediction_type: What the model predicts: ``"epsilon"`` or ``"v_prediction"`` (scheduler config);
            ``"flow"`` for SD3 / Flux (rectified flow: the velocity ε - x₀, Esser et al. 2024).
        scheduler: Scheduler class name.
        recommended_guidance: Default classifier-free guidance scale: the model directory's
            ``explorer.json`` ``{"guidance": ...}`` when present, else Stable Diffusion's usual 7.5.
        recommended_steps: Default number of denoising steps (``explorer.json`` ``{"steps": ...}``, else 25).
            SD3 / Flux: the pipeline call's defaults (SD3: 28 steps, guidance 7.0); a Flux without guidance input
            (FLUX.1-schnell, timestep-distilled): :data:`FLUX_DISTILLED_STEPS` steps, guidance 0.
        attention: ``"cross"`` (U-Net cross-attention) or ``"joint"`` (SD3 / Flux joint attention).
        joint_layers: SD3 / Flux: the joint-attention layers' module paths in execution order (else empty).
        max_sequence_length: SD3 / Flux: T5 token slots of the pipeline's default call (0 for U-Nets).
    """

    family: str
    pipeline_class: str
    latent_channels: int
    vae_scale_factor: int
    scaling_factor: float
    default_size: tuple[int, int]
    cross_attention_layers: tuple[CrossAttentionLayer, ...]
    geometry: Geometry
    text_encoder_width: int
    model_max_length: int
    prediction_type: str
    scheduler: str
    recommended_guidance: float = 7.5
    recommended_steps: int = 25
    attention: str = "cross"
    joint_layers: tuple[str, ...] = ()
    max_sequence_length: int = 0


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _hub_is_offline() -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    host = urlparse(constants.ENDPOINT).hostname
    try:
        with socket.create_connection((host, 443), timeout=_HUB_PROBE_TIMEOUT_S):
            return False
    except OSError:
        return True


def offline_message(model: str, why: str) -> str:
    return (
        f"cannot load {model!r}: {why}. To run offline, download it on a machine with network "
        f"(`hf download {model} --local-dir DIR`), copy DIR here and pass that directory instead of the Hub id."
    )


def read_model_index(model: str) -> tuple[dict, str, bool]:
    """Returns (model_index.json contents, what to pass to from_pretrained, local_files_only)."""
    if model is None:
        path = EMBEDDED_MODEL_DIR
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"the embedded model is missing: {path} has no model_index.json. "
                "Build it with `python -m training.build`, or pass a model (local directory or Hub id)."
            )
        return json.loads((path / "model_index.json").read_text()), str(path), True

    path = Path(model).expanduser()
    if path.exists():
        if not (path.is_dir() and (path / "model_index.json").is_file()):
            raise ModelLoadError(f"{model!r} is not a diffusers pipeline directory (no model_index.json)")
        return json.loads((path / "model_index.json").read_text()), str(path), True

    if not _HUB_ID.match(model):
        raise ModelLoadError(f"{model!r} is neither an existing directory nor a Hub id like 'owner/name'")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = _hub_is_offline()
    try:
        index_file = hf_hub_download(model, "model_index.json", local_files_only=offline)
    except LocalEntryNotFoundError as err:
        why = "the Hub is unreachable and it is not in the local cache" if offline else str(err)
        raise ModelLoadError(offline_message(model, why)) from err
    except (RepositoryNotFoundError, EntryNotFoundError) as err:
        raise ModelLoadError(f"{model!r} is not a diffusers pipeline on the Hub: {err}") from err
    return json.loads(Path(index_file).read_text()), model, offline


def _is_diffusers_pipeline_module(library: str) -> bool:
    """True for diffusers' own pipeline sub-packages (SD 1.x names its safety checker ``["stable_diffusion", ...]``)."""
    import importlib.util

    return library.isidentifier() and importlib.util.find_spec(f"diffusers.pipelines.{library}") is not None


def check_model_index(index: dict, model: str) -> None:
    """ModelLoadError unless every component of a model_index.json comes from diffusers or transformers.

    A component naming another module (``["my_unet", "MyUNet"]``) would be custom code from the model's folder;
    this app never runs it (no ``trust_remote_code``, no ``custom_pipeline``).
    """
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list | tuple) or len(spec) != 2 or spec[0] is None:
            continue
        library = str(spec[0])
        if library not in COMPONENT_LIBRARIES and not _is_diffusers_pipeline_module(library):
            raise ModelLoadError(
                f"{model!r}: component {name!r} is {library}.{spec[1]}, custom code outside diffusers and "
                "transformers; this app never loads remote or custom code (no trust_remote_code, no custom "
                f"pipelines). Use a standard {', '.join(SUPPORTED_PIPELINES)} directory."
            )


def check_safetensors(path: str | Path) -> None:
    """ModelLoadError when a local model folder (or one of its component folders) has pickle weights only.

    Weights are loaded from ``*.safetensors`` only: unpickling a ``.bin`` / ``.ckpt`` can run arbitrary code.
    """
    root = Path(path)
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        files = [f for f in folder.iterdir() if f.is_file()]
        pickles = [f.name for f in files if f.suffix in PICKLE_SUFFIXES]
        if pickles and not any(f.suffix == ".safetensors" for f in files):
            where = folder.relative_to(root) if folder != root else Path(".")
            raise ModelLoadError(
                f"{str(root)!r} has only pickle weights in {where}/ ({', '.join(sorted(pickles))}): this app loads "
                "safetensors only, because unpickling a file can run code. Convert it where you trust the file "
                "(DiffusionPipeline.from_pretrained(DIR).save_pretrained(NEW_DIR) writes safetensors) and pass "
                "the new folder."
            )


def load_pipeline(model: str | None = None, device: str | None = None, dtype: torch.dtype | None = None):
    """Load a Stable Diffusion pipeline (see the module docstring for the accepted ``model`` values).

    Args:
        model: ``None`` (embedded model), a local diffusers directory or a Hub id.
        device: ``"cpu"``, ``"cuda"``...; default :func:`default_device`.
        dtype: Weights dtype; default on CUDA float16 (U-Nets) or bfloat16 (SD3 / Flux, which their authors run
            in bfloat16: Flux overflows float16), float32 otherwise.

    Returns:
        A pipeline of :data:`SUPPORTED_PIPELINES` on ``device``, progress bar disabled.

    Raises:
        ModelLoadError: Missing model, unsupported pipeline class, or a Hub id that cannot be reached offline.
    """
    import diffusers

    device = device or default_device()
    index, source, local_only = read_model_index(model)
    class_name = index.get("_class_name")
    if class_name not in SUPPORTED_PIPELINES:
        raise ModelLoadError(f"{model or source!r} is a {class_name}; supported: {', '.join(SUPPORTED_PIPELINES)}")
    if dtype is None and torch.device(device).type == "cuda":
        dtype = torch.bfloat16 if class_name in JOINT_PIPELINES else torch.float16
    dtype = dtype or torch.float32
    check_model_index(index, model or source)
    if Path(source).is_dir():
        check_safetensors(source)
    # components saved as absent ([null, null]: SD3 without T5, no safety checker) are passed as None again
    kwargs = {k: None for k, spec in index.items() if not k.startswith("_") and isinstance(spec, list) and not spec[0]}
    if "safety_checker" in kwargs:  # none shipped: no warning about it
        kwargs.update(requires_safety_checker=False)
    pipeline_class = getattr(diffusers, class_name)
    try:
        pipe = pipeline_class.from_pretrained(
            source, use_safetensors=True, dtype=dtype, local_files_only=local_only, **kwargs
        )
    except OSError as err:
        if local_only and model is not None and not Path(model).expanduser().exists():
            raise ModelLoadError(offline_message(model, f"some files are not in the local cache ({err})")) from err
        raise ModelLoadError(f"cannot load {model or source!r} (safetensors weights only): {err}") from err
    except ValueError as err:  # diffusers refusing a component it cannot load without running custom code
        raise ModelLoadError(f"cannot load {model or source!r}: {err}") from err
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def describe_pipeline(pipe) -> PipelineInfo:
    """Read the structure of a Stable Diffusion pipeline from its component configs."""
    if getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is not None:
        return _describe_joint(pipe)
    unet = pipe.unet
    geometry = Geometry.from_pipeline(pipe)
    layers = tuple(
        CrossAttentionLayer(layer.name, layer.heads, layer.downsample, layer.feature_hw(geometry.sample_hw))
        for layer in geometry.layers
    )

    from diffusers import StableDiffusionXLPipeline

    if isinstance(pipe, StableDiffusionXLPipeline):
        family = "sdxl"
    else:
        family = "sd2" if unet.config.use_linear_projection else "sd1"
    return PipelineInfo(
        family=family,
        pipeline_class=type(pipe).__name__,
        latent_channels=unet.config.in_channels,
        vae_scale_factor=pipe.vae_scale_factor,
        scaling_factor=float(pipe.vae.config.scaling_factor),
        default_size=geometry.default_hw,
        cross_attention_layers=layers,
        geometry=geometry,
        text_encoder_width=unet.config.cross_attention_dim,
        model_max_length=pipe.tokenizer.model_max_length,
        prediction_type=pipe.scheduler.config.get("prediction_type", "epsilon"),
        scheduler=type(pipe.scheduler).__name__,
        **_recommended(pipe),
    )


def _describe_joint(pipe) -> PipelineInfo:
    """:class:`PipelineInfo` of an SD3 / SD3.5 or Flux pipeline (joint attention, flow matching)."""
    from explain.joint.capture import Family, family_of, joint_layers

    family = family_of(pipe)
    config = pipe.transformer.config
    geometry = Geometry.from_pipeline(pipe)
    packing = geometry.patch // config.patch_size  # Flux packs 2x2 latent cells into one token's channels
    return PipelineInfo(
        family=family.value,
        pipeline_class=type(pipe).__name__,
        latent_channels=config.in_channels // packing**2,
        vae_scale_factor=pipe.vae_scale_factor,
        scaling_factor=float(pipe.vae.config.scaling_factor),
        default_size=geometry.default_hw,
        cross_attention_layers=(),
        geometry=geometry,
        text_encoder_width=config.joint_attention_dim,
        model_max_length=pipe.tokenizer.model_max_length,
        prediction_type="flow",
        scheduler=type(pipe.scheduler).__name__,
        attention="joint",
        joint_layers=tuple(joint_layers(pipe)),
        **{**_joint_defaults(pipe, family is Family.FLUX and not config.guidance_embeds), **_recommended(pipe)},
    )


def _joint_defaults(pipe, distilled: bool) -> dict:
    """The pipeline call's defaults (T5 slots, steps, guidance); ``distilled``: FLUX_DISTILLED_STEPS, guidance 0."""
    import inspect

    params = inspect.signature(type(pipe).__call__).parameters
    return {
        "max_sequence_length": int(params["max_sequence_length"].default),
        "recommended_guidance": 0.0 if distilled else float(params["guidance_scale"].default),
        "recommended_steps": FLUX_DISTILLED_STEPS if distilled else int(params["num_inference_steps"].default),
    }


def _recommended(pipe) -> dict:
    """Settings a model directory recommends for itself in ``explorer.json`` (only keys it names)."""
    return recommended_settings(Path(str(getattr(pipe, "name_or_path", "") or "")))


def recommended_settings(model_dir: str | Path) -> dict:
    """``{"recommended_guidance": ..., "recommended_steps": ...}`` from ``model_dir/explorer.json``, only the keys
    it names (an empty dict without the file): read without loading any weights."""
    path = Path(model_dir) / EXPLORER_SETTINGS
    if not path.is_file():
        return {}
    settings = json.loads(path.read_text())
    out = {}
    if "guidance" in settings:
        out["recommended_guidance"] = float(settings["guidance"])
    if "steps" in settings:
        out["recommended_steps"] = int(settings["steps"])
    return out
