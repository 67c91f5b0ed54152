"""Block means and mean absolute deviations of Q and K, and block means of V, in one read (Triton).

Rectified SpaAttn's gain-versus-error test (GAPR) needs per block the mean vector ``x̄`` and the
mean absolute deviation vector ``mean_t |x_t - x̄|`` of its queries and of its keys, and the mean
value of each key block. One program loads a whole block once, takes its mean, then the deviations
from the same registers. Grid ``(NQ + NK, B * H)``: programs below NQ take a query block (rows
gathered through ``q_rows``), the others a key block and the same rows of V.

Reference: :func:`dit_accel.kernels.rectified_reference.block_stats_reference` (float64-capable).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

Tensor = torch.Tensor


@triton.jit
def _stats_of_block(
    X, Rows, Mean, Mad, x_base, out_base, stride_s, blk, S, offs_d, d_ok,
    BLOCK: tl.constexpr, HAS_ROWS: tl.constexpr, WITH_MAD: tl.constexpr,
):  # fmt: skip
    """Mean (and mean absolute deviation) of rows ``[blk * BLOCK, min(S, (blk + 1) * BLOCK))``, read once."""
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    ok = offs < S
    if HAS_ROWS:
        rows = tl.load(Rows + offs, mask=ok, other=0).to(tl.int64)
    else:
        rows = offs.to(tl.int64)
    x = tl.load(X + x_base + rows[:, None] * stride_s + offs_d[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
    x = x.to(tl.float32)
    n = tl.sum(ok.to(tl.float32), axis=0)
    mean = tl.sum(x, axis=0) / n
    tl.store(Mean + out_base + offs_d, mean, mask=d_ok)
    if WITH_MAD:
        dev = tl.where(ok[:, None], tl.abs(x - mean[None, :]), 0.0)
        tl.store(Mad + out_base + offs_d, tl.sum(dev, axis=0) / n, mask=d_ok)


@triton.jit
def _block_stats(
    Q, K, V, QRows, QMean, QMad, KMean, KMad, VMean,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    H, Sq, Sk, NQ, NK, D,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_ROWS: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM)
    d_ok = offs_d < D
    if pid < NQ:
        out_base = (pid_bh.to(tl.int64) * NQ + pid) * D
        _stats_of_block(Q, QRows, QMean, QMad, b * stride_qb + h * stride_qh, out_base, stride_qs, pid, Sq,
                        offs_d, d_ok, BLOCK_Q, HAS_ROWS, True)  # fmt: skip
    else:
        j = pid - NQ
        out_base = (pid_bh.to(tl.int64) * NK + j) * D
        _stats_of_block(K, QRows, KMean, KMad, b * stride_kb + h * stride_kh, out_base, stride_ks, j, Sk,
                        offs_d, d_ok, BLOCK_K, False, True)  # fmt: skip
        _stats_of_block(V, QRows, VMean, VMean, b * stride_vb + h * stride_vh, out_base, stride_vs, j, Sk,
                        offs_d, d_ok, BLOCK_K, False, False)  # fmt: skip


def block_stats_triton(
    q: Tensor, k: Tensor, v: Tensor, block_q: int, block_k: int, key_len: int, q_rows: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(q_mean, q_mad, k_mean, k_mad, v_mean)``, fp32 ``(B, H, N, D)`` contiguous.

    q ``(B, H, Sq, D)`` (query rows ``q_rows`` of it when given), k/v ``(B, H, >= key_len, D)``,
    last dimension contiguous; key blocks cover the first ``key_len`` rows.
    """
    for t in (q, k, v):
        if t.stride(-1) != 1:
            raise ValueError("q, k and v need a contiguous last (head) dimension")
    b, h, _, d = q.shape
    seq_q = q.shape[2] if q_rows is None else q_rows.numel()
    nq, nk = math.ceil(seq_q / block_q), math.ceil(key_len / block_k)
    q_mean, q_mad = (torch.empty(b, h, nq, d, device=q.device, dtype=torch.float32) for _ in range(2))
    k_mean, k_mad, v_mean = (torch.empty(b, h, nk, d, device=q.device, dtype=torch.float32) for _ in range(3))
    head_dim = max(16, triton.next_power_of_2(d))
    _block_stats[(nq + nk, b * h)](
        q, k, v, q_rows if q_rows is not None else q_mean, q_mean, q_mad, k_mean, k_mad, v_mean,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        h, seq_q, key_len, nq, nk, d,
        BLOCK_Q=block_q, BLOCK_K=block_k, HEAD_DIM=head_dim, HAS_ROWS=q_rows is not None,
        num_warps=8 if max(block_q, block_k) * head_dim >= 128 * 128 else 4,
    )  # fmt: skip
    return q_mean, q_mad, k_mean, k_mad, v_mean
