"""What the one recorded run (:func:`explain.engine.run.recorded_run`) records on SD3 / SD3.5 and Flux pipelines.

These models have no U-Net and no cross-attention (Esser et al. 2024, MMDiT): text and image tokens attend jointly,
so the run's attention recorder is :class:`JointRecording` instead of the U-Net's
:class:`~explain.capture.recorder.AttentionRecorder`. It opens one :class:`~explain.joint.capture.JointCapture` with
two sinks on the transformer's joint-attention layers:

- :class:`~explain.joint.attention_maps.JointAttentionRecorder`: the image-query x text-key block of every layer's
  joint softmax for the prompt's text columns (:func:`~explain.joint.tokens.text_layout`), in both normalisations;
  word maps are read in :data:`WORD_MAP_NORMALIZATION` (TEXT: renormalised over the text tokens, the reading that
  compares with a U-Net's cross-attention maps) unless asked otherwise;
- when words are asked for, :class:`~explain.joint.concepts.ConceptAttentionRecorder`: ConceptAttention maps
  (Helbling et al., ICML 2025) for any words, the prompt's or others, the image unchanged.

Seed policy (as for U-Nets, :mod:`explain.engine.run`): :func:`joint_initial_noise` makes the unit Gaussian draw
``prepare_latents`` would make from the seed's CPU generator: (B, C, H/f, W/f) latents (f the VAE factor), which
Flux packs into (B, H/2f · W/2f, 4C) tokens, 2x2 latent cells per token (``FluxPipeline``'s layout). Handing them
over as ``latents=`` gives the image the generator alone would give.

The film (x_t and x̂₀ per step) is not recorded here (:data:`FILM_NOT_RECORDED` says why).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

from explain.diffusion.geometry import Geometry
from explain.joint.attention_maps import JointAttentionMaps, JointAttentionRecorder, Normalization
from explain.joint.capture import Family, JointCapture, family_of
from explain.joint.concepts import ConceptAttentionRecorder, ConceptMaps
from explain.joint.tokens import JointTextLayout, text_layout

__all__ = [
    "WORD_MAP_NORMALIZATION",
    "FILM_NOT_RECORDED",
    "JointRecorded",
    "JointRecording",
    "is_joint_pipeline",
    "joint_initial_noise",
    "pack_latents",
    "prompt_concepts",
]

WORD_MAP_NORMALIZATION = Normalization.TEXT  # word maps' default reading: comparable with cross-attention maps
FILM_NOT_RECORDED = (
    "film not recorded on SD3 / Flux: FilmRecorder knows no x̂₀ of their rectified-flow sampler "
    "(FlowMatchEulerDiscreteScheduler) and decodes U-Net-style latents (B, C, h, w) without the VAE's shift factor; "
    "Flux's latents are packed tokens"
)


def is_joint_pipeline(pipe) -> bool:
    """True for a pipeline whose denoiser is an SD3 or Flux joint-attention transformer (no U-Net)."""
    if getattr(pipe, "unet", None) is not None or getattr(pipe, "transformer", None) is None:
        return False
    try:
        family_of(pipe)
    except ValueError:
        return False
    return True


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 · w/2, 4C): Flux's 2x2 packing, channels of a token ordered (C, 2, 2)."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)  # (B, h/2, w/2, C, 2, 2)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def joint_initial_noise(
    pipe, batch_size: int, height: int, width: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The draw ``prepare_latents`` makes: ((B, C, h, w) unit noise, what to pass as ``latents=``).

    SD3 passes the noise itself; Flux its 2x2-packed tokens (:func:`pack_latents`). C = the transformer's input
    channels (over 4 on Flux), (h, w) = the image over the VAE factor.
    """
    geometry = Geometry.from_pipeline(pipe)
    transformer = pipe.transformer
    packing = geometry.patch // transformer.config.patch_size  # 2 on Flux (packed in the pipeline), 1 on SD3
    shape = (batch_size, transformer.config.in_channels // packing**2, *geometry.latent_hw(height, width))
    noise = randn_tensor(shape, generator=generator, device=transformer.device, dtype=transformer.dtype)
    return noise, (pack_latents(noise) if family_of(pipe) is Family.FLUX else noise)


def prompt_concepts(layout: JointTextLayout) -> tuple[str, ...]:
    """The prompt's words as ConceptAttention concepts: each word once (lower case), punctuation left out."""
    seen: dict[str, None] = {}
    for word in layout.words:
        if word.text[:1].isalnum():  # WORD_PATTERN's words, not its single punctuation marks
            seen.setdefault(word.text.lower())
    return tuple(seen)


@dataclass(frozen=True, eq=False)  # holds tensors: compare fields explicitly
class JointRecorded:
    """Joint-attention maps of one recorded run.

    Attributes:
        layout: Text columns of the (first) prompt and its words.
        maps: Token maps of the kept text columns (the used columns of every prompt), both normalisations.
        concepts: ConceptAttention maps (None when no words were asked for).
        normalization: The reading :meth:`word_maps` gives by default (:data:`WORD_MAP_NORMALIZATION`).
    """

    layout: JointTextLayout
    maps: JointAttentionMaps
    concepts: ConceptMaps | None
    normalization: Normalization = WORD_MAP_NORMALIZATION

    @property
    def nbytes(self) -> int:
        """Bytes of the recorded maps (token maps, text mass and concept scores)."""
        concept = (
            0 if self.concepts is None else sum(t.numel() * t.element_size() for t in self.concepts.scores.values())
        )
        return self.maps.nbytes + concept

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(word.text for word in self.layout.words)

    def word_maps(self, normalization: Normalization | None = None, image_index: int = 0, layers=None) -> torch.Tensor:
        """(n_words, h, w) on the image-token grid: each word's columns summed (CLIP and T5 ones on SD3), mean over
        the chosen layers (default all), steps and heads."""
        columns = self.token_maps(normalization, image_index, layers)  # (K, h, w)
        kept = {column: i for i, column in enumerate(self.maps.columns)}
        maps = [columns[[kept[c] for c in word.columns]].sum(dim=0) for word in self.layout.words]  # each (h, w)
        return torch.stack(maps) if maps else columns[:0]

    def token_maps(
        self, normalization: Normalization | None = None, image_index: int = 0, layers=None
    ) -> torch.Tensor:
        """(K, h, w): each kept text column's map (``maps.columns``), mean over the chosen layers (default all)."""
        normalization = self.normalization if normalization is None else normalization
        return self.maps.column_maps(normalization, layers)[image_index]


class JointRecording:
    """Context manager: one :class:`JointCapture` with the token recorder (and the concept recorder) for a run.

    Args:
        pipe: ``StableDiffusion3Pipeline`` or ``FluxPipeline``.
        prompts: The run's prompts (token maps keep the used text columns of all of them; words are the first's).
        height: Image height in pixels.
        width: Image width in pixels.
        per_head: Keep heads instead of their mean.
        concepts: Words for ConceptAttention maps (none: no concept stream).
        max_sequence_length: T5 slots of the call (None: the pipeline's default).
    """

    callback_on_step_end = None  # everything is recorded from the attention processors

    def __init__(
        self,
        pipe,
        prompts: Sequence[str],
        *,
        height: int | None = None,
        width: int | None = None,
        per_head: bool = False,
        concepts: Sequence[str] = (),
        max_sequence_length: int | None = None,
    ):
        layouts = [text_layout(pipe, prompt, max_sequence_length) for prompt in prompts]
        self.layout = layouts[0]
        columns = sorted(set().union(*(layout.used_columns for layout in layouts)))
        size = dict(height=height, width=width)
        self.tokens = JointAttentionRecorder(pipe, columns=columns, per_head=per_head, **size)
        self.concepts = None
        if concepts:
            self.concepts = ConceptAttentionRecorder(pipe, concepts, max_sequence_length=max_sequence_length, **size)
        self.capture = JointCapture(pipe, *(s for s in (self.tokens, self.concepts) if s is not None))

    def __enter__(self) -> JointRecording:
        self.capture.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.capture.__exit__(*exc_info)

    def result(self) -> JointRecorded:
        """The recorded maps (call after the pipeline call)."""
        concepts = self.concepts.result() if self.concepts is not None else None
        return JointRecorded(self.layout, self.tokens.result(), concepts)
