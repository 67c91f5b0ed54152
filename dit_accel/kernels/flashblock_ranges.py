"""Attention of runs of query rows over contiguous key ranges, with LSE, on the exact engine.

FlashBlock splits the keys of a call into ranges (external context, internal block) and merges the
partial attentions over them exactly by their log-sum-exp. One part is a list of rectangles: a
contiguous run of query rows attending to a contiguous range of keys. Without a mask a part is one
rectangle. Under a block-causal mask (the rows of query block ``g`` see the keys before the end of
block ``g``, the SkyReels-V2 diffusion-forcing frame mask) each query block whose visible keys end
inside the range gets a rectangle of its own and the later blocks, which see the whole range, share
one, so masked-out key blocks are never computed.

Each rectangle is dense attention through the engine: FlashAttention-4 dense where it serves the
input, else ``sparse_attention`` with every block listed (Triton on CUDA, the reference on CPU). All
return the natural-log LSE in fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .backends import resolve_backend, sparse_attention
from .block_list import BlockList
from .fa4 import fa4_dense_attention

Tensor = torch.Tensor
# Block sizes of the Triton / reference engine when it computes a dense rectangle.
ENGINE_BLOCKS = (128, 64)


@dataclass(frozen=True)
class Rect:
    """Query rows ``[rows[0], rows[1])`` attend to keys ``[keys[0], keys[1])``."""

    rows: tuple[int, int]
    keys: tuple[int, int]


def part_rectangles(num_rows: int, keys: tuple[int, int], causal_block: int = 0) -> list[Rect]:
    """The rectangles of ``num_rows`` query rows over the key range ``keys``.

    ``causal_block`` > 0: query row ``i`` sees key ``j`` only when ``j // causal_block <= i // causal_block``
    (query and key positions coincide, as in self-attention); rows that see none of the range get no
    rectangle.
    """
    start, end = keys
    if end <= start or num_rows <= 0:
        return []
    if causal_block <= 0:
        return [Rect((0, num_rows), (start, end))]
    rects = []
    row = 0
    while row < num_rows:
        block_end = min(num_rows, (row // causal_block + 1) * causal_block)
        visible_end = min(end, (row // causal_block + 1) * causal_block)
        if visible_end >= end:
            rects.append(Rect((row, num_rows), (start, end)))
            break
        if visible_end > start:
            rects.append(Rect((row, block_end), (start, visible_end)))
        row = block_end
    return rects


def range_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, backend: str | None) -> tuple[Tensor, Tensor]:
    """Dense attention of ``q`` ``(B, H, M, D)`` over ``k``/``v`` ``(B, H, N, D)`` (any strides, last dim
    contiguous): ``(out like q, lse (B, H, M))``."""
    chosen = resolve_backend(backend, q, 128, 128)
    if chosen == "fa4":
        out, lse = fa4_dense_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale)
        return out.transpose(1, 2), lse
    b, h, m, _ = q.shape
    blocks = BlockList.full(b, h, m, k.shape[2], *ENGINE_BLOCKS, q.device)
    return sparse_attention(q, k, v, blocks, scale=scale, backend=chosen)


def empty_part(q: Tensor) -> tuple[Tensor, Tensor]:
    """``(0, -inf)`` for every row of ``q`` ``(B, H, S, D)``: a part that has seen no key yet."""
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_zeros(q.shape), torch.full(q.shape[:3], -math.inf, dtype=lse_dtype, device=q.device)


def rectangles_attention(
    q: Tensor, k: Tensor, v: Tensor, rects: list[Rect], scale: float, backend: str | None
) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` of every row of ``q`` ``(B, H, S, D)`` over its rectangles' keys (0 and -inf elsewhere)."""
    out, lse = empty_part(q)
    for rect in rects:
        write_rows(out, lse, rect.rows[0], *attend_rect(q, k, v, rect, scale, backend))
    return out, lse


def attend_rect(q: Tensor, k: Tensor, v: Tensor, rect: Rect, scale: float, backend: str | None):
    """``(out, lse)`` of one rectangle's rows."""
    (r0, r1), (k0, k1) = rect.rows, rect.keys
    return range_attention(q[:, :, r0:r1], k[:, :, k0:k1], v[:, :, k0:k1], scale, backend)


def write_rows(out: Tensor, lse: Tensor, first_row: int, part_out: Tensor, part_lse: Tensor) -> None:
    """Copy a run of rows' ``(out, lse)`` into the full tensors, starting at ``first_row``."""
    rows = slice(first_row, first_row + part_out.shape[2])
    out[:, :, rows] = part_out
    lse[:, :, rows] = part_lse
