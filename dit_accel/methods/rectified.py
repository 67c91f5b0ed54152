"""``rectified``: Rectified SpaAttn (arXiv 2511.19835), block-sparse attention rescaled toward full attention.

Per query block, IPAR estimates each key block's share of full attention from pooled statistics,
``P̃_j = n_j e^{s q̄·k̄_j} / (Σ_j n_j e^{s q̄·k̄_j} + Σ_t e^{s q̄·k_t})`` — text keys ``t`` are not
pooled, and their mass is one column. The exact (critical) set is the blocks holding ``top_p`` of
that mass, at least ``1 - drop_rate`` of the video blocks, plus the 3-D neighbours of the query
block's tile; with ``density`` it is exactly that fraction, by ``P̃`` (neighbours first if asked for).
Text keys are always exact. GAPR then compensates a skipped block only when its pooled gain
``|x·k̄_j|`` exceeds its pooling error ``|x·δk_j|`` (``δ``: mean absolute deviation per channel;
for block means ``x = q̄_i`` the query's pooling error ``|δq_i·k̄_j|`` is added). The output is
``R · O_sparse + C``: ``R = 1 - Σ_{compensated} P̃_j`` (the exact set, text and the uncompensated
blocks keep their mass on the exact output), ``C = Σ_{compensated} P̃_j v̄_j``.

``per_row`` takes ``x`` = each query row instead of its block mean (same pooled key statistics):
the query is then exact, so GAPR's error is the key pooling error ``|q_t·δk_j|`` alone, and ``R``
and ``C`` are per row. The official method is per query block (``per_row=False``).

Speed: block means and deviations of Q, K and V in one read (``kernels.rectified_stats``), the
selection by the routing's top-k kernel at equal density (else in a few tensor ops), exact attention
on the backend, then one pass over the key blocks that rectifies the exact output in place of the
LSE merge (``kernels.rectified_tail``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from dit_accel.config import AccelerateConfig, check_range
from dit_accel.context import AttentionContext
from dit_accel.forward_info import ForwardInfo
from dit_accel.kernels import rectified_ops
from dit_accel.kernels.block_list import BlockList
from dit_accel.kernels.rectified_reference import gapr_passes, pooled_logits, rectified_row_weights
from dit_accel.kernels.reference import keep_count
from dit_accel.tiling import Tile, tile_permutation

from .base import BlockSparseMethod, Routing

Tensor = torch.Tensor


@dataclass
class RectifiedConfig(AccelerateConfig):
    """Options of ``rectified`` (besides backend and tile).

    Options left None take the model family's defaults (``family_defaults``; outside a model the
    ``"default"`` row).

    Attributes:
        density: when given, the exact set is exactly this fraction of the key blocks of each query
            block (by ``P̃``; neighbours first where ``neighbours=True``), so methods compare at equal density;
            ``top_p`` and ``drop_rate`` are then unused. Default None (top-p selection).
        top_p: the exact set holds the blocks whose ``P̃`` mass (largest first) reaches ``top_p``, in (0, 1].
        drop_rate: at most this fraction of the video key blocks is left out of the exact set by the
            top-p rule (so at least ``ceil((1 - drop_rate) * N)`` are kept), in [0, 1); default
            0.75 Wan, 0.8 HunyuanVideo, 0.9 FLUX.
        neighbours: also compute exactly the key blocks holding the query block's own tile and
            its six face neighbours in the 3-D tile grid. Default None: on in top-p mode (the paper's
            rule), off with ``density``, where they take slots from blocks of larger ``P̃`` (tiny
            Wan, 8 pairs, density 0.125: +1.6 dB PSNR over ``topk`` without them, -0.7 dB with them).
        per_row: ``R`` and ``C`` per query row from each row's own query (True) or per query block
            from its mean, as the paper (False, the default). Per row is closer to dense but not free:
            H200, Wan-1.3B shape, density 0.11: 5.73x cuDNN per row vs 7.10x per block; tiny Wan, 8
            pairs, density 0.125: +1.60 vs +1.23 dB PSNR over ``topk`` (docs/methods.md).
        block_size: ``(query, key)`` block sizes; default ``(128, 128)`` as the paper.
        dense_steps: leading steps run dense; default 0.1 of the steps on Wan (5 of 50), else 0.
        dense_layers: leading layers run dense; default 2 on Wan, else 0.
    """

    method: ClassVar[str] = "rectified"
    family_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {"drop_rate": 0.75, "dense_steps": 0, "dense_layers": 0},
        "wan": {"drop_rate": 0.75, "dense_steps": 0.1, "dense_layers": 2},
        "hunyuan_video": {"drop_rate": 0.8},
        "flux": {"drop_rate": 0.9},
    }

    block_size: int | tuple[int, int] = (128, 128)
    density: float | None = None
    top_p: float = 0.3
    drop_rate: float | None = None
    neighbours: bool | None = None
    per_row: bool = False
    dense_steps: int | float | None = None
    dense_layers: int | float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        if self.drop_rate is not None:
            check_range("drop_rate", self.drop_rate, 0.0, 1.0)
            if self.drop_rate == 1.0:
                raise ValueError("drop_rate must be in [0.0, 1.0) (1.0 would keep no block), got 1.0")
        if self.neighbours is not None and not isinstance(self.neighbours, bool):
            raise TypeError(f"neighbours must be True, False or None, got {self.neighbours!r}")
        if not isinstance(self.per_row, bool):
            raise TypeError(f"per_row must be True or False, got {self.per_row!r}")

    @property
    def with_neighbours(self) -> bool:
        """``neighbours``, or where it is None: on in top-p mode, off in equal-density mode."""
        return self.neighbours if self.neighbours is not None else self.density is None


@dataclass
class RectifiedRouting(Routing):
    """A :class:`Routing` that also carries the block statistics of GAPR, computed on first use; their
    block means then serve as the routing's own (Q is not pooled twice, and selection and GAPR read the
    same means)."""

    known_stats: tuple[Tensor, ...] | None = field(default=None, repr=False)

    @property
    def stats(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(q_mean, q_mad, k_mean, k_mad, v_mean)``, fp32 ``(B, H, N, D)``: one read of Q, K and V."""
        if self.known_stats is None:
            self.known_stats = rectified_ops.block_stats(
                self.q, self.k, self.v, self.block_q, self.block_k, self.key_len, self.q_rows
            )
            self.known_q_mean, self.known_k_mean = self.known_stats[0], self.known_stats[2]
        return self.known_stats


