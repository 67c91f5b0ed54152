"""Exact merge of two partial attentions by their log-sum-exp (Triton).

A method that splits the keys of a query into parts (the exact block-sparse part and an
approximate tail, or two key sets computed by separate calls) gets each part's normalised output
and natural-log LSE. Their union is ``o = (e^{l1-m} o1 + e^{l2-m} o2) / (e^{l1-m} + e^{l2-m})``,
``lse = m + log(e^{l1-m} + e^{l2-m})``, ``m = max(l1, l2)``. A part with LSE ``-inf`` saw no key: it
contributes nothing, whatever its output holds (zeros, garbage, NaN); two empty parts give 0 and
``-inf``. One program merges a tile of rows of one (batch, head); the pass is bandwidth-bound.

Reference: :func:`dit_accel.kernels.reference.merge_attention_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_ROWS = 32


@triton.jit
def _merge_attention(
    O1, L1, O2, L2, Out, Lse,
    stride_o1b, stride_o1h, stride_o1s,
    stride_l1b, stride_l1h, stride_l1s,
    stride_o2b, stride_o2h, stride_o2s,
    stride_l2b, stride_l2h, stride_l2s,
    stride_ob, stride_oh, stride_os,
    H, S, D,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Grid (row tiles, B * H). Weights are computed in fp32; an empty part's output is never read."""
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < S
    rows64 = rows.to(tl.int64)

    l1 = tl.load(L1 + b * stride_l1b + h * stride_l1h + rows64 * stride_l1s, mask=row_ok, other=float("-inf"))
    l2 = tl.load(L2 + b * stride_l2b + h * stride_l2h + rows64 * stride_l2s, mask=row_ok, other=float("-inf"))
    l1 = l1.to(tl.float32)
    l2 = l2.to(tl.float32)
    m = tl.maximum(l1, l2)
    empty = m == float("-inf")
    m_safe = tl.where(empty, 0.0, m)
    w1 = tl.exp(l1 - m_safe)
    w2 = tl.exp(l2 - m_safe)
    total = w1 + w2
    inv = tl.where(empty, 0.0, 1.0 / tl.where(empty, 1.0, total))
    use1 = row_ok & (w1 > 0.0)
    use2 = row_ok & (w2 > 0.0)

    tile_ok = cols[None, :] < D
    o1 = tl.load(
        O1 + b * stride_o1b + h * stride_o1h + rows64[:, None] * stride_o1s + cols[None, :],
        mask=use1[:, None] & tile_ok,
        other=0.0,
    )
    o2 = tl.load(
        O2 + b * stride_o2b + h * stride_o2h + rows64[:, None] * stride_o2s + cols[None, :],
        mask=use2[:, None] & tile_ok,
        other=0.0,
    )
    o = o1.to(tl.float32) * (w1 * inv)[:, None] + o2.to(tl.float32) * (w2 * inv)[:, None]
    tl.store(
        Out + b * stride_ob + h * stride_oh + rows64[:, None] * stride_os + cols[None, :],
        o.to(Out.dtype.element_ty),
        mask=row_ok[:, None] & tile_ok,
    )
    lse = tl.where(empty, float("-inf"), m_safe + tl.log(tl.where(empty, 1.0, total)))
    tl.store(Lse + pid_bh.to(tl.int64) * S + rows64, lse, mask=row_ok)


def merge_attention_triton(
    out1: torch.Tensor, lse1: torch.Tensor, out2: torch.Tensor, lse2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merged ``(out, lse)``: out like ``out1`` (dtype and strides), lse ``(B, H, S)`` fp32 contiguous.

    out1/out2 are ``(B, H, S, D)`` with a contiguous last dimension (e.g. transposed ``(B, S, H, D)``);
    lse1/lse2 are ``(B, H, S)`` with any strides.
    """
    if out1.shape != out2.shape or lse1.shape != out1.shape[:3] or lse2.shape != out1.shape[:3]:
        shapes = [tuple(t.shape) for t in (out1, lse1, out2, lse2)]
        raise ValueError(f"need out1/out2 (B, H, S, D) and lse1/lse2 (B, H, S), got shapes {shapes}")
    if out1.stride(-1) != 1 or out2.stride(-1) != 1:
        raise ValueError("out1 and out2 need a contiguous last (head) dimension")
    b, h, s, d = out1.shape
    out = torch.empty_like(out1)
    lse = torch.empty(b, h, s, device=out1.device, dtype=torch.float32)
    grid = (triton.cdiv(s, BLOCK_ROWS), b * h)
    _merge_attention[grid](
        out1, lse1, out2, lse2, out, lse,
        out1.stride(0), out1.stride(1), out1.stride(2),
        lse1.stride(0), lse1.stride(1), lse1.stride(2),
        out2.stride(0), out2.stride(1), out2.stride(2),
        lse2.stride(0), lse2.stride(1), lse2.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        h, s, d,
        BLOCK_S=BLOCK_ROWS, BLOCK_D=triton.next_power_of_2(d),
        num_warps=4,
    )  # fmt: skip
    return out, lse
