"""PSA's level assignment and block lists in one kernel (Triton): importance row in, lists out.

One program owns one row of the importance map (one query block of one batch and head). It ranks
the row's key blocks by importance (descending, ties by ascending block index, as a stable sort),
gives each rank its level (fixed quotas: the rank against the quotas' running ends; thresholds: the
normalised importance summed over the blocks ranked before it, in float64, against float64
thresholds; the top ``full_ranks`` ranks always level 1), then writes the
:class:`~.pyramid_levels.PyramidBlocks` lists: level-1 entries first, then levels 2, 3, 4, ascending
block index within a level, -1 after them. Two in-register sorts of packed 64-bit keys replace the
four PyTorch passes (argsort, scatter, sort, counts) of the reference.

Importance is non-negative (PSA's is an exponential); a NaN (only from NaN q/k) ranks as 0 here.

Reference: :func:`~.pyramid_levels.level_lists_reference`.
"""

from __future__ import annotations

import functools
import itertools

import torch
import triton
import triton.language as tl

from .block_selection import block_rows
from .pyramid_reference import LEVELS

MAX_KEY_BLOCKS = 8192  # one row sorted in registers
NUM_LEVELS = tl.constexpr(LEVELS)  # what a kernel may read of the global


@triton.jit
def _level_lists(
    Importance, Indices, LevelCounts, Bounds,
    stride_ir, stride_xr,
    NK, end1, end2, end3, end4, full_ranks,
    NK_P2: tl.constexpr, THRESHOLDS: tl.constexpr,
):  # fmt: skip
    """Grid (rows,). ``Bounds``: the four thresholds as float64 (a Python float argument would
    arrive as fp32 and move the level boundaries)."""
    r = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, NK_P2)
    ok = offs < NK
    x = tl.load(Importance + r * stride_ir + offs, mask=ok, other=0.0).to(tl.float32)
    # Non-negative floats order like their bit patterns; the low word breaks ties by ascending index.
    bits = tl.where(x > 0.0, x, 0.0).to(tl.int32, bitcast=True).to(tl.int64)
    ranked = tl.sort(tl.where(ok, (bits << 32) | (NK_P2 - 1 - offs).to(tl.int64), -1), descending=True)
    real = ranked >= 0
    block = tl.where(real, NK_P2 - 1 - (ranked & 0xFFFFFFFF), 0)  # key block at each rank
    if THRESHOLDS:
        value = tl.where(real, (ranked >> 32).to(tl.int32).to(tl.float32, bitcast=True), 0.0).to(tl.float64)
        mass = value / tl.maximum(tl.sum(value, 0), 1e-300)
        before = tl.cumsum(mass, 0) - mass
        level = tl.full([NK_P2], 1, tl.int32)
        for i in tl.static_range(NUM_LEVELS):
            level += (before >= tl.load(Bounds + i)).to(tl.int32)
        level = tl.where(offs < full_ranks, 1, level)
    else:
        level = 1 + (offs >= end1).to(tl.int32) + (offs >= end2).to(tl.int32)
        level += (offs >= end3).to(tl.int32) + (offs >= end4).to(tl.int32)
    level = tl.where(real, level, NUM_LEVELS + 1)  # NUM_LEVELS + 1: skipped
    # Second sort: by level, then block index; the listed entries come first.
    listed = tl.sort((level.to(tl.int64) << 32) | block, descending=False)
    listed_level = (listed >> 32).to(tl.int32)
    entry = (listed & 0xFFFFFFFF).to(tl.int32)
    tl.store(Indices + r * stride_xr + offs, tl.where(listed_level <= NUM_LEVELS, entry, -1), mask=ok)
    for lvl in tl.static_range(1, NUM_LEVELS + 1):
        tl.store(LevelCounts + r * NUM_LEVELS + (lvl - 1), tl.sum((level == lvl).to(tl.int32), 0))


@functools.lru_cache(maxsize=64)
def _bounds(thresholds: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """The thresholds as a float64 device tensor, made once (no host copy per call, none in a CUDA graph)."""
    return torch.tensor(thresholds, dtype=torch.float64, device=device)


def level_lists_triton(
    importance: torch.Tensor,
    *,
    counts: tuple[int, ...] | None = None,
    thresholds: tuple[float, ...] | None = None,
    full_ranks: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, level_counts)`` of a non-negative fp32/fp16/bf16 importance map ``(..., NK)``.

    Pass ``counts`` (blocks per level 1..4, by rank; the rest skipped) or ``thresholds`` (four
    ascending cumulative-importance bounds, with the top ``full_ranks`` ranks kept at level 1).
    """
    if (counts is None) == (thresholds is None):
        raise ValueError("pass exactly one of counts or thresholds")
    rule = counts if counts is not None else thresholds
    if len(rule) != LEVELS:
        raise ValueError(f"pass {LEVELS} counts or thresholds, one per level, got {list(rule)}")
    if importance.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"the kernel ranks fp32/fp16/bf16 importance, got {importance.dtype}")
    lead, nk, rows = block_rows(importance, MAX_KEY_BLOCKS)
    ends = list(itertools.accumulate(counts)) if counts is not None else [0] * LEVELS
    bounds = _bounds(tuple(thresholds or (0.0,) * LEVELS), importance.device)
    indices = torch.empty((rows.shape[0], nk), dtype=torch.int32, device=importance.device)
    level_counts = torch.empty((rows.shape[0], LEVELS), dtype=torch.int32, device=importance.device)
    nk_p2 = triton.next_power_of_2(nk)
    _level_lists[(rows.shape[0],)](
        rows, indices, level_counts, bounds, rows.stride(0), indices.stride(0),
        nk, *ends, full_ranks,
        NK_P2=nk_p2, THRESHOLDS=thresholds is not None, num_warps=4 if nk_p2 <= 1024 else 8,
    )  # fmt: skip
    return indices.view(*lead, nk), level_counts.view(*lead, LEVELS)
