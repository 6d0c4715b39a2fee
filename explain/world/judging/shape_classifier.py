"""The judge's shape reader: blur-tolerant silhouette features and a fitted multinomial logistic regression.

Step 4 of :mod:`explain.world.judging`; the constants are fitted by ``python -m training.judge --fit``
(:func:`training.judge.fit_shape_classifier`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from explain.world.judging.regions import _erode, _hull_area

_N_ANGLES = 32
FEATURE_NAMES: tuple[str, ...] = (
    "extent",
    "solidity",
    "log_aspect",
    "skew_y",
    "radial_std",
    *(f"{part}{k}" for k in range(1, 6) for part in ("re", "im")),
)


def shape_features(mask: np.ndarray) -> np.ndarray:
    """Scale-invariant features of a filled silhouette. Returns (len(FEATURE_NAMES),) float64.

    ``re_k``/``im_k`` are the k-th Fourier coefficients of the radial profile r(theta) (max boundary distance
    from the centroid per angle bin, theta from +x towards +y, i.e. clockwise on screen) divided by its mean.
    """
    ys, xs = np.nonzero(mask)
    area = float(len(xs))
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    bw, bh = float(x1 - x0), float(y1 - y0)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    dy = ys + 0.5 - cy
    mu02 = (dy**2).mean()
    skew_y = (dy**3).mean() / max(mu02, 1e-6) ** 1.5
    edge = mask & ~_erode(mask, conn=4)
    ey, ex = np.nonzero(edge)
    vx, vy = ex + 0.5 - cx, ey + 0.5 - cy
    dist = np.hypot(vx, vy) + 0.5  # +0.5: pixel centre -> outer edge
    bins = ((np.arctan2(vy, vx) + math.pi) / (2 * math.pi) * _N_ANGLES).astype(int) % _N_ANGLES
    prof = np.full(_N_ANGLES, np.nan)
    for k in range(_N_ANGLES):
        sel = dist[bins == k]
        if sel.size:
            prof[k] = sel.max()
    ok = ~np.isnan(prof)
    grid = np.arange(_N_ANGLES)
    prof = np.interp(grid, grid[ok], prof[ok], period=_N_ANGLES)
    prof = prof / prof.mean()
    # arctan2 + pi shifts theta by pi: undo by the (-1)^k factor so phases are relative to +x.
    spec = np.fft.rfft(prof) / _N_ANGLES * np.array([(-1) ** k for k in range(_N_ANGLES // 2 + 1)])
    harmonics = [v for k in range(1, 6) for v in (spec[k].real, spec[k].imag)]
    return np.array(
        [area / (bw * bh), area / max(_hull_area(mask), 1.0), math.log(bh / bw), skew_y, prof.std(), *harmonics],
        np.float64,
    )


@dataclass(frozen=True)
class ShapeClassifier:
    """Multinomial logistic regression on standardised :func:`shape_features`."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: tuple[tuple[float, ...], ...]  # (n_features + 1, n_shapes), last row = bias

    def probs(self, features: np.ndarray) -> np.ndarray:
        """(..., n_features) -> (..., n_shapes) probabilities over ``world.SHAPES``."""
        z = (features - np.array(self.mean)) / np.array(self.std)
        w = np.array(self.weights)
        logits = z @ w[:-1] + w[-1]
        logits = logits - logits.max(-1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(-1, keepdims=True)


# Fitted by `python -m training.judge --fit` = fit_shape_classifier(n=1200, seed=1234); accuracy: validate().
# weights: one row per FEATURE_NAMES entry then the bias row; one column per world.SHAPES entry.
# fmt: off
_SHAPE_CLASSIFIER = ShapeClassifier(
    mean=(
        0.68265, 0.87162, -0.0042706, -0.039364, 0.13726, -3.3396e-05, -0.00078639, -0.0012917, 0.00053278,
        0.00229, -0.0078785, 0.0012935, 0.00055593, -0.0069955, 0.013433,
    ),
    std=(
        0.15563, 0.10462, 0.1648, 0.25187, 0.066955, 0.013232, 0.014958, 0.04159, 0.020503, 0.020622, 0.055807,
        0.035836, 0.018376, 0.021983, 0.038618,
    ),
    weights=(
        (0.17209, 1.6962, -0.080455, 0.065438, -1.1723, -0.68091),
        (-0.50002, -1.5122, 0.36228, -0.011725, 1.0262, 0.63582),
        (-0.21398, 0.42957, -0.24199, -0.67749, -0.6173, 1.3214),
        (-0.30535, 0.077258, -1.1003, -0.18774, 1.6653, -0.14915),
        (-1.5621, 0.49237, 1.0735, 0.26487, 0.26752, -0.53611),
        (0.21746, 0.068446, 0.0086503, -0.14176, -0.077169, -0.075592),
        (0.088633, -0.29915, -0.20203, -0.1079, -0.044124, 0.56425),
        (0.52974, -0.15232, 0.50525, -0.25281, 1.2211, -1.8515),
        (-0.030605, 0.053428, -0.23625, -0.05962, 0.34828, -0.074831),
        (0.030891, 0.22549, 0.27305, -0.11612, -0.45966, 0.046302),
        (0.36356, -0.2495, -1.9699, 0.28174, 1.6526, -0.078437),
        (0.12669, -2.9441, 1.087, 0.25732, -0.11649, 1.5893),
        (0.42198, -0.81846, -0.29345, -0.081669, -0.064363, 0.83583),
        (0.73272, 0.047684, -0.090318, -1.4676, 0.52365, 0.25381),
        (-0.89246, -0.46451, 0.28591, 2.5293, -0.88447, -0.57366),
        (1.0657, -0.90534, 0.82445, 1.528, -1.3639, -2.1566),
    ),
)
# fmt: on
