"""Rectified SpaAttn's correction of a block-sparse output, in one pass over the key blocks (Triton).

For statistic rows ``x`` (the query rows themselves with ``per_row``, else the query-block means
``q̄_i``) and every key block ``j`` (``n_j`` keys, means ``k̄_j``/``v̄_j``, mean absolute deviation
``δk_j``) plus every valid text key ``t``:

* IPAR: ``P̃_j = n_j e^{s x·k̄_j} / Z`` with ``Z = Σ_j n_j e^{s x·k̄_j} + Σ_t e^{s x·k_t}`` — text keys
  are not pooled, each video block counts its size (a softmax with ``+log n_j``);
* GAPR: a block outside the exact set is compensated when its gain ``|x·k̄_j|`` exceeds its pooling
  error ``|x·δk_j|`` (``+ |δq_i·k̄_j|`` for block means, whose own pooling errs too);
* merge: ``R = 1 - Σ_{compensated} P̃_j`` (the mass of the exact set, the text and the dropped
  blocks), ``C = Σ_{compensated} P̃_j v̄_j``; the output rows become ``R · O_sparse + C``.

One program takes ``ROWS`` statistic rows of one (batch, head), walks all key blocks once with an
online normaliser (text columns included), reads the exact-set mask, and writes the rectified rows
of the exact output. No compensated block leaves a row exactly as it was (R = 1, C = 0).

Reference: :func:`dit_accel.kernels.rectified_reference.rectified_merge_reference` (float64-capable).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .block_map import block_map_triton

Tensor = torch.Tensor

TEXT_CHUNK = 64
APPLY_ROWS = 64
PER_BLOCK_ROWS = 16  # query blocks per program in per-block mode (the smallest tl.dot tile)
# Per row, the dots run in q's dtype (bf16/fp16 on the tensor cores at full rate, statistics cast once on
# the host: every program re-reads them) with fp32 accumulation; launch default 128 rows x 32 key blocks,
# 8 warps, the fastest of the H200 sweep (check_rectified.py). fp32 rows keep the launch that compiled
# without spills in fp32 (ptxas -v, sm_90a, D=128): 64 rows x 16 key blocks. Per block (a cost of query
# blocks, not rows) the dots stay fp32 (3xTF32, about fp32): 16 query blocks x 32 key blocks, 8 warps.
PER_ROW_LAUNCH = (128, 32)  # (rows, key blocks) per program for 16-bit rows
PER_ROW_FP32_LAUNCH = (64, 16)
PER_BLOCK_LAUNCH = (PER_BLOCK_ROWS, 32)


@triton.jit
def _online(m, s):
    """New running max, the factor rescaling what was summed so far, and ``e^{s - max}`` (no NaN on -inf)."""
    m_new = tl.maximum(m, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    return m_new, tl.exp(m - m_safe), tl.exp(s - m_safe[:, None])


@triton.jit
def _rows_of(QRows, rows, ok, HAS_ROWS: tl.constexpr):
    if HAS_ROWS:
        return tl.load(QRows + rows, mask=ok, other=0).to(tl.int64)
    return rows.to(tl.int64)


@triton.jit
def _apply(Exact, Out, o_base, out_base, stride_os, stride_rs, phys, ok, offs_d, d_ok, keep, add):
    """``Out[rows] = keep * Exact[rows] + add`` (fp32 math, stored in Out's dtype)."""
    mask = ok[:, None] & d_ok[None, :]
    o = tl.load(Exact + o_base + phys[:, None] * stride_os + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(Out + out_base + phys[:, None] * stride_rs + offs_d[None, :], (keep * o + add).to(Out.dtype.element_ty),
             mask=mask)  # fmt: skip


@triton.jit
def _rectified_merge(
    Q, QRows, QMean, QMad, KMean, KMad, VMean, Critical, XK, XValid, Exact, Out,
    stride_qb, stride_qh, stride_qs,
    stride_xb, stride_xh, stride_xs,
    stride_ob, stride_oh, stride_os,
    stride_rb, stride_rh, stride_rs,
    H, S, NQ, NK, SE, D, key_len, scale,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, ROWS: tl.constexpr, KEY_CHUNK: tl.constexpr,
    TEXT: tl.constexpr, APPLY: tl.constexpr, HEAD_DIM: tl.constexpr, PER_ROW: tl.constexpr,
    HAS_ROWS: tl.constexpr, HAS_TEXT: tl.constexpr, HAS_VALID: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (row tiles, B * H); a tile is ROWS query rows (PER_ROW) or ROWS query blocks."""
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    offs_d = tl.arange(0, HEAD_DIM)
    d_ok = offs_d < D
    lane = tl.arange(0, ROWS)
    q_base = b * stride_qb + h * stride_qh
    if PER_ROW:
        rows = pid * ROWS + lane
        row_ok = rows < S
        qblk = rows // BLOCK_Q
        phys = _rows_of(QRows, rows, row_ok, HAS_ROWS)
        x = tl.load(Q + q_base + phys[:, None] * stride_qs + offs_d[None, :],
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # fmt: skip
    else:
        qblk = pid * ROWS + lane
        row_ok = qblk < NQ
        stat = (pid_bh * NQ + qblk)[:, None] * D + offs_d[None, :]
        x = tl.load(QMean + stat, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        dq = tl.load(QMad + stat, mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    m = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    total = tl.zeros([ROWS], dtype=tl.float32)  # Z: every video block and text key
    moved = tl.zeros([ROWS], dtype=tl.float32)  # the compensated blocks' share of Z
    acc = tl.zeros([ROWS, HEAD_DIM], dtype=tl.float32)
    if HAS_TEXT:
        valid = SE
        if HAS_VALID:
            valid = tl.minimum(tl.load(XValid + b).to(tl.int32), SE)
        for t0 in range(0, SE, TEXT):
            cols = t0 + tl.arange(0, TEXT)
            t_ok = cols < valid
            kt = tl.load(XK + b * stride_xb + h * stride_xh + cols[:, None] * stride_xs + offs_d[None, :],
                         mask=t_ok[:, None] & d_ok[None, :], other=0.0).to(x.dtype)  # fmt: skip
            s = tl.dot(x, tl.trans(kt), input_precision=PRECISION) * scale
            m, alpha, p = _online(m, tl.where(t_ok[None, :], s, float("-inf")))
            total = total * alpha + tl.sum(p, 1)
            moved = moved * alpha
            acc = acc * alpha[:, None]

    for j0 in range(0, NK, KEY_CHUNK):
        cols = j0 + tl.arange(0, KEY_CHUNK)
        c_ok = cols < NK
        kv = (pid_bh * NK + cols)[:, None] * D + offs_d[None, :]
        kv_ok = c_ok[:, None] & d_ok[None, :]
        km = tl.load(KMean + kv, mask=kv_ok, other=0.0)
        dots = tl.dot(x, tl.trans(km), input_precision=PRECISION)
        err = tl.abs(tl.dot(x, tl.trans(tl.load(KMad + kv, mask=kv_ok, other=0.0)), input_precision=PRECISION))
        if not PER_ROW:
            err += tl.abs(tl.dot(dq, tl.trans(km), input_precision=PRECISION))
        n = tl.where(c_ok, tl.minimum(key_len - cols * BLOCK_K, BLOCK_K), 1).to(tl.float32)
        s = tl.where(c_ok[None, :], dots * scale + tl.log(n)[None, :], float("-inf"))
        critical = tl.load(Critical + (pid_bh * NQ + qblk)[:, None] * NK + cols[None, :],
                           mask=row_ok[:, None] & c_ok[None, :], other=1)  # fmt: skip
        m, alpha, p = _online(m, s)
        p_moved = tl.where((critical == 0) & (tl.abs(dots) > err), p, 0.0)
        total = total * alpha + tl.sum(p, 1)
        moved = moved * alpha + tl.sum(p_moved, 1)
        v_mean = tl.load(VMean + kv, mask=kv_ok, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p_moved.to(v_mean.dtype), v_mean, input_precision=PRECISION)

    z = tl.where(total > 0.0, total, 1.0)
    keep = 1.0 - moved / z
    add = acc / z[:, None]
    o_base = b * stride_ob + h * stride_oh
    out_base = b * stride_rb + h * stride_rh
    if PER_ROW:
        _apply(Exact, Out, o_base, out_base, stride_os, stride_rs, phys, row_ok, offs_d, d_ok, keep[:, None], add)
    else:
        for i in range(ROWS):
            pick = lane == i
            keep_i = tl.sum(tl.where(pick, keep, 0.0), 0)
            add_i = tl.sum(tl.where(pick[:, None], add, 0.0), 0)
            for a0 in range(0, BLOCK_Q, APPLY):
                block_rows = (pid * ROWS + i) * BLOCK_Q + a0 + tl.arange(0, APPLY)
                ok = block_rows < S
                block_phys = _rows_of(QRows, block_rows, ok, HAS_ROWS)
                _apply(Exact, Out, o_base, out_base, stride_os, stride_rs, block_phys, ok, offs_d, d_ok, keep_i,
                       add_i[None, :])  # fmt: skip


def rectified_merge_triton(
    out: Tensor,
    q: Tensor,
    q_mean: Tensor,
    q_mad: Tensor,
    k_mean: Tensor,
    k_mad: Tensor,
    v_mean: Tensor,
    indices: Tensor,
    counts: Tensor,
    *,
    block_q: int,
    block_k: int,
    key_len: int,
    scale: float,
    per_row: bool,
    q_rows: Tensor | None = None,
    extra_k: Tensor | None = None,
    extra_valid: Tensor | None = None,
    rows_per_program: int | None = None,
    key_chunk: int | None = None,
    num_warps: int | None = None,
) -> Tensor:
    """The rectified output: a tensor like ``out`` whose video rows are ``R · out + C``.

    ``out`` is the exact block-sparse output, in ``q``'s rows (``q_rows`` maps logical query row r to
    row ``q_rows[r]``; other rows of the result are unspecified, as in the backend's output). Block
    statistics are fp32 ``(B, H, N, D)`` contiguous (:func:`~.rectified_stats.block_stats_triton`);
    ``indices``/``counts`` list each query block's exact key blocks. ``rows_per_program``,
    ``key_chunk`` and ``num_warps`` override the launch configuration (benchmark sweeps).
    """
    b, h, _, d = q.shape
    seq = q.shape[2] if q_rows is None else q_rows.numel()
    nq, nk = q_mean.shape[2], k_mean.shape[2]
    critical = block_map_triton(indices, counts, nk)
    head_dim = max(16, triton.next_power_of_2(d))
    row_launch = (PER_ROW_FP32_LAUNCH if q.dtype == torch.float32 else PER_ROW_LAUNCH) if per_row else PER_BLOCK_LAUNCH
    rows, key_chunk = rows_per_program or row_launch[0], key_chunk or row_launch[1]
    if per_row:  # the dots in q's dtype (see the launch notes above)
        k_mean, k_mad, v_mean = (x.to(q.dtype).contiguous() for x in (k_mean, k_mad, v_mean))
    num_warps = num_warps or 8
    result = torch.empty_like(out)
    has_text = extra_k is not None and extra_k.shape[2] > 0
    grid = (triton.cdiv(seq if per_row else nq, rows), b * h)
    _rectified_merge[grid](
        q, q_rows if q_rows is not None else counts, q_mean, q_mad, k_mean, k_mad, v_mean, critical,
        extra_k if has_text else q, extra_valid if extra_valid is not None else counts, out, result,
        q.stride(0), q.stride(1), q.stride(2),
        *((extra_k.stride(0), extra_k.stride(1), extra_k.stride(2)) if has_text else (0, 0, 0)),
        out.stride(0), out.stride(1), out.stride(2),
        result.stride(0), result.stride(1), result.stride(2),
        h, seq, nq, nk, extra_k.shape[2] if has_text else 0, d, key_len, scale,
        BLOCK_Q=block_q, BLOCK_K=block_k, ROWS=rows, KEY_CHUNK=key_chunk,
        TEXT=TEXT_CHUNK, APPLY=min(APPLY_ROWS, block_q), HEAD_DIM=head_dim, PER_ROW=per_row,
        HAS_ROWS=q_rows is not None, HAS_TEXT=has_text, HAS_VALID=has_text and extra_valid is not None,
        PRECISION="tf32" if per_row else "tf32x3",
        num_warps=num_warps, num_stages=2,
    )  # fmt: skip
    return result
