"""Read objects back from any image, rendered or generated, and score it against its caption.

The data contract (:mod:`tools.tiny_common.drawing`) makes objects findable: their pixels are
saturated and bright, backgrounds never are. The reader

1. takes the object pixels and labels each with its nearest colour word;
2. splits them into connected regions (8-neighbourhood), and a region holding two colours of at least
   :data:`MIN_SHARE` each into one object per colour (touching objects), dropping specks below
   :data:`MIN_AREA` of the image;
3. names each object's shape by the best-fitting template: every shape drawn at the object's centroid
   and at the size its filled area implies, compared by intersection over union; the size word
   follows from that size.

:func:`check_image` then matches the caption's objects to the found ones by colour (a caption's
colours differ) and checks shape, size, relations (by the dominant axis between centroids) and that
nothing else is there.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from tools.tiny_common.drawing import COLOURS, SHAPES, as_unit_float, object_pixels, shape_distance

from .data import RELATIONS, SIZES, Caption, parse_caption, shape_stats

MIN_AREA = 0.0012  # of the image: a small star at 128x128 covers about 0.004
MIN_SHARE = 0.2  # of a region, for a second colour to count as a second object
MIN_SPLIT_FIT = 0.5  # template fit each part of a split region needs
_COLOUR_HUES = np.array(list(COLOURS.values()))
# Size classes are told apart at the midpoints between their ranges.
_SIZE_BOUNDS = [(SIZES[a][1] + SIZES[b][0]) / 2 for a, b in itertools.pairwise(SIZES)]


@dataclass(frozen=True)
class Found:
    """One object the reader sees. ``centroid`` is relative to the image (x / width, y / height);
    ``area`` is a fraction of the image; ``scale`` the shape's unit relative to the shorter side;
    ``fit`` the intersection over union of the mask with the best shape template."""

    colour: str
    shape: str
    size: str
    centroid: tuple[float, float]
    area: float
    scale: float
    fit: float
    mask: np.ndarray


def _hue_gaps(hue: np.ndarray, hues: np.ndarray) -> np.ndarray:
    """Angles (degrees, in [0, 180]) between each hue of ``hue`` and each of ``hues``: shape ``(..., len(hues))``."""
    difference = np.abs(hue[..., None] - hues) % 360.0
    return np.minimum(difference, 360.0 - difference)


def colour_labels(hue: np.ndarray) -> np.ndarray:
    """Index into :data:`COLOURS` of the nearest colour word of each hue (degrees)."""
    return _hue_gaps(hue, _COLOUR_HUES).argmin(axis=-1)


def size_word(scale: float) -> str:
    """The size class of a shape's unit relative to the shorter side."""
    return list(SIZES)[int(np.searchsorted(_SIZE_BOUNDS, scale))]


def _template(shape: str, centre: tuple[float, float], scale_px: float, height: int, width: int) -> np.ndarray:
    """Pixels whose centres lie inside ``shape`` drawn with its ink centroid at ``centre`` (pixels)."""
    offset = shape_stats(shape).centroid
    xs = (torch.arange(width, dtype=torch.float64) + 0.5 - centre[0]) / scale_px + offset[0]
    ys = (torch.arange(height, dtype=torch.float64) + 0.5 - centre[1]) / scale_px + offset[1]
    return (shape_distance(shape, xs[None, :], ys[:, None]) < 0).numpy()


def classify_shape(mask: np.ndarray, short: int) -> tuple[str, float, float]:
    """Best-fitting shape of a boolean mask, its unit relative to ``short`` pixels, and its fit."""
    rows, cols = np.nonzero(mask)
    centre = (cols.mean() + 0.5, rows.mean() + 0.5)
    filled = int(ndimage.binary_fill_holes(mask).sum())
    # Compare inside a window around the object, wide enough for any template of that area.
    pad = int(np.ceil(2 * np.sqrt(filled))) + 2
    top, left = max(0, rows.min() - pad), max(0, cols.min() - pad)
    window = mask[top : rows.max() + pad + 1, left : cols.max() + pad + 1]
    local = (centre[0] - left, centre[1] - top)
    best = ("", -1.0, 0.0)
    for shape in SHAPES:
        scale_px = float(np.sqrt(filled / shape_stats(shape).filled_area))
        template = _template(shape, local, scale_px, *window.shape)
        union = np.count_nonzero(template | window)
        fit = np.count_nonzero(template & window) / union if union else 0.0
        if fit > best[1]:
            best = (shape, fit, scale_px / short)
    shape, fit, scale = best
    return shape, scale, fit


