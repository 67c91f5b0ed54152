"""Block routing in one read of Q and K: pool, score and select in two launches (Triton).

For q, k ``(B, H, S, D)`` whose tokens are already in block order, routing is
``top-k_j(scale * q̄_i k̄_jᵀ + log n_j)`` over block means.
    1. one bandwidth-bound launch pools Q and K together (:data:`POOL_LAYOUT`: by default one
       program per token block reads whole token rows of every head), writing fp32 means;
       :func:`pool_qk_triton` is also the first step of the methods' composed routing (pool, the tiled
       scores of ``block_scores``, the select kernel of ``block_selection``), the faster path on the H200;
    2. :func:`route_blocks_triton` adds one launch per tile of score rows (:data:`SCORE_LAUNCH`) that
       computes those rows' scores from q̄ and all k̄ (fp32, IEEE dot: the ranking must match the
       reference's), adds ``log n_j`` and selects top-k or top-p with an exact radix search over
       order-preserving integer keys, writing the block lists in :func:`select_blocks`' layout.

Reference: :func:`dit_accel.kernels.reference.route_blocks_reference`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .block_selection import empty_block_lists, launch_for, top_k_keep, top_p_counts
from .reference import check_query_key_pair, keep_count

POOL_CHUNK = 32
# How the pooling launch walks Q and K (measured on the H200, benchmarks/check_routing.py):
#   "token_rows": one program per token block of one batch reads whole token rows (every head), so
#                 consecutive loads are contiguous in Diffusers' (B, S, H, D) layout;
#   "head_blocks": one program per (block, batch x head), the block index fastest; also serves token rows
#                  wider than POOL_TILE.
# H200, Wan-1.3B shape (B=1, 12 heads x 128), 128x128 blocks: token_rows 62.5 us (3.2 TB/s), head_blocks
# 77 us; 128x64: 62.9 / 69 us (benchmarks/results/kernel/engine_h200_s21/check_routing.json). Wider rows
# (24 heads: HunyuanVideo, FLUX) load one row at a time; not timed yet.
POOL_LAYOUT = "token_rows"
POOL_TILE = 4096  # elements of one token-rows load (rows x heads x head_dim)
POOL_WARPS = 4
# The token-rows loop: None unrolls it (every load of a block issued up front: 128 registers and
# spills at the Wan shape); an int runs it as a loop software-pipelined over that many loads (48-88
# registers, no spills). Stop 22, 128x128 / 128x64 blocks: unrolled on 8 warps 62.4 / 62.7 us, a
# 4-stage loop on 4 warps 60.6 / 62.0 us, 2 stages 72-73 us (engine_h200_s22/check_routing.json).
POOL_STAGES: int | None = 4
# Score+select launch (rows of the score map per program, warps) by the padded row width NK_P2. Top-k,
# same measurements: 256 wide, 8 rows on 4 warps 49 us (16 on 8: 62 us). 512 wide keeps the earlier
# 16 rows on 16 warps: 8 on 8 took top-p from 0.25 to 0.30 ms (gpu_check_split_lists.json).
SCORE_LAUNCH = {256: (8, 4), 512: (16, 16)}
MAX_ROUTED_KEY_BLOCKS = 512  # widest score row the fused kernel takes


@triton.jit
def _pool_block(
    X, Mean, x_base, m_base, stride_xs, blk, S, offs_d, d_ok,
    BLOCK: tl.constexpr, CHUNK: tl.constexpr, HEAD_DIM: tl.constexpr,
):  # fmt: skip
    """fp32 mean of rows ``[blk * BLOCK, min(S, (blk + 1) * BLOCK))`` of one (batch, head)."""
    start = blk * BLOCK
    end = tl.minimum(S, start + BLOCK)
    acc = tl.zeros([CHUNK, HEAD_DIM], dtype=tl.float32)
    for r0 in tl.static_range(0, BLOCK, CHUNK):
        rows = (start + r0 + tl.arange(0, CHUNK)).to(tl.int64)
        ok = (rows < end)[:, None] & d_ok[None, :]
        acc += tl.load(X + x_base + rows[:, None] * stride_xs + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
    n = tl.minimum(S - start, BLOCK).to(tl.float32)
    tl.store(Mean + m_base + offs_d, tl.sum(acc, axis=0) / n, mask=d_ok)


@triton.jit
def _pool_qk(
    Q, K, QMean, KMean,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    H, Sq, Sk, NQ, NK, D,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """Grid (NQ + NK, B * H): block ids below NQ pool a query block, the rest a key block."""
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM)
    d_ok = offs_d < D
    if pid < NQ:
        m_base = (pid_bh.to(tl.int64) * NQ + pid) * D
        _pool_block(
            Q, QMean, b * stride_qb + h * stride_qh, m_base, stride_qs, pid, Sq, offs_d, d_ok, BLOCK_Q, CHUNK, HEAD_DIM
        )
    else:
        j = pid - NQ
        m_base = (pid_bh.to(tl.int64) * NK + j) * D
        _pool_block(
            K, KMean, b * stride_kb + h * stride_kh, m_base, stride_ks, j, Sk, offs_d, d_ok, BLOCK_K, CHUNK, HEAD_DIM
        )


@triton.jit
def _add_token_rows(acc, X, x_base, stride_xs, col_off, col_ok, first, end, ROWS: tl.constexpr):
    """``acc`` plus ``ROWS`` token rows from ``first`` (rows from ``end`` on read as zeros)."""
    rows = (first + tl.arange(0, ROWS)).to(tl.int64)
    ok = (rows < end)[:, None] & col_ok[None, :]
    return acc + tl.load(X + x_base + rows[:, None] * stride_xs + col_off[None, :], mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _pool_token_block(
    X, Mean, x_base, stride_xs, stride_xh, blk, S, H, N, D, bh0,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, HEADS_P2: tl.constexpr, HEAD_DIM: tl.constexpr,
    STAGES: tl.constexpr,
):  # fmt: skip
    """fp32 means of every head over rows ``[blk * BLOCK, min(S, (blk + 1) * BLOCK))`` of one batch,
    ``ROWS`` whole token rows (all heads) per load, the loop unrolled (``STAGES`` 0) or
    software-pipelined over ``STAGES`` loads; means go to ``Mean[bh0 + h, blk]``."""
    cols = tl.arange(0, HEADS_P2 * HEAD_DIM)
    h = cols // HEAD_DIM
    d = cols % HEAD_DIM
    col_ok = (h < H) & (d < D)
    col_off = h.to(tl.int64) * stride_xh + d
    start = blk * BLOCK
    end = tl.minimum(S, start + BLOCK)
    acc = tl.zeros([ROWS, HEADS_P2 * HEAD_DIM], dtype=tl.float32)
    if STAGES == 0:
        for r0 in tl.static_range(0, BLOCK, ROWS):
            acc = _add_token_rows(acc, X, x_base, stride_xs, col_off, col_ok, start + r0, end, ROWS)
    else:
        for r0 in tl.range(0, BLOCK, ROWS, num_stages=STAGES):
            acc = _add_token_rows(acc, X, x_base, stride_xs, col_off, col_ok, start + r0, end, ROWS)
    n = tl.minimum(S - start, BLOCK).to(tl.float32)
    out = Mean + ((bh0 + h).to(tl.int64) * N + blk) * D + d
    tl.store(out, tl.sum(acc, axis=0) / n, mask=col_ok)


@triton.jit
def _pool_qk_token_rows(
    Q, K, QMean, KMean,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    H, Sq, Sk, NQ, NK, D,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, ROWS: tl.constexpr, HEADS_P2: tl.constexpr,
    HEAD_DIM: tl.constexpr, STAGES: tl.constexpr,
):  # fmt: skip
    """Grid (NQ + NK, B): block ids below NQ pool a query block of every head, the rest a key block."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    if pid < NQ:
        _pool_token_block(
            Q, QMean, b * stride_qb, stride_qs, stride_qh, pid, Sq, H, NQ, D, b * H, BLOCK_Q, ROWS, HEADS_P2, HEAD_DIM,
            STAGES,
        )  # fmt: skip
    else:
        _pool_token_block(
            K, KMean, b * stride_kb, stride_ks, stride_kh, pid - NQ, Sk, H, NK, D, b * H, BLOCK_K, ROWS, HEADS_P2,
            HEAD_DIM, STAGES,
        )  # fmt: skip


