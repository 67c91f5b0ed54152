"""SVG-EAR's kernels as PyTorch custom ops: Triton on CUDA, the PyTorch reference elsewhere.

Registered with ``torch.library.custom_op`` and a fake (shape) implementation each, like
:mod:`.ops`, so ``torch.compile`` traces the method without graph breaks. fp64 inputs always take
the reference (they are the tests' oracles).
"""

from __future__ import annotations

import math

import torch

from . import svg_ear_reference as reference
from .ops import HAS_TRITON, use_triton

if HAS_TRITON:
    from .centroid_attention import centroid_attention_triton
    from .cluster_coverage import uncovered_counts_triton
    from .cluster_sums import cluster_sums_triton
    from .error_probe import error_probe_triton
    from .kmeans_assign import kmeans_assign_triton
    from .row_permute import permute_rows_triton

Tensor = torch.Tensor


def _on_triton(x: Tensor) -> bool:
    return use_triton(x) and x.dtype != torch.float64


def _sum_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.custom_op("dit_accel::kmeans_assign", mutates_args=())
def kmeans_assign(x: Tensor, centroids: Tensor) -> Tensor:
    """Nearest centroid of every row: ``(B, H, S)`` int32 labels.

    See :func:`.svg_ear_reference.kmeans_assign_reference`.
    """
    if _on_triton(x) and x.stride(-1) == 1:
        return kmeans_assign_triton(x, centroids)
    return reference.kmeans_assign_reference(x, centroids)


@kmeans_assign.register_fake
def _(x, centroids):
    return x.new_empty(x.shape[:3], dtype=torch.int32)


@torch.library.custom_op("dit_accel::cluster_sums", mutates_args=())
def cluster_sums(x: Tensor, order: Tensor, counts: Tensor, values: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-cluster sums of the rows (and of ``values``) from the rows in cluster order:
    ``(sums, value_sums)``, value_sums empty without ``values``.

    See :func:`.svg_ear_reference.cluster_sums_reference`.
    """
    if _on_triton(x) and x.stride(-1) == 1 and (values is None or values.stride(-1) == 1):
        sums, value_sums = cluster_sums_triton(x, order, counts, values)
    else:
        sums, value_sums = reference.cluster_sums_reference(x, order, counts, values)
    return sums, value_sums if value_sums is not None else sums.new_empty(0)


@cluster_sums.register_fake
def _(x, order, counts, values=None):
    b, h, _, d = x.shape
    sums = x.new_empty(b, h, counts.shape[-1], d, dtype=_sum_dtype(x))
    return sums, torch.empty_like(sums) if values is not None else sums.new_empty(0)


@torch.library.custom_op("dit_accel::error_probe", mutates_args=())
def error_probe(
    q_mean: Tensor,
    k: Tensor,
    v: Tensor,
    labels: Tensor,
    key_centroids: Tensor,
    value_means: Tensor,
    scale: float,
    block_k: int,
) -> tuple[Tensor, Tensor]:
    """``(log_err, log_mass)`` per (query block, key block); see :func:`.svg_ear_reference.error_probe_reference`."""
    args = (q_mean, k, v, labels, key_centroids, value_means, scale, block_k)
    if _on_triton(k) and k.stride(-1) == 1 and v.stride(-1) == 1:
        return error_probe_triton(*args)
    return reference.error_probe_reference(*args)


@error_probe.register_fake
def _(q_mean, k, v, labels, key_centroids, value_means, scale, block_k):
    b, h, nq, _ = q_mean.shape
    out = k.new_empty(b, h, nq, math.ceil(k.shape[2] / block_k), dtype=_sum_dtype(k))
    return out, torch.empty_like(out)


@torch.library.custom_op("dit_accel::centroid_attention", mutates_args=())
def centroid_attention(
    q: Tensor, k_centroids: Tensor, v_centroids: Tensor, log_weights: Tensor, block_q: int, scale: float
) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` over weighted pseudo-keys; see :func:`.svg_ear_reference.centroid_attention_reference`."""
    args = (q, k_centroids, v_centroids, log_weights, block_q, scale)
    if _on_triton(q) and q.stride(-1) == 1:
        return centroid_attention_triton(*args)
    return reference.centroid_attention_reference(*args)


@centroid_attention.register_fake
def _(q, k_centroids, v_centroids, log_weights, block_q, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=_sum_dtype(q))


@torch.library.custom_op("dit_accel::permute_rows", mutates_args=())
def permute_rows(x: Tensor, order: Tensor, inverse: bool) -> Tensor:
    """Rows of ``(B, H, S, D)`` x in the per-(b, h) ``order`` (``inverse``: back from it), contiguous."""
    if _on_triton(x) and x.stride(-1) == 1:
        return permute_rows_triton(x, order, inverse)
    return reference.permute_rows_reference(x, order, inverse)


@permute_rows.register_fake
def _(x, order, inverse):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _permute_rows_setup(ctx, inputs, output) -> None:
    _, order, inverse = inputs
    ctx.save_for_backward(order)
    ctx.inverse = inverse


def _permute_rows_backward(ctx, grad: Tensor):
    """A permutation's gradient is the inverse permutation of the output's gradient."""
    (order,) = ctx.saved_tensors
    return permute_rows(grad, order, not ctx.inverse), None, None


permute_rows.register_autograd(_permute_rows_backward, setup_context=_permute_rows_setup)


@torch.library.custom_op("dit_accel::uncovered_counts", mutates_args=())
def uncovered_counts(selected: Tensor, counts: Tensor, key_len: int, block_k: int) -> Tensor:
    """``(B, H, NQ, C)`` int32 keys of each cluster in the key blocks each query block skipped."""
    if use_triton(selected):
        return uncovered_counts_triton(selected, counts, key_len, block_k)
    return reference.uncovered_counts_reference(selected, counts, key_len, block_k)


@uncovered_counts.register_fake
def _(selected, counts, key_len, block_k):
    return selected.new_empty(*selected.shape[:3], counts.shape[-1], dtype=torch.int32)
