"""Sweep the block-sparse kernel's launch configuration on the GPU (Wan-1.3B shape, bf16).

For each key block size, density, K/V load path (TMA or pointers), warps and pipeline stages,
times the attention kernel alone on the routed block lists, against cuDNN dense in the same run.
The winners become the defaults in ``kernels/block_sparse_attention.py``.

    python benchmarks/kernel_sweep.py --out DIR
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
from pathlib import Path

import torch
from torch.nn.attention import sdpa_kernel

from dit_accel.bench import SHAPES, TopKRun, dense_backends, environment, median_ms, random_qkv, sdpa_bshd
from dit_accel.kernels.block_sparse_attention import block_sparse_attention_triton
from dit_accel.methods.topk import TopKConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--shape", default="wan-1.3b-480p")
    args = parser.parse_args()
    device = torch.device("cuda")
    shape = SHAPES[args.shape]
    q, k, v = random_qkv(shape, torch.bfloat16, device)
    with sdpa_kernel(dense_backends(device)["cudnn"]):
        cudnn_ms = median_ms(lambda: sdpa_bshd(q, k, v), device)
    print(f"cuDNN dense {cudnn_ms:.3f} ms", flush=True)
    records = []
    for (bm, bn), density in itertools.product(((128, 64), (128, 128), (64, 64)), (1.0, 0.1)):
        run = TopKRun(shape, TopKConfig(density=density, block_size=(bm, bn)), q, k, v)
        k_tiled, v_tiled, indices, counts = run.routing()
        flops = run.computed_flops(counts)
        qh = q.transpose(1, 2)
        for use_tma, warps, stages in itertools.product((True, False), (4, 8), (2, 3, 4)):
            if bm == 64 and warps == 8:
                continue
            launch = functools.partial(
                block_sparse_attention_triton, qh, k_tiled, v_tiled, indices, counts, block_m=bm, block_n=bn,
                q_rows=run.rows, key_len=shape.video_len, use_tma=use_tma, num_warps=warps, num_stages=stages,
            )  # fmt: skip
            try:
                ms = median_ms(launch, device, warmup_ms=100, rep_ms=400)
            except Exception as error:  # a config the compiler rejects (e.g. shared memory) is skipped
                print(f"skip bm={bm} bn={bn} tma={use_tma} w={warps} s={stages}: {type(error).__name__}", flush=True)
                continue
            record = {
                "block": [bm, bn], "density": density, "tma": use_tma, "num_warps": warps, "num_stages": stages,
                "ms": ms, "tflops": flops / ms / 1e9, "speedup_vs_cudnn": cudnn_ms / ms,
            }  # fmt: skip
            records.append(record)
            print(json.dumps(record), flush=True)
    best = {}
    for record in records:
        key = (tuple(record["block"]), record["density"])
        if key not in best or record["ms"] < best[key]["ms"]:
            best[key] = record
    print("best per (block, density):")
    for record in best.values():
        print(json.dumps(record))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    payload = {"env": environment(device), "shape": shape.dims(), "cudnn_ms": cudnn_ms, "records": records}
    (Path(args.out) / "kernel_sweep.json").write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
