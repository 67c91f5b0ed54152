"""GPU check of ``pisa``: its kernels against their float64 references, then their times and the method's.

(a) correctness: the block-statistics kernel (v̄, H̄, ‖H_j‖_F) and the tail kernel (order 0 and 1, rows
gathered or not) against the float64 references, bf16 at the full shape and at a small odd shape; the
whole method against the same routing composed from the references (exact part + tail + LSE merge).
(b) times (``dit_accel.bench.median_ms``; GPU time from CUDA graphs where capture works): statistics
(and a sweep of their launch configurations), tail, merge, tail fused with the merge (what the method
runs on CUDA, and a sweep of its launch configurations), and the whole method (``MethodRun``, tokens
pretiled as in a model) for ``pisa`` order 0/1 and ``topk`` at each density and block size, against
cuDNN dense in the same run. (c) everything to the JSON file ``--out``. Exits non-zero on a FAIL.

    python benchmarks/check_pisa.py --out pisa_h200.json
    python benchmarks/check_pisa.py --device cpu --out /tmp/pisa_cpu.json   # reference parts, tiny shape
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
from pathlib import Path

import torch

from dit_accel.bench import (
    SHAPES,
    MethodRun,
    environment,
    graph_ms,
    kernel_backends,
    median_ms,
    random_qkv,
    rel_l1,
    sdpa_bshd,
)
from dit_accel.kernels import merge_attention, reference
from dit_accel.kernels.pisa_reference import pisa_block_stats_reference, pisa_tail_reference

TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-4}
TAIL_SWEEP = [(bm, bn, warps, stages, True) for bm in (64, 128) for bn in (32, 64, 128, 256) for warps in (4, 8)
              for stages in (2, 3, 4)]  # fmt: skip
# The exact rows loaded before or after the pseudo-tokens (after: fewer registers through the loop; Nsight
# Compute put the merged tail at 237 registers, 12% occupancy, latency-bound:
# results/kernel/methods_h200_s24/ncu_pisa_s24.txt), launches near the fastest.
TAIL_PREFETCH_SWEEP = [(bm, bn, warps, stages, prefetch) for bm, bn in ((64, 32), (64, 64), (128, 64), (64, 128))
                       for warps in (4, 8) for stages in (2, 3) for prefetch in (True, False)]  # fmt: skip
STATS_SWEEP = [(programs, sub_k, input_dot, warps, stages) for programs in (128, 256, 512)
               for sub_k, input_dot in ((64, False), (128, True)) for warps in (4, 8)
               for stages in (2, 3)]  # fmt: skip


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def block_inputs(batch, heads, seq, dim, block_q, block_k, density, dtype, device, seed=0):
    """q, k (with a shared mean, as real keys have), v; k̄; random block lists at ``density``; a row order."""
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(batch, seq, heads, dim, generator=gen, device=device).transpose(1, 2) for _ in range(3))
    k = k + torch.randn(1, heads, 1, dim, generator=gen, device=device)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    k_mean = reference.pool_blocks_reference(k, block_k)
    nq, nk = math.ceil(seq / block_q), k_mean.shape[2]
    scores = torch.rand(batch, heads, nq, nk, generator=gen, device=device)
    indices, counts = reference.select_blocks_reference(scores, density=density)
    rows = torch.randperm(seq, generator=gen, device=device).to(torch.int32)
    return q, k, v, k_mean, indices, counts, rows


def check_kernels(batch, heads, seq, dim, block_q, block_k, dtype, device) -> list[dict]:
    """Triton stats and tail against float64 references at one shape."""
    from dit_accel.kernels.pisa_stats import StatsConfig, pisa_block_stats_triton
    from dit_accel.kernels.pisa_tail import pisa_tail_triton

    q, k, v, k_mean, indices, counts, rows = block_inputs(batch, heads, seq, dim, block_q, block_k, 0.125, dtype,
                                                          device)  # fmt: skip
    shape = [batch, heads, seq, dim]
    want = pisa_block_stats_reference(k.double(), v.double(), k_mean.double(), block_k, seq, True, True)
    records = []
    for input_dot in (False, True):
        got = pisa_block_stats_triton(k, v, k_mean, block_k, seq, True, True, StatsConfig(input_dot=input_dot))
        for name, g, w in zip(("v_mean", "h_bar", "h_norm"), got, want, strict=True):
            error = rel_err(g, w)
            records.append({"check": f"stats.{name}", "input_dot": input_dot, "shape": shape, "rel_err": error,
                            "ok": error < 1e-2})  # fmt: skip
    v_mean, h_bar = want[0], want[1]
    log_counts = reference.block_counts(seq, block_k, device).double().log()
    for order in (0, 1):
        for gathered in (False, True):
            q_rows = rows if gathered else None
            args = (k_mean.double(), v_mean, h_bar if order else None, log_counts, indices, counts, block_q,
                    dim**-0.5, q_rows)  # fmt: skip
            out, lse = pisa_tail_triton(q, *(a.float() if a is not None else None for a in args[:4]), *args[4:])
            ref, ref_lse = pisa_tail_reference(q.double(), *args)
            logical = rows.long() if gathered else slice(None)
            out, lse, ref, ref_lse = (x[:, :, logical] for x in (out, lse, ref, ref_lse))
            finite = torch.isfinite(ref_lse)
            lse_ok = torch.equal(finite, torch.isfinite(lse)) and float((lse - ref_lse)[finite].abs().max()) < 5e-2
            error = rel_err(out, ref)
            records.append({"check": f"tail.order{order}", "gathered": gathered, "shape": shape, "rel_err": error,
                            "lse_ok": lse_ok, "ok": lse_ok and error < TOLERANCE[dtype]})  # fmt: skip
    return records


def composed_reference(run: MethodRun) -> torch.Tensor:
    """The method's output from the same routing through the references (fp32): exact + tail, LSE merge."""
    routing, blocks = run.route_and_select()
    f32 = [x.float() if x is not None else None for x in (routing.q, routing.k, routing.v, routing.extra_k,
                                                          routing.extra_v)]  # fmt: skip
    exact, exact_lse = reference.block_sparse_attention_reference(
        *f32[:3], blocks.indices, blocks.counts, block_m=blocks.block_q, block_n=blocks.block_k,
        extra_k=f32[3], extra_v=f32[4], extra_valid=routing.extra_valid, scale=routing.scale,
        q_rows=routing.q_rows, key_len=routing.key_len, return_lse=True,
    )  # fmt: skip
    cfg = run.method.config
    k_mean = reference.pool_blocks_reference(f32[1][:, :, : routing.key_len], cfg.tail_keys)
    v_mean, h_bar, _ = pisa_block_stats_reference(f32[1], f32[2], k_mean, cfg.tail_keys, routing.key_len,
                                                  cfg.order == 1, False)  # fmt: skip
    log_counts = reference.block_counts(routing.key_len, cfg.tail_keys, k_mean.device).float().log()
    tail = pisa_tail_reference(
        f32[0], k_mean, v_mean, h_bar if cfg.order else None, log_counts, blocks.indices, blocks.counts,
        blocks.block_q, routing.scale, routing.q_rows, blocks.block_k // cfg.tail_keys,
    )  # fmt: skip
    out, _ = reference.merge_attention_reference(exact, exact_lse, *tail)
    return run.method._assemble(out.to(run.q.dtype), run.q, run.k, run.v, routing, run.ctx)


