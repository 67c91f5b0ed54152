"""Top-k / top-p key-block selection per query block, in one kernel (Triton).

One program owns ``ROWS`` rows of routing scores (query blocks of one batch and head; one row per
warp-sized program is fastest on the H200, see :data:`SELECT_ROWS`). It adds the ``log n_j``
block-size term, finds how many blocks to keep (fixed ``k``, or the smallest set whose softmax mass
reaches ``top_p``, at least ``min_blocks``), finds the k-th largest score exactly with a 32-step
radix search over the scores' order-preserving int32 keys, and writes the kept block indices
compacted and ascending. No sort, no (NQ x NK) temporaries beyond the score rows.

The jit helpers :func:`top_p_counts` and :func:`top_k_keep` are shared with the one-read routing
kernel (``routing.py``). Reference: :func:`dit_accel.kernels.reference.select_blocks_reference`.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from .reference import keep_count

MAX_KEY_BLOCKS = 16384
# Launch of the select kernel: rows per program and warps per program, by the row width (next power
# of two of NK). One warp per row keeps every reduction of the radix search inside the warp: H200,
# 3072 rows, scores included, 256 wide 27.9 us (4 warps 39.3 us), 512 wide 39.2 us (4 warps 47.1 us).
# Wider rows (not measured) take more warps to bound the elements each thread holds.
SELECT_ROWS = 1
SELECT_WARPS = {512: 1, 2048: 2, 4096: 4, MAX_KEY_BLOCKS: 8}


@triton.jit
def top_p_counts(s, valid, top_p, min_blocks, NK):
    """Per row of ``s`` (fp32, ``-inf``/invalid allowed), the size of the smallest set whose softmax mass
    reaches ``top_p``, clamped to ``[min_blocks, NK]`` (an exact radix search over the masses' bits)."""
    p = tl.where(valid, tl.exp(s - tl.max(s, 1)[:, None]), 0.0)
    p = p / tl.sum(p, 1)[:, None]
    p_key = p.to(tl.int32, bitcast=True)
    p_prefix = tl.zeros([s.shape[0]], dtype=tl.int32)
    for bit in tl.static_range(30, -1, -1):
        cand = p_prefix | (1 << bit)
        mass = tl.sum(tl.where(p_key >= cand[:, None], p, 0.0), 1)
        p_prefix = tl.where(mass >= top_p, cand, p_prefix)
    k_eff = tl.sum((valid & (p_key >= p_prefix[:, None])).to(tl.int32), 1)
    return tl.minimum(tl.maximum(k_eff, min_blocks), NK)


@triton.jit
def top_k_keep(s, valid, k_eff):
    """``(take, slot)`` per row of fp32 ``s``: the ``k_eff`` largest valid entries (ties go to the lower
    index, as a stable sort) and each kept entry's position among the kept ones, ascending."""
    # Order-preserving int32 keys (negative floats: flip the magnitude bits); invalid entries get
    # INT32_MIN, below every real score including -inf.
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    key = tl.where(valid, key, -2147483648)
    n_nonneg = tl.sum((key >= 0).to(tl.int32), 1)
    prefix = tl.where(n_nonneg >= k_eff, 0, -2147483648)
    for bit in tl.static_range(30, -1, -1):
        cand = prefix | (1 << bit)
        count = tl.sum((key >= cand[:, None]).to(tl.int32), 1)
        prefix = tl.where(count >= k_eff, cand, prefix)
    above = key > prefix[:, None]
    at = key == prefix[:, None]
    n_above = tl.sum(above.to(tl.int32), 1)
    take = above | (at & (tl.cumsum(at.to(tl.int32), 1) <= (k_eff - n_above)[:, None]))
    return take, tl.cumsum(take.to(tl.int32), 1) - 1


@triton.jit
def _select_blocks(
    Scores, LogCount, Indices, Counts,
    stride_sr, stride_ir,
    R, NK, k_fixed, top_p, min_blocks,
    ROWS: tl.constexpr, NK_P2: tl.constexpr, TOP_P: tl.constexpr, HAS_LOGCOUNT: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < R
    rows = rows.to(tl.int64)
    offs = tl.arange(0, NK_P2)
    ok = row_ok[:, None] & (offs < NK)[None, :]
    s = tl.load(Scores + rows[:, None] * stride_sr + offs[None, :], mask=ok, other=float("-inf")).to(tl.float32)
    if HAS_LOGCOUNT:
        s += tl.load(LogCount + offs, mask=offs < NK, other=0.0)[None, :]
    valid = (offs < NK)[None, :]
    if TOP_P:
        k_eff = top_p_counts(s, valid, top_p, min_blocks, NK)
    else:
        k_eff = tl.full([ROWS], k_fixed, dtype=tl.int32)
    take, slot = top_k_keep(s, valid, k_eff)
    tl.store(Indices + rows[:, None] * stride_ir + slot, offs[None, :], mask=take & row_ok[:, None])
    tl.store(Counts + rows, k_eff, mask=row_ok)


def block_rows(scores: torch.Tensor, max_blocks: int) -> tuple[list[int], int, torch.Tensor]:
    """``(lead dims, NK, rows)``: a ``(..., NK)`` map as a ``(rows, NK)`` matrix with a contiguous last
    dimension, the shape one program per row reads; a ValueError past ``max_blocks`` key blocks."""
    *lead, nk = scores.shape
    if nk > max_blocks:
        raise ValueError(f"at most {max_blocks} key blocks per row are supported, got {nk}")
    rows = scores.reshape(-1, nk)
    return lead, nk, rows if rows.stride(-1) == 1 else rows.contiguous()


def empty_block_lists(
    lead: tuple[int, ...], width: int, top_k: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 ``(indices (*lead, width), counts (*lead))`` for a select kernel to fill: top-k writes every
    slot of its rows (left uninitialised); top-p leaves each row's tail at -1."""
    shape = (*lead, width)
    indices = (
        torch.empty(shape, dtype=torch.int32, device=device)
        if top_k
        else torch.full(shape, -1, dtype=torch.int32, device=device)
    )
    return indices, torch.empty(lead, dtype=torch.int32, device=device)


def launch_for(table: dict[int, Any], nk_p2: int) -> Any:
    """The launch a table keyed by the widest padded row width it serves gives rows ``nk_p2`` wide."""
    return next(launch for width, launch in sorted(table.items()) if nk_p2 <= width)


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
    indices, counts = empty_block_lists((rows.shape[0],), width, density is not None, scores.device)
    nk_p2 = triton.next_power_of_2(nk)
    _select_blocks[(triton.cdiv(rows.shape[0], SELECT_ROWS),)](
        rows, log_counts if log_counts is not None else rows, indices, counts,
        rows.stride(0), indices.stride(0),
        rows.shape[0], nk, width if density is not None else 0, float(top_p or 0.0), min(min_blocks, nk),
        ROWS=SELECT_ROWS, NK_P2=nk_p2, TOP_P=top_p is not None, HAS_LOGCOUNT=log_counts is not None,
        num_warps=launch_for(SELECT_WARPS, nk_p2),
    )  # fmt: skip
    return indices.view(*lead, width), counts.view(*lead)
