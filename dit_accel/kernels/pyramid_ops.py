"""PSA's kernels as PyTorch custom ops (Triton on CUDA, the reference elsewhere) with fake implementations.

``torch.ops.dit_accel.kv_pyramid``, ``pyramid_importance``, ``pyramid_level_lists`` and
``pyramid_attention`` trace under ``torch.compile`` without graph breaks, like the ops of :mod:`.ops`.
"""

from __future__ import annotations

import math

import torch

from .ops import use_triton
from .pyramid_levels import level_lists_reference
from .pyramid_reference import (
    LEVELS,
    SIM_LEVELS,
    importance_reference,
    pooled_rows,
    pyramid_attention_reference,
    pyramid_reference,
)

try:
    from .pyramid import pyramid_triton
    from .pyramid_attention import pyramid_attention_triton
    from .pyramid_importance import importance_triton
    from .pyramid_select import MAX_KEY_BLOCKS, level_lists_triton
except ImportError:  # pragma: no cover - platforms without Triton
    pass

Tensor = torch.Tensor


def _on_triton(x: Tensor) -> bool:
    return use_triton(x) and x.dtype != torch.float64


def _float_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.custom_op("dit_accel::kv_pyramid", mutates_args=())
def kv_pyramid(
    k: Tensor, v: Tensor, block_k: int, key_len: int, with_sim: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Pooled levels 2..4 of K and V, and (``with_sim``) the keys' self-similarity (see :mod:`.pyramid`)."""
    if _on_triton(k):
        return pyramid_triton(k, v, block_k, key_len, with_sim)
    return pyramid_reference(k, v, block_k, key_len, with_sim)


@kv_pyramid.register_fake
def _(k, v, block_k, key_len, with_sim=False):
    b, h, _, d = k.shape
    nk = math.ceil(key_len / block_k)
    pooled = k.new_empty(b, h, pooled_rows(nk, block_k), d)
    sim = k.new_empty((b, h, nk, SIM_LEVELS) if with_sim else (0,), dtype=_float_dtype(k))
    return pooled, torch.empty_like(pooled), sim


@torch.library.custom_op("dit_accel::pyramid_importance", mutates_args=())
def pyramid_importance(
    q: Tensor, k: Tensor, block_q: int, block_k: int, key_len: int, scale: float, samples: int,
    q_rows: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """Block importance ``(B, H, NQ, NK)`` from sampled tokens (see :mod:`.pyramid_importance`)."""
    if _on_triton(q):
        return importance_triton(q, k, block_q, block_k, key_len, scale, samples, q_rows)
    return importance_reference(q, k, block_q, block_k, key_len, scale, samples, q_rows)


@pyramid_importance.register_fake
def _(q, k, block_q, block_k, key_len, scale, samples, q_rows=None):
    seq_q = q.shape[2] if q_rows is None else q_rows.shape[0]
    return q.new_empty(q.shape[0], q.shape[1], math.ceil(seq_q / block_q), math.ceil(key_len / block_k),
                       dtype=_float_dtype(q))  # fmt: skip


@torch.library.custom_op("dit_accel::pyramid_level_lists", mutates_args=())
def pyramid_level_lists(
    importance: Tensor, counts: list[int] | None = None, thresholds: list[float] | None = None, full_ranks: int = 0
) -> tuple[Tensor, Tensor]:
    """PSA's ``(indices, level_counts)`` from an importance map (see :mod:`.pyramid_select`)."""
    if _on_triton(importance) and importance.shape[-1] <= MAX_KEY_BLOCKS:
        return level_lists_triton(importance, counts=counts, thresholds=thresholds, full_ranks=full_ranks)
    return level_lists_reference(importance, counts, thresholds, full_ranks)


@pyramid_level_lists.register_fake
def _(importance, counts=None, thresholds=None, full_ranks=0):
    shape = importance.shape
    return importance.new_empty(shape, dtype=torch.int32), importance.new_empty(*shape[:-1], LEVELS, dtype=torch.int32)


@torch.library.custom_op("dit_accel::pyramid_attention", mutates_args=())
def pyramid_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pooled_k: Tensor,
    pooled_v: Tensor,
    indices: Tensor,
    level_counts: Tensor,
    block_q: int,
    block_k: int,
    key_len: int,
    scale: float,
    q_rows: Tensor | None = None,
    extra_k: Tensor | None = None,
    extra_v: Tensor | None = None,
    extra_valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Multi-level attention ``(out, lse)`` (see :mod:`.pyramid_attention`); forward only."""
    kwargs = dict(block_q=block_q, block_k=block_k, key_len=key_len, scale=scale, q_rows=q_rows,
                  extra_k=extra_k, extra_v=extra_v, extra_valid=extra_valid)  # fmt: skip
    if _on_triton(q):
        return pyramid_attention_triton(q, k, v, pooled_k, pooled_v, indices, level_counts, **kwargs)
    return pyramid_attention_reference(q, k, v, pooled_k, pooled_v, indices, level_counts, **kwargs)


@pyramid_attention.register_fake
def _(q, k, v, pooled_k, pooled_v, indices, level_counts, block_q, block_k, key_len, scale, q_rows=None,
      extra_k=None, extra_v=None, extra_valid=None):  # fmt: skip
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=_float_dtype(q))
