"""A copy of the embedded model that DAAM's old stack (diffusers 0.21.2, transformers 4.30.2) can load.

Run from the repository root (any of our interpreters; it needs only torch and safetensors)::

    python -m benchmarks.external.convert            # -> benchmarks/.venvs/models/tiny-shapes-sd-legacy

What changes, and why (the weights' values do not):

- ``text_encoder/model.safetensors``: transformers 5 saves ``CLIPTextModel`` keys without the ``text_model.``
  prefix; transformers 4.30 expects it. The config's ``dtype`` becomes ``torch_dtype``.
- ``tokenizer/``: transformers 5 writes only ``tokenizer.json``; the old slow ``CLIPTokenizer`` (which diffusers
  0.21 asks for by name) reads ``vocab.json`` + ``merges.txt`` (with a ``#version`` header line) and an old-style
  ``tokenizer_config.json`` + ``special_tokens_map.json``. Vocabulary, merges and special tokens are the same.
- ``model_index.json``: ``image_encoder`` (a component diffusers 0.21's ``StableDiffusionPipeline`` lacks) is dropped.
- ``unet/``, ``vae/``, ``scheduler/`` are copied as they are (old diffusers ignores the config keys it lacks).

The copy is generated, never committed (``benchmarks/.venvs/`` is git-ignored).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["DEFAULT_DST", "DEFAULT_SRC", "convert"]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SRC = REPO / "models" / "tiny-shapes-sd"
DEFAULT_DST = REPO / "benchmarks" / ".venvs" / "models" / "tiny-shapes-sd-legacy"
TEXT_PREFIX = "text_model."


def _convert_text_encoder(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    state = load_file(src / "model.safetensors")
    state = {k if k.startswith(TEXT_PREFIX) else TEXT_PREFIX + k: v.contiguous() for k, v in state.items()}
    config = json.loads((src / "config.json").read_text())
    # transformers 4.30 keeps position_ids as a buffer in the state dict; give it the one it would build.
    state.setdefault(f"{TEXT_PREFIX}embeddings.position_ids", torch.arange(config["max_position_embeddings"])[None])
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    if "dtype" in config:
        config["torch_dtype"] = config.pop("dtype")
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _convert_tokenizer(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    fast = json.loads((src / "tokenizer.json").read_text())
    config = json.loads((src / "tokenizer_config.json").read_text())
    model = fast["model"]
    if model["type"] != "BPE":
        raise ValueError(f"expected a BPE tokenizer.json, got {model['type']!r}")
    (dst / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]  # new format: pairs
    (dst / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (dst / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    old_config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": config["model_max_length"],
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        **special,
    }
    (dst / "tokenizer_config.json").write_text(json.dumps(old_config, indent=2) + "\n")


def convert(src: Path = DEFAULT_SRC, dst: Path = DEFAULT_DST) -> Path:
    """Write the legacy copy of ``src`` to ``dst`` (replacing what is there) and return ``dst``."""
    index = json.loads((src / "model_index.json").read_text())
    if index.get("_class_name") != "StableDiffusionPipeline":
        raise ValueError(f"{src}: expected a StableDiffusionPipeline directory, got {index.get('_class_name')!r}")
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in ("unet", "vae", "scheduler"):
        shutil.copytree(src / name, dst / name)
    _convert_text_encoder(src / "text_encoder", dst / "text_encoder")
    _convert_tokenizer(src / "tokenizer", dst / "tokenizer")
    index.pop("image_encoder", None)
    (dst / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC)
    parser.add_argument("--dst", type=Path, default=DEFAULT_DST)
    args = parser.parse_args(argv)
    print(convert(args.src, args.dst))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
