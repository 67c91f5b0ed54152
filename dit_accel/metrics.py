"""Image and video quality against a reference: PSNR and SSIM.

Inputs are numpy arrays or torch tensors, uint8 (data range 255) or float (data range 1.0, i.e.
values in [0, 1]; pass ``data_range`` otherwise). Images are ``(H, W)`` or ``(H, W, C)``; videos
``(F, H, W)`` or ``(F, H, W, C)``.

SSIM is the standard one (Wang et al. 2004) as OpenCV's reference code computes it: an 11x11
Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, statistics in float64, borders reflected
(OpenCV's default BORDER_REFLECT_101), the SSIM map averaged over all pixels and channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

WINDOW = (11, 11)
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def _as_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu()
        x = x.float().numpy() if x.dtype.is_floating_point else x.numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    return x


def _pair(a: Any, b: Any, data_range: float | None, ndims: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, float]:
    """Validate two inputs and return them as float64 with their data range."""
    a, b = _as_array(a, "a"), _as_array(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim not in ndims:
        raise ValueError(f"inputs must have {' or '.join(map(str, ndims))} dimensions, got shape {a.shape}")
    if data_range is None:
        data_range = 255.0 if a.dtype == np.uint8 else 1.0
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    return a.astype(np.float64), b.astype(np.float64), float(data_range)


def _psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse)


def _ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """SSIM of two float64 images ``(H, W)`` or ``(H, W, C)``."""
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, WINDOW, SIGMA)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def psnr(a: Any, b: Any, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB over all elements; ``inf`` when the inputs are identical."""
    a, b, data_range = _pair(a, b, data_range, (2, 3))
    return _psnr(a, b, data_range)


def ssim(a: Any, b: Any, data_range: float | None = None) -> float:
    """Structural similarity of two images, in [-1, 1]; 1.0 when they are identical."""
    a, b, data_range = _pair(a, b, data_range, (2, 3))
    return _ssim(a, b, data_range)


def _per_frame(
    metric: Callable[[np.ndarray, np.ndarray, float], float], a: Any, b: Any, data_range: float | None
) -> tuple[list[float], float]:
    a, b, data_range = _pair(a, b, data_range, (3, 4))
    values = [metric(x, y, data_range) for x, y in zip(a, b, strict=True)]
    return values, float(np.mean(values))


def video_psnr(a: Any, b: Any, data_range: float | None = None) -> tuple[list[float], float]:
    """PSNR of each frame and their mean (the mean is ``inf`` when any frame is identical)."""
    return _per_frame(_psnr, a, b, data_range)


def video_ssim(a: Any, b: Any, data_range: float | None = None) -> tuple[list[float], float]:
    """SSIM of each frame and their mean."""
    return _per_frame(_ssim, a, b, data_range)
