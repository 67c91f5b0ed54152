"""PSA's level assignment and its list type (PyTorch): which key blocks each query block attends to, at which level.

A level map ``(B, H, NQ, NK)`` int8 holds, per (query block, key block), 0 (skipped) or the pyramid
level 1..4 (1 = every key, h = keys mean-pooled by ``2^(h-1)``). Level ``h`` costs ``2^-(h-1)`` of a
full block. Three ways to fill it from an importance map (each row sorted by importance):

* thresholds: the cumulative normalised importance before a block, against ascending thresholds
  (``t1..t4``), gives its level: below ``t1`` level 1, below ``t2`` level 2, ..., from ``t4`` skip;
* quotas: fixed counts of blocks per level, by rank;
* a compute budget: quota proportions scaled so that every row costs exactly a whole number of
  full blocks (the budget of ``topk`` at the same density).

Every row keeps at least ``min_full`` of its blocks at level 1. An optional cap lowers a block's
level to the coarsest one its key self-similarity allows (see :mod:`.pyramid`).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch

from .pyramid_reference import LEVELS, level_map_from_lists

Tensor = torch.Tensor
EIGHTHS = tuple(2 ** (LEVELS - 1 - lvl) for lvl in range(LEVELS))  # cost of one block per level, in 1/8 blocks


@dataclass(frozen=True)
class PyramidBlocks:
    """Per (batch, head, query block): the key blocks attended and their pyramid levels.

    Attributes:
        indices: ``(B, H, NQ, NK)`` int32 key blocks, level-1 entries first, then levels 2, 3, 4,
            ascending within a level; -1 after the row's entries.
        level_counts: ``(B, H, NQ, 4)`` int32 entries of each level.
        block_q, block_k: block sizes in tokens; key_len: real keys (the last block may be ragged).
        pooled_k, pooled_v: the pyramid's pooled levels (:func:`~.pyramid.pyramid_triton`), when built.
    """

    indices: Tensor
    level_counts: Tensor
    block_q: int
    block_k: int
    key_len: int
    pooled_k: Tensor | None = None
    pooled_v: Tensor | None = None

    @property
    def num_key_blocks(self) -> int:
        return math.ceil(self.key_len / self.block_k)

    @property
    def counts(self) -> Tensor:
        """Entries per query block ``(B, H, NQ)`` (of any level)."""
        return self.level_counts.sum(-1, dtype=torch.int32)

    def level_map(self) -> Tensor:
        """The ``(B, H, NQ, NK)`` int8 level map (0 = skipped)."""
        return level_map_from_lists(self.indices, self.level_counts, self.num_key_blocks)

    def compute(self) -> Tensor:
        """Cost of each query block's list in full key blocks ``(B, H, NQ)``: sum of ``2^-(h-1)``."""
        counts = self.level_counts.double()
        return sum(counts[..., lvl] * (cost / EIGHTHS[0]) for lvl, cost in enumerate(EIGHTHS))

    def density(self) -> float:
        """The compute budget as a fraction of dense (syncs with the device)."""
        total = self.level_counts.shape[:3].numel() * self.num_key_blocks
        return float(self.compute().sum()) / total if total else 0.0


def lists_from_level_map(level_map: Tensor, block_q: int, block_k: int, key_len: int) -> PyramidBlocks:
    """The :class:`PyramidBlocks` lists of a level map (without pooled tensors)."""
    nk = level_map.shape[-1]
    blocks = torch.arange(nk, device=level_map.device)
    keys = torch.where(level_map > 0, (level_map.long() - 1) * nk + blocks, LEVELS * nk).sort(dim=-1).values
    indices = torch.where(keys < LEVELS * nk, keys % nk, -1).to(torch.int32)
    level_counts = torch.stack([(level_map == lvl).sum(-1) for lvl in range(1, LEVELS + 1)], dim=-1)
    return PyramidBlocks(indices.contiguous(), level_counts.to(torch.int32), block_q, block_k, key_len)


def _by_rank(sorted_levels: Tensor, order: Tensor) -> Tensor:
    """Scatter levels given per rank back to key-block positions; levels above 4 mean skipped."""
    levels = torch.where(sorted_levels > LEVELS, 0, sorted_levels).to(torch.int8)
    return torch.zeros_like(levels).scatter_(-1, order, levels)


def _ranked(importance: Tensor) -> tuple[Tensor, Tensor]:
    order = importance.argsort(dim=-1, descending=True, stable=True)
    return order, torch.arange(importance.shape[-1], device=importance.device)


def min_full_count(num_blocks: int, min_full: float) -> int:
    """Blocks every row keeps at level 1."""
    return min(num_blocks, max(1, math.ceil(min_full * num_blocks - 1e-9)))


def threshold_levels(importance: Tensor, thresholds: tuple[float, ...], min_full: float) -> Tensor:
    """Level map from the cumulative normalised importance before each block (descending order)."""
    return _threshold_rank_levels(importance, thresholds, min_full_count(importance.shape[-1], min_full))


def _threshold_rank_levels(importance: Tensor, thresholds: tuple[float, ...], full_ranks: int) -> Tensor:
    """:func:`threshold_levels` with the top ``full_ranks`` ranks at level 1."""
    order, rank = _ranked(importance)
    ranked = importance.gather(-1, order).double()
    mass = ranked / ranked.sum(-1, keepdim=True).clamp_min(1e-300)
    before = mass.cumsum(-1) - mass
    levels = 1 + sum((before >= bound).long() for bound in thresholds)
    levels = torch.where(rank < full_ranks, 1, levels)
    return _by_rank(levels, order)


