"""Drawing primitives of the tiny models' procedural data: colour words, shapes, background patterns.

Shape colours are saturated and bright (HSV saturation and value 1); backgrounds are muted (saturation
at most 0.45, value at most 0.55, or grey). Readers rely on that contract to find objects in any
image, rendered or generated: the pixels with high saturation and value. Shapes are signed-distance
functions, so every edge is anti-aliased for free, and everything is plain torch, so a training batch
is drawn on the GPU that trains on it.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import numpy as np
import torch

# Hue (degrees) of each colour word; shapes use them at full saturation, backgrounds muted.
COLOURS: dict[str, float] = {
    "red": 0.0,
    "orange": 30.0,
    "yellow": 58.0,
    "green": 120.0,
    "cyan": 185.0,
    "blue": 228.0,
    "purple": 275.0,
    "pink": 320.0,
}
# Greys are background colours only: (value of the main tone, value of the second tone).
GREYS: dict[str, tuple[float, float]] = {"white": (0.88, 0.68), "gray": (0.5, 0.32), "black": (0.2, 0.07)}
BACKGROUND_COLOURS: tuple[str, ...] = (*COLOURS, *GREYS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "ring")
PATTERNS: tuple[str, ...] = ("plain", "striped", "checkered", "dotted")

BACKGROUND_SATURATION = 0.45
BACKGROUND_VALUES = (0.55, 0.32)
# The readers' object mask: brighter and more saturated than any background can be.
OBJECT_MIN_SATURATION = 0.6
OBJECT_MIN_VALUE = 0.6
# Background patterns ramp from one tone to the other over this fraction of their period: soft
# enough for an 8x-downsampling VAE trained for minutes, sharp enough to read as stripes and dots.
PATTERN_SOFTNESS = 0.12
# A shape of size s reaches at most this many s from its centre (star tips, square corners).
SHAPE_EXTENT = 1.3
# Columns of :func:`background_numbers`: period, cos and sin of the stripe angle, phase x and y,
# the two RGB tones, and one weight per drawn pattern (striped, checkered, dotted; plain: none).
BACKGROUND_COLUMNS = 14


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def choose(name: str, value: str, allowed: Sequence[str]) -> None:
    """``ValueError`` naming ``name`` and the allowed values unless ``value`` is one of them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def hue_distance(a: float, b: float) -> float:
    """Angle between two hues in degrees, in [0, 180]."""
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def nearest_colour(hue: float) -> str:
    """The colour word whose hue is closest."""
    return min(COLOURS, key=lambda name: hue_distance(COLOURS[name], hue))


def mean_hue(hues: np.ndarray) -> float:
    """Circular mean of hues in degrees."""
    angle = np.deg2rad(hues)
    return float(np.rad2deg(np.arctan2(np.sin(angle).mean(), np.cos(angle).mean())) % 360.0)


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device`` without waiting for the GPU (pinned, non-blocking), so the host
    can prepare the next training step while the device works on this one."""
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _rgb(hue: float, saturation: float, value: float) -> tuple[float, float, float]:
    return colorsys.hsv_to_rgb((hue % 360.0) / 360.0, saturation, value)


def background_tones(background: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The two RGB tones of a background colour (muted hue, or grey)."""
    if background in GREYS:
        first, second = GREYS[background]
        return _rgb(0.0, 0.0, first), _rgb(0.0, 0.0, second)
    first, second = BACKGROUND_VALUES
    hue = COLOURS[background]
    return _rgb(hue, BACKGROUND_SATURATION, first), _rgb(hue, BACKGROUND_SATURATION, second)


