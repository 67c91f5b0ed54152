"""Block mean-pooling, optionally fused with the gather of K/V into tile order (Triton).

Routing needs the mean of every query block and key block. Keys and values must also be copied
into tile order (contiguous blocks for the attention kernel), so the same pass that reads K
writes the tiled K and V and the key-block means: K and V are read once.

Reference: :func:`dit_accel.kernels.reference.pool_blocks_reference` and
:func:`dit_accel.kernels.reference.gather_blocks_reference`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# Rows of a block loaded at once (a 32 x 128 bf16 tile per step).
ROWS_PER_LOAD = 32


@triton.jit
def _gather_block_mean(
    X, Y, XOut, YOut, Rows, Mean,
    stride_xb, stride_xh, stride_xs,
    stride_yb, stride_yh, stride_ys,
    stride_ob, stride_oh, stride_os,
    stride_mb, stride_mh, stride_mn,
    H, S,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr, HAS_ROWS: tl.constexpr,
    COPY: tl.constexpr,
):  # fmt: skip
    """Grid (blocks, B * H). The block is read CHUNK rows at a time: a small register tile keeps many
    programs resident per SM, so the loads of one overlap the sums of another (bandwidth-bound)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM)
    total = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for start in tl.static_range(0, BLOCK, CHUNK):
        offs = pid_n * BLOCK + start + tl.arange(0, CHUNK)
        ok = offs < S
        if HAS_ROWS:
            rows = tl.load(Rows + offs, mask=ok, other=0).to(tl.int64)
        else:
            rows = offs.to(tl.int64)
        x = tl.load(
            X + b * stride_xb + h * stride_xh + rows[:, None] * stride_xs + offs_d[None, :],
            mask=ok[:, None],
            other=0.0,
        )
        total += tl.sum(x.to(tl.float32), axis=0)
        if COPY:
            out_offsets = b * stride_ob + h * stride_oh + offs[:, None].to(tl.int64) * stride_os + offs_d[None, :]
            tl.store(XOut + out_offsets, x)
            y = tl.load(
                Y + b * stride_yb + h * stride_yh + rows[:, None] * stride_ys + offs_d[None, :],
                mask=ok[:, None],
                other=0.0,
            )
            tl.store(YOut + out_offsets, y)
    n = tl.minimum(S - pid_n * BLOCK, BLOCK).to(tl.float32)
    tl.store(Mean + b * stride_mb + h * stride_mh + pid_n * stride_mn + offs_d, total / n)


def _launch(x, y, x_out, y_out, rows, mean, seq_len: int, block: int, copy: bool) -> None:
    b, h, _, d = x.shape
    grid = (math.ceil(seq_len / block), b * h)
    _gather_block_mean[grid](
        x, y, x_out, y_out, rows if rows is not None else mean, mean,
        x.stride(0), x.stride(1), x.stride(2),
        y.stride(0), y.stride(1), y.stride(2),
        x_out.stride(0), x_out.stride(1), x_out.stride(2),
        mean.stride(0), mean.stride(1), mean.stride(2),
        h, seq_len,
        HEAD_DIM=d, BLOCK=block, CHUNK=min(block, ROWS_PER_LOAD), HAS_ROWS=rows is not None, COPY=copy,
        num_warps=4,
    )  # fmt: skip


def _check_last_dim(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.stride(-1) != 1:
            raise ValueError("the last (head) dimension must be contiguous")


def pool_blocks_triton(x: torch.Tensor, block: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 ``(B, H, N, D)`` block means of x ``(B, H, S, D)`` (rows gathered through ``rows``)."""
    _check_last_dim(x)
    b, h, s, d = x.shape
    seq_len = s if rows is None else rows.numel()
    mean = torch.empty(b, h, math.ceil(seq_len / block), d, device=x.device, dtype=torch.float32)
    _launch(x, x, x, x, rows, mean, seq_len, block, copy=False)
    return mean


def gather_blocks_triton(
    k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, block: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K/V rows in tile order, zero-padded to whole blocks, and fp32 key-block means."""
    _check_last_dim(k, v)
    b, h, _, d = k.shape
    seq_len = rows.numel()
    num_blocks = math.ceil(seq_len / block)
    k_tiled = torch.empty(b, h, num_blocks * block, d, device=k.device, dtype=k.dtype)
    v_tiled = torch.empty_like(k_tiled)
    mean = torch.empty(b, h, num_blocks, d, device=k.device, dtype=torch.float32)
    _launch(k, v, k_tiled, v_tiled, rows, mean, seq_len, block, copy=True)
    return k_tiled, v_tiled, mean
