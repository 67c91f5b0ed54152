"""``topk``: the baseline block-sparse method ("Common routing" in docs/methods.md).

Mean-pooled routing over 3-D tiles of video tokens; each query block keeps a fixed fraction of key
blocks (``density``) or the smallest set holding ``top_p`` of the pooled attention mass, never fewer
than ``min_blocks``; text keys are always kept, text queries are exact. Everything else is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dit_accel.config import AccelerateConfig, check_range
from dit_accel.context import AttentionContext

from .base import BlockSparseMethod, Routing


@dataclass
class TopKConfig(AccelerateConfig):
    """Options of ``topk``.

    Attributes:
        density: fraction of key blocks each query block keeps, in (0, 1]; default 0.125 when
            neither ``density`` nor ``top_p`` is given. ``density=1.0`` equals dense attention.
        top_p: instead of ``density``, keep the smallest set of key blocks whose pooled softmax
            mass reaches ``top_p`` (in (0, 1]).
        min_blocks: never keep fewer key blocks than this per query block.
        block_size: ``(query, key)`` block sizes; default ``(128, 64)``.
    """

    method: ClassVar[str] = "topk"

    block_size: int | tuple[int, int] = (128, 64)
    density: float | None = None
    top_p: float | None = None
    min_blocks: int = 1

    def __post_init__(self) -> None:
        if self.density is not None and self.top_p is not None:
            raise ValueError("give either density or top_p, not both")
        if self.density is None and self.top_p is None:
            self.density = 0.125
        super().__post_init__()
        if self.top_p is not None:
            check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        if isinstance(self.min_blocks, bool) or not isinstance(self.min_blocks, int) or self.min_blocks < 1:
            raise ValueError(f"min_blocks must be an int >= 1, got {self.min_blocks!r}")


class TopKAttention(BlockSparseMethod):
    """Routing + exact block-sparse attention; what is not selected is dropped."""

    name = "topk"
    description = "mean-pooled top-k / top-p block-sparse attention"
    config_class = TopKConfig
    config: TopKConfig

    def select(self, routing: Routing, ctx: AttentionContext):
        cfg = self.config
        return routing.top_blocks(cfg.density, cfg.top_p, cfg.min_blocks)