def hue_to_rgb(hue: torch.Tensor) -> torch.Tensor:
    """RGB (new last dim of 3) of fully saturated, full-value colours from hues in degrees."""
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (n + hue / 60.0) % 6.0
        channels.append(1.0 - torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(channels, dim=-1)


def shape_distance(shape: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Signed distance (negative inside) of a unit-size shape at the origin; y points down."""
    if shape == "circle":
        return torch.hypot(x, y) - 1.0
    if shape == "ring":
        return (torch.hypot(x, y) - 0.775).abs() - 0.225
    if shape == "square":
        qx, qy = x.abs() - 0.88, y.abs() - 0.88
        outside = torch.hypot(qx.clamp(min=0), qy.clamp(min=0))
        return outside + torch.maximum(qx, qy).clamp(max=0)
    if shape == "diamond":
        a, b = 0.95, 1.3
        return (x.abs() / a + y.abs() / b - 1.0) * (a * b / math.hypot(a, b))
    if shape == "triangle":  # equilateral, pointing up, side 2r (Inigo Quilez's exact distance)
        r, k = 1.2, math.sqrt(3.0)
        px, py = x.abs() - r, -y + r / k
        flip = px + k * py > 0
        px, py = torch.where(flip, (px - k * py) / 2, px), torch.where(flip, (-k * px - py) / 2, py)
        px = px - px.clamp(-2 * r, 0)
        return -torch.hypot(px, py) * torch.sign(py)
    if shape == "star":  # five points, straight edges (Inigo Quilez's exact distance, folded into one spike)
        r, inner = 1.25, 0.45
        k1x, k1y = 0.809016994375, -0.587785252292
        px, py = x.abs(), -y
        for kx, ky in ((k1x, k1y), (-k1x, k1y)):
            fold = 2.0 * torch.clamp(kx * px + ky * py, min=0.0)
            px, py = px - fold * kx, py - fold * ky
        px, py = px.abs(), py - r
        bax, bay = -inner * k1y, inner * k1x - 1.0
        h = torch.clamp((px * bax + py * bay) / (bax * bax + bay * bay), 0.0, r)
        return torch.hypot(px - bax * h, py - bay * h) * torch.sign(py * bax - px * bay)
    raise ValueError(f"shape must be one of {', '.join(SHAPES)}; got {shape!r}")


def coverage(distance_px: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage of a pixel from the signed distance of its centre, in pixels."""
    return (0.5 - distance_px).clamp(0.0, 1.0)


def background_numbers(
    pattern: str, background: str, period: float, angle: float, phase: tuple[float, float]
) -> list[float]:
    """One row of :data:`BACKGROUND_COLUMNS` numbers: a background's pattern, tones and geometry
    (``period`` relative to the shorter side, ``angle`` of the stripes in radians, ``phase`` in periods)."""
    return [
        period,
        math.cos(angle),
        math.sin(angle),
        *phase,
        *(v for tone in background_tones(background) for v in tone),
        *(float(pattern == p) for p in PATTERNS[1:]),
    ]


def draw_backgrounds(numbers: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Backgrounds ``(B, H, W, 3)`` from ``(B, BACKGROUND_COLUMNS)`` numbers: every pattern drawn for
    all, each row's own one kept."""
    device = numbers.device
    period, cos_a, sin_a, phase_x, phase_y = (v[:, None, None] for v in numbers[:, :5].unbind(1))
    tone_a, tone_b, pattern = numbers[:, 5:8], numbers[:, 8:11], numbers[:, 11:14]
    period = period * min(height, width)
    u = (torch.arange(width, device=device) + 0.5)[None, None, :] / period + phase_x
    w = (torch.arange(height, device=device) + 0.5)[None, :, None] / period + phase_y
    # Edges ramp over PATTERN_SOFTNESS of a period: sin(2 pi t) / (2 pi) is about the distance to an
    # edge in periods, so dividing by the ramp width gives a coverage slope of one per ramp.
    ramp = 2 * math.pi * PATTERN_SOFTNESS
    striped = 0.5 + torch.sin(2 * math.pi * (u * cos_a + w * sin_a)) / ramp
    checkered = 0.5 + torch.sin(2 * math.pi * u) * torch.sin(2 * math.pi * w) / ramp
    dot_distance = torch.hypot(u % 1.0 - 0.5, w % 1.0 - 0.5) - 0.28
    dotted = 0.5 - dot_distance / PATTERN_SOFTNESS
    mixes = torch.stack([striped, checkered, dotted], dim=-1).clamp(0.0, 1.0)
    mix = (mixes * pattern[:, None, None, :]).sum(dim=-1, keepdim=True)  # plain: all weights 0
    return torch.lerp(tone_a[:, None, None, :], tone_b[:, None, None, :], mix)


def rgb_to_hsv(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees, saturation and value in [0, 1] of ``(..., 3)`` RGB in [0, 1]."""
    top, bottom = pixels.max(axis=-1), pixels.min(axis=-1)
    chroma = top - bottom
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(top == r, ((g - b) / safe) % 6.0, np.where(top == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    saturation = np.where(top > 0, chroma / np.where(top > 0, top, 1.0), 0.0)
    return hue * 60.0 % 360.0, saturation, top


def as_unit_float(pixels: np.ndarray) -> np.ndarray:
    """RGB pixels as float32 in [0, 1]: uint8 scaled by 1/255, floats clipped."""
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    return np.clip(pixels.astype(np.float32), 0.0, 1.0)


def object_pixels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue (degrees) and the object mask of ``(..., 3)`` RGB in [0, 1]: saturated, bright pixels."""
    hue, saturation, value = rgb_to_hsv(rgb)
    return hue, (saturation > OBJECT_MIN_SATURATION) & (value > OBJECT_MIN_VALUE)