@triton.jit
def _score_select(
    QMean, KMean, Indices, Counts,
    NQ, NK, D, Sk, scale, k_fixed, top_p, min_blocks, width,
    BLOCK_K: tl.constexpr, ROWS: tl.constexpr, NK_P2: tl.constexpr, D_CHUNK: tl.constexpr,
    HEAD_DIM: tl.constexpr, TOP_P: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(NQ, ROWS), B * H): scores of ROWS query blocks against every key block, then
    the kept key blocks of each row, ascending (ties go to the lower index, as a stable sort)."""
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    rows = pid * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, NK_P2)
    row_ok = rows < NQ
    valid = cols < NK
    q_base = QMean + (pid_bh * NQ) * D
    k_base = KMean + (pid_bh * NK) * D
    s = tl.zeros([ROWS, NK_P2], dtype=tl.float32)
    for d0 in tl.static_range(0, HEAD_DIM, D_CHUNK):
        offs_d = d0 + tl.arange(0, D_CHUNK)
        d_ok = offs_d < D
        qm = tl.load(q_base + rows[:, None] * D + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        km = tl.load(k_base + cols[:, None] * D + offs_d[None, :], mask=valid[:, None] & d_ok[None, :], other=0.0)
        s = tl.dot(qm, tl.trans(km), s, input_precision="ieee")
    n_j = tl.minimum(Sk - cols * BLOCK_K, BLOCK_K).to(tl.float32)
    s = tl.where(valid[None, :], s * scale + tl.log(tl.where(valid, n_j, 1.0))[None, :], float("-inf"))
    if TOP_P:
        k_eff = top_p_counts(s, valid[None, :], top_p, min_blocks, NK)
    else:
        k_eff = tl.full([ROWS], k_fixed, dtype=tl.int32)
    take, slot = top_k_keep(s, valid[None, :], k_eff)
    out_rows = pid_bh * NQ + rows
    tl.store(Indices + out_rows[:, None] * width + slot, cols[None, :], mask=take & row_ok[:, None])
    tl.store(Counts + out_rows, k_eff, mask=row_ok)


def pool_qk_triton(q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 query- and key-block means ``(B, H, N, D)`` of block-ordered q, k in one launch (one read of each).

    q, k ``(B, H, S, D)`` with a contiguous last dimension (any other strides).
    """
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise ValueError("q and k need a contiguous last (head) dimension")
    check_query_key_pair(q, k)
    b, h, seq_q, d = q.shape
    seq_k = k.shape[2]
    nq, nk = math.ceil(seq_q / block_q), math.ceil(seq_k / block_k)
    q_mean = torch.empty(b, h, nq, d, device=q.device, dtype=torch.float32)
    k_mean = torch.empty(b, h, nk, d, device=q.device, dtype=torch.float32)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))
    head_dim = max(16, triton.next_power_of_2(d))
    width = triton.next_power_of_2(h) * head_dim  # one token row of every head, padded
    if POOL_LAYOUT == "token_rows" and width <= POOL_TILE:
        rows = min(POOL_TILE // width, triton.next_power_of_2(min(block_q, block_k)))
        _pool_qk_token_rows[(nq + nk, b)](
            q, k, q_mean, k_mean, *strides, h, seq_q, seq_k, nq, nk, d,
            BLOCK_Q=block_q, BLOCK_K=block_k, ROWS=rows, HEADS_P2=width // head_dim, HEAD_DIM=head_dim,
            STAGES=POOL_STAGES or 0, num_warps=POOL_WARPS,
        )  # fmt: skip
    else:
        _pool_qk[(nq + nk, b * h)](
            q, k, q_mean, k_mean, *strides, h, seq_q, seq_k, nq, nk, d,
            BLOCK_Q=block_q, BLOCK_K=block_k, HEAD_DIM=head_dim, CHUNK=min(POOL_CHUNK, block_q, block_k),
            num_warps=4,
        )  # fmt: skip
    return q_mean, k_mean


def score_select_launch(
    q_mean: torch.Tensor,
    k_mean: torch.Tensor,
    indices: torch.Tensor,
    counts: torch.Tensor,
    seq_k: int,
    block_k: int,
    scale: float,
    width: int,
    top_p: float | None,
    min_blocks: int,
) -> None:
    """Fill ``indices`` ``(B, H, NQ, width)`` and ``counts`` from fp32 block means: top-``width`` blocks
    (``top_p`` None) or the top-``top_p`` mass, ``log n_j`` added, in one launch."""
    b, h, nq, d = q_mean.shape
    nk = k_mean.shape[2]
    head_dim = max(16, triton.next_power_of_2(d))
    nk_p2 = max(16, triton.next_power_of_2(nk))
    rows, warps = launch_for(SCORE_LAUNCH, nk_p2)
    _score_select[(triton.cdiv(nq, rows), b * h)](
        q_mean, k_mean, indices, counts,
        nq, nk, d, seq_k, scale, width if top_p is None else 0, float(top_p or 0.0), min(min_blocks, nk), width,
        BLOCK_K=block_k, ROWS=rows, NK_P2=nk_p2, D_CHUNK=min(head_dim, 32 if nk_p2 <= 128 else 16),
        HEAD_DIM=head_dim, TOP_P=top_p is not None, num_warps=warps,
    )  # fmt: skip


def route_blocks_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    block_q: int,
    block_k: int,
    scale: float,
    *,
    density: float | None = None,
    top_p: float | None = None,
    min_blocks: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(indices, counts, q_mean, k_mean)`` for block-ordered q, k ``(B, H, S, D)`` (last dim contiguous).

    ``indices`` ``(B, H, NQ, W)`` int32 ascending (``W`` = keep count for ``density``, every slot
    written; NK for ``top_p``, -1 past each row's count), ``counts`` ``(B, H, NQ)`` int32, means fp32 ``(B, H, N, D)``.
    """
    if (density is None) == (top_p is None):
        raise ValueError("pass exactly one of density or top_p")
    b, h, seq_q, _ = q.shape
    seq_k = k.shape[2]
    nq, nk = math.ceil(seq_q / block_q), math.ceil(seq_k / block_k)
    if nk > MAX_ROUTED_KEY_BLOCKS:
        raise ValueError(f"at most {MAX_ROUTED_KEY_BLOCKS} key blocks are supported, got {nk}")
    q_mean, k_mean = pool_qk_triton(q, k, block_q, block_k)  # checks the layouts and shapes of q and k
    width = keep_count(nk, density, min_blocks) if density is not None else nk
    indices, counts = empty_block_lists((b, h, nq), width, density is not None, q.device)
    score_select_launch(q_mean, k_mean, indices, counts, seq_k, block_k, scale, width, top_p, min_blocks)
    return indices, counts, q_mean, k_mean
