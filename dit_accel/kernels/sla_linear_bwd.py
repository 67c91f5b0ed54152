"""SLA's linear branch, backward (Triton): dq per query block, dk and dv per key block.

With P = φ(Q_i), num = P H_i, den = P Z_i + eps, O = num / den and g = dO:

    dnum = g / den,  dden = -(g · O) / den
    dP   = dnum H_iᵀ + dden Z_iᵀ          -> dq through φ        (``_linear_output_bwd``)
    dH_i = Pᵀ dnum,  dZ_i = Pᵀ dden         per query block       (same program)
    [dh_j | dz_j] = marginalᵀ @ [dH | dZ]                         (cuBLAS, as in the forward)
    dφ(K_j) = V_j dh_jᵀ + 1 dz_jᵀ           -> dk through φ        (``_key_summary_bwd``)
    dV_j    = φ(K_j) dh_j

Through φ: softmax ``dx = φ (dφ - Σ dφ φ)``; elu + 1 ``dx = dφ`` where x > 0 else ``dφ φ``; relu
``dx = dφ`` where x > 0 else 0. The forward's summaries and sums are recomputed, not stored (two
(NK or NQ, D*D + D) tensors per layer would be kept for every layer during training).

Reference: :func:`dit_accel.kernels.sla_linear_reference.sla_linear_backward_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .sla_linear import (
    FEATURE_MAPS,
    check_inputs,
    dot_precision,
    key_rows,
    key_summary_triton,
    launch_warps,
    load_rows,
    marginal_sums,
    phi,
    program_block,
    query_rows,
    summary_dtype,
    summary_offsets,
)

# Query rows per step of the dq kernel (fewer live row tiles next to its D x D ones). H200 sweep at the
# Wan-1.3B shape (benchmarks/check_sla_launch.py, results/kernel/methods_h200_s29/check_sla_launch.json):
# the whole linear-branch backward at 8 warps takes 1.00 ms with 32 rows, 1.25 with 64, 1.15 with 16.
ROWS_PER_STEP = 32


@triton.jit
def phi_grad(p, dp, FEATURE: tl.constexpr):
    """dL/dx from dL/dφ, from ``p = φ(x)`` alone (x > 0 is p > 1 for elu + 1, p > 0 for relu), so x
    need not stay live; rows where p was zeroed give 0."""
    if FEATURE == 0:
        dx = p * (dp - tl.sum(dp * p, 1)[:, None])
    elif FEATURE == 1:
        dx = tl.where(p > 1.0, dp, dp * p)
    else:
        dx = tl.where(p > 0.0, dp, 0.0)
    return dx


@triton.jit
def store_rows(base, rows, row_ok, stride_s, x, HEAD_DIM: tl.constexpr):
    cols = tl.arange(0, HEAD_DIM)
    tl.store(base + rows[:, None] * stride_s + cols[None, :], x.to(base.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _linear_output_bwd(
    Q, QRows, Sums, DOut, DQ, DSums,
    stride_qb, stride_qh, stride_qs,
    stride_gb, stride_gh, stride_gs,
    stride_dqb, stride_dqh, stride_dqs,
    H, seq_q, num_query_blocks, eps,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, SUB_M: tl.constexpr, FEATURE: tl.constexpr,
    HAS_QROWS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (query blocks, B * H): dq of the block's rows and ``DSums[b, h, i] = [dH_i | dZ_i]``.

    The block's rows are taken ``SUB_M`` at a time (fewer live row tiles next to the D x D ones)."""
    i, b, h, row = program_block(H, num_query_blocks, HEAD_DIM)
    h_offsets, z_offsets = summary_offsets(HEAD_DIM)
    big_h = tl.load(Sums + row + h_offsets)
    big_z = tl.load(Sums + row + z_offsets).to(tl.float32)
    dh = tl.zeros([HEAD_DIM, HEAD_DIM], dtype=tl.float32)
    dz = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for sub in tl.static_range(0, BLOCK_M, SUB_M):
        rows, row_ok = query_rows(QRows, i * BLOCK_M + sub, seq_q, SUB_M, HAS_QROWS)
        p = phi(load_rows(Q + b * stride_qb + h * stride_qh, rows, row_ok, stride_qs, HEAD_DIM), row_ok, FEATURE)
        g = load_rows(DOut + b * stride_gb + h * stride_gh, rows, row_ok, stride_gs, HEAD_DIM)
        p_lo = p.to(big_h.dtype)
        den = tl.sum(p * big_z[None, :], 1) + eps
        dden = -tl.sum(g * tl.dot(p_lo, big_h, input_precision=DOT_PRECISION), 1) / (den * den)
        dnum_lo = (g / den[:, None]).to(big_h.dtype)
        dp = tl.dot(dnum_lo, tl.trans(big_h), input_precision=DOT_PRECISION) + dden[:, None] * big_z[None, :]
        store_rows(DQ + b * stride_dqb + h * stride_dqh, rows, row_ok, stride_dqs, phi_grad(p, dp, FEATURE), HEAD_DIM)
        dh = tl.dot(tl.trans(p_lo), dnum_lo, dh, input_precision=DOT_PRECISION)
        dz += tl.sum(p * dden[:, None], 0)
    tl.store(DSums + row + h_offsets, dh.to(DSums.dtype.element_ty))
    tl.store(DSums + row + z_offsets, dz.to(DSums.dtype.element_ty))


