"""Per-cluster sums of rows in cluster order (Triton), without atomics: k-means' centroid update.

The rows of each (batch, head) are visited in cluster order (``order``, a stable argsort of the
labels), so cluster ``c`` owns the sorted positions ``[offsets[c], offsets[c+1])``. One program
sums ``BLOCK_C`` consecutive clusters: it walks their positions a tile at a time, gathers the rows
(and the value rows) and adds them with one tensor-core product by the 0/1 membership matrix
(positions × clusters of the program). Every row is read once, every sum written once, in a fixed
order: deterministic, unlike atomic adds, and about as fast as reading x.

Reference: :func:`dit_accel.kernels.svg_ear_reference.cluster_sums_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# H200 sweep (check_svg_ear_s25.json, K and V of the Wan-1.3B shape, 1000 clusters): 0.082 ms.
BLOCK_CLUSTERS = 16
BLOCK_ROWS = 64
NUM_WARPS = 4


@triton.jit
def _cluster_sums(
    X, V, Order, Offsets, Sums, VSums,
    stride_xb, stride_xh, stride_xs,
    stride_vb, stride_vh, stride_vs,
    H, S, NC, D,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, HAS_V: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (cluster tiles, B * H). Order is contiguous ``(B, H, S)``, Offsets ``(B, H, NC + 1)``."""
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    clusters = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = clusters < NC
    offsets = Offsets + pid_bh * (NC + 1)
    lo = tl.load(offsets + clusters, mask=c_ok, other=0)
    hi = tl.load(offsets + clusters + 1, mask=c_ok, other=0)
    start = tl.load(offsets + pid_c * BLOCK_C)
    end = tl.load(offsets + tl.minimum(pid_c * BLOCK_C + BLOCK_C, NC))
    cols_d = tl.arange(0, BLOCK_D)
    d_ok = cols_d < D

    acc = tl.zeros([BLOCK_C, BLOCK_D], dtype=tl.float32)
    v_acc = tl.zeros([BLOCK_C, BLOCK_D], dtype=tl.float32)
    for first in range(start, end, BLOCK_S):
        pos = first + tl.arange(0, BLOCK_S)
        pos_ok = pos < end
        rows = tl.load(Order + pid_bh * S + pos, mask=pos_ok, other=0).to(tl.int64)
        member = (pos[None, :] >= lo[:, None]) & (pos[None, :] < hi[:, None])
        tile_ok = pos_ok[:, None] & d_ok[None, :]
        x = tl.load(X + b * stride_xb + h * stride_xh + rows[:, None] * stride_xs + cols_d[None, :], mask=tile_ok,
                    other=0.0)  # fmt: skip
        acc = tl.dot(member.to(x.dtype), x, acc, input_precision=PRECISION)
        if HAS_V:
            v = tl.load(V + b * stride_vb + h * stride_vh + rows[:, None] * stride_vs + cols_d[None, :], mask=tile_ok,
                        other=0.0)  # fmt: skip
            v_acc = tl.dot(member.to(v.dtype), v, v_acc, input_precision=PRECISION)
    out = pid_bh * NC * D + clusters[:, None].to(tl.int64) * D + cols_d[None, :]
    out_ok = c_ok[:, None] & d_ok[None, :]
    tl.store(Sums + out, acc, mask=out_ok)
    if HAS_V:
        tl.store(VSums + out, v_acc, mask=out_ok)


def cluster_sums_triton(
    x: torch.Tensor,
    order: torch.Tensor,
    counts: torch.Tensor,
    values: torch.Tensor | None = None,
    *,
    block_clusters: int = BLOCK_CLUSTERS,
    block_rows: int = BLOCK_ROWS,
    num_warps: int = NUM_WARPS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(sums, value_sums)`` fp32 ``(B, H, C, D)`` (value_sums None without values); see the reference.

    x and values are ``(B, H, S, D)`` with a contiguous last dimension, ``order`` ``(B, H, S)`` the
    rows in cluster order, ``counts`` ``(B, H, C)`` the rows per cluster. The launch configuration
    (clusters per program, rows per tile, warps) is open for sweeps.
    """
    if x.stride(-1) != 1 or (values is not None and values.stride(-1) != 1):
        raise ValueError("x and values need a contiguous last (head) dimension")
    b, h, s, d = x.shape
    clusters = counts.shape[-1]
    offsets = torch.nn.functional.pad(counts.cumsum(-1, dtype=torch.int32), (1, 0))
    sums = torch.empty(b, h, clusters, d, dtype=torch.float32, device=x.device)
    value_sums = torch.empty_like(sums) if values is not None else None
    v = values if values is not None else x
    _cluster_sums[(triton.cdiv(clusters, block_clusters), b * h)](
        x, v, order.contiguous(), offsets, sums, value_sums if values is not None else sums,
        x.stride(0), x.stride(1), x.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        h, s, clusters, d,
        BLOCK_C=block_clusters, BLOCK_S=block_rows, BLOCK_D=max(16, triton.next_power_of_2(d)),
        HAS_V=values is not None, PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=num_warps,
    )  # fmt: skip
    return sums, value_sums
