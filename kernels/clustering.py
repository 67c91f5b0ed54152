"""Batched k-means per (batch, head) and the cluster order of tokens (SVG-EAR's semantic permutation).

Every (batch, head) of a ``(B, H, S, D)`` tensor is clustered independently, all of them in one
launch per iteration (no loop over batch or heads). An iteration assigns each row to its nearest
centroid and moves each centroid to the mean of its rows, so the returned centroids are exactly
the means of the returned clusters. A fixed number of iterations (no convergence test) keeps the
loop free of host syncs; warm starts across denoising steps make two iterations enough.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .svg_ear_ops import kmeans_assign, permute_rows
from .svg_ear_reference import segment_counts, segment_sums

Tensor = torch.Tensor


@dataclass(frozen=True)
class Clusters:
    """k-means clusters of the rows of a ``(B, H, S, D)`` tensor, per (batch, head).

    Attributes:
        labels: ``(B, H, S)`` int32, the cluster of each row.
        centroids: ``(B, H, C, D)`` fp32 (fp64 for fp64 rows): each cluster's mean row; an empty
            cluster keeps the centroid it started from.
        counts: ``(B, H, C)`` int32 rows per cluster.
        value_means: ``(B, H, C, D)`` mean of the value rows of each cluster (0 when empty), or None.
    """

    labels: Tensor
    centroids: Tensor
    counts: Tensor
    value_means: Tensor | None = None


def _means(sums: Tensor, counts: Tensor, empty: Tensor | float) -> Tensor:
    filled = counts[..., None] > 0
    return torch.where(filled, sums / counts.clamp(min=1)[..., None].to(sums.dtype), empty)


def spread_centroids(x: Tensor, clusters: int) -> Tensor:
    """Starting centroids: ``clusters`` rows evenly spaced along the sequence (deterministic)."""
    rows = torch.arange(clusters, device=x.device) * x.shape[2] // clusters
    return x[:, :, rows].to(torch.float64 if x.dtype == torch.float64 else torch.float32)


def kmeans(x: Tensor, centroids: Tensor, iterations: int, values: Tensor | None = None) -> Clusters:
    """``iterations`` k-means steps from ``centroids`` ``(B, H, C, D)``; the last also averages ``values``."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    for step in range(iterations):
        last = step == iterations - 1
        labels, sums, counts, value_sums = kmeans_assign(x, centroids, values if last else None)
        centroids = _means(sums, counts, centroids.to(sums.dtype))
    value_means = _means(value_sums, counts, 0.0) if values is not None else None
    return Clusters(labels, centroids, counts, value_means)


def clusters_from_labels(x: Tensor, labels: Tensor, clusters: int, values: Tensor | None = None) -> Clusters:
    """The clusters a labelling defines, means computed in x's compute dtype (no assignment step)."""
    counts = segment_counts(labels, clusters)
    value_means = _means(segment_sums(values, labels, clusters), counts, 0.0) if values is not None else None
    return Clusters(labels, _means(segment_sums(x, labels, clusters), counts, 0.0), counts, value_means)


def cluster_order(labels: Tensor) -> Tensor:
    """Per (batch, head), row indices that make each cluster contiguous (clusters ascending, rows
    in their original order inside a cluster): ``(B, H, S)`` int64."""
    return torch.argsort(labels, dim=-1, stable=True)


def gather_rows(x: Tensor, order: Tensor) -> Tensor:
    """``x[b, h, order[b, h, r]]`` for every row r: ``(B, H, S, D)`` contiguous."""
    return permute_rows(x, order, False)


def scatter_rows(x: Tensor, order: Tensor) -> Tensor:
    """The inverse of :func:`gather_rows`: row r of x goes back to row ``order[b, h, r]``."""
    return permute_rows(x, order, True)
