"""SVG-EAR's block selection: a per-query-block budget filled greedily by a ranking (plain PyTorch).

Every query block keeps the ``always`` key blocks of largest mass, then takes key blocks in the
order of ``rank`` (error-to-cost, or mass) until its budget is spent. The budget is a fixed count of
blocks (``density``: equal-density comparisons) or the key tokens of the fewest blocks holding
``top_p`` of the block's softmax mass. Works on ``(B, H, NQ, NK)`` scores with no loop over batch,
heads or query blocks; the result is a block list every backend reads.
"""

from __future__ import annotations

import math

import torch

from .block_list import ascending_lists
from .ops import select_blocks

Tensor = torch.Tensor


def always_count(num_blocks: int, fraction: float) -> int:
    """Key blocks every query block computes exactly: ``ceil(fraction · num_blocks)``, at least 1."""
    return min(num_blocks, max(1, math.ceil(fraction * num_blocks - 1e-9)))


def select_by_rank(
    log_mass: Tensor,
    rank: Tensor,
    key_counts: Tensor,
    *,
    always: int,
    density: float | None = None,
    top_p: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Block lists ``(indices, counts)`` (ascending, padded with -1) from masses and a ranking.

    Args:
        log_mass: ``(B, H, NQ, NK)`` log softmax mass of each key block for each query block.
        rank: ``(B, H, NQ, NK)`` priority of each key block (higher is taken first).
        key_counts: ``(NK,)`` keys per key block (the budget's unit of area).
        always: the number of largest-mass blocks every query block keeps, whatever the budget.
        density: when given, every query block keeps exactly ``keep_count(NK, density, always)`` blocks
            (a tie goes to the lower block index, as everywhere).
        top_p: otherwise, a query block's budget is the key count of the fewest blocks, taken by
            mass, holding ``top_p`` of its mass; blocks are taken by rank while the keys taken so
            far fall short of it.
    """
    if (density is None) == (top_p is None):
        raise ValueError("pass exactly one of density or top_p")
    num_blocks = log_mass.shape[-1]
    if density is not None:  # a fixed count: top-k selections (the routing's kernel), no sort
        priority = rank
        if always:  # (the selection kernel keeps at least one block: without always-exact blocks, skip it)
            largest, _ = select_blocks(log_mass, density=always / num_blocks, min_blocks=always)
            priority = rank.scatter(-1, largest.long(), math.inf)
        return select_blocks(priority, density=density, min_blocks=always)
    by_mass = log_mass.argsort(dim=-1, descending=True, stable=True)
    priority = rank.scatter(-1, by_mass[..., :always], math.inf)
    order = priority.argsort(dim=-1, descending=True, stable=True)
    places = torch.arange(num_blocks, device=log_mass.device)
    probs = torch.softmax(log_mass.double(), dim=-1).gather(-1, by_mass)
    in_top_p = (probs.cumsum(dim=-1) - probs) < top_p
    area = key_counts.to(torch.float64)
    budget = (area[by_mass] * in_top_p).sum(dim=-1, keepdim=True)
    taken_area = area[order].cumsum(dim=-1) - area[order]
    chosen = (taken_area < budget) | (places < always)
    return ascending_lists(torch.zeros_like(chosen).scatter_(-1, order, chosen), num_blocks)
