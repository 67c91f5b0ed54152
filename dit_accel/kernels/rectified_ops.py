"""Rectified SpaAttn's kernels as PyTorch custom ops: Triton on CUDA, the reference elsewhere.

Registered like :mod:`.ops` (``torch.library.custom_op`` + a fake implementation), so processors
that call them trace under ``torch.compile`` without graph breaks.
"""

from __future__ import annotations

import math

import torch

from . import rectified_reference as reference
from .ops import use_triton

try:
    from .rectified_stats import block_stats_triton
    from .rectified_tail import rectified_merge_triton
except ImportError:  # pragma: no cover - platforms without Triton
    pass

Tensor = torch.Tensor
TRITON_HEAD_DIMS = (16, 32, 64, 128, 256)


def _on_triton(x: Tensor) -> bool:
    return use_triton(x) and x.dtype != torch.float64 and x.shape[-1] in TRITON_HEAD_DIMS


@torch.library.custom_op("dit_accel::rectified_block_stats", mutates_args=())
def block_stats(
    q: Tensor, k: Tensor, v: Tensor, block_q: int, block_k: int, key_len: int, q_rows: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(q_mean, q_mad, k_mean, k_mad, v_mean)``: block means and mean absolute deviations, one read.

    q ``(B, H, Sq, D)`` (its rows ``q_rows`` when given), k/v ``(B, H, >= key_len, D)``; results are
    ``(B, H, N, D)`` fp32 (float64 for float64 inputs).
    """
    if _on_triton(q) and all(t.stride(-1) == 1 for t in (q, k, v)):
        return block_stats_triton(q, k, v, block_q, block_k, key_len, q_rows)
    return reference.block_stats_reference(q, k, v, block_q, block_k, key_len, q_rows)


@block_stats.register_fake
def _(q, k, v, block_q, block_k, key_len, q_rows=None):
    b, h, seq, d = q.shape
    seq = seq if q_rows is None else q_rows.shape[0]
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    nq, nk = math.ceil(seq / block_q), math.ceil(key_len / block_k)
    return (*(q.new_empty(b, h, nq, d, dtype=dtype) for _ in range(2)),
            *(q.new_empty(b, h, nk, d, dtype=dtype) for _ in range(3)))  # fmt: skip


@torch.library.custom_op("dit_accel::rectified_merge", mutates_args=())
def rectified_merge(
    out: Tensor,
    q: Tensor,
    q_mean: Tensor,
    q_mad: Tensor,
    k_mean: Tensor,
    k_mad: Tensor,
    v_mean: Tensor,
    indices: Tensor,
    counts: Tensor,
    block_q: int,
    block_k: int,
    key_len: int,
    scale: float,
    per_row: bool,
    q_rows: Tensor | None = None,
    extra_k: Tensor | None = None,
    extra_valid: Tensor | None = None,
) -> Tensor:
    """The exact block-sparse ``out`` rectified: video rows ``R · out + C`` (IPAR + GAPR, one pass).

    See :mod:`.rectified_tail`; rows of ``out`` outside ``q_rows`` are unspecified in the result.
    """
    kwargs = dict(block_q=block_q, block_k=block_k, key_len=key_len, scale=scale, per_row=per_row, q_rows=q_rows,
                  extra_k=extra_k, extra_valid=extra_valid)  # fmt: skip
    args = (out, q, q_mean, q_mad, k_mean, k_mad, v_mean, indices, counts)
    if _on_triton(q) and out.stride(-1) == 1 and q.stride(-1) == 1 and (extra_k is None or extra_k.stride(-1) == 1):
        return rectified_merge_triton(*args, **kwargs)
    return reference.rectified_merge_reference(*args, **kwargs)


@rectified_merge.register_fake
def _(out, q, q_mean, q_mad, k_mean, k_mad, v_mean, indices, counts, block_q, block_k, key_len, scale, per_row,
      q_rows=None, extra_k=None, extra_valid=None):  # fmt: skip
    return torch.empty_like(out)