def rule_level_map(
    importance: Tensor,
    counts: tuple[int, ...] | None = None,
    thresholds: tuple[float, ...] | None = None,
    full_ranks: int = 0,
) -> Tensor:
    """The level map of ``counts`` per level (:func:`quota_levels`) or of ``thresholds`` with the top
    ``full_ranks`` ranks at level 1 (:func:`threshold_levels`)."""
    if (counts is None) == (thresholds is None):
        raise ValueError("pass exactly one of counts or thresholds")
    if counts is not None:
        return quota_levels(importance, tuple(counts))
    return _threshold_rank_levels(importance, tuple(thresholds), full_ranks)


def level_lists_reference(
    importance: Tensor,
    counts: tuple[int, ...] | None = None,
    thresholds: tuple[float, ...] | None = None,
    full_ranks: int = 0,
) -> tuple[Tensor, Tensor]:
    """``(indices, level_counts)`` of :func:`rule_level_map`: the definition of
    :func:`~.pyramid_select.level_lists_triton`."""
    level_map = rule_level_map(importance, counts, thresholds, full_ranks)
    blocks = lists_from_level_map(level_map, 1, 1, importance.shape[-1])
    return blocks.indices, blocks.level_counts


def quota_levels(importance: Tensor, counts: tuple[int, ...]) -> Tensor:
    """Level map giving the ``counts[h-1]`` next most important blocks level ``h``, the rest skipped."""
    order, rank = _ranked(importance)
    levels = 1 + sum((rank >= end).long() for end in itertools.accumulate(counts))
    return _by_rank(levels.expand_as(importance), order)


def quota_counts(num_blocks: int, quotas: tuple[float, ...], min_full: float) -> tuple[int, ...]:
    """Blocks per level for quota fractions: rounded, at least ``min_full`` at level 1, at most all blocks."""
    counts = [round(q * num_blocks) for q in quotas]
    counts[0] = max(counts[0], min_full_count(num_blocks, min_full))
    left = num_blocks
    for lvl, n in enumerate(counts):
        counts[lvl] = min(n, left)
        left -= counts[lvl]
    return tuple(counts)


def _cost(counts) -> int:
    return sum(n * c for n, c in zip(counts, EIGHTHS, strict=True))


@functools.lru_cache(maxsize=256)
def budget_counts(num_blocks: int, budget: int, quotas: tuple[float, ...], min_full: float) -> tuple[int, ...]:
    """Blocks per level costing exactly ``budget`` full blocks, in proportion to ``quotas``.

    The largest scale of the quotas whose rounded-down counts (finer levels first, never more than
    ``num_blocks`` in all) fit the budget is found by bisection; the few eighths left are then
    matched exactly by the nearest counts (a small search around them). Level 1 keeps at least
    ``min_full`` of the blocks (within the budget). Falls back to ``budget`` level-1 blocks (top-k)
    if no such counts exist.
    """
    if not 0 <= budget <= num_blocks:
        raise ValueError(f"budget must be in [0, {num_blocks}] blocks, got {budget}")
    floor_full = min(budget, min_full_count(num_blocks, min_full))

    def fitted(scale: float) -> list[float]:
        wanted = [scale * q * num_blocks for q in quotas]
        wanted[0] = max(wanted[0], floor_full)
        left, out = float(num_blocks), []
        for n in wanted:
            out.append(min(n, left))
            left -= out[-1]
        return out

    low, high = 0.0, 8.0 * num_blocks / max(min(q for q in quotas if q > 0), 1e-9)
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if _cost([math.floor(n) for n in fitted(mid)]) <= 8 * budget else (low, mid)
    target = fitted(low)
    base = [math.floor(n) for n in target]
    best, best_distance = None, math.inf
    for delta in itertools.product(range(-3, 4), repeat=LEVELS):
        counts = [n + d for n, d in zip(base, delta, strict=True)]
        if min(counts) < 0 or counts[0] < floor_full or sum(counts) > num_blocks or _cost(counts) != 8 * budget:
            continue
        distance = sum(abs(n - t) * c for n, t, c in zip(counts, target, EIGHTHS, strict=True))
        if distance < best_distance:
            best, best_distance = tuple(counts), distance
    return best if best is not None else (budget, 0, 0, 0)


def allowed_levels(sim: Tensor, sim_thresholds: tuple[float, ...]) -> Tensor:
    """``(B, H, NK, 4)`` bool: may the block be pooled at level h (level 1 always; h > 1 when the
    similarity of keys ``2^(h-1)`` apart exceeds the threshold of level h)."""
    passed = [sim[..., lvl] > bound for lvl, bound in enumerate(sim_thresholds)]
    return torch.stack([torch.ones_like(passed[0]), *passed], dim=-1)


def cap_levels(level_map: Tensor, allowed: Tensor) -> Tensor:
    """Lower each pooled block's level to the coarsest allowed one at or below it (skips stay skipped)."""
    allowed = allowed[:, :, None].expand(*level_map.shape, LEVELS)
    for lvl in range(LEVELS, 1, -1):
        level_map = torch.where((level_map == lvl) & ~allowed[..., lvl - 1], lvl - 1, level_map)
    return level_map.to(torch.int8)
