"""Block-sparse FlashAttention backward (Triton): dq, dk, dv for the forward's block lists.

Three launches, after the FlashAttention-2 backward:
    1. ``delta = rowsum(dout * out) - dlse`` per query row (fp32). The ``dlse`` term is the
       gradient reaching the forward's LSE output (e.g. through an LSE merge): since
       ``d lse_i / d s_ij = p_ij``, it folds into ``ds = p * (dp - delta)``.
    2. dq: one program per query block walks that block's key-block list, as the forward does.
    3. dk, dv: one program per key block walks the transposed list (the query blocks that attend
       to it, :func:`~dit_accel.kernels.reference.transpose_block_lists`), so no atomics are needed.
Probabilities are recomputed from the forward's LSE with exp2 and the scale folded in; all
accumulation is fp32. Query rows whose LSE is ``-inf`` (they attended to nothing) get zero gradient.

Reference: :func:`dit_accel.kernels.reference.block_sparse_attention_backward_reference`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .block_sparse_attention import dot_precision
from .reference import transpose_block_lists

LOG2E = 1.4426950408889634
PREPROCESS_ROWS = 64


@dataclass(frozen=True)
class BackwardLaunch:
    """Launch parameters of the dq and dk/dv kernels (swept on the GPU by ``benchmarks/check_sla_launch.py``).

    None picks per call (:meth:`for_blocks`). The defaults come from the H200 sweeps at the Wan-1.3B
    shape, k_high 0.05 lists (``benchmarks/results/kernel/methods_h200_s30/check_sla_launch_exact_128x64.json``
    and ``..._128x128.json``): at 128x64 the whole backward took 3.42 ms with one stage and 32-row steps,
    3.31 with 3 stages on the 8-warp dq kernel alone, 3.29 with 64-row dk/dv steps alone; 4 warps with
    3 stages on the dq kernel was the slowest launch (5.05 ms), hence stages only with 8 warps.

    Attributes:
        dq_warps, dkdv_warps: warps per program; None picks 8 once the kernel's fp32 accumulators
            exceed 64 x 128 (no spills on sm_90, ``ptxas -v``) and 4 otherwise.
        dq_stages: software-pipelining stages of the dq kernel's block-list loop; None picks 3 with
            8 warps up to head_dim 128 (shared memory), else 1.
        dkdv_stages: the same for the dk/dv kernel (1 was the fastest with the other defaults at both
            block sizes).
        dkdv_sub_m: query rows per step of the dk/dv kernel (a query block is walked in such tiles; at
            most the query block, which must be whole steps).
    """

    dq_warps: int | None = None
    dq_stages: int | None = None
    dkdv_warps: int | None = None
    dkdv_stages: int = 1
    dkdv_sub_m: int = 64

    def __post_init__(self) -> None:
        for name in ("dq_warps", "dkdv_warps"):
            warps = getattr(self, name)
            if warps is not None and warps not in (1, 2, 4, 8, 16):
                raise ValueError(f"{name} must be a power of two up to 16, got {warps}")
        if (self.dq_stages is not None and self.dq_stages < 1) or self.dkdv_stages < 1:
            raise ValueError("pipelining stages must be at least 1")
        if self.dkdv_sub_m < 16:
            raise ValueError(f"dkdv_sub_m must be at least 16 rows, got {self.dkdv_sub_m}")

    def for_blocks(self, block_m: int, block_n: int, head_dim: int) -> BackwardLaunch:
        """Every parameter decided for ``block_m`` x ``block_n`` blocks at ``head_dim``."""
        sub_m = min(block_m, self.dkdv_sub_m)
        if block_m % sub_m:
            raise ValueError(f"the query block ({block_m}) must be whole steps of the dk/dv kernel ({sub_m} rows)")
        dq_warps = self.dq_warps or _spill_free_warps(block_m, head_dim)
        dq_stages = self.dq_stages or (3 if dq_warps == 8 and head_dim <= 128 else 1)
        dkdv_warps = self.dkdv_warps or _spill_free_warps(block_n, head_dim)
        return BackwardLaunch(dq_warps, dq_stages, dkdv_warps, self.dkdv_stages, sub_m)


def _spill_free_warps(accumulator_rows: int, head_dim: int) -> int:
    """8 warps once ``accumulator_rows`` x ``head_dim`` fp32 accumulators exceed 64 x 128, else 4."""
    return 8 if accumulator_rows * head_dim > 64 * 128 else 4


LAUNCH = BackwardLaunch()


@triton.jit
def _tile(base, rows, stride_s, offs_d):
    """Pointers to the ``rows`` x head-dim tile of one (batch, head) slice starting at ``base``."""
    return base + rows[:, None] * stride_s + offs_d[None, :]


@triton.jit
def _bwd_preprocess(
    Out, DOut, DLse, Delta,
    stride_ob, stride_oh, stride_os,
    stride_gb, stride_gh, stride_gs,
    stride_lb, stride_lh,
    H, S,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, HAS_DLSE: tl.constexpr,
):  # fmt: skip
    """Grid (row tiles, B * H): ``Delta`` ``(B*H, S)`` fp32 = rowsum(dout * out) - dlse."""
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = (pid_s * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = rows < S
    o = tl.load(_tile(Out + b * stride_ob + h * stride_oh, rows, stride_os, offs_d), mask=ok[:, None])
    do = tl.load(_tile(DOut + b * stride_gb + h * stride_gh, rows, stride_gs, offs_d), mask=ok[:, None])
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    if HAS_DLSE:
        delta -= tl.load(DLse + b * stride_lb + h * stride_lh + rows, mask=ok, other=0.0).to(tl.float32)
    tl.store(Delta + pid_bh.to(tl.int64) * S + rows, delta, mask=ok)


@triton.jit
def _row_stats(Lse, Delta, stride_lb, stride_lh, b, h, pid_bh, rows, row_ok, S):
    """LSE in log2 units (+inf for padded or empty rows, so their p is 0) and delta of query rows."""
    lse = tl.load(Lse + b * stride_lb + h * stride_lh + rows, mask=row_ok, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
    delta = tl.load(Delta + pid_bh.to(tl.int64) * S + rows, mask=row_ok, other=0.0)
    return lse, delta


@triton.jit
def _block_sparse_attn_bwd_dq(
    Q, K, V, DOut, Lse, Delta, DQ, BlockIdx, BlockCnt, KeyBias,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_gb, stride_gh, stride_gs,
    stride_dqb, stride_dqh, stride_dqs,
    stride_lb, stride_lh,
    stride_ib, stride_ih, stride_iq,
    stride_cb, stride_ch,
    stride_bb, stride_bh,
    H, Sq, Sk, k_rows, qk_scale, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (query blocks, B * H): dq of one query block over its listed key blocks."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = rows < Sq
    q = tl.load(_tile(Q + b * stride_qb + h * stride_qh, rows, stride_qs, offs_d), mask=row_ok[:, None], other=0.0)
    do = tl.load(
        _tile(DOut + b * stride_gb + h * stride_gh, rows, stride_gs, offs_d),
        mask=row_ok[:, None],
        other=0.0,
    )
    lse, delta = _row_stats(Lse, Delta, stride_lb, stride_lh, b, h, pid_bh, rows, row_ok, Sq)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    count = tl.load(BlockCnt + b * stride_cb + h * stride_ch + pid_m)
    idx_base = BlockIdx + b * stride_ib + h * stride_ih + pid_m * stride_iq
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    for i in range(0, count):
        j = tl.load(idx_base + i)
        cols = (j * BLOCK_N + offs_n).to(tl.int64)
        col_ok = cols < k_rows
        k = tl.load(_tile(k_base, cols, stride_ks, offs_d), mask=col_ok[:, None], other=0.0)
        v = tl.load(_tile(v_base, cols, stride_vs, offs_d), mask=col_ok[:, None], other=0.0)
        bias_log2 = 0.0
        if HAS_BIAS:
            bias_log2 = tl.load(KeyBias + b * stride_bb + h * stride_bh + j) * 1.4426950408889634
        col_bias = tl.where(cols < Sk, bias_log2, float("-inf"))
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        p = tl.math.exp2(qk * qk_scale + col_bias[None, :] - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    dq *= scale
    tl.store(
        _tile(DQ + b * stride_dqb + h * stride_dqh, rows, stride_dqs, offs_d),
        dq.to(DQ.dtype.element_ty),
        mask=row_ok[:, None],
    )


@triton.jit
def _block_sparse_attn_bwd_dkdv(
    Q, K, V, DOut, Lse, Delta, DK, DV, TBlockIdx, TBlockCnt, KeyBias,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_gb, stride_gh, stride_gs,
    stride_dkb, stride_dkh, stride_dks,
    stride_dvb, stride_dvh, stride_dvs,
    stride_lb, stride_lh,
    stride_ib, stride_ih, stride_in,
    stride_cb, stride_ch,
    stride_bb, stride_bh,
    H, Sq, Sk, k_rows, qk_scale, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SUB_M: tl.constexpr,
):  # fmt: skip
    """Grid (key blocks, B * H): dk, dv of one key block over the query blocks that listed it."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    cols = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_m = tl.arange(0, SUB_M)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = cols < k_rows
    k = tl.load(_tile(K + b * stride_kb + h * stride_kh, cols, stride_ks, offs_d), mask=col_ok[:, None], other=0.0)
    v = tl.load(_tile(V + b * stride_vb + h * stride_vh, cols, stride_vs, offs_d), mask=col_ok[:, None], other=0.0)
    bias_log2 = 0.0
    if HAS_BIAS:
        bias_log2 = tl.load(KeyBias + b * stride_bb + h * stride_bh + pid_n) * 1.4426950408889634
    col_bias = tl.where(cols < Sk, bias_log2, float("-inf"))
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    count = tl.load(TBlockCnt + b * stride_cb + h * stride_ch + pid_n)
    idx_base = TBlockIdx + b * stride_ib + h * stride_ih + pid_n * stride_in
    q_base = Q + b * stride_qb + h * stride_qh
    g_base = DOut + b * stride_gb + h * stride_gh
    for t in range(0, count):
        i = tl.load(idx_base + t)
        for m0 in tl.static_range(0, BLOCK_M, SUB_M):  # a query block in SUB_M-row tiles: fewer registers
            rows = (i * BLOCK_M + m0 + offs_m).to(tl.int64)
            row_ok = rows < Sq
            q = tl.load(_tile(q_base, rows, stride_qs, offs_d), mask=row_ok[:, None], other=0.0)
            do = tl.load(_tile(g_base, rows, stride_gs, offs_d), mask=row_ok[:, None], other=0.0)
            lse, delta = _row_stats(Lse, Delta, stride_lb, stride_lh, b, h, pid_bh, rows, row_ok, Sq)
            kq = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
            p_t = tl.math.exp2(kq * qk_scale + col_bias[:, None] - lse[None, :])
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    dk *= scale
    tl.store(
        _tile(DK + b * stride_dkb + h * stride_dkh, cols, stride_dks, offs_d),
        dk.to(DK.dtype.element_ty),
        mask=col_ok[:, None],
    )
    tl.store(
        _tile(DV + b * stride_dvb + h * stride_dvh, cols, stride_dvs, offs_d),
        dv.to(DV.dtype.element_ty),
        mask=col_ok[:, None],
    )


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def block_sparse_attention_backward_triton(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    indices: torch.Tensor,
    counts: torch.Tensor,
    *,
    block_m: int,
    block_n: int,
    key_len: int | None = None,
    scale: float | None = None,
    key_bias: torch.Tensor | None = None,
    dlse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` of :func:`block_sparse_attention_triton` (no ``q_rows``, no extra keys).

    ``out`` and ``lse`` (natural log, ``(B, H, S)``) are the forward's; ``dlse`` is the gradient of
    that LSE, if any. ``key_bias`` gets no gradient. dk/dv rows at or beyond ``key_len`` are 0.
    Launch parameters: the module's :data:`LAUNCH`.
    """
    b, h, seq_q, d = q.shape
    if d not in (16, 32, 64, 128, 256):
        raise ValueError(f"head_dim must be a power of two in [16, 256], got {d}")
    launch = LAUNCH.for_blocks(block_m, block_n, d)
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1 or k.shape != v.shape:
        raise ValueError("q, k and v need a contiguous last dimension, and k and v the same shape")
    dout, out = _last_dim_contiguous(dout), _last_dim_contiguous(out)
    lse = lse.contiguous()
    dlse = dlse.contiguous() if dlse is not None else None
    key_len = k.shape[2] if key_len is None else key_len
    scale = d**-0.5 if scale is None else scale
    num_k_blocks = math.ceil(key_len / block_n)
    indices, counts = indices.contiguous(), counts.contiguous()
    t_indices, t_counts = transpose_block_lists(indices, counts, num_k_blocks)
    bias = key_bias.float().contiguous() if key_bias is not None else counts.float()
    bias_strides = (bias.stride(0), bias.stride(1)) if key_bias is not None else (0, 0)
    dq = torch.empty_like(q)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dk[:, :, num_k_blocks * block_n :].zero_()  # rows no key block covers; the kernel writes the rest
    dv[:, :, num_k_blocks * block_n :].zero_()
    delta = torch.empty(b * h, seq_q, device=q.device, dtype=torch.float32)
    _bwd_preprocess[(triton.cdiv(seq_q, PREPROCESS_ROWS), b * h)](
        out, dout, dlse if dlse is not None else delta, delta,
        out.stride(0), out.stride(1), out.stride(2),
        dout.stride(0), dout.stride(1), dout.stride(2),
        dlse.stride(0) if dlse is not None else 0, dlse.stride(1) if dlse is not None else 0,
        h, seq_q,
        HEAD_DIM=d, BLOCK_S=PREPROCESS_ROWS, HAS_DLSE=dlse is not None,
    )  # fmt: skip
    common = (
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        dout.stride(0), dout.stride(1), dout.stride(2),
    )  # fmt: skip
    sizes = (h, seq_q, key_len, k.shape[2], scale * LOG2E, scale)
    meta = {"HEAD_DIM": d, "BLOCK_M": block_m, "BLOCK_N": block_n, "HAS_BIAS": key_bias is not None,
            "DOT_PRECISION": dot_precision(q)}  # fmt: skip
    _block_sparse_attn_bwd_dq[(triton.cdiv(seq_q, block_m), b * h)](
        q, k, v, dout, lse, delta, dq, indices, counts, bias,
        *common,
        dq.stride(0), dq.stride(1), dq.stride(2),
        lse.stride(0), lse.stride(1),
        indices.stride(0), indices.stride(1), indices.stride(2),
        counts.stride(0), counts.stride(1),
        *bias_strides, *sizes, **meta,
        num_warps=launch.dq_warps, num_stages=launch.dq_stages,
    )  # fmt: skip
    _block_sparse_attn_bwd_dkdv[(num_k_blocks, b * h)](
        q, k, v, dout, lse, delta, dk, dv, t_indices, t_counts, bias,
        *common,
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        lse.stride(0), lse.stride(1),
        t_indices.stride(0), t_indices.stride(1), t_indices.stride(2),
        t_counts.stride(0), t_counts.stride(1),
        *bias_strides, *sizes, **meta, SUB_M=launch.dkdv_sub_m,
        num_warps=launch.dkdv_warps, num_stages=launch.dkdv_stages,
    )  # fmt: skip
    return dq, dk, dv
