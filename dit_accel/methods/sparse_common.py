"""Shared block-sparse pipeline: tile reorder, routing, block-sparse kernel, exact text rows.

Every block-sparse method differs only in how it turns routing scores into block lists (and, for
some, what it adds for the skipped blocks). This module runs the common part on ``(B, S, H, D)``
q/k/v: video queries attend to their selected video key blocks plus every valid text key; text
queries attend densely through the stock attention call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dit_accel import kernels
from dit_accel.context import AttentionContext
from dit_accel.layout import TokenLayout
from dit_accel.tiling import Tile, default_tile, tiled_rows

logger = logging.getLogger("dit_accel")
_WARNED: set[str] = set()

Selector = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def warn_once(key: str, message: str) -> None:
    """Log a warning the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)


def dense_fallback_reason(ctx: AttentionContext, block_q: int, block_k: int) -> str | None:
    """Why this call cannot run block-sparse (it then runs dense), or None."""
    layout = ctx.layout
    if ctx.parallel_config is not None:
        return "context parallelism is not supported by block-sparse methods"
    if layout.video_len < max(block_q, block_k) * 2:
        return f"only {layout.video_len} video tokens: too short for {block_q}x{block_k} blocks"
    if ctx.attention_mask is not None and layout.text_valid is None:
        return "the attention mask is not a text key-padding mask"
    if layout.text_len + layout.video_len != layout.seq_len:
        return "some tokens are neither text nor video"
    return None


_LOG_COUNT_CACHE: dict[tuple, torch.Tensor] = {}


def key_log_counts(length: int, block: int, device: torch.device) -> torch.Tensor:
    """``log n_j`` of each key block (cached per length and device)."""
    key = (length, block, str(device))
    if key not in _LOG_COUNT_CACHE:
        _LOG_COUNT_CACHE[key] = kernels.block_counts(length, block, device).float().log()
    return _LOG_COUNT_CACHE[key]


def video_rows(
    video_start: int, video_len: int, grid: Tile | None, token_tile: Tile | None, tile: Tile, device: torch.device
) -> torch.Tensor | None:
    """Sequence rows of the video tokens in ``tile`` order; None when they already are, contiguously.

    ``token_tile`` is the order the tokens are in now (the adapter's once-per-forward reorder).
    """
    if token_tile == tile and grid is not None:
        return None
    return tiled_rows(video_start, video_len, grid, tile, device, token_tile)


def appended_rows(layout: TokenLayout, q_rows: torch.Tensor, tile: Tile) -> torch.Tensor:
    """Rows of the appended key-only tokens, in the same tile order as the video tokens."""
    if layout.appended_len == layout.video_len and layout.appended_grid in (None, layout.grid):
        return q_rows - layout.video_start + layout.seq_len
    return tiled_rows(layout.seq_len, layout.appended_len, layout.appended_grid, tile, q_rows.device, layout.token_tile)


def prepare_block_sparse(call_info: dict[str, Any], block_q: int, block_k: int, tile: Tile | None) -> None:
    """Warm the caches :func:`block_sparse_video_attention` reads for the call's video tokens."""
    if "video_len" not in call_info:
        return
    grid, device, length = call_info.get("grid"), call_info["device"], call_info["video_len"]
    tile = tile or default_tile(grid, block_q)
    video_rows(call_info["video_start"], length, grid, call_info.get("token_tile"), tile, device)
    key_log_counts(length, block_k, device)


@dataclass
class RoutedAttention:
    """A routed block-sparse call, ready for the kernel: ``(B, H, S, D)`` views plus block lists."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_rows: torch.Tensor | None
    indices: torch.Tensor
    counts: torch.Tensor
    key_len: int
    scale: float
    block_q: int
    block_k: int
    extra_k: torch.Tensor | None = None
    extra_v: torch.Tensor | None = None
    extra_valid: torch.Tensor | None = None

    def attend(self) -> torch.Tensor:
        """Run the block-sparse kernel; ``(B, H, S, D)`` output shaped like ``self.q``."""
        out, _ = kernels.block_sparse_attention(
            self.q, self.k, self.v, self.indices, self.counts, self.block_q, self.block_k, self.key_len, self.scale,
            q_rows=self.q_rows, extra_k=self.extra_k, extra_v=self.extra_v, extra_valid=self.extra_valid,
        )  # fmt: skip
        return out


def route_video_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ctx: AttentionContext,
    *,
    block_q: int,
    block_k: int,
    select: Selector,
    tile: Tile | None = None,
) -> RoutedAttention:
    """Pool, score and select key blocks for the video queries of a ``(B, S, H, D)`` call.

    Video tokens are taken in ``tile`` order: in place when the adapter already reordered them for
    the whole forward, otherwise through a gather of K/V (queries are gathered inside the kernel).
    k/v may hold ``ctx.layout.appended_len`` key-only video tokens after the query sequence
    (AlignedGen's shared reference tokens), in the same token order; they join the routed key blocks.
    """
    layout = ctx.layout
    appended = k.shape[1] - q.shape[1]
    if appended != layout.appended_len:
        raise ValueError(f"k has {appended} tokens beyond q but the layout declares {layout.appended_len}")
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    tile = tile or default_tile(layout.grid, block_q)
    rows = video_rows(layout.video_start, layout.video_len, layout.grid, layout.token_tile, tile, q.device)
    if rows is None and not appended:
        video = layout.video_slice
        q_video, k_video, v_video = qh[:, :, video], kh[:, :, video], vh[:, :, video]
        k_mean = kernels.pool_blocks(k_video, block_k)
    else:
        rows = rows if rows is not None else tiled_rows(layout.video_start, layout.video_len, None, tile, q.device)
        k_rows = torch.cat([rows, appended_rows(layout, rows, tile)]) if appended else rows
        q_video = qh
        k_video, v_video, k_mean = kernels.gather_blocks(kh, vh, k_rows, block_k)
    scale = q.shape[-1] ** -0.5
    key_len = layout.video_len + appended
    scores = kernels.routing_scores(kernels.pool_blocks(q_video, block_q, rows), k_mean, scale)
    indices, counts = select(scores, key_log_counts(key_len, block_k, q.device))
    routed = RoutedAttention(q_video, k_video, v_video, rows, indices, counts, key_len, scale, block_q, block_k)
    if layout.text_len:
        routed.extra_k, routed.extra_v = kh[:, :, layout.text_slice], vh[:, :, layout.text_slice]
        routed.extra_valid = layout.text_valid
    return routed


def block_sparse_video_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ctx: AttentionContext,
    *,
    block_q: int,
    block_k: int,
    select: Selector,
    tile: Tile | None = None,
) -> torch.Tensor:
    """Block-sparse attention for video queries, exact attention for text queries; ``(B, S, H, D)``."""
    layout = ctx.layout
    routed = route_video_attention(q, k, v, ctx, block_q=block_q, block_k=block_k, select=select, tile=tile)
    out = routed.attend().transpose(1, 2)
    if routed.q_rows is None and not layout.video_only:
        full = torch.empty_like(q)
        full[:, layout.video_slice] = out
        out = full
    if layout.text_len:
        out[:, layout.text_slice] = ctx.dense(q[:, layout.text_slice], k, v).to(out.dtype)
    return out
