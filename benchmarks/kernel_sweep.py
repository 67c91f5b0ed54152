"""Sweep the block-sparse kernel's launch configuration on the GPU (Wan-1.3B shape, bf16).

Times the attention kernel alone on routed block lists, for each K/V load mode (host TMA on the
gathered copy, device TMA in place on the model's own (B, S, H, D) tensors, pointers), warps,
pipeline stages, lazy rescaling and warp specialization, against cuDNN dense in the same run.
The winners become the defaults of ``KernelConfig`` in ``dit_accel/kernels/block_sparse_attention.py``.

    python benchmarks/kernel_sweep.py --out DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.nn.attention import sdpa_kernel

from dit_accel.bench import SHAPES, TopKRun, dense_backends, environment, median_ms, random_qkv, sdpa_bshd
from dit_accel.kernels.block_sparse_attention import KernelConfig, block_sparse_attention_triton
from dit_accel.methods.topk import TopKConfig

# (in-place K/V, config): in-place runs read the model's tensors (device TMA or pointers),
# the others the padded tile-order copy (host TMA).
VARIANTS = [
    (False, KernelConfig(kv_mode=1, num_warps=4, num_stages=2)),
    (False, KernelConfig(kv_mode=1, num_warps=4, num_stages=2, lazy_rescale=True)),
    (True, KernelConfig(kv_mode=2, num_warps=4, num_stages=2)),
    (True, KernelConfig(kv_mode=2, num_warps=4, num_stages=3)),
    (True, KernelConfig(kv_mode=2, num_warps=4, num_stages=2, lazy_rescale=True)),
    (True, KernelConfig(kv_mode=2, num_warps=4, num_stages=3, lazy_rescale=True)),
    (True, KernelConfig(kv_mode=2, num_warps=4, num_stages=2, warp_specialize=True)),
    (True, KernelConfig(kv_mode=2, num_warps=8, num_stages=2, warp_specialize=True)),
    (True, KernelConfig(kv_mode=0, num_warps=4, num_stages=3)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results/kernel")
    parser.add_argument("--shape", default="wan-1.3b-480p")
    args = parser.parse_args()
    device = torch.device("cuda")
    shape = SHAPES[args.shape]
    q, k, v = random_qkv(shape, torch.bfloat16, device)
    with sdpa_kernel(dense_backends(device)["cudnn"]):
        cudnn_ms = median_ms(lambda: sdpa_bshd(q, k, v), device)
        reference = sdpa_bshd(q, k, v).transpose(1, 2).float()
    print(f"cuDNN dense {cudnn_ms:.3f} ms", flush=True)
    records = []
    for density in (1.0, 0.1):
        for pretiled, config in VARIANTS:
            run = TopKRun(shape, TopKConfig(density=density, block_size=(128, 64)), q, k, v, pretiled=pretiled)
            routed = run.routing()

            def launch(routed=routed, config=config):
                return block_sparse_attention_triton(
                    routed.q, routed.k, routed.v, routed.indices, routed.counts, block_m=128, block_n=64,
                    q_rows=routed.q_rows, key_len=routed.key_len, config=config,
                )[0]  # fmt: skip

            try:
                ms = median_ms(launch, device, warmup_ms=100, rep_ms=500)
                error = (
                    float((launch().float() - reference).abs().sum() / reference.abs().sum()) if density == 1 else None
                )
            except Exception as exc:  # a config this Triton rejects is reported and skipped
                print(f"skip {config}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                continue
            flops = run.computed_flops(routed.counts)
            record = {
                "density": density, "in_place": pretiled, **config.__dict__, "ms": ms, "tflops": flops / ms / 1e9,
                "speedup_vs_cudnn": cudnn_ms / ms, "rel_l1_vs_cudnn": error,
            }  # fmt: skip
            records.append(record)
            print(json.dumps(record), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    payload = {"env": environment(device), "shape": shape.dims(), "cudnn_ms": cudnn_ms, "records": records}
    (Path(args.out) / "kernel_sweep2.json").write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
