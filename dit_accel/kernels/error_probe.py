"""SVG-EAR's error probe (Triton): per (query block, key block), the error of compensating the key
block by its clusters' centroids, and the centroid softmax mass of the block.

One program takes one key block of one (batch, head): it reads the block's keys, values and the
centroid rows of their clusters once, forms the per-key scalars ``‖v − v̄‖²``, ``(v − v̄)·v̄`` and
``‖v̄‖²`` (v̄ the mean value of the key's cluster), then walks the query-block means a tile at a
time: ``a = s·q̄ kᵀ`` and ``b = s·q̄ k̄ᵀ`` (each key's centroid) on the tensor cores, and the sums
over the block's keys relative to the pair's largest logit (no overflow, no cancellation). ``b``
as a product with the gathered centroid rows, rather than gathered per (query block, key) from a
precomputed logit table, made the probe 24% faster on the H200 (0.424 vs 0.555 ms at the Wan-1.3B
shape, ``check_svg_ear_s25.json``); a and b then share the operands' rounding.

Reference: :func:`dit_accel.kernels.svg_ear_reference.error_probe_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_QUERIES = 64  # H200 sweep (check_svg_ear_s25.json): 0.42 ms vs 0.71 at 32, 0.81 at 128 (4 warps)


@triton.jit
def _error_probe(
    QM, K, V, Labels, KC, VM, LogErr, LogMass,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    H, NQ, NK, Sk, NC, D, scale,
    BLOCK_I: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (key blocks, B * H). QM, Labels, KC (in K's dtype), VM and the outputs are contiguous per (b, h)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    key_ok = keys < Sk
    keys64 = keys.to(tl.int64)
    cols_d = tl.arange(0, BLOCK_D)
    d_ok = cols_d < D
    tile_ok = key_ok[:, None] & d_ok[None, :]
    k = tl.load(K + b * stride_kb + h * stride_kh + keys64[:, None] * stride_ks + cols_d[None, :], mask=tile_ok,
                other=0.0)  # fmt: skip
    v = tl.load(V + b * stride_vb + h * stride_vh + keys64[:, None] * stride_vs + cols_d[None, :], mask=tile_ok,
                other=0.0).to(tl.float32)  # fmt: skip
    label = tl.load(Labels + pid_bh * Sk + keys64, mask=key_ok, other=0).to(tl.int64)
    centroid_rows = pid_bh * NC * D + label[:, None] * D + cols_d[None, :]
    kc = tl.load(KC + centroid_rows, mask=tile_ok, other=0.0)
    v_bar = tl.load(VM + centroid_rows, mask=tile_ok, other=0.0)
    diff = v - v_bar
    r = tl.sum(diff * diff, axis=1)
    g = tl.sum(diff * v_bar, axis=1)
    c = tl.sum(v_bar * v_bar, axis=1)

    for start in range(0, NQ, BLOCK_I):
        qi = start + tl.arange(0, BLOCK_I)
        qi_ok = qi < NQ
        qi64 = qi.to(tl.int64)
        qm = tl.load(QM + pid_bh * NQ * D + qi64[:, None] * D + cols_d[None, :], mask=qi_ok[:, None] & d_ok[None, :],
                     other=0.0)  # fmt: skip
        a = tl.where(key_ok[None, :], tl.dot(qm, tl.trans(k), input_precision=PRECISION) * scale, float("-inf"))
        bl = tl.where(key_ok[None, :], tl.dot(qm, tl.trans(kc), input_precision=PRECISION) * scale, float("-inf"))
        m_b = tl.max(bl, axis=1)
        m = tl.maximum(tl.max(a, axis=1), m_b)
        m = tl.where(m == float("-inf"), 0.0, m)
        m_b = tl.where(m_b == float("-inf"), 0.0, m_b)
        ea = tl.exp(a - m[:, None])
        eb = tl.exp(bl - m[:, None])
        delta = ea - eb
        err = tl.sum(ea * ea * r[None, :] + 2.0 * ea * delta * g[None, :] + delta * delta * c[None, :], axis=1)
        log_err = tl.where(err > 0.0, 2.0 * m + tl.log(tl.maximum(err, 1e-38)), float("-inf"))
        mass = tl.sum(tl.exp(bl - m_b[:, None]), axis=1)
        log_mass = tl.where(mass > 0.0, m_b + tl.log(tl.maximum(mass, 1e-38)), float("-inf"))
        out = pid_bh * NQ * NK + qi64 * NK + pid_n
        tl.store(LogErr + out, log_err, mask=qi_ok)
        tl.store(LogMass + out, log_mass, mask=qi_ok)


def error_probe_triton(
    q_mean: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    labels: torch.Tensor,
    key_centroids: torch.Tensor,
    value_means: torch.Tensor,
    scale: float,
    block_k: int,
    *,
    block_queries: int = BLOCK_QUERIES,
    num_warps: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_err, log_mass)`` ``(B, H, NQ, NK)`` fp32 (see the reference); k/v need a contiguous last dimension.

    The query means and key centroids are rounded to k's dtype, the tensor cores' operand dtype.
    ``block_queries`` (query-block means per tile) and ``num_warps`` set the launch, open for sweeps.
    """
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("k and v need a contiguous last (head) dimension")
    b, h, sk, d = k.shape
    nq, nc = q_mean.shape[2], value_means.shape[2]
    nk = triton.cdiv(sk, block_k)
    log_err = torch.empty(b, h, nq, nk, dtype=torch.float32, device=k.device)
    log_mass = torch.empty_like(log_err)
    _error_probe[(nk, b * h)](
        q_mean.to(k.dtype).contiguous(), k, v, labels.to(torch.int32).contiguous(),
        key_centroids.to(k.dtype).contiguous(), value_means.float().contiguous(), log_err, log_mass,
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        h, nq, nk, sk, nc, d, scale,
        BLOCK_I=block_queries, BLOCK_N=block_k, BLOCK_D=max(16, triton.next_power_of_2(d)),
        PRECISION="ieee" if k.dtype == torch.float32 else "tf32",
        num_warps=num_warps,
    )  # fmt: skip
    return log_err, log_mass
