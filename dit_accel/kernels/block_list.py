"""The block list: which key blocks each query block computes exactly.

One layout serves every backend (our Triton kernel, FlashAttention-4's ``block_sparse_tensors``
and the PyTorch reference), so routing writes it once and no conversion pass runs per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def ascending_lists(mask: torch.Tensor, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, counts)`` of a ``(..., NK)`` bool block mask: each row's blocks ascending, padded
    with -1 to ``width`` columns (default NK; a row must not select more), compacted by a prefix sum
    (a sort of the rows costs ten times more on a GPU)."""
    width = mask.shape[-1] if width is None else width
    places = torch.arange(mask.shape[-1], device=mask.device, dtype=torch.int32)
    slots = torch.where(mask, mask.cumsum(dim=-1) - 1, width)  # unselected blocks: a spare column
    lists = torch.full((*mask.shape[:-1], width + 1), -1, dtype=torch.int32, device=mask.device)
    lists.scatter_(-1, slots, places.expand(mask.shape))
    return lists[..., :width].contiguous(), mask.sum(dim=-1, dtype=torch.int32)


@dataclass(frozen=True)
class BlockList:
    """Per (batch, head, query block): the key blocks attended exactly.

    Attributes:
        indices: ``(B, H, NQ, W)`` int32; the first ``counts`` entries of a row are key-block
            indices in ascending order, the rest is padding (-1).
        counts: ``(B, H, NQ)`` int32 number of listed key blocks per query block.
        block_q: query block size in tokens.
        block_k: key block size in tokens.
        key_len: number of real keys (the last key block may be partial).
    """

    indices: torch.Tensor
    counts: torch.Tensor
    block_q: int
    block_k: int
    key_len: int

    def __post_init__(self) -> None:
        if self.indices.ndim != 4 or self.counts.shape != self.indices.shape[:3]:
            raise ValueError(
                f"BlockList needs indices (B, H, NQ, W) and counts (B, H, NQ), got {tuple(self.indices.shape)} "
                f"and {tuple(self.counts.shape)}"
            )

    @property
    def num_key_blocks(self) -> int:
        return math.ceil(self.key_len / self.block_k)

    def density(self) -> float:
        """Fraction of (query block, key block) pairs computed exactly (syncs with the device)."""
        total = self.counts.numel() * self.num_key_blocks
        return float(self.counts.sum()) / total if total else 0.0

    @classmethod
    def from_mask(cls, mask: torch.Tensor, block_q: int, block_k: int, key_len: int) -> BlockList:
        """The block list of a ``(B, H, NQ, NK)`` bool mask (width NK)."""
        return cls(*ascending_lists(mask), block_q, block_k, key_len)

    @classmethod
    def full(cls, batch: int, heads: int, query_len: int, key_len: int, block_q: int, block_k: int,
             device: torch.device | str) -> BlockList:  # fmt: skip
        """Every query block attends to every key block (dense attention through a sparse backend)."""
        nq, nk = math.ceil(query_len / block_q), math.ceil(key_len / block_k)
        indices = torch.arange(nk, dtype=torch.int32, device=device).expand(batch, heads, nq, nk).contiguous()
        counts = torch.full((batch, heads, nq), nk, dtype=torch.int32, device=device)
        return cls(indices, counts, block_q, block_k, key_len)
