"""``psa``: Pyramid Sparse Attention (arXiv 2512.04025): per-block pooling levels instead of keep/drop.

Video tokens are taken along a 3-D Hilbert curve of the latent grid (:mod:`dit_accel.hilbert`), so a
block is a compact space-time region. Each call then

1. builds the KV pyramid: every key block at 1x, 2x, 4x and 8x mean pooling, in one pass
   (:mod:`dit_accel.kernels.pyramid`);
2. estimates each (query block, key block) importance from a few sampled tokens
   (:mod:`dit_accel.kernels.pyramid_importance`);
3. gives each pair a level (:mod:`dit_accel.kernels.pyramid_levels`): by cumulative-importance
   thresholds, by fixed quotas, or, with ``density``, by quotas scaled to the compute of ``topk`` at
   that density exactly; at least ``min_full`` of the blocks stay at level 1, and an optional cap
   keeps blocks whose keys differ from being pooled;
4. walks each query block's (key block, level) list in one kernel, text keys included
   (:mod:`dit_accel.kernels.pyramid_attention`). Skipped blocks are dropped (no tail).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from dit_accel.config import AccelerateConfig, check_choice, check_range, ui_field
from dit_accel.context import AttentionContext
from dit_accel.forward_info import ForwardInfo
from dit_accel.hilbert import ORDERS, curve_rows
from dit_accel.layout import TokenLayout

from .base import AttentionMethod, BlockSparseMethod, Routing

Tensor = torch.Tensor
DEFAULT_QUOTAS = (0.06, 0.04, 0.12, 0.40)  # 62% of the key blocks at 16% of dense compute
SAMPLE_COUNTS = tuple(2**i for i in range(7))
# Block-map codes, least computed first (the base's 0 = skipped ... highest = exact): level h -> 5 - h.
MAP_LEGEND = {0: "skipped", 1: "8x pooled", 2: "4x pooled", 3: "2x pooled", 4: "exact"}


def _floats(name: str, value, count: int, low: float, high: float) -> tuple[float, ...]:
    """``value`` as a tuple of ``count`` numbers in [low, high], or a ValueError naming the option."""
    if not isinstance(value, (tuple, list)) or len(value) != count:
        raise ValueError(f"{name} must be {count} numbers, got {value!r}")
    for x in value:
        check_range(name, x, low, high)
    return tuple(float(x) for x in value)


@dataclass
class PSAConfig(AccelerateConfig):
    """Options of ``psa`` (besides dense_steps, dense_layers, backend and tile).

    Attributes:
        block_size: ``(query, key)`` block sizes; default ``(128, 64)``. Key blocks of at least 16.
        density: the compute budget as a fraction of dense: each query block's list costs exactly
            what ``topk`` at this density computes (a level-h block costs ``2^-(h-1)`` of a full
            one), shared between levels in proportion to ``quotas``. Default None: ``thresholds``
            (or ``quotas``) decide per row. ``density=1.0`` is dense attention.
        thresholds: four ascending cumulative-importance thresholds in (0, 1]: a block whose
            preceding (more important) blocks hold less than ``t1`` of the row's importance gets
            level 1 (every key), less than ``t2`` level 2 (2x pooled), ``t3`` level 3 (4x),
            ``t4`` level 4 (8x); the rest is skipped. Default ``(0.4, 0.5, 0.6, 0.8)``.
        quotas: instead of thresholds, the fractions of key blocks at levels 1..4 (by importance
            rank, the rest skipped; summing to at most 1). With ``density`` they set the levels'
            proportions (default ``(0.06, 0.04, 0.12, 0.4)``: 16% of dense compute unscaled).
        min_full: fraction of key blocks every row keeps at level 1 (at least one), in [0, 1].
        sim_cap: pool a block at level h only if its keys ``2^(h-1)`` apart have a mean cosine
            similarity above ``sim_thresholds[h-2]`` (else the next finer allowed level). Not with
            ``density`` (the cap changes the compute).
        sim_thresholds: the cap's thresholds for levels 2, 3, 4, in [-1, 1]; default ``(0.7, 0.65, 0.6)``.
        samples: tokens sampled per block for the importance, a power of two in [1, 64].
        order: token order blocks are formed in: ``"hilbert"`` (3-D Hilbert curve of the latent
            grid, default), ``"hilbert_tiles"`` (the ``tile``-sized tiles along the curve, tokens of a
            tile in raster order) or ``"tiles"`` (tiles in raster order, as ``topk``).
        dense_steps: steps run dense first; default 0.3 (the paper's 15 of 50). A fraction needs
            the step count: call through a pipeline or pass ``num_inference_steps``.

    The level map of a call is kept by ``handle.capture_block_map(layer, step)`` (codes of
    ``MAP_LEGEND``; ``handle.block_map.picture(head=...)`` draws it).
    """

    method: ClassVar[str] = "psa"
    family_defaults: ClassVar[dict] = {"default": {"dense_steps": 0.3}}

    block_size: int | tuple[int, int] = (128, 64)
    density: float | None = None
    dense_steps: int | float | None = None
    thresholds: tuple[float, float, float, float] = (0.4, 0.5, 0.6, 0.8)
    quotas: tuple[float, float, float, float] | None = None
    min_full: float = ui_field(0.06, range=(0.0, 0.5))
    sim_cap: bool = False
    sim_thresholds: tuple[float, float, float] = (0.7, 0.65, 0.6)
    samples: int = ui_field(8, choices=SAMPLE_COUNTS)
    order: str = ui_field("hilbert", choices=ORDERS)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.thresholds = _floats("thresholds", self.thresholds, 4, 0.0, 1.0)
        if min(self.thresholds) <= 0.0 or list(self.thresholds) != sorted(self.thresholds):
            raise ValueError(f"thresholds must be ascending and in (0, 1], got {self.thresholds}")
        if self.quotas is not None:
            self.quotas = _floats("quotas", self.quotas, 4, 0.0, 1.0)
            if not 0.0 < sum(self.quotas) <= 1.0 + 1e-9:
                raise ValueError(f"quotas must sum to a value in (0, 1], got {self.quotas}")
        check_range("min_full", self.min_full, 0.0, 1.0)
        self.sim_thresholds = _floats("sim_thresholds", self.sim_thresholds, 3, -1.0, 1.0)
        if not isinstance(self.sim_cap, bool):
            raise ValueError(f"sim_cap must be True or False, got {self.sim_cap!r}")
        if self.sim_cap and self.density is not None:
            raise ValueError("sim_cap cannot be combined with density: the cap changes the compute budget")
        if isinstance(self.samples, bool) or self.samples not in SAMPLE_COUNTS:
            raise ValueError(f"samples must be a power of two in [1, 64], got {self.samples!r}")
        check_choice("order", self.order, ORDERS)
        if self.block_k < 16:
            raise ValueError(f"block_size: psa needs key blocks of at least 16 tokens, got {self.block_k}")


def _attention_inputs(routing: Routing, blocks) -> tuple:
    """Positional arguments of the pyramid attention op (and its reference) for one routed call."""
    extra = routing.extra()
    text = (extra.k, extra.v, extra.valid) if extra is not None else (None, None, None)
    return (routing.q, routing.k, routing.v, blocks.pooled_k, blocks.pooled_v, blocks.indices, blocks.level_counts,
            blocks.block_q, blocks.block_k, blocks.key_len, routing.scale, routing.q_rows, *text)  # fmt: skip


class PSAAttention(BlockSparseMethod):
    """Multi-level block-sparse attention over a KV pyramid; what is skipped is dropped."""

    name = "psa"
    description = "pyramid sparse attention: key blocks at 1x/2x/4x/8x pooling by importance, or skipped"
    config_class = PSAConfig
    config: PSAConfig

    def __init__(self, config: PSAConfig) -> None:
        super().__init__(config)
        self.config = self.config.for_family(None)  # options still None (built outside apply()): the defaults

    # --- token order: a 3-D Hilbert curve (or tiles) --------------------------------------------

    def token_tile(self, info: ForwardInfo):
        """Tokens stay in raster order for the curve orders (the per-forward reorder is tile-only)."""
        return super().token_tile(info) if self.config.order == "tiles" else None

    def prepare(self, info: ForwardInfo) -> None:
        super().prepare(info)
        if info.has_video and info.grid is not None:
            self.token_order_rows(info.video_start, info.grid, info.token_tile, info.device)

    def token_order_rows(self, video_start: int, grid, source_tile, device) -> Tensor | None:
        """Rows of the video tokens along ``config.order`` (None for ``tiles``: the base's order)."""
        if self.config.order == "tiles" or grid is None:
            return None
        return curve_rows(video_start, grid, self.config.order, self.tile(grid), device, source_tile)

    def token_order(self, ctx: AttentionContext, device: torch.device | str | None = None) -> Tensor | None:
        layout: TokenLayout = ctx.layout
        device = device or ctx.info.device or "cpu"
        return self.token_order_rows(layout.video_start, layout.grid, layout.token_tile, device)

    def route(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Routing:
        from .routing import route_video_attention

        cfg = self.config
        order = self.token_order(ctx, q.device)
        return route_video_attention(q, k, v, ctx, cfg.block_q, cfg.block_k, self.tile(ctx.layout.grid), order)

    # --- levels and attention ----------------------------------------------------------------

    def level_rule(self, num_blocks: int) -> dict:
        """How this config fills a row of ``num_blocks``: ``counts`` per level, or ``thresholds`` with
        ``full_ranks`` level-1 ranks (the arguments of ``pyramid_level_lists``)."""
        from dit_accel.kernels import keep_count
        from dit_accel.kernels.pyramid_levels import budget_counts, min_full_count, quota_counts

        cfg = self.config
        if cfg.density is not None:
            budget = keep_count(num_blocks, cfg.density, 1)
            return {"counts": list(budget_counts(num_blocks, budget, cfg.quotas or DEFAULT_QUOTAS, cfg.min_full))}
        if cfg.quotas is not None:
            return {"counts": list(quota_counts(num_blocks, cfg.quotas, cfg.min_full))}
        return {"thresholds": list(cfg.thresholds), "full_ranks": min_full_count(num_blocks, cfg.min_full)}

    def level_lists(self, importance: Tensor, sim: Tensor, bq: int, bk: int, key_len: int):
        """The :class:`~dit_accel.kernels.pyramid_levels.PyramidBlocks` lists of an importance map:
        one kernel, or (with the similarity cap) the level map capped, then listed."""
        from dit_accel.kernels.pyramid_levels import (
            PyramidBlocks,
            allowed_levels,
            cap_levels,
            lists_from_level_map,
            rule_level_map,
        )
        from dit_accel.kernels.pyramid_ops import pyramid_level_lists

        rule = self.level_rule(importance.shape[-1])
        if not self.config.sim_cap:
            return PyramidBlocks(*pyramid_level_lists(importance, **rule), bq, bk, key_len)
        level_map = cap_levels(rule_level_map(importance, **rule), allowed_levels(sim, self.config.sim_thresholds))
        return lists_from_level_map(level_map, bq, bk, key_len)

    def select(self, routing: Routing, ctx: AttentionContext):
        """The :class:`~dit_accel.kernels.pyramid_levels.PyramidBlocks` of this call, pyramid included."""
        from dit_accel.kernels.pyramid_ops import kv_pyramid, pyramid_importance

        cfg = self.config
        bq, bk, key_len = routing.block_q, routing.block_k, routing.key_len
        pooled_k, pooled_v, sim = kv_pyramid(routing.k, routing.v, bk, key_len, cfg.sim_cap)
        importance = pyramid_importance(routing.q, routing.k, bq, bk, key_len, routing.scale, cfg.samples,
                                        routing.q_rows)  # fmt: skip
        blocks = self.level_lists(importance, sim, bq, bk, key_len)
        return dataclasses.replace(blocks, pooled_k=pooled_k, pooled_v=pooled_v)

    def block_map(self, routing: Routing, blocks, ctx: AttentionContext) -> Tensor:
        """Codes of :data:`MAP_LEGEND`: 0 skipped, ``5 - h`` for level h (4 = every key)."""
        levels = blocks.level_map()
        return torch.where(levels > 0, 5 - levels, 0).to(torch.uint8)

    def map_legend(self) -> dict[int, str]:
        return dict(MAP_LEGEND)

    def attend(self, routing: Routing, blocks, ctx: AttentionContext) -> tuple[Tensor, Tensor]:
        """Multi-level attention over the lists and the text keys: ``(out, lse)`` shaped like ``routing.q``."""
        from dit_accel.kernels.backends import requested_backend

        if requested_backend(self.config.backend) == "reference":
            from dit_accel.kernels.pyramid_reference import pyramid_attention_reference as attention
        else:
            from dit_accel.kernels.pyramid_ops import pyramid_attention as attention
        return attention(*_attention_inputs(routing, blocks))

    def reference(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """Float64 definition: levels chosen on float64 routing, then one masked softmax per query over
        the listed blocks' keys at their levels (``log(count)`` logit bias) and the valid text keys."""
        if ctx.in_warmup or self.dense_reason(ctx) is not None or self.full_density_set():
            return AttentionMethod.reference(self, q, k, v, ctx)
        from dit_accel.kernels.pyramid_reference import pyramid_attention_reference

        q64, k64, v64 = q.double(), k.double(), v.double()
        routing = self.route(q64, k64, v64, ctx)
        blocks = self.select(routing, ctx)
        out, _ = pyramid_attention_reference(*_attention_inputs(routing, blocks))
        return self._assemble(out, q64, k64, v64, routing, ctx)
