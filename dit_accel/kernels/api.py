"""Public kernel ops: Triton on CUDA, the PyTorch reference elsewhere."""

from __future__ import annotations

from .ops import (
    HAS_TRITON,
    block_mask,
    block_sparse_attention,
    gather_blocks,
    merge_attention,
    pool_blocks,
    pool_blocks_qk,
    route_blocks,
    routing_scores,
    select_blocks,
    use_triton,
)
from .pisa_ops import pisa_block_stats, pisa_tail
from .reference import block_counts, keep_count

__all__ = [
    "HAS_TRITON",
    "block_counts",
    "block_mask",
    "block_sparse_attention",
    "gather_blocks",
    "keep_count",
    "merge_attention",
    "pisa_block_stats",
    "pisa_tail",
    "pool_blocks",
    "pool_blocks_qk",
    "route_blocks",
    "routing_scores",
    "select_blocks",
    "use_triton",
]
