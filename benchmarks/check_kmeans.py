"""GPU comparison of ``svg_ear``'s k-means with ``flash-kmeans`` (PyPI), as issue 20 asks.

Run on the H200 (bf16, Wan2.1-1.3B shape: 12 heads, 32,760 tokens, head dim 128)::

    pip install flash-kmeans   # optional: without it only our k-means is timed
    python benchmarks/check_kmeans.py --out benchmarks/results/kernel/check_kmeans.json

For Q (300 clusters) and K (1,000 clusters), on clustered synthetic rows (the same generator as
``check_svg_ear.py``):

* warm step (what every sparse denoising step runs): 2 iterations from centroids fitted to a
  perturbed copy of the rows (the previous step's), each implementation timed (median ms, eager;
  CUDA-graph GPU time where the implementation can be captured) with the row order the method
  needs afterwards (ours computes it inside the iterations; flash-kmeans' labels get the same stable
  argsort);
* cold step (the first sparse step): 50 iterations from evenly spaced rows;
* quality: the mean squared distance of each row to the mean of its cluster, from each result's
  labels (recomputed in float32, so both are judged alike).

flash-kmeans checks convergence on the host every iteration (``center_shift < tol``): one sync per
iteration, so it cannot be captured in a CUDA graph nor compiled without a graph break: only its
eager time is taken. ``--device cpu`` runs ours on a small shape (flash-kmeans needs CUDA).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from check_svg_ear import CPU, FULL, inputs

from dit_accel.bench import eager_and_graph_ms, environment
from dit_accel.kernels.clustering import cluster_order, kmeans, spread_centroids
from dit_accel.kernels.svg_ear_reference import segment_counts, segment_sums

Tensor = torch.Tensor
WARM_ITERS, COLD_ITERS = 2, 50
CLUSTERS = {"q": 300, "k": 1000}  # METHODS.md's C_q and C_k for Wan


def inertia(x: Tensor, labels: Tensor, clusters: int) -> float:
    """Mean squared distance of each row of ``(B, H, S, D)`` x to the float32 mean of its cluster."""
    rows = x.float()
    counts = segment_counts(labels, clusters).clamp(min=1)
    means = segment_sums(rows, labels, clusters) / counts[..., None]
    nearest = torch.gather(means, 2, labels.long()[..., None].expand_as(rows))
    return float(((rows - nearest) ** 2).sum(-1).mean())


def ours(x: Tensor, start: Tensor, iterations: int) -> Callable[[], Tensor]:
    """Our k-means (labels, centroids and row order every iteration): returns the labels."""
    return lambda: kmeans(x, start, iterations).labels


def flash(x: Tensor, start: Tensor, iterations: int) -> Callable[[], Tensor]:
    """flash-kmeans' batched Euclidean k-means over (batch x heads) plus the row order: the labels."""
    from flash_kmeans import batch_kmeans_Euclid

    b, h, s, d = x.shape
    rows, init = x.reshape(b * h, s, d), start.reshape(b * h, -1, d).to(x.dtype)

    def run() -> Tensor:
        labels, _, _ = batch_kmeans_Euclid(rows, init.shape[1], max_iters=iterations, tol=-1.0, init_centroids=init)
        labels = labels.reshape(b, h, s)
        cluster_order(labels, init.shape[1])
        return labels

    return run


def timed(name: str, fn: Callable[[], Tensor], x: Tensor, clusters: int, device: torch.device) -> dict[str, Any]:
    """Median ms (eager; CUDA graph for ours only) and the clustering's inertia."""
    # flash-kmeans syncs with the host every iteration: a capture attempt would fail and could leave
    # the CUDA context unusable for the records after it, so it is not tried.
    return {"impl": name, "inertia": inertia(x, fn(), clusters)} | eager_and_graph_ms(fn, device, name == "dit_accel")


def compare(shape: dict, device: torch.device, with_flash: bool) -> list[dict]:
    """Warm and cold k-means of the video rows of Q and K, ours and (on CUDA) flash-kmeans'."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, _, layout = inputs(shape, dtype, device, seed=5)
    records = []
    for which, tensor in (("q", q), ("k", k)):
        x = tensor.transpose(1, 2)[:, :, layout.video_slice].contiguous()
        clusters = min(CLUSTERS[which], x.shape[2] // 4)
        previous = (x.float() + 0.1 * torch.randn_like(x, dtype=torch.float32)).to(dtype)
        cold_start = spread_centroids(x, clusters)
        warm_start = kmeans(previous, spread_centroids(previous, clusters), 10).centroids
        for step, start, iterations in (("warm", warm_start, WARM_ITERS), ("cold", cold_start, COLD_ITERS)):
            impls = {"dit_accel": ours(x, start, iterations)}
            if with_flash:
                impls["flash_kmeans"] = flash(x, start, iterations)
            for name, fn in impls.items():
                try:
                    record = timed(name, fn, x, clusters, device)
                except Exception as error:  # e.g. a dtype flash-kmeans rejects: recorded, the rest still runs
                    record = {"impl": name, "error": f"{type(error).__name__}: {str(error)[:200]}"}
                record |= {"rows": which, "step": step, "iterations": iterations, "clusters": clusters,
                           "shape": list(x.shape), "dtype": str(dtype)}  # fmt: skip
                records.append(record)
                print(json.dumps(record), flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    device = torch.device(args.device)
    with_flash = device.type == "cuda"
    info = environment(device)
    try:
        import flash_kmeans

        info["flash_kmeans"] = flash_kmeans.__version__
        # its package falls back to plain PyTorch, silently, when its Triton modules fail to import
        info["flash_kmeans_impl"] = flash_kmeans.batch_kmeans_Euclid.__module__
    except ImportError:
        with_flash, info["flash_kmeans"] = False, "not installed"
    records = compare(FULL if device.type == "cuda" else CPU, device, with_flash)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": info, "records": records}, indent=1))


if __name__ == "__main__":
    main()
