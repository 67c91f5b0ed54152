"""3-D tile order of video tokens, so that a block of consecutive tokens is a compact neighbourhood.

Video tokens arrive in raster order ``(t, h, w)``. Block-sparse attention pools and selects blocks
of consecutive tokens, so tokens are visited tile by tile (tiles in raster order, tokens inside a
tile in raster order). With a ``(2, 8, 8)`` tile, a 128-token query block is one space-time tile
and each 64-token key block one 8x8 patch of one frame. Edge tiles are smaller; no padding is
added, so blocks there span two neighbouring tiles.

Tokens can be put in tile order once per transformer forward (the adapters permute the hidden
states after patch embedding and restore raster order before the output projection); attention
layers then see ``layout.token_tile`` set and need no per-layer gather.
"""

from __future__ import annotations

import functools

import torch

Tile = tuple[int, int, int]


def default_tile(grid: Tile | None, block_q: int) -> Tile:
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
def _tile_permutation_cpu(grid: Tile, tile: Tile) -> torch.Tensor:
    t, h, w = grid
    tt, th, tw = (min(a, b) for a, b in zip(tile, grid, strict=True))
    index = torch.arange(t * h * w).view(t, h, w)
    pieces = []
    for t0 in range(0, t, tt):
        for h0 in range(0, h, th):
            for w0 in range(0, w, tw):
                pieces.append(index[t0 : t0 + tt, h0 : h0 + th, w0 : w0 + tw].reshape(-1))
    return torch.cat(pieces)


def tile_permutation(grid: Tile, tile: Tile) -> torch.Tensor:
    """Raster index of the token at each tile-order position (a permutation of ``T*H*W``)."""
    if any(x <= 0 for x in (*grid, *tile)):
        raise ValueError(f"grid {grid} and tile {tile} must be positive")
    return _tile_permutation_cpu(tuple(grid), tuple(tile))


@functools.lru_cache(maxsize=64)
def _relative_order(grid: Tile | None, length: int, tile: Tile, source_tile: Tile | None) -> torch.Tensor:
    """Positions, in the current token order, of the tokens listed in ``tile`` order."""
    if grid is None:
        return torch.arange(length)
    order = tile_permutation(grid, tile)
    if source_tile is None:
        return order
    position = torch.empty_like(order)
    position[tile_permutation(grid, source_tile)] = torch.arange(order.numel())
    return position[order]


_ROWS_CACHE: dict[tuple, torch.Tensor] = {}


def tiled_rows(
    video_start: int,
    video_len: int,
    grid: Tile | None,
    tile: Tile,
    device: torch.device | str,
    source_tile: Tile | None = None,
) -> torch.Tensor:
    """int32 sequence positions of the video tokens in ``tile`` order.

    ``source_tile`` is the order the tokens are in now (None: raster); a grid of None means the
    tokens are a plain sequence and keep their order.
    """
    key = (video_start, video_len, grid, tile, source_tile, str(device))
    rows = _ROWS_CACHE.get(key)
    if rows is None:
        order = _relative_order(grid, video_len, tile, source_tile)
        rows = (order + video_start).to(device=device, dtype=torch.int32)
        _ROWS_CACHE[key] = rows
    return rows


_PERMUTATION_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def token_permutation(grid: Tile, tile: Tile, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order, inverse)`` int64 index tensors: ``x[:, order]`` is tile order, ``y[:, inverse]`` undoes it."""
    key = (grid, tile, str(device))
    if key not in _PERMUTATION_CACHE:
        order = tile_permutation(grid, tile)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel())
        _PERMUTATION_CACHE[key] = (order.to(device), inverse.to(device))
    return _PERMUTATION_CACHE[key]