@triton.jit
def _key_summary_bwd(
    K, V, DSummary, DK, DV,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_dkb, stride_dkh, stride_dks,
    stride_dvb, stride_dvh, stride_dvs,
    H, key_len, num_key_blocks,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, FEATURE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (key blocks, B * H): dk and dv of the block's rows from ``DSummary[b, h, j] = [dh_j | dz_j]``."""
    j, b, h, row = program_block(H, num_key_blocks, HEAD_DIM)
    rows, row_ok = key_rows(j, key_len, BLOCK_N)
    p = phi(load_rows(K + b * stride_kb + h * stride_kh, rows, row_ok, stride_ks, HEAD_DIM), row_ok, FEATURE)
    v = load_rows(V + b * stride_vb + h * stride_vh, rows, row_ok, stride_vs, HEAD_DIM)
    h_offsets, z_offsets = summary_offsets(HEAD_DIM)
    dh = tl.load(DSummary + row + h_offsets)
    dz = tl.load(DSummary + row + z_offsets).to(tl.float32)
    dp = tl.dot(v.to(dh.dtype), tl.trans(dh), input_precision=DOT_PRECISION) + dz[None, :]
    dv = tl.dot(p.to(dh.dtype), dh, input_precision=DOT_PRECISION)
    store_rows(DK + b * stride_dkb + h * stride_dkh, rows, row_ok, stride_dks, phi_grad(p, dp, FEATURE), HEAD_DIM)
    store_rows(DV + b * stride_dvb + h * stride_dvh, rows, row_ok, stride_dvs, dv, HEAD_DIM)


def sla_linear_backward_triton(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    marginal: torch.Tensor,
    *,
    block_m: int,
    block_n: int,
    key_len: int | None = None,
    feature_map: str = "softmax",
    eps: float = 1e-6,
    q_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` shaped like q, k, v (rows outside ``q_rows`` and beyond ``key_len`` get 0)."""
    check_inputs(q, k, v, feature_map)
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    b, h, _, d = q.shape
    key_len = k.shape[2] if key_len is None else key_len
    seq_q = q.shape[2] if q_rows is None else q_rows.numel()
    nq, nk = triton.cdiv(seq_q, block_m), triton.cdiv(key_len, block_n)
    feature, precision, warps = FEATURE_MAPS.index(feature_map), dot_precision(q), launch_warps(d)
    sub_m = min(block_m, ROWS_PER_STEP)
    if block_m % sub_m:  # a step would run into the next query block's rows
        raise ValueError(f"block_m must be a multiple of {sub_m} (the dq kernel's rows per step), got {block_m}")
    sums = marginal_sums(marginal, key_summary_triton(k, v, block_n, key_len, feature_map))
    dq = torch.empty_like(q) if q_rows is None else torch.zeros_like(q)
    dsums = torch.empty(b, h, nq, d * d + d, device=q.device, dtype=summary_dtype(q))
    _linear_output_bwd[(nq, b * h)](
        q, q_rows if q_rows is not None else marginal, sums, grad_out, dq, dsums,
        q.stride(0), q.stride(1), q.stride(2),
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        h, seq_q, nq, eps,
        HEAD_DIM=d, BLOCK_M=block_m, SUB_M=sub_m, FEATURE=feature,
        HAS_QROWS=q_rows is not None, DOT_PRECISION=precision, num_warps=warps,
    )  # fmt: skip
    dsummary = torch.matmul(marginal.transpose(-1, -2).to(dsums.dtype), dsums)
    dk, dv = torch.empty_like(k), torch.empty_like(v)  # the kernel writes every row before key_len
    dk[:, :, key_len:] = 0
    dv[:, :, key_len:] = 0
    _key_summary_bwd[(nk, b * h)](
        k, v, dsummary, dk, dv,
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        h, key_len, nk,
        HEAD_DIM=d, BLOCK_N=block_n, FEATURE=feature, DOT_PRECISION=precision, num_warps=warps,
    )  # fmt: skip
    return dq, dk, dv