def gpu_ms(fn, device) -> dict:
    """Eager median and, where the call can be captured, the CUDA-graph median (GPU time)."""
    record = {"ms_eager": median_ms(fn, device)}
    try:
        record["ms"] = graph_ms(fn, device)
    except Exception as error:  # capture unsupported by some engine: keep the eager figure
        record["ms"], record["graph_error"] = None, type(error).__name__
    if record["ms"] is None:
        record["ms"] = record["ms_eager"]
    return record


def swept_ms(fn, device) -> dict:
    """``gpu_ms`` of one launch configuration, or the error of one the compiler rejects (registers, shared memory)."""
    try:
        return gpu_ms(fn, device)
    except Exception as error:
        return {"ms": None, "error": f"{type(error).__name__}: {str(error)[:200]}"}


def time_parts(shape, dtype, device, block_q, block_k, sweeps: tuple[str, ...] = ("stats", "tail")) -> list[dict]:
    """Stats, tail (launch sweep), merge at the shape's video length (rows pretiled: no q_rows)."""
    from dit_accel.kernels.pisa_ops import pisa_block_stats, pisa_tail, pisa_tail_merge

    b, h, s, d = shape.batch, shape.heads, shape.video_len, shape.head_dim
    q, k, v, k_mean, indices, counts, _ = block_inputs(b, h, s, d, block_q, block_k, 0.125, dtype, device)
    log_counts = reference.block_counts(s, block_k, device).float().log()
    records = []
    for with_h, with_norms in ((False, False), (True, False), (True, True)):
        ms = gpu_ms(functools.partial(pisa_block_stats, k, v, k_mean, block_k, s, with_h, with_norms), device)
        records.append({"part": "stats", "with_h": with_h, "with_norms": with_norms, **ms})
    v_mean, h_bar, _ = pisa_block_stats(k, v, k_mean, block_k, s, True, False)
    tail_args = (q, k_mean, v_mean, h_bar, log_counts, indices, counts, block_q, d**-0.5, None)
    exact = pisa_tail(*tail_args)  # stands in for the exact part in the merge timings
    for order in (0, 1):
        h = h_bar if order else None
        ms = gpu_ms(functools.partial(pisa_tail, q, k_mean, v_mean, h, log_counts, indices, counts, block_q, d**-0.5),
                    device)  # fmt: skip
        records.append({"part": "tail", "order": order, **ms})
    if device.type == "cuda":
        from dit_accel.kernels.pisa_stats import StatsConfig, pisa_block_stats_triton
        from dit_accel.kernels.pisa_tail import TailConfig, pisa_tail_triton

        for programs, sub_k, input_dot, warps, stages in STATS_SWEEP if "stats" in sweeps else ():
            config = StatsConfig(programs, sub_k, input_dot, warps, stages)
            stats = functools.partial(pisa_block_stats_triton, k, v, k_mean, block_k, s, True, False, config)
            records.append({"part": "stats_sweep", **dataclasses.asdict(config), **swept_ms(stats, device)})
        swept = (TAIL_SWEEP if "tail" in sweeps else []) + (TAIL_PREFETCH_SWEEP if "tail_prefetch" in sweeps else [])
        tail_configs = {TailConfig(min(bm, block_q), bn, warps, stages, prefetch)
                        for bm, bn, warps, stages, prefetch in swept}  # fmt: skip
        for config in sorted(tail_configs, key=dataclasses.astuple):
            fused = functools.partial(pisa_tail_triton, *tail_args, config=config, merge_into=exact)
            records.append({"part": "tail_merge_sweep", "order": 1, **dataclasses.asdict(config),
                            **swept_ms(fused, device)})  # fmt: skip
    records.append({"part": "merge", **gpu_ms(functools.partial(merge_attention, *exact, *exact), device)})
    fused = functools.partial(pisa_tail_merge, *tail_args, *exact)
    records.append({"part": "tail_merge_fused", "order": 1, **gpu_ms(fused, device)})
    return [r | {"block_size": [block_q, block_k]} for r in records]


