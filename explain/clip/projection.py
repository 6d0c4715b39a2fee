"""A 2-D picture of CLIP's joint space that stays still while the model trains: PCA with stable axes.

Principal component analysis (Pearson 1901; Hotelling 1933): centre the points ``X`` ([m, d]) and project them on
the two right singular vectors of ``X - mean`` with the largest singular values; the share of the variance they
show is ``(s_1² + s_2²) / Σ s_k²``.

Refitting every frame would let the picture jump (a singular vector's sign is arbitrary, near-equal components
swap), so :class:`JointProjection` offers two stable pictures:

- ``"first"``: mean and axes fitted on the first call and kept; later frames are drawn in the first frame's
  coordinates (the motion is real motion in a fixed 2-D window of the space).
- ``"track"``: refitted every call (always the two most spread-out directions now), then turned onto the previous
  picture by the orthogonal 2 x 2 map ``R`` that best matches it, ``min_R ‖Y R − Y_prev‖`` (orthogonal Procrustes,
  Schönemann 1966: ``R = U Vᵀ`` from the SVD ``Yᵀ Y_prev = U S Vᵀ``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["PROJECTION_MODES", "JointProjection", "pca_axes"]

PROJECTION_MODES = ("first", "track")
PICTURE_DIMS = 2


def pca_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean ([d]), the top-2 principal axes ([d, 2]) of ``points`` ([m, d]), and the variance share they show."""
    mean = points.mean(axis=0)
    _, singular, vt = np.linalg.svd(points - mean, full_matrices=False)  # vt: [min(m, d), d]
    axes = np.zeros((points.shape[1], PICTURE_DIMS))
    kept = min(PICTURE_DIMS, vt.shape[0])
    axes[:, :kept] = vt[:kept].T
    power = singular**2
    total = power.sum()
    return mean, axes, float(power[:kept].sum() / total) if total > 0 else 0.0


class JointProjection:
    """Callable ``points [m, d] -> (xy [m, 2], explained share)`` with axes kept stable across calls.

    Args:
        mode: One of :data:`PROJECTION_MODES` (module docstring).
    """

    def __init__(self, mode: str = "first"):
        if mode not in PROJECTION_MODES:
            raise ValueError(f"unknown projection {mode!r}; choose from {', '.join(PROJECTION_MODES)}.")
        self.mode = mode
        self._mean: np.ndarray | None = None
        self._axes: np.ndarray | None = None  # [d, 2]
        self._previous: np.ndarray | None = None  # [m, 2], the last picture ("track")

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, float]:
        points = np.asarray(points, dtype=np.float64)
        if self.mode == "first":
            if self._axes is None:
                self._mean, self._axes, _ = pca_axes(points)
            centred = points - self._mean
            xy = centred @ self._axes  # [m, 2]
            total = float((centred**2).sum())
            return xy, float((xy**2).sum() / total) if total > 0 else 0.0
        mean, axes, explained = pca_axes(points)
        xy = (points - mean) @ axes  # [m, 2]
        if self._previous is not None and self._previous.shape == xy.shape:
            u, _, vt = np.linalg.svd(xy.T @ self._previous)  # [2, 2]
            xy = xy @ (u @ vt)  # the rotation / reflection closest to the last picture
        self._previous = xy
        return xy, explained
