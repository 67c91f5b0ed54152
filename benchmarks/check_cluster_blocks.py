"""Issue 20's open question: exact attention over variable-size k-means clusters, or over the fixed
blocks the clusters are cut into (what ``svg_ear`` does, so that FA4 and our Triton kernel serve it)?

Run on the H200 (bf16, Wan2.1-1.3B shape: 12 heads, 32,760 tokens, head dim 128)::

    python benchmarks/check_cluster_blocks.py --out benchmarks/results/kernel/check_cluster_blocks.json

Q and K are clustered per head (k-means, 300 / 1,000 clusters, on the clustered synthetic rows of
``check_svg_ear.py``) and permuted into cluster order. Each query cluster selects whole key clusters
by centroid score ``s q̄·k̄ + log |K_c|`` until they hold ``density`` (default 0.22) of the keys:
the paper's cluster-pair routing. That selection is computed two ways and timed (median ms):

* **variable**: a Triton kernel walks cluster pairs: one program per (head, 128-row piece of a query
  cluster) loops over its selected key clusters in 64-key tiles, masked at each cluster's end (a
  cluster of 33 keys costs a whole tile);
* **fixed**: the pairs mapped onto the 128 x 64 grid of the permuted tokens (a block is computed if
  any of its pairs is selected), run by the block-sparse backends (Triton, FA4 where installed);
  this computes a superset of the pairs, so its density is reported too;
* and, for scale, the fixed grid at exactly ``density`` of the blocks (how ``svg_ear`` routes).

Correctness first (PASS/FAIL, exit 1 on FAIL): the variable kernel against a float64 masked softmax
over the same pairs, at an odd small shape (on the CPU that check alone:
``TRITON_INTERPRET=1 python benchmarks/check_cluster_blocks.py --device cpu --out /tmp/c.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
from check_svg_ear import FULL, inputs

from dit_accel.bench import dense_runs, environment, median_ms
from dit_accel.kernels.block_list import BlockList, ascending_lists
from dit_accel.kernels.block_sparse_attention import LOG2E, _online_softmax_step, dot_precision
from dit_accel.kernels.clustering import gather_rows, kmeans, spread_centroids
from dit_accel.kernels.reference import select_blocks_reference

Tensor = torch.Tensor
SMALL = {"batch": 1, "heads": 2, "grid": (3, 7, 9), "text": 0, "dim": 32}  # 189 tokens, odd


@triton.jit
def _cluster_pair_attention(
    Q, K, V, Out, Lse, Work, SelPtr, Sel, KStart, KLen,
    seq, n_q_clusters, n_k_clusters, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One program: rows ``[row0, row0 + rows)`` of one query cluster of one head (q, k, v, out are
    ``(H, S, D)`` contiguous), over every key cluster its query cluster selected."""
    pid = tl.program_id(0)
    h = tl.load(Work + pid * 4).to(tl.int64)
    row0 = tl.load(Work + pid * 4 + 1)
    rows = tl.load(Work + pid * 4 + 2)
    cluster = tl.load(Work + pid * 4 + 3)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < rows
    q_rows = (row0 + offs_m).to(tl.int64)
    base = h * seq * HEAD_DIM
    q = tl.load(Q + base + q_rows[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    first = tl.load(SelPtr + h * (n_q_clusters + 1) + cluster)
    last = tl.load(SelPtr + h * (n_q_clusters + 1) + cluster + 1)
    for entry in range(first, last):
        key_cluster = tl.load(Sel + entry)
        start = tl.load(KStart + h * n_k_clusters + key_cluster)
        length = tl.load(KLen + h * n_k_clusters + key_cluster)
        for t in range(0, length, BLOCK_N):
            ok = t + offs_n < length
            cols = (start + t + offs_n).to(tl.int64)
            kt = tl.load(K + base + cols[:, None] * HEAD_DIM + offs_d[None, :], mask=ok[:, None], other=0.0)
            vt = tl.load(V + base + cols[:, None] * HEAD_DIM + offs_d[None, :], mask=ok[:, None], other=0.0)
            bias = tl.where(ok, 0.0, float("-inf"))
            acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, q, kt, vt, bias, qk_scale, False, DOT_PRECISION)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = (acc / l_safe[:, None]).to(Out.dtype.element_ty)
    tl.store(Out + base + q_rows[:, None] * HEAD_DIM + offs_d[None, :], out, mask=row_ok[:, None])
    lse = tl.where(l_i > 0.0, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    tl.store(Lse + h * seq + q_rows, lse, mask=row_ok)


def sorted_labels(lengths: Tensor) -> Tensor:
    """``(H, S)``: the cluster of each token once tokens are in cluster order (clusters ascending)."""
    heads, clusters = lengths.shape
    ids = torch.arange(clusters, device=lengths.device).repeat(heads)
    return torch.repeat_interleave(ids, lengths.flatten()).view(heads, -1)


class ClusterPairs:
    """Cluster-ordered ``(H, S, D)`` q/k/v, cluster extents, and the selected (query, key) cluster pairs."""

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, q_clusters: int, k_clusters: int, density: float,
                 iterations: int = 10) -> None:  # fmt: skip
        x = [t.transpose(1, 2) for t in (q, k, v)]  # (1, H, S, D)
        cq = kmeans(x[0], spread_centroids(x[0], q_clusters), iterations)
        ck = kmeans(x[1], spread_centroids(x[1], k_clusters), iterations)
        self.q = gather_rows(x[0], cq.row_order())[0].contiguous()
        self.k, self.v = (gather_rows(t, ck.row_order())[0].contiguous() for t in x[1:])
        self.q_len, self.k_len = cq.counts[0].long(), ck.counts[0].long()  # (H, C)
        self.q_start = self.q_len.cumsum(-1) - self.q_len
        self.k_start = self.k_len.cumsum(-1) - self.k_len
        scale = q.shape[-1] ** -0.5
        score = scale * cq.centroids[0] @ ck.centroids[0].transpose(-1, -2) + self.k_len.clamp(min=1).log()[:, None]
        score = score.masked_fill(self.k_len[:, None] == 0, float("-inf"))
        rank = score.argsort(-1, descending=True)
        ranked_len = self.k_len[:, None].expand_as(score).gather(-1, rank)
        keys_before = ranked_len.cumsum(-1) - ranked_len
        chosen = (keys_before < density * self.k.shape[1]) & (score.gather(-1, rank) > float("-inf"))
        self.selected = torch.zeros_like(chosen).scatter(-1, rank, chosen)  # (H, Cq, Ck) bool
        self.scale = scale

    def keys_selected(self) -> float:
        """Fraction of (query, key) pairs the cluster selection computes."""
        per_query = (self.selected.float() @ self.k_len[..., None].float())[..., 0]  # (H, Cq)
        return float((per_query * self.q_len).sum() / (self.q.shape[0] * self.q.shape[1] * self.k.shape[1]))

    def kernel_inputs(self, block_m: int) -> tuple[Tensor, ...]:
        """The work table (head, first row, rows, query cluster) and the selection in CSR form."""
        heads, cq = self.q_len.shape
        pieces = (self.q_len + block_m - 1) // block_m  # (H, Cq)
        head = torch.arange(heads, device=pieces.device)[:, None].expand_as(pieces).flatten()
        cluster = torch.arange(cq, device=pieces.device)[None, :].expand_as(pieces).flatten()
        owner = torch.repeat_interleave(torch.arange(heads * cq, device=pieces.device), pieces.flatten())
        first_piece = pieces.flatten().cumsum(0) - pieces.flatten()
        piece = torch.arange(owner.numel(), device=pieces.device) - first_piece[owner]
        row0 = self.q_start.flatten()[owner] + piece * block_m
        rows = (self.q_len.flatten()[owner] - piece * block_m).clamp(max=block_m)
        work = torch.stack([head[owner], row0, rows, cluster[owner]], -1).to(torch.int32).contiguous()
        counts = self.selected.sum(-1).flatten()  # (H * Cq,)
        sel_ptr = torch.zeros(heads * cq + 1, dtype=torch.int64, device=counts.device)
        sel_ptr[1:] = counts.cumsum(0)
        sel = self.selected.flatten(0, 1).nonzero()[:, 1].to(torch.int32)  # key clusters, ascending per row
        # per-head pointer tables: row h of (H, Cq + 1) starts at that head's first entry
        ptr = torch.cat([sel_ptr[:-1].view(heads, cq), sel_ptr[cq::cq].view(heads, 1)], 1).to(torch.int32)
        return work, ptr.contiguous(), sel, self.k_start.to(torch.int32).contiguous(), self.k_len.to(torch.int32)

    def variable(self, block_m: int = 128, block_n: int = 64) -> tuple[Tensor, Tensor]:
        """Cluster-pair attention with the Triton kernel: ``(out, lse)`` in cluster order, ``(H, S, D)``."""
        work, ptr, sel, k_start, k_len = self.kernel_inputs(block_m)
        out = torch.empty_like(self.q)
        lse = torch.empty(self.q.shape[:2], device=self.q.device, dtype=torch.float32)
        _cluster_pair_attention[(work.shape[0],)](
            self.q, self.k, self.v, out, lse, work, ptr, sel, k_start, k_len.contiguous(),
            self.q.shape[1], ptr.shape[1] - 1, k_start.shape[1], self.scale * LOG2E,
            HEAD_DIM=self.q.shape[-1], BLOCK_M=block_m, BLOCK_N=block_n, DOT_PRECISION=dot_precision(self.q),
        )  # fmt: skip
        return out, lse

    def reference(self) -> Tensor:
        """Float64 softmax of every query row over the keys of its selected clusters."""
        outs = []
        q_cluster, k_cluster = sorted_labels(self.q_len), sorted_labels(self.k_len)
        for h in range(self.q.shape[0]):
            allowed = self.selected[h][q_cluster[h]][:, k_cluster[h]]
            logits = self.scale * self.q[h].double() @ self.k[h].double().T
            weights = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
            outs.append(weights @ self.v[h].double())
        return torch.stack(outs)

    def fixed_blocks(self, block_q: int, block_k: int) -> BlockList:
        """The selected pairs on the fixed grid: block (i, j) when any of its pairs is selected."""
        heads, seq = self.q.shape[:2]

        def membership(lengths: Tensor, block: int) -> Tensor:  # (H, blocks, clusters): cluster in block
            nb = math.ceil(seq / block)
            padded = torch.nn.functional.pad(sorted_labels(lengths), (0, nb * block - seq), value=-1)
            present = torch.zeros(heads, nb, lengths.shape[1] + 1, device=lengths.device)
            present.scatter_(-1, padded.view(heads, nb, block) + 1, 1.0)  # padding lands in column 0
            return present[..., 1:]

        mq, mk = membership(self.q_len, block_q), membership(self.k_len, block_k)
        mask = (mq @ self.selected.float() @ mk.transpose(-1, -2)) > 0
        indices, counts = ascending_lists(mask[None])
        return BlockList(indices, counts, block_q, block_k, seq)


def top_density_blocks(pairs: ClusterPairs, density: float, block_q: int, block_k: int) -> BlockList:
    """``density`` of the fixed blocks per query block, by pooled score (how ``svg_ear`` sizes its budget)."""
    heads, seq, dim = pairs.q.shape
    nq, nk = math.ceil(seq / block_q), math.ceil(seq / block_k)
    pooled_q = torch.nn.functional.pad(pairs.q.float(), (0, 0, 0, nq * block_q - seq)).view(heads, nq, block_q, dim)
    pooled_k = torch.nn.functional.pad(pairs.k.float(), (0, 0, 0, nk * block_k - seq)).view(heads, nk, block_k, dim)
    score = pooled_q.mean(2) @ pooled_k.mean(2).transpose(-1, -2)
    indices, counts = select_blocks_reference(score[None], density=density)
    return BlockList(indices, counts, block_q, block_k, seq)


def check(device: torch.device) -> dict:
    """The variable kernel against float64 at an odd small shape."""
    q, k, v, _ = inputs(SMALL, torch.float32, device, seed=7)
    pairs = ClusterPairs(q, k, v, q_clusters=11, k_clusters=17, density=0.3)
    out, _ = pairs.variable(block_m=32, block_n=16)
    ref = pairs.reference()
    err = float((out.double() - ref).abs().max() / ref.abs().max())
    record = {"check": "variable vs float64", "max_rel_err": err, "ok": err < 1e-4,
              "keys_selected": pairs.keys_selected()}  # fmt: skip
    print(("PASS" if record["ok"] else "FAIL"), json.dumps(record), flush=True)
    return record


def timings(device: torch.device, density: float) -> list[dict]:
    """Median ms of the variable kernel and of the fixed-grid backends for the same selection."""
    from dit_accel.kernels.backends import resolve_backend, sparse_attention

    q, k, v, _ = inputs(FULL, torch.bfloat16, device, seed=2)
    pairs = ClusterPairs(q, k, v, q_clusters=300, k_clusters=1000, density=density)
    records = [{"what": "variable cluster pairs", "density": pairs.keys_selected(),
                "ms": median_ms(pairs.variable, device)}]  # fmt: skip
    views = [t[None] for t in (pairs.q, pairs.k, pairs.v)]  # (1, H, S, D)
    superset = pairs.fixed_blocks(128, 64)
    at_density = top_density_blocks(pairs, density, 128, 64)
    for label, blocks in (("fixed 128x64, the same pairs", superset), (f"fixed 128x64 at {density}", at_density)):
        # "auto" is FA4 where installed: then Triton is timed too; without FA4 both resolve to Triton
        backends = dict.fromkeys(resolve_backend(name, views[0], 128, 64) for name in ("auto", "triton"))
        for backend in backends:
            ms = median_ms(lambda b=blocks, be=backend: sparse_attention(*views, b, backend=be), device)
            records.append({"what": label, "backend": backend, "density": blocks.density(), "ms": ms})
    cudnn = median_ms(lambda: dense_runs(device)["cudnn"](q, k, v), device)
    for record in records:
        record["speedup_vs_cudnn"] = cudnn / record["ms"]
        print(json.dumps(record), flush=True)
    return [*records, {"what": "dense cudnn", "ms": cudnn}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--density", type=float, default=0.22)
    args = parser.parse_args()
    device = torch.device(args.device)
    records = [check(device)]
    if device.type == "cuda":
        records += timings(device, args.density)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(device), "records": records}, indent=1))
    return 0 if records[0]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
