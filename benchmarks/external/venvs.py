"""Virtual environments for the external capture baselines: DAAM 0.2.0 and attention-map-diffusers 1.0.0.

Run from the repository root::

    python -m benchmarks.external.venvs all      # or: daam | amd

Each venv is made with ``--system-site-packages`` so that the system torch (a large CUDA build) is reused, never
reinstalled; the pinned packages installed into the venv shadow the system ones. Installs go through pip with a
constraints file that pins torch, torchvision and numpy to the system's versions, so no resolver can replace them.

- ``daam``: daam 0.2.0 on the stack it was released for (diffusers 0.21.2, transformers 4.30.2, accelerate 0.23,
  huggingface_hub < 0.26 for ``cached_download``, tokenizers < 0.14 for transformers' import-time check), all
  ``--no-deps`` because their own pins would drag another torch; spaCy (imported by daam) with its dependencies.
- ``amd``: attention-map-diffusers 1.0.0 needs diffusers >= 0.39 and transformers >= 4.57, which the system has
  (its AttentionCapture API targets recent diffusers); only the package and its missing small deps go in.

Idempotent: a venv whose ``spec.json`` matches and whose import check passes is left alone.
``venv_python(name)`` gives the interpreter for the runners.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["VENV_ROOT", "SPECS", "VenvSpec", "ensure_venv", "venv_python"]

VENV_ROOT = Path(__file__).resolve().parents[1] / ".venvs"


@dataclass(frozen=True)
class VenvSpec:
    """What one venv holds: packages installed without dependencies, packages resolved normally, an import check."""

    no_deps: tuple[str, ...]
    with_deps: tuple[str, ...]
    check: str


SPECS: dict[str, VenvSpec] = {
    "daam": VenvSpec(
        no_deps=(
            "daam==0.2.0",
            "diffusers==0.21.2",
            "transformers==4.30.2",
            "accelerate==0.23.0",
            "huggingface_hub==0.25.2",
            "tokenizers==0.13.3",
        ),
        with_deps=("spacy==3.8.7",),
        check=(
            "import daam, diffusers, transformers, accelerate, huggingface_hub, torch; "
            "from diffusers import StableDiffusionPipeline; "
            "assert diffusers.__version__ == '0.21.2', diffusers.__version__; "
            "assert transformers.__version__ == '4.30.2', transformers.__version__"
        ),
    ),
    "amd": VenvSpec(
        no_deps=(),
        with_deps=("attention-map-diffusers==1.0.0",),
        check=(
            "import attention_map_diffusers as a, diffusers, torch; "
            "from attention_map_diffusers import AttentionCapture; "
            "assert a.__version__ == '1.0.0', a.__version__"
        ),
    ),
}


def venv_python(name: str) -> Path:
    """The interpreter of venv ``name`` (``daam`` or ``amd``); it may not exist yet (see ``ensure_venv``)."""
    if name not in SPECS:
        raise ValueError(f"unknown venv {name!r}; expected one of {sorted(SPECS)}")
    return VENV_ROOT / name / "bin" / "python"


def _system_constraints() -> list[str]:
    """Pins for the packages that must come from the system (torch is a big CUDA build: never reinstall it)."""
    return [f"{name}=={metadata.version(name)}" for name in ("torch", "torchvision", "numpy")]


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _check(python: Path, code: str) -> bool:
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
    return result.returncode == 0


def ensure_venv(name: str, force: bool = False) -> Path:
    """Create (or reuse) venv ``name`` and return its interpreter.

    Raises:
        RuntimeError: the import check fails after installing.
    """
    spec = SPECS[name]
    root = VENV_ROOT / name
    python = venv_python(name)
    record = {"spec": asdict(spec), "constraints": _system_constraints(), "base_python": sys.executable}
    record = json.loads(json.dumps(record))  # tuples -> lists, as the stored copy reads back
    spec_file = root / "spec.json"
    if not force and spec_file.exists() and json.loads(spec_file.read_text()) == record and _check(python, spec.check):
        print(f"{name}: up to date ({root})")
        return python
    if not python.exists():
        _run([sys.executable, "-m", "venv", "--system-site-packages", str(root)])
    constraints = root / "constraints.txt"
    constraints.write_text("\n".join(record["constraints"]) + "\n")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-c", str(constraints)]
    if spec.no_deps:
        _run([*pip, "--no-deps", *spec.no_deps])
    if spec.with_deps:
        _run([*pip, *spec.with_deps])
    if not _check(python, spec.check):
        raise RuntimeError(f"{name}: import check failed in {root}")
    spec_file.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{name}: ready ({python})")
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="all", choices=[*SPECS, "all"])
    parser.add_argument("--force", action="store_true", help="reinstall even if the venv looks up to date")
    args = parser.parse_args(argv)
    for name in SPECS if args.name == "all" else [args.name]:
        ensure_venv(name, force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
