"""Where a reference subject's tokens go in a target (IR-Diffusion's Reposition Attention, on FLUX).

A :class:`Placement` lists the reference's image tokens inside its subject mask that are shown to
the target, and the position shift each gets so that the subject lands in the target's box:

* ``"rope"``: every token of the reference mask keeps its features and moves by one shift, the
  offset between the centres of the two masks' bounding boxes (FLUX sees positions only through
  RoPE, so moving the tokens is re-rotating their keys: no resampling of features);
* ``"crop"``: the reference mask's bounding box is cropped and resized (nearest token) onto the
  target's bounding box; each target cell whose source token lies in the reference mask receives
  that token, at the cell's position.

Keys outside the relocated mask are not in the placement, so the target never sees them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .regions import bounds

REPOSITION_MODES = ("rope", "crop")


@dataclass(frozen=True)
class Placement:
    """Reference tokens shown to one target subject.

    Attributes:
        source: ``(n,)`` raster indices of the reference image tokens used.
        shift: ``(n, 2)`` float (row, column) position shift of each, in tokens.
    """

    source: torch.Tensor
    shift: torch.Tensor


def _centre(mask: torch.Tensor) -> torch.Tensor:
    row0, col0, row1, col1 = bounds(mask)
    return torch.tensor([(row0 + row1) / 2, (col0 + col1) / 2])


def place(mode: str, reference: torch.Tensor, target: torch.Tensor) -> Placement:
    """The placement of the reference subject's tokens (``(H, W)`` bool mask) into the target's (same grid)."""
    width = reference.shape[1]
    if mode == "rope":
        source = reference.flatten().nonzero().squeeze(1)
        offset = torch.round(_centre(target) - _centre(reference))
        return Placement(source, offset.expand(source.numel(), 2).clone())
    if mode != "crop":
        raise ValueError(f"reposition mode must be one of {REPOSITION_MODES}, got {mode!r}")
    r0, c0, r1, c1 = bounds(reference)
    t0, u0, t1, u1 = bounds(target)
    rows = torch.arange(t0, t1)
    cols = torch.arange(u0, u1)
    src_rows = r0 + ((rows - t0 + 0.5) * (r1 - r0) / (t1 - t0)).long()
    src_cols = c0 + ((cols - u0 + 0.5) * (c1 - c0) / (u1 - u0)).long()
    dest = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
    src = torch.stack(torch.meshgrid(src_rows, src_cols, indexing="ij"), dim=-1).reshape(-1, 2)
    keep = reference[src[:, 0], src[:, 1]]
    src, dest = src[keep], dest[keep]
    return Placement(src[:, 0] * width + src[:, 1], (dest - src).float())
