"""Top-k / top-p key-block selection per query block, in one kernel (Triton).

One program owns one row of routing scores (one query block of one batch and head). It adds the
``log n_j`` block-size term, finds how many blocks to keep (fixed ``k``, or the smallest set whose
softmax mass reaches ``top_p``, at least ``min_blocks``), finds the k-th largest score exactly with
a 32-step radix search over the scores' order-preserving integer keys, and writes the kept block
indices compacted and ascending. No sort, no (NQ x NK) temporaries beyond the score row.

Reference: :func:`dit_accel.kernels.reference.select_blocks_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import keep_count

MAX_KEY_BLOCKS = 16384


@triton.jit
def _select_blocks(
    Scores, LogCount, Indices, Counts,
    stride_sr, stride_ir,
    NK, k_fixed, top_p, min_blocks,
    NK_P2: tl.constexpr, TOP_P: tl.constexpr, HAS_LOGCOUNT: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, NK_P2)
    ok = offs < NK
    s = tl.load(Scores + r * stride_sr + offs, mask=ok, other=float("-inf")).to(tl.float32)
    if HAS_LOGCOUNT:
        s += tl.load(LogCount + offs, mask=ok, other=0.0)

    if TOP_P:
        p = tl.where(ok, tl.exp(s - tl.max(s, 0)), 0.0)
        p = p / tl.sum(p, 0)
        p_key = p.to(tl.int32, bitcast=True)
        p_prefix = tl.zeros([], dtype=tl.int32)
        for bit in tl.static_range(30, -1, -1):
            cand = p_prefix | (1 << bit)
            mass = tl.sum(tl.where(p_key >= cand, p, 0.0), 0)
            p_prefix = tl.where(mass >= top_p, cand, p_prefix)
        k_eff = tl.sum((ok & (p_key >= p_prefix)).to(tl.int32), 0)
        k_eff = tl.minimum(tl.maximum(k_eff, min_blocks), NK)
    else:
        k_eff = k_fixed

    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits.to(tl.int64) + 2147483648, 2147483647 - (bits & 0x7FFFFFFF).to(tl.int64))
    key = tl.where(ok, key, -1)
    prefix = tl.zeros([], dtype=tl.int64)
    for bit in tl.static_range(31, -1, -1):
        cand = prefix | (1 << bit)
        count = tl.sum((key >= cand).to(tl.int32), 0)
        prefix = tl.where(count >= k_eff, cand, prefix)
    above = key > prefix
    at = key == prefix
    n_above = tl.sum(above.to(tl.int32), 0)
    take = above | (at & (tl.cumsum(at.to(tl.int32), 0) <= k_eff - n_above))
    slot = tl.cumsum(take.to(tl.int32), 0) - 1
    tl.store(Indices + r * stride_ir + slot, offs, mask=take)
    tl.store(Counts + r, k_eff)


def block_rows(scores: torch.Tensor, max_blocks: int) -> tuple[list[int], int, torch.Tensor]:
    """``(lead dims, NK, rows)``: a ``(..., NK)`` map as a ``(rows, NK)`` matrix with a contiguous last
    dimension, the shape one program per row reads; a ValueError past ``max_blocks`` key blocks."""
    *lead, nk = scores.shape
    if nk > max_blocks:
        raise ValueError(f"at most {max_blocks} key blocks per row are supported, got {nk}")
    rows = scores.reshape(-1, nk)
    return lead, nk, rows if rows.stride(-1) == 1 else rows.contiguous()


def select_blocks_triton(
    scores: torch.Tensor,
    *,
    density: float | None = None,
    top_p: float | None = None,
    min_blocks: int = 1,
    log_counts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block lists ``(indices, counts)`` from scores ``(B, H, NQ, NK)``; ``log_counts`` (NK,) is added first."""
    if (density is None) == (top_p is None):
        raise ValueError("pass exactly one of density or top_p")
    lead, nk, rows = block_rows(scores, MAX_KEY_BLOCKS)
    width = keep_count(nk, density, min_blocks) if density is not None else nk
    indices = torch.full((rows.shape[0], width), -1, dtype=torch.int32, device=scores.device)
    counts = torch.empty(rows.shape[0], dtype=torch.int32, device=scores.device)
    nk_p2 = triton.next_power_of_2(nk)
    _select_blocks[(rows.shape[0],)](
        rows, log_counts if log_counts is not None else rows, indices, counts,
        rows.stride(0), indices.stride(0),
        nk, width if density is not None else 0, float(top_p or 0.0), min(min_blocks, nk),
        NK_P2=nk_p2, TOP_P=top_p is not None, HAS_LOGCOUNT=log_counts is not None,
        num_warps=4 if nk_p2 <= 1024 else 8,
    )  # fmt: skip
    return indices.view(*lead, width), counts.view(*lead)
