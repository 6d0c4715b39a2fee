"""Tab 5, Use cases: super-resolution, style transfer, inpainting and outpainting on the embedded model.

Handlers are plain functions calling :mod:`explain.usecases`; every run shows the result, the U-Net input table read
from the run's actual tensors, and per-word cross-attention maps.

- :mod:`.forms`: the tab's settings, :func:`world_sample`, and the named values its handlers return.
- :mod:`.handlers`: :class:`UseCasesTab` (the four tasks) and :func:`editor_mask`.
- :mod:`.layout`: the tab's sections (one per task) and their events.
"""

from demo.tab_usecases.handlers import UseCasesTab, editor_mask, world_sample

__all__ = ["UseCasesTab", "world_sample", "editor_mask"]
