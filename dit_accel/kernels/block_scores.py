"""Pooled routing logits ``scale * q̄ k̄ᵀ`` of block means, tiled (Triton).

The scores step of routing multiplies fp32 block means ``(B, H, NQ, D) x (B, H, NK, D)``. cuBLAS runs
this small batched fp32 product as an FFMA kernel of few, large tiles: 17 us per call on the H200 at
the Wan-1.3B shape (12 heads, 256 x 256 blocks, D = 128), a sixth of the whole routing step. Here
one program computes one ``TILE x TILE`` tile of one (batch, head) on the tensor cores, with the
"tf32x3" split (the product of fp32 values to about fp32 accuracy, so that the ranking stays that of
the reference, unlike one TF32 product), while the tiles fill the GPU.

Reference: :func:`dit_accel.kernels.reference.routing_scores`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import check_query_key_pair

# Tile side (query blocks x key blocks per program), warps, head dims per dot step and the dot's
# precision. H200, Wan-1.3B shape, scores + the select kernel (benchmarks/check_routing.py, stop 22):
# cuBLAS 27.9 us (128x128 blocks) / 39.0 us (128x64); 64x64 tiles of "tf32x3" (three TF32 tensor-core
# products, about fp32 accuracy; no selection differed from the reference's) 21.0 / 32.9 us; 32x32
# "tf32x3" on 2 warps 23.9 / 35.7 us; an IEEE fp32 dot runs on the FMA units: 45 us at 32x32 tiles,
# 300+ us at 64x64 (it spills).
SCORE_TILE = 64
SCORE_WARPS = 4
SCORE_D_CHUNK = 64
SCORE_PRECISION = "tf32x3"


@triton.jit
def _block_scores(
    QMean, KMean, Scores,
    NQ, NK, D, scale,
    TILE: tl.constexpr, D_STEPS: tl.constexpr, D_CHUNK: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(NQ, TILE), cdiv(NK, TILE), B * H): one tile of one (batch, head)'s score map."""
    bh = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(0) * TILE + tl.arange(0, TILE)
    cols = tl.program_id(1) * TILE + tl.arange(0, TILE)
    row_ok, col_ok = rows < NQ, cols < NK
    s = tl.zeros([TILE, TILE], dtype=tl.float32)
    for step in tl.static_range(D_STEPS):  # D_STEPS x D_CHUNK covers the head dim
        offs_d = step * D_CHUNK + tl.arange(0, D_CHUNK)
        d_ok = offs_d < D
        q = tl.load(QMean + (bh * NQ + rows[:, None]) * D + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                    other=0.0)  # fmt: skip
        k = tl.load(KMean + (bh * NK + cols[:, None]) * D + offs_d[None, :], mask=col_ok[:, None] & d_ok[None, :],
                    other=0.0)  # fmt: skip
        s = tl.dot(q, tl.trans(k), s, input_precision=PRECISION)
    out = Scores + (bh * NQ + rows[:, None]) * NK + cols[None, :]
    tl.store(out, s * scale, mask=row_ok[:, None] & col_ok[None, :])


def block_scores_triton(q_mean: torch.Tensor, k_mean: torch.Tensor, scale: float) -> torch.Tensor:
    """fp32 ``scale * q̄ k̄ᵀ`` ``(B, H, NQ, NK)`` of fp32 means ``(B, H, NQ, D)``, ``(B, H, NK, D)``."""
    if q_mean.dtype != torch.float32 or k_mean.dtype != torch.float32:
        raise ValueError(f"block means must be fp32, got {q_mean.dtype} and {k_mean.dtype}")
    check_query_key_pair(q_mean, k_mean)
    b, h, nq, d = q_mean.shape
    nk = k_mean.shape[2]
    q_mean, k_mean = q_mean.contiguous(), k_mean.contiguous()
    d_chunk = min(max(16, triton.next_power_of_2(d)), SCORE_D_CHUNK)
    scores = torch.empty(b, h, nq, nk, device=q_mean.device, dtype=torch.float32)
    _block_scores[(triton.cdiv(nq, SCORE_TILE), triton.cdiv(nk, SCORE_TILE), b * h)](
        q_mean, k_mean, scores, nq, nk, d, scale,
        TILE=SCORE_TILE, D_STEPS=triton.cdiv(d, d_chunk), D_CHUNK=d_chunk, PRECISION=SCORE_PRECISION,
        num_warps=SCORE_WARPS,
    )  # fmt: skip
    return scores
