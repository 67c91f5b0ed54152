"""Routing shared by the block-sparse methods: token order, block means, pooled scores.

Runs on Diffusers-layout ``(B, S, H, D)`` q/k/v and returns a :class:`Routing` of ``(B, H, S, D)``
views that :class:`~dit_accel.methods.base.BlockSparseMethod` hands to ``select()``, the backend and
``tail()``. Also the float64 definition of a block-sparse call (:func:`masked_reference`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dit_accel import kernels
from dit_accel.context import AttentionContext
from dit_accel.forward_info import ForwardInfo
from dit_accel.layout import TokenLayout
from dit_accel.tiling import Tile, tiled_rows

from .base import Routing

Tensor = torch.Tensor


def dense_fallback_reason(ctx: AttentionContext, block_q: int, block_k: int) -> str | None:
    """Why this call cannot run block-sparse (it then runs dense), or None."""
    layout = ctx.layout
    if layout.video_len < max(block_q, block_k) * 2:
        return (
            f"only {layout.video_len} video tokens: too few for two {block_q}x{block_k} blocks "
            f"(at least {2 * max(block_q, block_k)} are needed)"
        )
    if ctx.attention_mask is not None and layout.text_valid is None:
        return "the attention mask is not a text key-padding mask"
    if layout.text_len + layout.video_len != layout.seq_len:
        return "some tokens are neither text nor video"
    return None


_CONSTANTS: dict[tuple, Tensor] = {}


def cached_constant(key: tuple, make: Callable[[], Tensor]) -> Tensor:
    """A per-shape constant tensor, made once (by :func:`warm_caches` before compiled code reads it)."""
    if key not in _CONSTANTS:
        _CONSTANTS[key] = make()
    return _CONSTANTS[key]


def key_log_counts(length: int, block: int, device: torch.device) -> Tensor:
    """``log n_j`` of each key block (cached per length and device)."""
    return cached_constant(("log_counts", length, block, str(device)),
                           lambda: kernels.block_counts(length, block, device).float().log())  # fmt: skip


def sequence_rows(start: int, end: int, device: torch.device) -> Tensor:
    """``arange(start, end)`` (cached: a launch per attention call otherwise)."""
    return cached_constant(("rows", start, end, str(device)), lambda: torch.arange(start, end, device=device))


def video_rows(video_start: int, video_len: int, grid: Tile | None, token_tile: Tile | None, tile: Tile,
               device: torch.device) -> Tensor | None:  # fmt: skip
    """Sequence rows of the video tokens in ``tile`` order; None when they already are, contiguously.

    ``token_tile`` is the order the tokens are in now (the adapter's once-per-forward reorder).
    """
    if token_tile == tile and grid is not None:
        return None
    return tiled_rows(video_start, video_len, grid, tile, device, token_tile)


def appended_rows(layout: TokenLayout, q_rows: Tensor, tile: Tile) -> Tensor:
    """Rows of the appended key-only tokens, in the same tile order as the video tokens."""
    if layout.appended_len == layout.video_len and layout.appended_grid in (None, layout.grid):
        return q_rows - layout.video_start + layout.seq_len
    return tiled_rows(layout.seq_len, layout.appended_len, layout.appended_grid, tile, q_rows.device, layout.token_tile)


def warm_caches(info: ForwardInfo, tile: Tile, block_k: int) -> None:
    """Fill the caches :func:`route_video_attention` reads for this forward (outside compiled code)."""
    video_rows(info.video_start, info.video_len, info.grid, info.token_tile, tile, info.device)
    key_log_counts(info.video_len, block_k, info.device)
    sequence_rows(info.video_start, info.video_start + info.video_len, info.device)


def route_video_attention(
    q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, block_q: int, block_k: int, tile: Tile,
    order: Tensor | None = None,
) -> Routing:  # fmt: skip
    """Pool and score the video blocks of a ``(B, S, H, D)`` call.

    Video tokens are taken in ``order`` (sequence rows) or ``tile`` order: in place when the adapter
    already put them in that order for the whole forward, otherwise through a gather of K/V
    (queries are gathered inside the kernels). k/v may hold ``ctx.layout.appended_len`` key-only
    video tokens after the query sequence (AlignedGen's reference tokens), in the same order.
    """
    layout = ctx.layout
    appended = k.shape[1] - q.shape[1]
    if appended != layout.appended_len:
        raise ValueError(f"k has {appended} tokens beyond q but the layout declares {layout.appended_len}")
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    rows = order if order is not None else video_rows(
        layout.video_start, layout.video_len, layout.grid, layout.token_tile, tile, q.device
    )  # fmt: skip
    key_len = layout.video_len + appended
    if rows is None and not appended:
        video = layout.video_slice
        q_video, k_video, v_video = qh[:, :, video], kh[:, :, video], vh[:, :, video]
        k_mean = None
        key_rows = sequence_rows(layout.video_start, layout.video_end, q.device)
    else:
        rows = rows if rows is not None else tiled_rows(layout.video_start, layout.video_len, None, tile, q.device)
        key_rows = torch.cat([rows, appended_rows(layout, rows, tile)]) if appended else rows
        q_video = qh
        k_video, v_video, k_mean = kernels.gather_blocks(kh, vh, key_rows, block_k)
    routing = Routing(
        q=q_video, k=k_video, v=v_video, q_rows=rows, key_rows=key_rows, key_len=key_len, scale=q.shape[-1] ** -0.5,
        block_q=block_q, block_k=block_k, log_counts=key_log_counts(key_len, block_k, q.device), known_k_mean=k_mean,
    )  # fmt: skip
    if layout.text_len:
        routing.extra_k, routing.extra_v = kh[:, :, layout.text_slice], vh[:, :, layout.text_slice]
        routing.extra_valid = layout.text_valid
    return routing


def masked_reference(q: Tensor, k: Tensor, v: Tensor, routing: Routing, blocks, tail, ctx: AttentionContext) -> Tensor:
    """Float64 ``(B, S, H, D)`` attention in which each video query sees the keys of its selected
    blocks (mapped back to sequence positions) and the valid text keys; text queries see every key.

    ``tail`` (``(out, lse)`` in the routing's rows, or None) is merged by the LSE formula.
    """
    layout = ctx.layout
    b, s, h, _ = q.shape
    total_keys = k.shape[1]
    device = q.device
    in_order = torch.arange(layout.video_start, layout.video_end, device=device)
    query_rows = routing.q_rows.long() if routing.q_rows is not None else in_order
    block_mask = kernels.reference.block_mask_from_lists(blocks.indices, blocks.counts, blocks.num_key_blocks)
    token_mask = block_mask.repeat_interleave(blocks.block_q, 2)[:, :, : query_rows.numel()]
    token_mask = token_mask.repeat_interleave(blocks.block_k, 3)[..., : routing.key_len]
    video_allowed = torch.zeros(b, h, query_rows.numel(), total_keys, dtype=torch.bool, device=device)
    video_allowed[..., routing.key_rows.long()] = token_mask
    text_keys = torch.zeros(b, total_keys, dtype=torch.bool, device=device)
    if layout.text_len:
        valid = layout.text_valid if layout.text_valid is not None else torch.full((b,), layout.text_len)
        positions = torch.arange(layout.text_len, device=device)
        text_keys[:, layout.text_slice] = positions[None, :] < valid.to(device).long()[:, None]
    every_key = text_keys.clone()
    every_key[:, : layout.text_start] = True
    every_key[:, layout.text_end :] = True
    allowed = every_key[:, None, None, :].expand(b, h, s, total_keys).clone()
    allowed[:, :, query_rows] = video_allowed | text_keys[:, None, None, :]
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * routing.scale
    logits = logits.masked_fill(~allowed, -math.inf)
    lse = torch.logsumexp(logits, dim=-1)
    out = torch.einsum("bhqk,bkhd->bhqd", torch.exp(logits - lse[..., None]), v)
    if tail is not None:
        tail_out, tail_lse = (x.double() for x in tail)
        rows = query_rows if routing.q_rows is not None else slice(None)
        part_out, part_lse = tail_out[:, :, rows], tail_lse[:, :, rows]
        video_out, video_lse = out[:, :, query_rows], lse[:, :, query_rows]
        merged = torch.logaddexp(video_lse, part_lse)
        out[:, :, query_rows] = (torch.exp(video_lse - merged)[..., None] * video_out
                                 + torch.exp(part_lse - merged)[..., None] * part_out)  # fmt: skip
    return out.transpose(1, 2)
