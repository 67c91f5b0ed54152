"""Subject regions of an image (a box or a mask) as token masks on a FLUX latent grid.

A region is either a box ``(x0, y0, x1, y1)`` in fractions of the image (x to the right, y down,
``0 <= x0 < x1 <= 1``), or a boolean mask ``(h, w)`` at any resolution (a segmenter's, an
attention map's threshold, the tiny FLUX reader's). On a token grid of ``H x W`` a box covers the
tokens whose centres fall inside it (at least the token under its centre); a mask covers the tokens
at least half of whose area it covers (at least its best-covered token).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[float, float, float, float]
Region = Box | torch.Tensor


def check_region(name: str, region: Any) -> Region:
    """``region`` validated: a box as a tuple of 4 floats, or a mask as a 2-D bool tensor with some pixel set."""
    if isinstance(region, (np.ndarray, torch.Tensor)):
        mask = torch.as_tensor(np.asarray(region) if isinstance(region, np.ndarray) else region)
        if mask.ndim != 2:
            raise ValueError(f"{name}: a mask must be 2-D (h, w), got shape {tuple(mask.shape)}")
        mask = mask.detach().cpu().bool()
        if not mask.any():
            raise ValueError(f"{name}: the mask is empty")
        return mask
    if not isinstance(region, (tuple, list)) or len(region) != 4:
        raise TypeError(
            f"{name} must be a box (x0, y0, x1, y1) in fractions of the image or a 2-D mask, got {region!r}"
        )
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in region):
        raise TypeError(f"{name}: box coordinates must be numbers, got {region!r}")
    x0, y0, x1, y1 = (float(x) for x in region)
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise ValueError(
            f"{name}: a box (x0, y0, x1, y1) needs 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {region!r}"
        )
    return x0, y0, x1, y1


def token_mask(region: Region, height: int, width: int) -> torch.Tensor:
    """The ``(height, width)`` bool token mask a checked region covers."""
    if isinstance(region, torch.Tensor):
        cover = F.adaptive_avg_pool2d(region.float()[None, None], (height, width))[0, 0]
        mask = cover >= 0.5
        if not mask.any():
            mask = cover == cover.max()
        return mask
    x0, y0, x1, y1 = region
    xs = (torch.arange(width) + 0.5) / width
    ys = (torch.arange(height) + 0.5) / height
    mask = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    if not mask.any():
        mask[min(int((y0 + y1) / 2 * height), height - 1), min(int((x0 + x1) / 2 * width), width - 1)] = True
    return mask


def bounds(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """Half-open token bounds ``(row0, col0, row1, col1)`` of a non-empty 2-D bool mask."""
    rows, cols = mask.nonzero(as_tuple=True)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1
