"""``topk``: the baseline block-sparse method ("Common routing" in METHODS.md).

Mean-pooled routing over 3-D tiles of video tokens; each query block keeps a fixed fraction of key
blocks (``density``) or the smallest set holding ``top_p`` of the pooled attention mass, never fewer
than ``min_blocks``; text keys are always kept, text queries are exact. Everything else is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dit_accel import kernels
from dit_accel.config import MethodConfig, check_range
from dit_accel.context import AttentionContext
from dit_accel.tiling import default_tile

from .sparse_common import block_sparse_video_attention, dense_fallback_reason, prepare_block_sparse, warn_once


@dataclass
class TopKConfig(MethodConfig):
    """Options of ``topk``.

    Attributes:
        density: fraction of key blocks each query block keeps, in (0, 1]; default 0.125 when
            neither ``density`` nor ``top_p`` is given. ``density=1.0`` equals dense attention.
        top_p: instead of ``density``, keep the smallest set of key blocks whose pooled softmax
            mass reaches ``top_p`` (in (0, 1]).
        min_blocks: never keep fewer key blocks than this per query block.
        tile: 3-D tile ``(t, h, w)`` of latent tokens that blocks are formed from; default chosen
            from the query block size (``(2, 8, 8)`` for 128-token blocks of video).
        block_size: ``(query, key)`` block sizes; default ``(128, 64)``.
    """

    method: ClassVar[str] = "topk"

    block_size: int | tuple[int, int] = (128, 64)
    density: float | None = None
    top_p: float | None = None
    min_blocks: int = 1
    tile: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.density is not None and self.top_p is not None:
            raise ValueError("give either density or top_p, not both")
        if self.density is None and self.top_p is None:
            self.density = 0.125
        if self.density is not None:
            check_range("density", self.density, 0.0, 1.0, low_open=True)
        if self.top_p is not None:
            check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        if isinstance(self.min_blocks, bool) or not isinstance(self.min_blocks, int) or self.min_blocks < 1:
            raise ValueError(f"min_blocks must be an int >= 1, got {self.min_blocks!r}")
        if self.tile is not None:
            tile = tuple(self.tile)
            if len(tile) != 3 or not all(isinstance(x, int) and x > 0 for x in tile):
                raise ValueError(f"tile must be three positive ints (t, h, w), got {self.tile!r}")
            self.tile = tile


class TopKAttention:
    """The ``topk`` op: routing + block-sparse kernel, dense during warm-up or unsupported calls."""

    def __init__(self, config: TopKConfig) -> None:
        self.config = config

    def token_tile(self, call_info: dict) -> tuple[int, int, int] | None:
        """The tile order the adapter should put video tokens in for the whole forward."""
        grid = call_info.get("grid")
        return None if grid is None else self.config.tile or default_tile(grid, self.config.block_q)

    def prepare(self, call_info: dict) -> None:
        """Fill the tile-order and block-size caches for this call's video tokens (outside compile)."""
        prepare_block_sparse(call_info, self.config.block_q, self.config.block_k, self.config.tile)

    def select(self, scores: torch.Tensor, log_counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        return kernels.select_blocks(scores, cfg.density, cfg.top_p, cfg.min_blocks, log_counts)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        if ctx.in_warmup:
            return ctx.dense(q, k, v)
        cfg = self.config
        reason = dense_fallback_reason(ctx, cfg.block_q, cfg.block_k)
        if reason is not None:
            warn_once(f"topk:{reason}", f"dit-accel topk runs dense for some calls: {reason}")
            return ctx.dense(q, k, v)
        return block_sparse_video_attention(
            q, k, v, ctx, block_q=cfg.block_q, block_k=cfg.block_k, select=self.select, tile=cfg.tile
        )
