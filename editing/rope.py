"""FLUX rotary embeddings on ``(B, S, H, D)`` features: rotate, undo, and ShiftPE's column shift.

The attention op receives q/k after RoPE. AlignedGen needs two things from them:

* AdaIN statistics of the *content* features, i.e. before RoPE. RoPE turns each channel pair by a
  position-dependent angle, so per-channel statistics of rotated features mix content with position.
  :func:`unrotate` applies the inverse rotation (angle ``-theta``) with the layer's own table.
* ShiftPE: the reference's image keys seen at positions ``(row, col + W)`` instead of ``(row, col)``.
  RoPE angles are linear in the position, so ``R(theta(p + offset)) = R(theta(offset)) R(theta(p))``:
  rotating the already-rotated keys once more by the table of the constant offset ``(0, 0, W)``
  (computed by the model's own ``FluxPosEmbed``) gives the keys at the shifted positions, with one
  fp32 rotation of rounding error.

All rotations use Diffusers' ``apply_rotary_emb`` in fp32 and return fp32.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import apply_rotary_emb

# FLUX position ids are (index, row, column): axis 2 is the image column.
COLUMN_AXIS = 2

Table = tuple[torch.Tensor, torch.Tensor]


def rotate(x: torch.Tensor, table: Table) -> torch.Tensor:
    """RoPE of ``(B, S, H, D)`` features with a ``(cos, sin)`` table of ``S`` (or 1) rows, in fp32."""
    return apply_rotary_emb(x.float(), table, sequence_dim=1)


def unrotate(x: torch.Tensor, table: Table) -> torch.Tensor:
    """The inverse of :func:`rotate` with the same table, in fp32."""
    cos, sin = table
    return apply_rotary_emb(x.float(), (cos, -sin), sequence_dim=1)


def rows(table: Table, index: slice) -> Table:
    """The rows ``index`` of a ``(cos, sin)`` table."""
    cos, sin = table
    return cos[index], sin[index]


def column_offset(grid: tuple[int, int, int], num_axes: int, device: torch.device | None = None) -> torch.Tensor:
    """ShiftPE's position offset ``(0, 0, W)`` as a ``(1, num_axes)`` id row, W the token-grid width."""
    offset = torch.zeros(1, num_axes, device=device)
    offset[0, COLUMN_AXIS] = grid[-1]
    return offset


def shift_table(pos_embed: torch.nn.Module, grid: tuple[int, int, int], device: torch.device) -> Table:
    """The ``(1, D)`` rotation that moves RoPE'd keys by :func:`column_offset` (the model's own ``pos_embed``).

    ``forward`` is called directly: module hooks on ``pos_embed`` (dit-accel's token reorder) are
    for the model's own per-token table, not for this one offset row.
    """
    return pos_embed.forward(column_offset(grid, len(pos_embed.axes_dim), device))
