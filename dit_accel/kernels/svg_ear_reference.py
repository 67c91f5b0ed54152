"""PyTorch references of SVG-EAR's kernels: k-means assignment, cluster sums, error probe,
centroid attention.

Same signatures as the Triton launchers (:mod:`.kmeans_assign`, :mod:`.cluster_sums`,
:mod:`.error_probe`, :mod:`.centroid_attention`); any device and dtype, computed in fp32 (fp64 for
fp64 inputs). They serve CPU tensors and are the float64 oracles of the tests.

Conventions: tensors are ``(B, H, S, D)`` per (batch, head); clusters are per (batch, head), so
centroids are ``(B, H, C, D)`` and labels ``(B, H, S)`` int32.
"""

from __future__ import annotations

import math

import torch

from .reference import _compute_dtype, block_counts

Tensor = torch.Tensor


def segment_sums(x: Tensor, labels: Tensor, segments: int) -> Tensor:
    """Per (batch, head), the sum of the rows of x ``(B, H, S, D)`` with each label: ``(B, H, segments, D)``."""
    b, h, _, d = x.shape
    sums = torch.zeros(b, h, segments, d, dtype=_compute_dtype(x), device=x.device)
    return sums.scatter_add_(2, labels.long()[..., None].expand(-1, -1, -1, d), x.to(sums.dtype))


def segment_counts(labels: Tensor, segments: int) -> Tensor:
    """Per (batch, head), how many rows carry each label: ``(B, H, segments)`` int32."""
    counts = torch.zeros(*labels.shape[:2], segments, dtype=torch.int32, device=labels.device)
    return counts.scatter_add_(2, labels.long(), torch.ones_like(labels, dtype=torch.int32))


def kmeans_assign_reference(x: Tensor, centroids: Tensor) -> Tensor:
    """Nearest centroid of every row of x: ``(B, H, S)`` int32 labels.

    Nearest means the largest ``x·c − ‖c‖²/2``, the same argmin as the Euclidean distance; the first
    centroid wins a tie.
    """
    cdt = _compute_dtype(x)
    c = centroids.to(cdt)
    score = torch.matmul(x.to(cdt), c.transpose(-1, -2)) - 0.5 * (c * c).sum(-1)[..., None, :]
    return score.argmax(dim=-1).to(torch.int32)


