"""Image-quality measures for super-resolution: PSNR and SSIM, numpy only.

- PSNR = 10 log10(MAX² / MSE), on images scaled to [0, 1] (MAX = 1).
- SSIM (Wang, Bovik, Sheikh & Simoncelli 2004, "Image Quality Assessment: From Error Visibility to Structural
  Similarity", eq. 13 with the paper's settings): local means, variances and covariance under an 11x11 Gaussian
  window (σ = 1.5, normalised), ``C1 = (0.01 L)²``, ``C2 = (0.03 L)²`` with dynamic range L = 1,

      SSIM(x, y) = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)),

  averaged over all window positions that fit inside the image ("valid", as the paper's reference code) and, for
  colour images, over the RGB channels. SSIM(x, x) = 1; it is symmetric and at most 1.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["to_unit", "psnr", "ssim", "gaussian_window"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def to_unit(image) -> np.ndarray:
    """PIL image or uint8 array -> float64 array in [0, 1]; float arrays are taken as already in [0, 1]."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    return arr.astype(np.float64)


def psnr(x, y) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1] (or uint8 / PIL); ``inf`` when identical."""
    a, b = to_unit(x), to_unit(y)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """1-D normalised Gaussian; the 2-D window is its outer product (separable)."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-0.5 * (r / sigma) ** 2)
    return w / w.sum()


def _filter(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Valid 2-D correlation of (H, W) with the separable window w ⊗ w: (H - k + 1, W - k + 1)."""
    rows = sliding_window_view(x, len(w), axis=0) @ w  # (H-k+1, W)
    return sliding_window_view(rows, len(w), axis=1) @ w  # (H-k+1, W-k+1)


def _ssim_channel(a: np.ndarray, b: np.ndarray, w: np.ndarray, data_range: float) -> float:
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _filter(a, w), _filter(b, w)
    var_a = _filter(a * a, w) - mu_a**2
    var_b = _filter(b * b, w) - mu_b**2
    cov = _filter(a * b, w) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def ssim(x, y, data_range: float = 1.0, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> float:
    """Mean SSIM (module docstring) of two (H, W) or (H, W, C) images in [0, data_range] (uint8 / PIL: scaled).

    Raises:
        ValueError: Different shapes, or an image smaller than the window.
    """
    a, b = to_unit(x), to_unit(y)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if min(a.shape[:2]) < window:
        raise ValueError(f"images of {a.shape[:2]} are smaller than the {window}x{window} SSIM window")
    w = gaussian_window(window, sigma)
    if a.ndim == 2:
        return _ssim_channel(a, b, w, data_range)
    return float(np.mean([_ssim_channel(a[..., c], b[..., c], w, data_range) for c in range(a.shape[-1])]))
