"""Wan's query/key preparation in one pass: RMS norm over the hidden size, then the interleaved rotary.

The stock Wan processor runs ``RMSNorm`` and then about eight elementwise kernels per tensor (fp32
products of strided halves, a sum, a difference, two strided copies back to bf16). At the Wan-1.3B
shape that is ~0.7 ms of memory traffic per layer in eager mode, and Inductor's fused version still
takes ~0.44 ms for q and k together (H200 profile, ``benchmarks/profile_e2e.py``). This kernel reads
each row once and writes it once, in the ``(B, S, H, D)`` layout the attention call takes.

Arithmetic follows the stock path: the norm in fp32 (``x · rsqrt(mean(x²) + eps) · weight``), rounded
to the input dtype as ``RMSNorm`` returns it, then ``(x1 cos − x2 sin, x1 sin + x2 cos)`` in fp32 with
the even cosines and odd sines of Wan's ``(.., S, 1, D)`` rotary tables, rounded once more.
Reference and op: :mod:`.rotary_ops`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

Tensor = torch.Tensor
ROWS_PER_PROGRAM = 1


def default_warps(hidden: int) -> int:
    """4 warps up to Wan-1.3B's 1536 channels (H200 sweep: 116 us, the fastest); 8 above, where 4 spill
    (Wan-14B's 5120: 255 registers and a spill at 4 warps, 154 and none at 8, sm90a)."""
    return 4 if hidden <= 2048 else 8


@triton.jit
def _norm_rotary(
    X, W, Cos, Sin, Out,
    stride_xb, stride_xs,
    stride_cb, stride_cs, stride_cd,
    stride_sb, stride_ss, stride_sd,
    S, HIDDEN, HEAD_D, eps,
    BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr, HAS_WEIGHT: tl.constexpr,
):  # fmt: skip
    """Grid (row tiles, B). Each program normalises BLOCK_S whole rows and rotates their pairs.

    Rows, weights and tables are read contiguously (vector loads) and split into the (even, odd)
    halves of each pair in registers; the rotated pairs are joined back for one contiguous store."""
    b = tl.program_id(1).to(tl.int64)
    rows = (tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = (rows < S)[:, None] & (cols < HIDDEN)[None, :]
    x = tl.load(X + b * stride_xb + rows[:, None] * stride_xs + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / HIDDEN + eps)
    x = x * rstd[:, None]
    if HAS_WEIGHT:
        x = x * tl.load(W + cols, mask=cols < HIDDEN, other=0.0).to(tl.float32)[None, :]
    x = x.to(Out.dtype.element_ty).to(tl.float32)  # RMSNorm's output dtype, as the stock path rounds
    x1, x2 = tl.split(tl.reshape(x, (BLOCK_S, BLOCK_H // 2, 2)))
    column = (cols % HEAD_D).to(tl.int64)[None, :]  # the table column of each channel
    cos = tl.load(Cos + b * stride_cb + rows[:, None] * stride_cs + column * stride_cd, mask=mask, other=0.0)
    sin = tl.load(Sin + b * stride_sb + rows[:, None] * stride_ss + column * stride_sd, mask=mask, other=0.0)
    cos, _ = tl.split(tl.reshape(cos.to(tl.float32), (BLOCK_S, BLOCK_H // 2, 2)))  # even cosines
    _, sin = tl.split(tl.reshape(sin.to(tl.float32), (BLOCK_S, BLOCK_H // 2, 2)))  # odd sines
    out = tl.reshape(tl.join(x1 * cos - x2 * sin, x1 * sin + x2 * cos), (BLOCK_S, BLOCK_H))
    tl.store(Out + (b * S + rows[:, None]) * HIDDEN + cols[None, :], out.to(Out.dtype.element_ty), mask=mask)


def unsupported(x: Tensor, weight: Tensor | None, freqs_cos: Tensor, freqs_sin: Tensor, heads: int) -> str | None:
    """Why the kernel cannot read these inputs, or None: x ``(B, S, H·D)`` with contiguous rows and
    even D, ``(1 | B, S, 1, D)`` rotary tables, a contiguous ``(H·D,)`` weight or none."""
    b, s, hidden = x.shape
    head_dim = hidden // heads
    if x.stride(-1) != 1 or hidden % heads or head_dim % 2:
        return f"x must be (B, S, heads·D) with even D and contiguous rows, got {tuple(x.shape)}"
    if freqs_cos.dim() != 4 or freqs_cos.shape[0] not in (1, b) or freqs_cos.shape[1:] != (s, 1, head_dim):
        return f"rotary table must be (1 or {b}, {s}, 1, {head_dim}), got {tuple(freqs_cos.shape)}"
    if freqs_sin.shape != freqs_cos.shape:
        return f"rotary tables must have one shape, got {tuple(freqs_cos.shape)} and {tuple(freqs_sin.shape)}"
    if weight is not None and (weight.shape != (hidden,) or weight.stride(0) != 1):
        return f"weight must be a contiguous ({hidden},) vector, got {tuple(weight.shape)}"
    return None


def _table_strides(table: Tensor) -> tuple[int, int, int]:
    """(batch, row, column) strides of a ``(1 | B, S, 1, D)`` rotary table; batch 0 when broadcast."""
    return (table.stride(0) if table.shape[0] > 1 else 0), table.stride(1), table.stride(3)


def norm_rotary_triton(x: Tensor, weight: Tensor | None, eps: float, freqs_cos: Tensor, freqs_sin: Tensor, heads: int,
                       rows_per_program: int = ROWS_PER_PROGRAM, num_warps: int | None = None) -> Tensor:  # fmt: skip
    """The fused pass (see the module) on x ``(B, S, H·D)`` with a contiguous last dimension."""
    if (reason := unsupported(x, weight, freqs_cos, freqs_sin, heads)) is not None:
        raise ValueError(reason)
    b, s, hidden = x.shape
    head_dim = hidden // heads
    out = torch.empty(b, s, heads, head_dim, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(s, rows_per_program), b)
    _norm_rotary[grid](
        x, weight if weight is not None else x, freqs_cos, freqs_sin, out,
        x.stride(0), x.stride(1),
        *_table_strides(freqs_cos), *_table_strides(freqs_sin),
        s, hidden, head_dim, eps,
        BLOCK_S=rows_per_program, BLOCK_H=triton.next_power_of_2(hidden), HAS_WEIGHT=weight is not None,
        num_warps=num_warps or default_warps(hidden),
    )  # fmt: skip
    return out
