"""Generalized 3-D Hilbert ("gilbert") order of a ``(T, H, W)`` latent grid of any size.

PSA forms its key and query blocks from runs of consecutive tokens; along a space-filling curve a
run is a compact space-time region whatever the grid size. The curve here is built from its
definition: a box is traversed by a Hamiltonian path of unit steps that starts at one corner and
ends at the neighbouring corner along the box's major axis, and a box is split into sub-boxes whose
paths chain end to start:

* a box much longer along its major axis is cut in two along it;
* otherwise a "U": the first part climbs half of the longer cross axis, the second runs the full
  major axis back over the rest, the third comes down to the required end.

Such a path exists iff the major length is even, or all three lengths are odd (checkerboard
parity); every cut keeps that true for each part (cross cuts are even), so every step of the curve
is a unit step in 3-D, for every grid, odd sizes included.
"""

from __future__ import annotations

import functools
import math

import torch

from .tiling import Tile, tile_permutation

Vec = tuple[int, int, int]
ORDERS = ("hilbert", "hilbert_tiles", "tiles")


def _add(p: Vec, v: Vec, times: int = 1) -> Vec:
    return (p[0] + times * v[0], p[1] + times * v[1], p[2] + times * v[2])


def _length(axis: Vec) -> int:
    return abs(sum(axis))


def _unit(axis: Vec) -> Vec:
    return tuple((x > 0) - (x < 0) for x in axis)  # type: ignore[return-value]


def _scaled(axis: Vec, length: int) -> Vec:
    return tuple(x * length for x in _unit(axis))  # type: ignore[return-value]


def _even_half(n: int) -> int:
    """An even cut near ``n / 2`` leaving at least 2 on each side (``n >= 3``)."""
    return 2 * ((n + 2) // 4)


def _box_path(p: Vec, a: Vec, b: Vec, c: Vec, out: list[Vec]) -> None:
    """Append the path through the box at ``p`` spanned by axes a (major), b, c: from ``p`` to the
    corner ``p + (|a| - 1) * unit(a)``. Needs |a| even, or |a|, |b|, |c| all odd."""
    if _length(c) > _length(b):
        b, c = c, b
    big, mid = _length(a), _length(b)
    da, db = _unit(a), _unit(b)
    if mid == 1:  # a line (c is 1 too)
        out.extend(_add(p, da, i) for i in range(big))
    elif 2 * big > 3 * mid and big >= 4:  # long box: two halves along the major axis
        cut = _even_half(big)
        _box_path(p, _scaled(a, cut), b, c, out)
        _box_path(_add(p, da, cut), _scaled(a, big - cut), b, c, out)
    elif mid >= 3:  # the "U": up half of b, along a over the rest of b, back down to the end
        up, half = _even_half(mid), big // 2
        _box_path(p, _scaled(b, up), _scaled(a, half), c, out)
        _box_path(_add(p, db, up), a, _scaled(b, mid - up), c, out)
        corner = _add(_add(p, da, big - 1), db, up - 1)
        _box_path(corner, _scaled(b, -up), _scaled(a, -(big - half)), c, out)
    else:  # a 2 x 2 x {1, 2} box: snake over the cross-section, then back over the second layer
        dc, n_c = _unit(c), _length(c)
        layer = [_add(_add(p, db, i), dc, j if i % 2 == 0 else n_c - 1 - j) for i in range(mid) for j in range(n_c)]
        out.extend(layer)
        out.extend(_add(cell, da) for cell in reversed(layer))


@functools.lru_cache(maxsize=32)
def _curve_cpu(grid: Tile) -> torch.Tensor:
    sizes = [(n, axis) for axis, n in enumerate(grid)]
    # The major axis must have an even length unless all three are odd; prefer the longest.
    even = [s for s in sizes if s[0] % 2 == 0]
    major = max(even or sizes)
    rest = sorted((s for s in sizes if s is not major), reverse=True)
    axes = []
    for n, axis in (major, *rest):
        vec = [0, 0, 0]
        vec[axis] = n
        axes.append(tuple(vec))
    cells: list[Vec] = []
    _box_path((0, 0, 0), *axes, cells)
    coords = torch.tensor(cells, dtype=torch.int64)
    _, h, w = grid
    return (coords[:, 0] * h + coords[:, 1]) * w + coords[:, 2]


def hilbert_permutation(grid: Tile) -> torch.Tensor:
    """Raster index of the token at each position of the curve (a permutation of ``T*H*W``)."""
    if len(grid) != 3 or any(x <= 0 for x in grid):
        raise ValueError(f"grid must be three positive sizes (T, H, W), got {grid}")
    return _curve_cpu(tuple(grid))


@functools.lru_cache(maxsize=32)
def tiles_along_curve(grid: Tile, tile: Tile) -> torch.Tensor:
    """Raster indices with tiles visited along the curve of the tile grid, tokens of a tile in raster order."""
    t, h, w = grid
    tt, th, tw = (min(a, b) for a, b in zip(tile, grid, strict=True))
    tiles = (math.ceil(t / tt), math.ceil(h / th), math.ceil(w / tw))
    index = torch.arange(t * h * w).view(t, h, w)
    pieces = []
    for flat in hilbert_permutation(tiles).tolist():
        t0, rem = divmod(flat, tiles[1] * tiles[2])
        h0, w0 = divmod(rem, tiles[2])
        pieces.append(index[t0 * tt : (t0 + 1) * tt, h0 * th : (h0 + 1) * th, w0 * tw : (w0 + 1) * tw].reshape(-1))
    return torch.cat(pieces)


def curve_order(grid: Tile, order: str, tile: Tile) -> torch.Tensor:
    """Raster indices of the tokens in ``order``: ``hilbert``, ``hilbert_tiles`` or ``tiles``."""
    if order == "hilbert":
        return hilbert_permutation(grid)
    if order == "hilbert_tiles":
        return tiles_along_curve(tuple(grid), tuple(tile))
    if order == "tiles":
        return tile_permutation(grid, tile)
    raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")


_ROWS_CACHE: dict[tuple, torch.Tensor] = {}


def curve_rows(video_start: int, grid: Tile, order: str, tile: Tile, device: torch.device | str,
               source_tile: Tile | None = None) -> torch.Tensor:  # fmt: skip
    """int32 sequence positions of the video tokens in ``order``, given that they are now in
    ``source_tile`` order (None: raster). Cached per arguments."""
    key = (video_start, tuple(grid), order, tuple(tile), str(device), source_tile)
    rows = _ROWS_CACHE.get(key)
    if rows is None:
        wanted = curve_order(tuple(grid), order, tuple(tile))
        if source_tile is not None:
            position = torch.empty_like(wanted)
            position[tile_permutation(grid, source_tile)] = torch.arange(wanted.numel())
            wanted = position[wanted]
        rows = (wanted + video_start).to(device=device, dtype=torch.int32)
        _ROWS_CACHE[key] = rows
    return rows
