"""Centroid compensation (Triton): attention of every query over per-query-block weighted pseudo-keys.

SVG-EAR stands in for the keys a query block skips by one pseudo-key per key cluster: the
cluster's mean key and mean value, with the logit raised by ``log n`` for the n keys of the cluster
the block skipped (``-inf`` when it skipped none). One program takes a tile of query rows inside
one query block and walks the centroids a tile at a time with the exact kernel's online-softmax
step (the per-block weight is that step's column bias); it returns ``(out, lse)`` so the result
merges exactly with the block-sparse part.

Reference: :func:`dit_accel.kernels.svg_ear_reference.centroid_attention_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .block_sparse_attention import LN2, LOG2E, _online_softmax_step, dot_precision

BLOCK_CENTROIDS = 32  # H200 sweep (check_svg_ear.json): 0.64 ms vs 0.71 at 64 rows x 64 centroids
MAX_BLOCK_ROWS = 128
# Finite start of the running max: a tile whose pseudo-keys are all removed (-inf) then adds 0
# instead of the NaN of -inf - -inf.
_NO_MAX = tl.constexpr(-1.0e30)
# Globals a kernel reads must be constexpr (a plain float compiles in the interpreter only).
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(LN2)


@triton.jit
def _centroid_attention(
    Q, KC, VC, LogW, Out, Lse,
    stride_qb, stride_qh, stride_qs,
    stride_ob, stride_oh, stride_os,
    H, Sq, NQ, NC, D, block_q, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (row tiles, B * H); ``BLOCK_M`` divides ``block_q``. KC, VC, LogW contiguous per (b, h)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < Sq
    rows64 = rows.to(tl.int64)
    cols_d = tl.arange(0, BLOCK_D)
    d_ok = cols_d < D
    tile_ok = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * stride_qb + h * stride_qh + rows64[:, None] * stride_qs + cols_d[None, :], mask=tile_ok,
                other=0.0)  # fmt: skip
    query_block = (pid_m * BLOCK_M) // block_q

    m_i = tl.full([BLOCK_M], _NO_MAX, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    weight_row = LogW + pid_bh * NQ * NC + query_block * NC
    for start in range(0, NC, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        col_ok = cols < NC
        offsets = pid_bh * NC * D + cols[:, None].to(tl.int64) * D + cols_d[None, :]
        cent_ok = col_ok[:, None] & d_ok[None, :]
        kc = tl.load(KC + offsets, mask=cent_ok, other=0.0)
        vc = tl.load(VC + offsets, mask=cent_ok, other=0.0)
        col_bias = tl.load(weight_row + cols, mask=col_ok, other=float("-inf")) * _LOG2E
        acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, q, kc, vc, col_bias, qk_scale, False, DOT_PRECISION)

    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    tl.store(Out + b * stride_ob + h * stride_oh + rows64[:, None] * stride_os + cols_d[None, :],
             out.to(Out.dtype.element_ty), mask=tile_ok)  # fmt: skip
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * _LN2, float("-inf"))
    tl.store(Lse + pid_bh * Sq + rows64, lse, mask=row_ok)


def centroid_attention_triton(
    q: torch.Tensor,
    k_centroids: torch.Tensor,
    v_centroids: torch.Tensor,
    log_weights: torch.Tensor,
    block_q: int,
    scale: float,
    *,
    block_rows: int = MAX_BLOCK_ROWS,
    block_centroids: int = BLOCK_CENTROIDS,
    num_warps: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)``: out like q, lse ``(B, H, Sq)`` fp32 natural log (see the reference).

    q is ``(B, H, Sq, D)`` with a contiguous last dimension; centroids ``(B, H, C, D)``; log_weights
    ``(B, H, NQ, C)`` with ``NQ = ceil(Sq / block_q)``. ``block_rows`` (capped at ``block_q``),
    ``block_centroids`` and ``num_warps`` set the launch, open for sweeps. The centroids are rounded
    to q's dtype once here (the tensor-core operand dtype), not in every program.
    """
    if q.stride(-1) != 1:
        raise ValueError("q needs a contiguous last (head) dimension")
    b, h, sq, d = q.shape
    nq, nc = log_weights.shape[2], k_centroids.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    block_m = min(block_rows, block_q)
    _centroid_attention[(triton.cdiv(sq, block_m), b * h)](
        q, k_centroids.to(q.dtype).contiguous(), v_centroids.to(q.dtype).contiguous(), log_weights.float().contiguous(),
        out, lse,
        q.stride(0), q.stride(1), q.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        h, sq, nq, nc, d, block_q, scale * LOG2E,
        BLOCK_M=block_m, BLOCK_C=block_centroids, BLOCK_D=max(16, triton.next_power_of_2(d)),
        DOT_PRECISION=dot_precision(q), num_warps=num_warps,
    )  # fmt: skip
    return out, lse
