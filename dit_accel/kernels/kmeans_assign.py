"""Batched k-means assignment (Triton): the nearest centroid of every row.

One program takes a tile of rows of one (batch, head), walks the centroids a tile at a time
(``x·c − ‖c‖²/2`` on the tensor cores, centroids rounded once to x's dtype by the launcher, running
argmax) and writes the labels. The cluster sizes and sums are separate passes over the rows in
cluster order (a stable argsort, then :mod:`.cluster_sums`), without atomics: the former fused
version added every row into an fp32 sum with atomics, 150M of them per k-means of Q and K at the
Wan-1.3B shape.

Reference: :func:`dit_accel.kernels.svg_ear_reference.kmeans_assign_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# H200 sweep (check_svg_ear_s25.json, K of the Wan-1.3B shape, 1000 centroids): 0.327 ms against
# 0.468 at 64 rows x 128 centroids.
BLOCK_ROWS = 256
BLOCK_CENTROIDS = 64
NUM_WARPS = 8


@triton.jit
def _kmeans_assign(
    X, Cent, HalfNorm, Labels,
    stride_xb, stride_xh, stride_xs,
    H, S, NC, D,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (row tiles, B * H). Centroids and half norms are contiguous per (b, h)."""
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    rows = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    row_ok = rows < S
    rows64 = rows.to(tl.int64)
    cols_d = tl.arange(0, BLOCK_D)
    d_ok = cols_d < D
    x = tl.load(X + b * stride_xb + h * stride_xh + rows64[:, None] * stride_xs + cols_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # fmt: skip

    best = tl.full([BLOCK_S], float("-inf"), dtype=tl.float32)
    best_idx = tl.zeros([BLOCK_S], dtype=tl.int32)
    cent_base = Cent + pid_bh * NC * D
    for start in range(0, NC, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        col_ok = cols < NC
        c = tl.load(cent_base + cols[:, None].to(tl.int64) * D + cols_d[None, :], mask=col_ok[:, None] & d_ok[None, :],
                    other=0.0)  # fmt: skip
        half = tl.load(HalfNorm + pid_bh * NC + cols, mask=col_ok, other=float("inf"))
        score = tl.dot(x, tl.trans(c), input_precision=PRECISION) - half[None, :]
        tile_best = tl.max(score, axis=1)
        tile_idx = tl.argmax(score, axis=1).to(tl.int32) + start
        better = tile_best > best
        best = tl.where(better, tile_best, best)
        best_idx = tl.where(better, tile_idx, best_idx)
    tl.store(Labels + pid_bh * S + rows64, best_idx, mask=row_ok)


def kmeans_assign_triton(
    x: torch.Tensor,
    centroids: torch.Tensor,
    *,
    block_rows: int = BLOCK_ROWS,
    block_centroids: int = BLOCK_CENTROIDS,
    num_warps: int = NUM_WARPS,
) -> torch.Tensor:
    """``(B, H, S)`` int32 labels of one assignment step (see the reference).

    x is ``(B, H, S, D)`` with a contiguous last dimension; centroids ``(B, H, C, D)``. The launch
    configuration (rows per program, centroids per tile, warps) is open for sweeps.
    """
    if x.stride(-1) != 1:
        raise ValueError("x needs a contiguous last (head) dimension")
    b, h, s, d = x.shape
    clusters = centroids.shape[2]
    cent = centroids.float().contiguous()
    half = 0.5 * (cent * cent).sum(-1)
    cent = cent.to(x.dtype)  # the dot's operand dtype: every program reads half the bytes, converts nothing
    labels = torch.empty(b, h, s, dtype=torch.int32, device=x.device)
    _kmeans_assign[(triton.cdiv(s, block_rows), b * h)](
        x, cent, half, labels,
        x.stride(0), x.stride(1), x.stride(2),
        h, s, clusters, d,
        BLOCK_S=block_rows, BLOCK_C=block_centroids, BLOCK_D=max(16, triton.next_power_of_2(d)),
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=num_warps,
    )  # fmt: skip
    return labels
