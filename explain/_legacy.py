"""Old flat module paths (``explain.loading`` ...) kept importable for code outside explain/, demo/ and tests/.

``training/`` still imports the pre-subpackage paths. Each old name is an alias of its new module (the same module
object, loaded on first import), listed once here. Delete an entry once nothing imports the old path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__all__ = ["MOVED", "install"]

MOVED: dict[str, str] = {
    "explain.attention": "explain.capture.recorder",
    "explain.clip_contrastive": "explain.clip.contrastive",
    "explain.clip_model": "explain.clip.model",
    "explain.figures": "explain.io.figures",
    "explain.heatmap": "explain.maps.aggregation",
    "explain.loading": "explain.diffusion.loading",
    "explain.noising": "explain.diffusion.noising",
    "explain.tokens": "explain.clip.tokens",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path in :data:`MOVED` and hands back the new module itself."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return _Placeholder(spec.name)

    def exec_module(self, module) -> None:
        sys.modules[module.__name__] = importlib.import_module(MOVED[module.__name__])


class _Placeholder(type(sys)):
    """Stands in for the old name until :meth:`_Alias.exec_module` replaces it in ``sys.modules``."""


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