def cluster_sums_reference(
    x: Tensor, order: Tensor, counts: Tensor, values: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """Per-cluster sums of the rows of x (and of ``values``), given the rows in cluster order.

    ``order`` ``(B, H, S)`` lists each (batch, head)'s rows cluster after cluster, ``counts``
    ``(B, H, C)`` how many rows each cluster has: cluster c owns the sorted positions
    ``[Σ_{c'<c} counts, Σ_{c'≤c} counts)``. Returns ``(sums, value_sums)`` ``(B, H, C, D)`` in the
    compute dtype (value_sums None without values).
    """
    positions = torch.arange(order.shape[-1], device=order.device).expand(*order.shape[:2], -1).contiguous()
    sorted_labels = torch.searchsorted(counts.cumsum(-1), positions, right=True)
    labels = torch.empty_like(sorted_labels).scatter_(2, order, sorted_labels)  # each row's cluster
    clusters = counts.shape[-1]
    return segment_sums(x, labels, clusters), segment_sums(values, labels, clusters) if values is not None else None


def _pad_blocks(x: Tensor, block: int, fill: float) -> Tensor:
    """The last dimension padded with ``fill`` to whole blocks and split: ``(..., N, block)``."""
    n = math.ceil(x.shape[-1] / block)
    padded = torch.nn.functional.pad(x, (0, n * block - x.shape[-1]), value=fill)
    return padded.view(*x.shape[:-1], n, block)


def error_probe_reference(
    q_mean: Tensor,
    k: Tensor,
    v: Tensor,
    labels: Tensor,
    key_centroids: Tensor,
    value_means: Tensor,
    scale: float,
    block_k: int,
) -> tuple[Tensor, Tensor]:
    """Per (query block I, key block J): ``log ε_IJ`` and the log centroid mass, ``(B, H, NQ, NK)`` each.

    k, v ``(B, H, Sk, D)`` are in cluster order and ``labels`` ``(B, H, Sk)`` gives each key's
    cluster; ``q_mean`` ``(B, H, NQ, D)`` are the query-block means, ``key_centroids`` and
    ``value_means`` ``(B, H, C, D)`` the clusters' mean keys and values. With ``a_t = scale · q̄_I·k_t``
    and ``b_t = scale · q̄_I·k̄_t`` the logit of key t's centroid,

        ε_IJ = Σ_{t∈J} ‖e^{a_t} v_t − e^{b_t} v̄_t‖²,     mass_IJ = log Σ_{t∈J} e^{b_t}

    (the error of standing in for block J's keys by their clusters' centroids, and the softmax mass
    those centroids give it). Each term is expanded into per-key scalars that never cancel:
    ``‖E_a v − E_b v̄‖² = E_a² ‖v − v̄‖² + 2 E_a (E_a − E_b) (v − v̄)·v̄ + (E_a − E_b)² ‖v̄‖²``, with
    ``E = e^{· − m}`` relative to the largest logit m of the (I, J) pair; ``log ε = 2m + log Σ``.
    """
    cdt = _compute_dtype(k)
    q_mean, k, v, key_centroids, value_means = (t.to(cdt) for t in (q_mean, k, v, key_centroids, value_means))
    idx = labels.long()[..., None].expand(-1, -1, -1, v.shape[-1])
    a = torch.matmul(q_mean, k.transpose(-1, -2)) * scale
    b = torch.matmul(q_mean, key_centroids.gather(2, idx).transpose(-1, -2)) * scale
    v_bar = value_means.gather(2, idx)
    diff = v - v_bar
    per_key = [(diff * diff).sum(-1), (diff * v_bar).sum(-1), (v_bar * v_bar).sum(-1)]
    r, g, c = (_pad_blocks(t, block_k, 0.0)[:, :, None] for t in per_key)
    a, b = _pad_blocks(a, block_k, -math.inf), _pad_blocks(b, block_k, -math.inf)
    m = torch.maximum(a.amax(-1), b.amax(-1))
    ea, eb = torch.exp(a - m[..., None]), torch.exp(b - m[..., None])
    delta = ea - eb
    err = (ea * ea * r + 2 * ea * delta * g + delta * delta * c).sum(-1).clamp(min=0)
    return 2 * m + torch.log(err), torch.logsumexp(b, dim=-1)


def centroid_attention_reference(
    q: Tensor, k_centroids: Tensor, v_centroids: Tensor, log_weights: Tensor, block_q: int, scale: float
) -> tuple[Tensor, Tensor]:
    """Attention of every query over C pseudo-keys: ``(out, lse)``.

    Query row r (of block ``I = r // block_q``) sees pseudo-key j with logit
    ``scale · q_r·k̄_j + log_weights[I, j]`` and value ``v̄_j``: a weight ``n`` stands for n keys at
    the centroid, ``-inf`` removes it. Rows that see none give 0 and LSE ``-inf``. out has q's dtype,
    lse is fp32 (fp64 for fp64 inputs), natural log.
    """
    cdt = _compute_dtype(q)
    bias = log_weights.to(cdt).repeat_interleave(block_q, dim=2)[:, :, : q.shape[2]]
    logits = torch.matmul(q.to(cdt), k_centroids.to(cdt).transpose(-1, -2)) * scale + bias
    lse = torch.logsumexp(logits, dim=-1)
    probs = torch.exp(logits - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    return torch.matmul(probs, v_centroids.to(cdt)).to(q.dtype), lse


def permute_rows_reference(x: Tensor, order: Tensor, inverse: bool) -> Tensor:
    """``x[b, h, order[b, h, r]]`` at row r, or with ``inverse`` row r of x at row ``order[b, h, r]``."""
    index = order.long()[..., None].expand(-1, -1, -1, x.shape[-1])
    if inverse:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device).scatter_(2, index, x)
    return x.gather(2, index)


def uncovered_counts_reference(selected: Tensor, counts: Tensor, key_len: int, block_k: int) -> Tensor:
    """Per (query block, cluster): the cluster's rows lying in key blocks the query block skipped.

    ``selected`` ``(B, H, NQ, NK)`` marks the key blocks each query block computes; ``counts``
    ``(B, H, C)`` are the cluster sizes of rows in cluster order, cut into blocks of ``block_k``
    (``key_len`` rows). Cluster j spans rows ``[start_j, end_j)``, so its covered rows are read from
    a prefix sum of selected rows at both ends. Returns ``(B, H, NQ, C)`` int32.
    """
    b, h, nq, _ = selected.shape
    block_rows = block_counts(key_len, block_k, selected.device).long()
    taken = selected.long()
    covered_before = torch.nn.functional.pad((taken * block_rows).cumsum(dim=-1), (1, 0))
    taken = torch.nn.functional.pad(taken, (0, 1))
    ends = counts.long().cumsum(dim=-1)

    def covered_up_to(rows: Tensor) -> Tensor:
        block = rows // block_k
        index = block[:, :, None, :].expand(b, h, nq, -1)
        inside = (rows - block * block_k)[:, :, None, :]
        return covered_before.gather(-1, index) + taken.gather(-1, index) * inside

    uncovered = counts.long()[:, :, None, :] - (covered_up_to(ends) - covered_up_to(ends - counts.long()))
    return uncovered.to(torch.int32)