def time_methods(shape, dtype, device, densities, block_sizes, backends) -> tuple[float, list[dict]]:
    """cuDNN dense, then topk and pisa order 0/1 per density, block size and backend; errors vs dense."""
    q, k, v = random_qkv(shape, dtype, device)
    dense = sdpa_bshd(q, k, v)
    dense_ms = median_ms(lambda: sdpa_bshd(q, k, v), device)
    records = []
    for block_size in block_sizes:
        for density in densities:
            for backend in backends:
                for method, extra in (("topk", {}), ("pisa", {"order": 0}), ("pisa", {"order": 1})):
                    options = {"density": density, "block_size": block_size, "backend": backend, **extra}
                    run = MethodRun(method, options, shape.layout(), q, k, v)
                    ms = gpu_ms(run.full, device)
                    records.append({"method": method, "options": options, **ms, "speedup_vs_cudnn":
                                    dense_ms / ms["ms"], "rel_l1_vs_dense": rel_l1(run.full(), dense)})  # fmt: skip
    return dense_ms, records


def check_method(shape, dtype, device, block_size) -> list[dict]:
    """The whole method (both orders) against the same routing composed from the references."""
    q, k, v = random_qkv(shape, dtype, device, seed=1)
    records = []
    for order in (0, 1):
        run = MethodRun("pisa", {"density": 0.125, "order": order, "block_size": block_size}, shape.layout(), q, k, v)
        error = rel_err(run.full(), composed_reference(run))
        records.append({"check": f"method.order{order}", "shape": shape.name, "block_size": list(block_size),
                        "rel_err": error, "ok": error < TOLERANCE[dtype]})  # fmt: skip
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--shape", default=None, help=f"one of {', '.join(SHAPES)} (default: wan-1.3b-480p on cuda)")
    parser.add_argument("--densities", type=float, nargs="+", default=[0.125, 0.05])
    parser.add_argument("--block-sizes", nargs="+", default=["128x64", "128x128", "64x64"],
                        help="QxK block sizes of the part timings and the method timings")  # fmt: skip
    parser.add_argument("--parts-only", action="store_true", help="skip the whole methods' timings")
    parser.add_argument("--sweeps", nargs="*", default=["stats", "tail"], choices=("stats", "tail", "tail_prefetch"),
                        help="launch sweeps to run (none: --sweeps with no value)")  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = SHAPES[args.shape or ("wan-1.3b-480p" if device.type == "cuda" else "tiny-cpu")]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    block_sizes = [tuple(int(size) for size in text.split("x")) for text in args.block_sizes]
    checks: list[dict] = []
    if device.type == "cuda":
        checks += check_kernels(1, shape.heads, shape.video_len, shape.head_dim, 128, 64, dtype, device)
        checks += check_kernels(2, 3, 1000, 64, 64, 64, dtype, device)
    for block_size in block_sizes[:2]:
        checks += check_method(shape, dtype, device, block_size)
    for record in checks:
        print(f"{'PASS' if record['ok'] else 'FAIL'} {record['check']} {record.get('shape')} "
              f"rel_err={record['rel_err']:.2e} {record.get('lse_ok', '')}")  # fmt: skip
    parts = [r for bq, bk in block_sizes for r in time_parts(shape, dtype, device, bq, bk, tuple(args.sweeps))]
    for record in parts:
        details = {k: v for k, v in record.items() if k not in ("part", "ms", "ms_eager", "block_size")}
        print(f"{record['part']:10s} {record['block_size']} {record['ms']} ms {details}")
    backends = kernel_backends(device)
    dense_ms, methods = (
        (None, []) if args.parts_only else time_methods(shape, dtype, device, args.densities, block_sizes, backends)
    )
    print(f"cudnn dense {dense_ms} ms")
    for record in methods:
        print(f"{record['method']:5s} {record['options']} {record['ms']:.3f} ms {record['speedup_vs_cudnn']:.2f}x "
              f"rel_l1 {record['rel_l1_vs_dense']:.3f}")  # fmt: skip
    result = {"environment": environment(device), "shape": shape.name, "dtype": str(dtype), "checks": checks,
              "parts": parts, "cudnn_dense_ms": dense_ms, "methods": methods}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0 if all(record["ok"] for record in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
