"""GPU experiment: hide routing behind FA4's block-sparse attention by pipelining head groups on two streams.

    python benchmarks/check_routing_overlap.py --out check_routing_overlap.json

``topk`` at density 0.1 runs FA4's block-sparse call in ~1.15 ms at the Wan-1.3B shape; routing (one read of
Q and K, ~0.1 ms) run before it caps the call below the engine issue's 10x cuDNN. Routing is
bandwidth-bound and the attention compute-bound, so routing head group g+1 on a side stream while FA4
attends group g could hide most of it. This times (CUDA-graph replays, L2 flushed), at 128x128 blocks:
cuDNN dense; FA4 alone on precomputed lists (the floor); routing then FA4 (today's call); and the
pipelined call with G head groups. PASS/FAIL: the pipelined output equals the sequential one.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from dit_accel.bench import SHAPES, environment, graph_ms, median_ms, random_qkv
from dit_accel.kernels import reference
from dit_accel.kernels.block_selection import select_blocks_triton
from dit_accel.kernels.fa4 import sparse_tensors
from dit_accel.kernels.routing import pool_qk_triton
from dit_accel.methods.routing import key_log_counts

BLOCK = 128
DENSITY = 0.1


def route(q: torch.Tensor, k: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """topk's routing of (B, S, h, D) head slices: block means, scores + log n_j, top-k lists."""
    q_mean, k_mean = pool_qk_triton(q.transpose(1, 2), k.transpose(1, 2), BLOCK, BLOCK)
    log_counts = key_log_counts(k.shape[1], BLOCK, k.device)  # cached, as the methods have it
    scores = reference.routing_scores(q_mean, k_mean, scale)
    return select_blocks_triton(scores, density=DENSITY, log_counts=log_counts)


def attend(q, k, v, indices, counts, scale, out, lse) -> None:
    from flash_attn.cute.interface import _flash_attn_fwd

    _flash_attn_fwd(
        q, k, v, softmax_scale=scale, block_sparse_tensors=sparse_tensors(indices, counts, (BLOCK, BLOCK)),
        return_lse=True, out=out, lse=lse,
    )  # fmt: skip


def pipelined(q, k, v, scale: float, groups: int, side: torch.cuda.Stream) -> torch.Tensor:
    """Route every head group on ``side``, attend each on the current stream once its lists are ready."""
    b, s, h, _ = q.shape
    out = torch.empty_like(q)
    lse = torch.empty(b, h, s, device=q.device, dtype=torch.float32)
    main = torch.cuda.current_stream()
    side.wait_stream(main)
    width = h // groups
    ready = []
    with torch.cuda.stream(side):
        for g in range(groups):
            heads = slice(g * width, (g + 1) * width)
            indices, counts = route(q[:, :, heads], k[:, :, heads], scale)
            event = torch.cuda.Event()
            event.record(side)
            ready.append((heads, indices, counts, event))
    for heads, indices, counts, event in ready:
        main.wait_event(event)
        if not torch.cuda.is_current_stream_capturing():  # the allocator must not hand these back to side early
            indices.record_stream(main)
            counts.record_stream(main)
        attend(q[:, :, heads], k[:, :, heads], v[:, :, heads], indices, counts, scale, out[:, :, heads], lse[:, heads])
    return out


def sequential(q, k, v, scale: float) -> torch.Tensor:
    b, s, h, _ = q.shape
    out = torch.empty_like(q)
    lse = torch.empty(b, h, s, device=q.device, dtype=torch.float32)
    indices, counts = route(q, k, scale)
    attend(q, k, v, indices, counts, scale, out, lse)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device("cuda")
    shape = SHAPES["wan-1.3b-480p"]
    q, k, v = random_qkv(shape, torch.bfloat16, device)
    scale = shape.head_dim**-0.5
    side = torch.cuda.Stream()
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
        cudnn_ms = graph_ms(
            lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)), device
        )
    indices, counts = route(q, k, scale)
    out = torch.empty_like(q)
    lse = torch.empty(1, shape.heads, shape.seq_len, device=device, dtype=torch.float32)
    records = {"environment": environment(device), "cudnn_ms": cudnn_ms}
    records["fa4_only_ms"] = graph_ms(lambda: attend(q, k, v, indices, counts, scale, out, lse), device)
    records["routing_ms"] = graph_ms(lambda: route(q, k, scale), device)
    records["sequential_ms"] = graph_ms(lambda: sequential(q, k, v, scale), device)
    records["sequential_ms_eager"] = median_ms(lambda: sequential(q, k, v, scale), device)
    want = sequential(q, k, v, scale)
    for groups in (1, 2, 3, 4, 6):
        got = pipelined(q, k, v, scale, groups, side)
        torch.cuda.synchronize()
        same = bool(torch.equal(got, want))
        call = functools.partial(pipelined, q, k, v, scale, groups, side)
        records[f"pipelined_{groups}"] = {"ms": graph_ms(call, device), "ms_eager": median_ms(call, device)}
        records[f"pipelined_{groups}"]["check"] = "PASS" if same else "FAIL"
    for key, value in records.items():
        if key != "environment":
            ms = value["ms"] if isinstance(value, dict) else value
            print(f"{key:16s} {ms:.4f} ms  x{cudnn_ms / ms:.2f} vs cuDNN  {value if isinstance(value, dict) else ''}")
    args.out.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