def _regions(hue: np.ndarray, ink: np.ndarray, min_pixels: int) -> list[list[tuple[int, np.ndarray]]]:
    """Connected regions of ink (specks under ``min_pixels`` dropped), each as its (colour index, mask)
    parts: the whole region under its main colour first, then, where a second colour holds
    :data:`MIN_SHARE` of it, one part per main colour (each pixel to the nearest in hue)."""
    regions, count = ndimage.label(ink, structure=np.ones((3, 3), bool))
    labels = np.zeros(ink.shape, np.int64)
    labels[ink] = colour_labels(hue[ink])
    found = []
    for index in range(1, count + 1):
        region = regions == index
        size = int(region.sum())
        if size < min_pixels:
            continue
        counts = np.bincount(labels[region], minlength=len(COLOURS))
        parts = [(int(counts.argmax()), region)]
        colours = [int(c) for c in np.flatnonzero(counts >= MIN_SHARE * size) if counts[c] >= min_pixels]
        if len(colours) > 1:
            nearest = _hue_gaps(hue[region], _COLOUR_HUES[colours]).argmin(axis=-1)
            for k, colour in enumerate(colours):
                part = np.zeros_like(region)
                part[region] = nearest == k
                parts.append((colour, part))
        found.append(parts)
    return found


def _found(colour: int, mask: np.ndarray) -> Found:
    height, width = mask.shape
    rows, cols = np.nonzero(mask)
    shape, scale, fit = classify_shape(mask, min(height, width))
    centroid = (float((cols.mean() + 0.5) / width), float((rows.mean() + 0.5) / height))
    return Found(list(COLOURS)[colour], shape, size_word(scale), centroid, float(mask.mean()), scale, fit, mask)


def read_image(image: np.ndarray) -> list[Found]:
    """Every object the reader finds in an ``(H, W, 3)`` image (uint8, or floats in [0, 1]), largest first.

    A region of two colours counts as two touching objects only if both parts fit a shape at least
    :data:`MIN_SPLIT_FIT`; otherwise the second colour is a fringe (a blurred edge over a background
    whose blend reads as another hue) and the region one object of its main colour."""
    rgb = as_unit_float(image)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {rgb.shape}")
    hue, ink = object_pixels(rgb)
    found = []
    for whole, *parts in _regions(hue, ink, max(4, int(MIN_AREA * rgb.shape[0] * rgb.shape[1]))):
        split = [_found(*part) for part in parts]
        found += split if split and min(f.fit for f in split) >= MIN_SPLIT_FIT else [_found(*whole)]
    return sorted(found, key=lambda f: -f.area)


def read_relation(first: Found, second: Found, aspect: float = 1.0) -> str:
    """Where ``first`` is relative to ``second``, by the dominant axis between their centroids
    (``aspect`` = width / height turns relative coordinates into pixels)."""
    dx = (first.centroid[0] - second.centroid[0]) * aspect
    dy = first.centroid[1] - second.centroid[1]
    direction = (float(np.sign(dx)), 0.0) if abs(dx) >= abs(dy) else (0.0, float(np.sign(dy)))
    return next((name for name, d in RELATIONS.items() if d == direction), "same place")


def check_image(caption: Caption | str, image: np.ndarray) -> dict[str, Any]:
    """Does an image show its caption? Booleans for the whole caption:

    * ``found``: every named object's colour is there; ``shape``, ``size``: and each has its shape, size;
    * ``relation``: every relation holds between the found objects;
    * ``count``: nothing else is there;
    * ``adherence``: found, shape, relation and count (the caption's content, sizes aside);
    * ``exact``: adherence and size;

    plus ``objects``: per named object, what was read (None where its colour was not found).
    """
    caption = parse_caption(caption) if isinstance(caption, str) else caption
    image = np.asarray(image)
    found = read_image(image)
    matched = [next((f for f in found if f.colour == thing.colour), None) for thing in caption.things]
    present = [f for f in matched if f is not None]
    aspect = image.shape[1] / image.shape[0]
    relations = [
        a is not None and b is not None and read_relation(a, b, aspect) == relation
        for a, b, relation in zip(matched, matched[1:], caption.relations, strict=False)
    ]
    result: dict[str, Any] = {
        "found": len(present) == len(caption.things),
        "shape": all(f is not None and f.shape == t.shape for f, t in zip(matched, caption.things, strict=True)),
        "size": all(f is not None and f.size == t.size for f, t in zip(matched, caption.things, strict=True)),
        "relation": all(relations),
        "count": len(found) == len(present) == len(caption.things),
    }
    result["adherence"] = result["found"] and result["shape"] and result["relation"] and result["count"]
    result["exact"] = result["adherence"] and result["size"]
    result["objects"] = [
        None if f is None else {"colour": f.colour, "shape": f.shape, "size": f.size, "centroid": f.centroid}
        for f in matched
    ]
    return result


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1 when both are empty)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0
