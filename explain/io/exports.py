"""The app's downloads of one generation (:class:`explain.engine.session.GenerationResult`), via :mod:`.writers`.

The NPZ is the CLI's ``attention.npz`` format plus one documented extra, ``timesteps`` (float32 ``[steps]``, the
scheduler timestep of each recorded step).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from explain.io.joint_writers import write_joint_attention_npz
from explain.io.writers import write_attention_npz, write_film_gif, write_grid_png, write_json, write_pair_film_gif
from explain.maps.aggregation import aggregate
from explain.maps.views import MapView

__all__ = ["export_grid_png", "export_film_gif", "export_maps_npz", "export_settings_json"]


def export_grid_png(result, view: MapView, path: str | Path, title: str | None = None) -> Path:
    """The image and one overlay per word of ``view`` as one PNG."""
    return write_grid_png(path, result.image, view.words, view.maps, title=title)


def export_film_gif(result, path: str | Path, preview=None) -> Path | None:
    """The denoising as an animated GIF (None when the run recorded no film: SD3 / Flux, ``result.notes``).

    With ``preview`` (a :class:`explain.capture.film.LatentPreview`): per step, the noisy sample x_t beside the
    predicted clean image x̂₀, large. Without: x̂₀ and each word's attention at that step (the CLI's ``film.gif``).
    """
    if not result.frames:
        return None
    if preview is None:
        return write_film_gif(Path(path), list(result.frames), result.captured, result.view)
    return write_pair_film_gif(path, list(result.frames), preview, result.size)


def export_maps_npz(result, path: str | Path) -> Path:
    """The CLI's ``attention.npz`` of the result, plus ``timesteps`` (SD3 / Flux: the CLI's joint format)."""
    if getattr(result, "joint", None) is not None:
        return write_joint_attention_npz(path, result.joint)
    timesteps = np.array(result.captured.timesteps, dtype=np.float32)
    return write_attention_npz(path, aggregate(result.captured, result.view), result.captured, timesteps=timesteps)


def export_settings_json(result, path: str | Path, model: str | None = None) -> Path:
    """The request and what ran (scheduler class, size, steps done), as JSON."""
    doc = {
        **result.request.to_dict(),
        "model": model or "embedded",
        "scheduler_class": result.scheduler,
        "size": list(result.size),
        "steps_done": result.steps_done,
        "interrupted": result.interrupted,
        "seconds": round(result.seconds, 3),
        "words": [w.text for w in result.view.words],
    }
    return write_json(path, doc)
