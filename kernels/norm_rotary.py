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
    S, PAIRS, HALF_D, eps,
    BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr, HAS_WEIGHT: tl.constexpr,
):  # fmt: skip
    """Grid (row tiles, B). Each program normalises BLOCK_S whole rows and rotates their pairs."""
    b = tl.program_id(1).to(tl.int64)
    rows = (tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
    pairs = tl.arange(0, BLOCK_P)
    mask = (rows < S)[:, None] & (pairs < PAIRS)[None, :]
    x_ptr = X + b * stride_xb + rows[:, None] * stride_xs + 2 * pairs[None, :]
    x1 = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + 1, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * PAIRS) + eps)
    x1 = x1 * rstd[:, None]
    x2 = x2 * rstd[:, None]
    if HAS_WEIGHT:
        pair_ok = pairs < PAIRS
        x1 = x1 * tl.load(W + 2 * pairs, mask=pair_ok, other=0.0).to(tl.float32)[None, :]
        x2 = x2 * tl.load(W + 2 * pairs + 1, mask=pair_ok, other=0.0).to(tl.float32)[None, :]
    x1 = x1.to(Out.dtype.element_ty).to(tl.float32)  # RMSNorm's output dtype, as the stock path rounds
    x2 = x2.to(Out.dtype.element_ty).to(tl.float32)
    freq = (pairs % HALF_D).to(tl.int64)
    cos = tl.load(Cos + b * stride_cb + rows[:, None] * stride_cs + 2 * freq[None, :] * stride_cd, mask=mask,
                  other=0.0).to(tl.float32)  # fmt: skip
    sin = tl.load(Sin + b * stride_sb + rows[:, None] * stride_ss + (2 * freq[None, :] + 1) * stride_sd, mask=mask,
                  other=0.0).to(tl.float32)  # fmt: skip
    out_ptr = Out + (b * S + rows[:, None]) * (2 * PAIRS) + 2 * pairs[None, :]
    tl.store(out_ptr, (x1 * cos - x2 * sin).to(Out.dtype.element_ty), mask=mask)
    tl.store(out_ptr + 1, (x1 * sin + x2 * cos).to(Out.dtype.element_ty), mask=mask)


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
        s, hidden // 2, head_dim // 2, eps,
        BLOCK_S=rows_per_program, BLOCK_P=triton.next_power_of_2(hidden // 2), HAS_WEIGHT=weight is not None,
        num_warps=num_warps or default_warps(hidden),
    )  # fmt: skip
    return out
