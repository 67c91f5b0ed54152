"""3-D tile order of video tokens, so that a block of consecutive tokens is a compact neighbourhood.

Video tokens arrive in raster order ``(t, h, w)``. Block-sparse attention pools and selects blocks
of consecutive tokens, so tokens are visited tile by tile (tiles in raster order, tokens inside a
tile in raster order). With a ``(2, 8, 8)`` tile, a 128-token query block is one space-time tile
and each 64-token key block one 8x8 patch of one frame. Edge tiles are smaller; no padding is
added, so blocks there span two neighbouring tiles.
"""

from __future__ import annotations

import functools

import torch


def default_tile(grid: tuple[int, int, int] | None, block_q: int) -> tuple[int, int, int]:
    """A tile of ``block_q`` tokens: ``s x s`` spatially, the remaining factor in time (or height)."""
    side = 1
    while (side * 2) ** 2 <= block_q:
        side *= 2
    rest = block_q // (side * side)
    frames = grid[0] if grid is not None else 1
    if frames >= rest:
        return rest, side, side
    return 1, side * rest, side


@functools.lru_cache(maxsize=64)
def _tile_permutation_cpu(grid: tuple[int, int, int], tile: tuple[int, int, int]) -> torch.Tensor:
    t, h, w = grid
    tt, th, tw = (min(a, b) for a, b in zip(tile, grid, strict=True))
    index = torch.arange(t * h * w).view(t, h, w)
    pieces = []
    for t0 in range(0, t, tt):
        for h0 in range(0, h, th):
            for w0 in range(0, w, tw):
                pieces.append(index[t0 : t0 + tt, h0 : h0 + th, w0 : w0 + tw].reshape(-1))
    return torch.cat(pieces)


def tile_permutation(grid: tuple[int, int, int], tile: tuple[int, int, int]) -> torch.Tensor:
    """Raster index of the token at each tile-order position (a permutation of ``T*H*W``)."""
    if any(x <= 0 for x in (*grid, *tile)):
        raise ValueError(f"grid {grid} and tile {tile} must be positive")
    return _tile_permutation_cpu(tuple(grid), tuple(tile))


_ROWS_CACHE: dict[tuple, torch.Tensor] = {}


def tiled_rows(
    video_start: int, video_len: int, grid: tuple[int, int, int] | None, tile: tuple[int, int, int], device
) -> torch.Tensor:
    """int32 sequence positions of the video tokens in tile order (raster order when grid is None)."""
    key = (video_start, video_len, grid, tile, str(device))
    rows = _ROWS_CACHE.get(key)
    if rows is None:
        order = tile_permutation(grid, tile) if grid is not None else torch.arange(video_len)
        rows = (order + video_start).to(device=device, dtype=torch.int32)
        _ROWS_CACHE[key] = rows
    return rows
