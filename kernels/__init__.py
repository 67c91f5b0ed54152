"""GPU kernels (Triton) and their PyTorch references, on plain ``(B, H, S, D)`` tensors.

Nothing here knows about Diffusers, steps or text tokens. Public ops dispatch to Triton on CUDA
and to the reference elsewhere; both are registered as ``torch.ops.dit_accel.*`` custom ops.
"""

from __future__ import annotations

from .ops import HAS_TRITON, block_sparse_attention, gather_blocks, pool_blocks, select_blocks, use_triton
from .reference import block_counts, keep_count, routing_scores

__all__ = [
    "HAS_TRITON",
    "block_counts",
    "block_sparse_attention",
    "gather_blocks",
    "keep_count",
    "pool_blocks",
    "routing_scores",
    "select_blocks",
    "use_triton",
]
