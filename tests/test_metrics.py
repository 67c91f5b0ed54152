"""PSNR and SSIM against float64 references written from the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dit_accel.metrics import psnr, ssim, video_psnr, video_ssim


def reference_psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(data_range**2 / mse)


def reference_ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Wang et al. SSIM with an explicit 11x11 Gaussian (sigma 1.5) and reflect-101 borders."""
    radius = 5
    g = np.exp(-((np.arange(-radius, radius + 1)) ** 2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]

    def blur(x: np.ndarray) -> np.ndarray:
        padded = np.pad(x, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")  # numpy reflect == 101
        out = np.zeros_like(x)
        for dy in range(2 * radius + 1):
            for dx in range(2 * radius + 1):
                out += window[dy, dx] * padded[dy : dy + x.shape[0], dx : dx + x.shape[1]]
        return out

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def noisy_pair(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """A smooth-ish uint8 image and a noisy copy of it."""
    clean = rng.integers(0, 256, size=shape).astype(np.float64)
    clean = (clean + np.roll(clean, 1, axis=0) + np.roll(clean, 1, axis=1)) / 3
    noisy = np.clip(clean + rng.normal(0, sigma, size=shape), 0, 255)
    return clean.round().astype(np.uint8), noisy.round().astype(np.uint8)


@pytest.mark.parametrize("shape", [(23, 37), (17, 29, 3), (31, 13, 1)])
def test_uint8_matches_float64_reference(shape: tuple[int, ...]) -> None:
    a, b = noisy_pair(np.random.default_rng(0), shape, 20.0)
    assert psnr(a, b) == pytest.approx(reference_psnr(a, b, 255.0), rel=1e-12)
    assert ssim(a, b) == pytest.approx(reference_ssim(a, b, 255.0), abs=1e-9)


def test_float_inputs_use_unit_range_and_torch_tensors_work() -> None:
    rng = np.random.default_rng(1)
    a = rng.random((19, 21, 3))
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    assert psnr(a, b) == pytest.approx(reference_psnr(a, b, 1.0), rel=1e-12)
    assert ssim(a, b) == pytest.approx(reference_ssim(a, b, 1.0), abs=1e-9)
    assert ssim(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(ssim(a, b), abs=1e-6)
    assert psnr(a * 4, b * 4, data_range=4.0) == pytest.approx(psnr(a, b), rel=1e-9)


def test_identical_inputs() -> None:
    a, _ = noisy_pair(np.random.default_rng(2), (15, 16, 3), 1.0)
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_more_noise_scores_worse() -> None:
    rng = np.random.default_rng(3)
    clean, _ = noisy_pair(rng, (33, 35, 3), 1.0)
    scores = []
    for sigma in (2.0, 8.0, 32.0):
        noisy = np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 255).round().astype(np.uint8)
        scores.append((psnr(clean, noisy), ssim(clean, noisy)))
    assert scores[0][0] > scores[1][0] > scores[2][0]
    assert scores[0][1] > scores[1][1] > scores[2][1]


def test_video_metrics_are_per_frame() -> None:
    rng = np.random.default_rng(4)
    frames = [noisy_pair(rng, (21, 23, 3), s) for s in (4.0, 16.0)]
    clean = np.stack([f[0] for f in frames])
    noisy = np.stack([f[1] for f in frames])
    noisy[0] = clean[0]
    per_frame, mean = video_psnr(clean, noisy)
    assert per_frame == [math.inf, pytest.approx(reference_psnr(clean[1], noisy[1], 255.0))]
    assert mean == math.inf
    per_frame, mean = video_ssim(clean, noisy)
    assert per_frame[0] == pytest.approx(1.0)
    assert per_frame[1] == pytest.approx(reference_ssim(clean[1], noisy[1], 255.0), abs=1e-9)
    assert mean == pytest.approx(np.mean(per_frame))


def test_bad_inputs_are_rejected() -> None:
    a = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(ValueError, match="dimensions"):
        video_ssim(a[..., 0], a[..., 0])
    with pytest.raises(ValueError, match="data_range"):
        ssim(a, a, data_range=0)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        psnr([[0]], [[0]])
