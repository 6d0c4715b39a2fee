"""The files of one SD3 / SD3.5 or Flux generation, in the U-Net formats of :mod:`explain.io.writers` where they apply.

- ``attention.npz`` (:func:`write_joint_attention_npz`): the arrays of the U-Net format, ``words``, ``word_maps``
  (float32 ``[n_words, H, W]`` at image size), ``tokens``, ``token_maps`` (float32 ``[K, H, W]``, one per kept text
  column) and ``layer_names``, read from the joint attention (:mod:`explain.joint.attention_maps`) in the run's
  normalisation (TEXT: each image token's joint-softmax weights renormalised over the text tokens, as a
  cross-attention map; a word's map sums its text columns, CLIP's and T5's on SD3), mean over layers, steps and
  heads, upsampled bicubically from the image-token grid and clamped at 0. No ``cube``: steps are averaged while
  recording (keeping them costs S times the memory, docs/JOINT_ATTENTION.md). Extras: ``normalization`` (its name),
  ``word_maps_joint`` (always the JOINT normalisation: the model's own weights, image keys competing), ``text_mass``
  (float32 ``[H, W]``, the share of each pixel's attention that goes to text at all), ``columns`` (int ``[K]``,
  position of each kept column in the model's text sequence) and ``encoders`` (``"clip"`` / ``"t5"`` per column).
- ``concepts.npz`` and ``concept_heatmaps/`` (:func:`explain.io.writers.write_concept_files`, ``method``
  ``"conceptattention"``): ``concept_maps`` (float32 ``[C, H, W]``, ConceptAttention, Helbling et al. 2025: softmax
  over the concepts of o_x · o_c, mean over layers and steps) and ``layer_names`` (the joint blocks averaged).
- ``heatmaps/NN_word.png``: one overlay per word (:func:`explain.io.writers.write_heatmaps`).

:func:`joint_summary` gives the ``summary.json`` entries that say what was recorded and how it is normalised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from explain.io.writers import write_concept_files, write_heatmaps
from explain.joint.attention_maps import Normalization
from explain.joint.recording import JointRecorded
from explain.maps.aggregation import TokenMaps, upsample
from explain.maps.joint_views import joint_image_maps

__all__ = ["CONCEPT_METHOD", "write_joint_attention_npz", "write_joint_files", "joint_summary"]

CONCEPT_METHOD = "conceptattention"  # concepts.npz "method" of SD3 / Flux runs

NORMALIZATION_NOTES = {
    Normalization.TEXT: "joint-softmax weights of each image token renormalised over the text tokens",
    Normalization.JOINT: "joint-softmax weights of each image token over all image and text keys",
}


def _image_maps(recorded: JointRecorded, image_index: int = 0) -> TokenMaps:
    """Token and word maps at image size in the run's normalisation."""
    return joint_image_maps(recorded, recorded.normalization.value, image_index=image_index)


def write_joint_attention_npz(path: str | Path, recorded: JointRecorded, image_index: int = 0) -> Path:
    """``attention.npz`` of an SD3 / Flux run (format in the module docstring)."""
    maps = _image_maps(recorded, image_index)
    size = recorded.maps.image_hw
    joint = joint_image_maps(recorded, Normalization.JOINT.value, image_index=image_index).word_maps
    mass = torch.stack([m.mean(dim=(0, 2))[image_index] for m in recorded.maps.mass.values()]).mean(0)  # (h, w)
    np.savez_compressed(
        path,
        words=np.array(maps.words, dtype=str),
        word_maps=maps.word_maps.numpy().astype(np.float32),
        tokens=np.array(maps.tokens, dtype=str),
        token_maps=maps.token_maps.numpy().astype(np.float32),
        layer_names=np.array(recorded.maps.layer_names, dtype=str),
        normalization=np.array(recorded.normalization.value),
        word_maps_joint=joint.numpy().astype(np.float32),
        text_mass=upsample(mass[None].float(), size)[0].numpy(),
        columns=np.array(recorded.maps.columns, dtype=np.int64),
        encoders=np.array([recorded.layout.tokens[c].encoder for c in recorded.maps.columns], dtype=str),
    )
    return Path(path)


def write_joint_files(out: Path, recorded: JointRecorded, image) -> None:
    """``attention.npz`` and ``heatmaps/``, plus ``concepts.npz`` and ``concept_heatmaps/`` when concepts were
    recorded, into ``out``."""
    write_joint_attention_npz(out / "attention.npz", recorded)
    write_heatmaps(out / "heatmaps", _image_maps(recorded), image)
    if recorded.concepts is not None:
        write_concept_files(
            out, joint_image_maps(recorded, "concept"), recorded.concepts.layer_names, image, CONCEPT_METHOD
        )


def joint_summary(recorded: JointRecorded) -> dict:
    """``summary.json`` entries of an SD3 / Flux run: what the maps are, how many layers/steps, their bytes."""
    maps = recorded.maps
    kinds = [kind.value for kind in maps.kinds.values()]
    return {
        "attention": "joint",
        "normalization": recorded.normalization.value,
        "normalization_note": NORMALIZATION_NOTES[recorded.normalization],
        "words": list(recorded.words),
        "tokens": [recorded.layout.tokens[c].token for c in maps.columns],
        "token_encoders": [recorded.layout.tokens[c].encoder for c in maps.columns],
        "text_tokens": maps.n_text,
        "layers": len(maps.layer_names),
        "layer_kinds": {kind: kinds.count(kind) for kind in dict.fromkeys(kinds)},
        "captured_steps": len(maps.timesteps),
        "concepts": list(recorded.concepts.concepts) if recorded.concepts is not None else [],
        "concept_method": CONCEPT_METHOD if recorded.concepts is not None else None,
        "capture_bytes": recorded.nbytes,
    }
