"""PISA's kernels as PyTorch custom ops: Triton on CUDA, the PyTorch reference elsewhere.

``torch.ops.dit_accel.pisa_block_stats``, ``pisa_tail`` and ``pisa_tail_merge`` (the tail merged
with the exact part in the same pass) have fake (shape) implementations so that ``torch.compile``
traces the ``pisa`` method without graph breaks.
"""

from __future__ import annotations

import math

import torch

from .ops import use_triton
from .pisa_reference import pisa_block_stats_reference, pisa_tail_reference
from .reference import merge_attention_reference

try:
    from .pisa_stats import pisa_block_stats_triton
    from .pisa_tail import pisa_tail_triton
except ImportError:  # pragma: no cover - platforms without Triton
    pisa_block_stats_triton = pisa_tail_triton = None

Tensor = torch.Tensor


def _triton_serves(x: Tensor, *blocks: int) -> bool:
    """Triton takes CUDA fp16/bf16/fp32 with a power-of-two head dim and blocks of at least 16."""
    d = x.shape[-1]
    shapes_ok = d >= 16 and d & (d - 1) == 0 and all(size >= 16 for size in blocks)
    return use_triton(x) and x.dtype != torch.float64 and shapes_ok


def _stats_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.custom_op("dit_accel::pisa_block_stats", mutates_args=())
def pisa_block_stats(
    k: Tensor, v: Tensor, k_mean: Tensor, block_k: int, key_len: int, with_h: bool, with_norms: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(v_mean, h_bar, h_norm)`` of the key blocks (see ``pisa_reference.pisa_block_stats_reference``)."""
    if _triton_serves(k, block_k) and k.stride(-1) == 1 and v.stride(-1) == 1:
        return pisa_block_stats_triton(k, v, k_mean.contiguous(), block_k, key_len, with_h, with_norms)
    return pisa_block_stats_reference(k, v, k_mean, block_k, key_len, with_h, with_norms)


@pisa_block_stats.register_fake
def _(k, v, k_mean, block_k, key_len, with_h, with_norms):
    b, h, _, d = k.shape
    n = math.ceil(key_len / block_k)
    dtype = _stats_dtype(k)
    h_bar = k.new_empty(b, h, d, d, dtype=dtype) if with_h else k.new_empty(0, dtype=dtype)
    h_norm = k.new_empty(b, h, n, dtype=dtype) if with_norms else k.new_empty(0, dtype=dtype)
    return k.new_empty(b, h, n, d, dtype=dtype), h_bar, h_norm


@torch.library.custom_op("dit_accel::pisa_tail", mutates_args=())
def pisa_tail(
    q: Tensor,
    k_mean: Tensor,
    v_mean: Tensor,
    h_bar: Tensor | None,
    log_counts: Tensor,
    indices: Tensor,
    counts: Tensor,
    block_q: int,
    scale: float,
    q_rows: Tensor | None = None,
    tokens_per_block: int = 1,
) -> tuple[Tensor, Tensor]:
    """PISA's approximate ``(out, lse)`` over the skipped key blocks (see ``pisa_reference.pisa_tail_reference``)."""
    args = (q, k_mean, v_mean, h_bar, log_counts, indices, counts, block_q, scale, q_rows)
    if _triton_serves(q, block_q) and q.stride(-1) == 1:
        return pisa_tail_triton(*args, tokens_per_block=tokens_per_block)
    return pisa_tail_reference(*args, tokens_per_block)


@pisa_tail.register_fake
def _(q, k_mean, v_mean, h_bar, log_counts, indices, counts, block_q, scale, q_rows=None, tokens_per_block=1):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=_stats_dtype(q))


@torch.library.custom_op("dit_accel::pisa_tail_merge", mutates_args=())
def pisa_tail_merge(
    q: Tensor,
    k_mean: Tensor,
    v_mean: Tensor,
    h_bar: Tensor | None,
    log_counts: Tensor,
    indices: Tensor,
    counts: Tensor,
    block_q: int,
    scale: float,
    q_rows: Tensor | None,
    exact_out: Tensor,
    exact_lse: Tensor,
    tokens_per_block: int = 1,
) -> tuple[Tensor, Tensor]:
    """The exact part ``(exact_out, exact_lse)`` merged by LSE with :func:`pisa_tail`, in one pass on CUDA.

    Equals ``merge_attention(exact_out, exact_lse, *pisa_tail(...))``; the Triton kernel merges before
    its store, so the tail's output never goes to memory. Returns out in exact_out's dtype, lse fp32.
    """
    args = (q, k_mean, v_mean, h_bar, log_counts, indices, counts, block_q, scale, q_rows)
    if _triton_serves(q, block_q) and q.stride(-1) == 1 and exact_out.stride(-1) == 1:
        return pisa_tail_triton(*args, merge_into=(exact_out, exact_lse), tokens_per_block=tokens_per_block)
    out, lse = merge_attention_reference(exact_out, exact_lse, *pisa_tail_reference(*args, tokens_per_block))
    return torch.empty_like(exact_out).copy_(out), lse  # the exact output's layout, as the fake says


@pisa_tail_merge.register_fake
def _(q, k_mean, v_mean, h_bar, log_counts, indices, counts, block_q, scale, q_rows, exact_out, exact_lse,
      tokens_per_block=1):  # fmt: skip
    return torch.empty_like(exact_out), q.new_empty(q.shape[:3], dtype=_stats_dtype(q))