@functools.lru_cache(maxsize=32)
def _neighbour_mask_cpu(grid: Tile | None, tile: Tile, video_len: int, key_len: int, block_q: int,
                        block_k: int) -> Tensor:  # fmt: skip
    if grid is None:  # a plain sequence: tiles are runs of block_q tokens
        grid, tile = (1, 1, video_len), (1, 1, block_q)
    frames, height, width = grid
    tt, th, tw = (min(a, b) for a, b in zip(tile, grid, strict=True))
    shape = (math.ceil(frames / tt), math.ceil(height / th), math.ceil(width / tw))
    raster = tile_permutation(grid, tile)  # raster index of each block-ordered token
    tile_of = ((raster // (height * width) // tt) * shape[1] + raster // width % height // th) * shape[2]
    tile_of += raster % width // tw
    tokens = torch.arange(video_len)
    num_tiles = math.prod(shape)
    query_tiles = torch.zeros(math.ceil(video_len / block_q), num_tiles)
    query_tiles[tokens // block_q, tile_of] = 1.0
    key_tiles = torch.zeros(math.ceil(key_len / block_k), num_tiles)  # keys past the video: no tile
    key_tiles[tokens // block_k, tile_of] = 1.0
    coords = torch.stack(torch.unravel_index(torch.arange(num_tiles), shape), dim=-1)
    adjacent = ((coords[:, None] - coords[None]).abs().sum(-1) <= 1).float()
    return (query_tiles @ adjacent @ key_tiles.T) > 0


_NEIGHBOUR_CACHE: dict[tuple, Tensor] = {}


def neighbour_mask(grid: Tile | None, tile: Tile, video_len: int, key_len: int, block_q: int, block_k: int,
                   device: torch.device) -> Tensor:  # fmt: skip
    """``(NQ, NK)`` bool: key blocks holding a token of the query block's tiles or of their 6 face neighbours.

    Blocks are runs of video tokens in ``tile`` order (the routing's order); key rows past
    ``video_len`` (appended key-only tokens) belong to no tile. Cached per device.
    """
    key = (grid, tile, video_len, key_len, block_q, block_k, str(device))
    if key not in _NEIGHBOUR_CACHE:
        _NEIGHBOUR_CACHE[key] = _neighbour_mask_cpu(grid, tile, video_len, key_len, block_q, block_k).to(device)
    return _NEIGHBOUR_CACHE[key]


def blocks_from_order(order: Tensor, count: int, block_q: int, block_k: int, key_len: int) -> BlockList:
    """The :class:`BlockList` of the first ``count`` key blocks of each row of ``order``."""
    indices = order[..., :count].sort(dim=-1).values.to(torch.int32).contiguous()
    counts = torch.full(order.shape[:-1], count, dtype=torch.int32, device=order.device)
    return BlockList(indices, counts, block_q, block_k, key_len)


def top_mass(video: Tensor, text_lse: Tensor, order: Tensor, top_p: float, min_fraction: float) -> Tensor:
    """bool mask of the blocks, taken by ``P̃`` in ``order``, until ``top_p`` of the mass (text included in
    the normaliser) is held, and at least ``ceil(min_fraction * NK)`` of them."""
    shares = torch.exp(video - torch.logaddexp(torch.logsumexp(video, dim=-1), text_lse)[..., None])
    ranked = shares.gather(-1, order)
    num_blocks = video.shape[-1]
    floor = min(num_blocks, max(1, math.ceil(min_fraction * num_blocks - 1e-9)))
    kept = ((ranked.cumsum(dim=-1) - ranked) < top_p).sum(dim=-1, keepdim=True).clamp(min=floor)
    taken = torch.arange(num_blocks, device=video.device) < kept
    return torch.zeros(video.shape, dtype=torch.bool, device=video.device).scatter(-1, order, taken)


class RectifiedAttention(BlockSparseMethod):
    """IPAR-selected exact blocks; skipped blocks that pass GAPR's test rectify the output (R·O + C)."""

    name = "rectified"
    description = "Rectified SpaAttn: block-sparse output rescaled toward full attention (IPAR + GAPR)"
    config_class = RectifiedConfig
    config: RectifiedConfig

    def __init__(self, config: RectifiedConfig) -> None:
        super().__init__(config)
        self.config = config.for_family(None)  # a config built outside dit_accel.apply: "default" row

    def prepare(self, info: ForwardInfo) -> None:
        super().prepare(info)
        if info.has_video and self.config.with_neighbours:
            self._neighbours(info.grid, info.video_len, info.video_len, info.device)

    def _neighbours(self, grid: Tile | None, video_len: int, key_len: int, device: torch.device) -> Tensor:
        cfg = self.config
        return neighbour_mask(grid, self.tile(grid), video_len, key_len, cfg.block_q, cfg.block_k, device)

    def route(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> RectifiedRouting:
        routing = super().route(q, k, v, ctx)
        return RectifiedRouting(**{f.name: getattr(routing, f.name) for f in dataclasses.fields(routing)})

    def select(self, routing: RectifiedRouting, ctx: AttentionContext) -> BlockList:
        """The critical set: ``top_p`` of ``P̃`` (at least ``1 - drop_rate`` of the blocks) plus neighbours,
        or exactly ``density`` of the blocks, neighbours first."""
        cfg = self.config
        q_mean, _, k_mean, _, _ = routing.stats
        if cfg.density is not None and not cfg.with_neighbours:  # top density of P̃: the routing's selection
            return routing.top_blocks(cfg.density)
        text = (routing.extra_k, routing.extra_valid) if cfg.density is None else (None, None)
        video, text_lse = pooled_logits(q_mean, k_mean, routing.key_len, routing.block_k, routing.scale, *text)
        order = video.argsort(dim=-1, descending=True, stable=True)  # by P̃, largest first
        near = None
        if cfg.with_neighbours:
            near = self._neighbours(ctx.layout.grid, ctx.layout.video_len, routing.key_len, video.device)
            near = near.expand(video.shape)
        sizes = (routing.block_q, routing.block_k, routing.key_len)
        if cfg.density is not None:
            if near is not None:  # neighbours first, each group by P̃ (a stable sort keeps that order)
                order = order.gather(-1, (~near.gather(-1, order)).to(torch.uint8).argsort(dim=-1, stable=True))
            return blocks_from_order(order, keep_count(video.shape[-1], cfg.density, 1), *sizes)
        mask = top_mass(video, text_lse, order, cfg.top_p, 1.0 - cfg.drop_rate)
        return BlockList.from_mask(mask if near is None else mask | near, *sizes)

    def block_map(self, routing: RectifiedRouting, blocks: BlockList, ctx: AttentionContext) -> Tensor:
        """2 exact; 1 pooled: passes GAPR (per row: for most of the block's rows), its ``P̃ v̄`` added;
        0 dropped: its mass rescales the exact part."""
        q_mean, q_mad, k_mean, k_mad, _ = routing.stats
        if self.config.per_row:
            rows = routing.q if routing.q_rows is None else routing.q.index_select(2, routing.q_rows.long())
            votes = gapr_passes(rows, None, k_mean, k_mad).to(torch.float32)
            padded = torch.nn.functional.pad(votes, (0, 0, 0, -votes.shape[2] % routing.block_q), value=math.nan)
            passes = padded.unflatten(2, (-1, routing.block_q)).nanmean(3) > 0.5
        else:
            passes = gapr_passes(q_mean, q_mad, k_mean, k_mad)
        return torch.where(super().block_map(routing, blocks, ctx).bool(), 2, passes.to(torch.uint8)).to(torch.uint8)

    def map_legend(self) -> dict[int, str]:
        return {0: "dropped", 1: "pooled", 2: "exact"}

    def combine(self, routing: RectifiedRouting, blocks: BlockList, out: Tensor, lse: Tensor,
                ctx: AttentionContext) -> Tensor:  # fmt: skip
        """``R · O_sparse + C`` in one pass over the key blocks (no LSE merge needed)."""
        return rectified_ops.rectified_merge(
            out, routing.q, *routing.stats, blocks.indices, blocks.counts, routing.block_q, routing.block_k,
            routing.key_len, routing.scale, self.config.per_row, routing.q_rows, routing.extra_k, routing.extra_valid,
        )  # fmt: skip

    def tail(self, routing: RectifiedRouting, blocks: BlockList, ctx: AttentionContext) -> tuple[Tensor, Tensor]:
        """The same correction as an approximate part merged by LSE (the float64 ``reference()`` uses it).

        ``R · O + C`` is the LSE merge of ``O`` with ``(C / (1 - R), lse_exact + log((1 - R) / R))``;
        the exact part's LSE is recomputed here, as ``tail()`` is not handed it. Rows without a
        compensated block get LSE ``-inf`` (they keep ``O`` exactly).
        """
        _, lse = self.attend(routing, blocks, ctx)
        keep, add = rectified_row_weights(
            routing.q, *routing.stats, blocks.indices, blocks.counts, block_q=routing.block_q,
            block_k=routing.block_k, key_len=routing.key_len, scale=routing.scale, per_row=self.config.per_row,
            q_rows=routing.q_rows, extra_k=routing.extra_k, extra_valid=routing.extra_valid,
        )  # fmt: skip
        rows = torch.arange(routing.q.shape[2], device=add.device) if routing.q_rows is None else routing.q_rows.long()
        moved = 1.0 - keep
        tail_out = torch.zeros(routing.q.shape, dtype=add.dtype, device=add.device)
        tail_lse = torch.full(routing.q.shape[:3], -math.inf, dtype=add.dtype, device=add.device)
        tail_out[:, :, rows] = torch.where(moved[..., None] > 0, add / moved.clamp(min=1e-300)[..., None], 0.0)
        tail_lse[:, :, rows] = lse[:, :, rows].to(add.dtype) + torch.log(moved) - torch.log(keep)
        return tail_out, tail_lse
