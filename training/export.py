"""Copy a training work folder's model outputs as float16 safetensors (what travels back from a lent GPU).

``python -m training.export WORK DEST``: copies clip/, vae/ and every unet*/ folder with JSON/PNG logs, casting
floating-point tensors to float16, and leaves the big caches (rendered data, encodings) behind.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def export(work: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for folder in [work / "clip", work / "vae", *sorted(work.glob("unet*"))]:
        if not folder.is_dir():
            continue
        out = dest / folder.name
        out.mkdir(exist_ok=True)
        for f in folder.iterdir():
            if f.suffix == ".safetensors":
                state = load_file(f)
                save_file(
                    {k: (v.half() if v.dtype.is_floating_point else v).contiguous() for k, v in state.items()},
                    out / f.name,
                )
            elif f.suffix in (".json", ".png"):
                shutil.copy(f, out / f.name)
    for f in work.glob("*"):
        if f.suffix in (".json", ".png", ".txt"):
            shutil.copy(f, dest / f.name)


if __name__ == "__main__":
    export(Path(sys.argv[1]), Path(sys.argv[2]))
    torch.set_num_threads(1)
