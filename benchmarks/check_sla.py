"""GPU check of ``sla``: the linear branch's kernels against float64, then times against cuDNN.

(a) correctness (PASS/FAIL lines): the linear branch forward (summaries, marginal sums, output) and
backward (dq, dk, dv) Triton kernels against the float64 references, bf16 at the Wan-1.3B shape
(1, 12, 32760, 128) with k_high 0.05 / k_low 0.1 classes from random pooled scores, and fp16 / fp32
at an odd small shape with gathered query rows; the whole method (a random projection, text keys,
odd sizes) against its float64 ``reference()``; forward + backward of the method under
``torch.compile(fullgraph=True)`` against eager.
(b) times (``dit_accel.bench.median_ms``; forward also from a CUDA graph where capture works), at the
Wan-1.3B shape, for k_high 0.05 and 0.1 on each backend, at 128x64 and 128x128 blocks (FA4's backward
runs both on sm90, 64-key lists on ``fa4.SM90_BACKWARD_TILES``): the forward (routing and block classes,
exact part, linear branch, projection: ``MethodRun``, tokens pretiled as in a model) against cuDNN's
forward (target >= 14x at 0.05), its parts, ``topk`` at the same density, and forward + backward
(gradients for q, k, v and the projection) against cuDNN's forward + backward (target >= 8x), both
timed eagerly (the autograd engine's launches included), replayed from a CUDA graph where both
captures work (what a graphed or compiled training step approaches), and as the sum of their GPU
kernels (torch.profiler), with sla's kernels listed largest first: where the backward's time goes.
(c) everything to the JSON file ``--out``. Exits non-zero on a FAIL.

    python benchmarks/check_sla.py --out sla_h200.json
    python benchmarks/check_sla.py --device cpu --out /tmp/sla_cpu.json   # reference parts, tiny shape
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import sys
from pathlib import Path

import torch
from profile_routing import kernel_table

from dit_accel.bench import SHAPES, BenchShape, MethodRun, environment, kernel_backends
from dit_accel.bench import eager_and_graph_ms as timed
from dit_accel.kernels import block_sparse_attention_bwd, sla_ops
from dit_accel.kernels.block_sparse_attention_bwd import BackwardLaunch
from dit_accel.kernels.sla_linear_reference import sla_linear_backward_reference, sla_linear_reference
from dit_accel.methods.base import Routing
from dit_accel.methods.sla import EPS, SLAProjection, marginal_blocks

TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 1e-4}
ODD = BenchShape("sla-odd", heads=3, grid=(3, 17, 21), text_len=7, head_dim=64)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def random_routing(batch, heads, nq, nk, block_k, device, gen) -> Routing:
    """Routing over random pooled scores (``nq`` query blocks, ``nk`` key blocks of ``block_k``)."""
    scores = torch.randn(batch, heads, nq, nk, generator=gen, device=device)
    return Routing(q=None, k=None, v=None, q_rows=None, key_rows=None, key_len=nk * block_k, scale=1.0,
                   block_q=0, block_k=block_k, log_counts=torch.zeros(nk, device=device),
                   known_scores=scores)  # fmt: skip


def classes(batch, heads, nq, nk, block_k, k_high, k_low, device, gen) -> torch.Tensor:
    """The marginal mask of random pooled scores (critical top k_high, negligible bottom k_low)."""
    routing = random_routing(batch, heads, nq, nk, block_k, device, gen)
    return marginal_blocks(routing, routing.top_blocks(k_high), k_low)


def check_linear_kernels(batch, heads, seq, dim, dtype, device, gathered, feature_map="softmax") -> list[dict]:
    """Forward and backward of the linear branch (Triton through the ops) against float64."""
    gen = torch.Generator(device=device).manual_seed(seq)
    extra = 5 if gathered else 0
    q, k, v = (torch.randn(batch, seq + extra, heads, dim, generator=gen, device=device).to(dtype).transpose(1, 2)
               for _ in range(3))  # fmt: skip
    k, v = k[:, :, :seq], v[:, :, :seq]
    rows = torch.randperm(seq + extra, generator=gen, device=device)[:seq].to(torch.int32) if gathered else None
    marginal = classes(batch, heads, math.ceil(seq / 128), math.ceil(seq / 64), 64, 0.05, 0.1, device, gen)
    args = (marginal, 128, 64, seq, feature_map, EPS, rows)
    kwargs = dict(block_m=128, block_n=64, key_len=seq, feature_map=feature_map, eps=EPS, q_rows=rows)
    out = sla_ops.sla_linear_attention(q, k, v, *args)
    want = sla_linear_reference(q.double(), k.double(), v.double(), marginal, **kwargs)
    dout = torch.randn(q.shape, generator=gen, device=device).to(dtype)
    grads = sla_ops.sla_linear_attention_backward(dout, q, k, v, *args)
    wants = sla_linear_backward_reference(dout.double(), q.double(), k.double(), v.double(), marginal, **kwargs)
    shape = [batch, heads, seq, dim]
    records = [{"check": "linear.forward", "shape": shape, "dtype": str(dtype), "gathered": gathered,
                "rel_err": rel_err(out, want)}]  # fmt: skip
    for name, g, w in zip(("dq", "dk", "dv"), grads, wants, strict=True):
        records.append({"check": f"linear.backward.{name}", "shape": shape, "dtype": str(dtype), "gathered": gathered,
                        "rel_err": rel_err(g, w)})  # fmt: skip
    return [r | {"ok": r["rel_err"] < 2 * TOLERANCE[dtype]} for r in records]


def with_projection(run: MethodRun, gen: torch.Generator, requires_grad: bool = False) -> MethodRun:
    """Give the standalone call a random projection (what a fine-tuned layer has)."""
    dim = run.q.shape[-1]
    projection = SLAProjection(dim, device=run.q.device, dtype=torch.float32)
    with torch.no_grad():
        projection.weight.copy_(torch.randn(dim, dim, generator=gen, device=run.q.device) / dim**0.5)
    run.ctx.binding.module_state = projection.requires_grad_(requires_grad)
    return run


def check_method(dtype, device) -> dict:
    """The whole method (odd sizes, text keys, random projection) against its float64 reference."""
    gen = torch.Generator(device=device).manual_seed(3)
    q, k, v = (torch.randn(1, ODD.seq_len, ODD.heads, ODD.head_dim, generator=gen, device=device, dtype=dtype)
               for _ in range(3))  # fmt: skip
    options = {"k_high": 0.2, "k_low": 0.2, "block_size": (64, 32)}
    run = with_projection(MethodRun("sla", options, ODD.layout(), q, k, v, pretiled=False), gen)
    error = rel_err(run.full(), run.method.reference(q, k, v, run.ctx))
    return {"check": "method", "shape": ODD.name, "dtype": str(dtype), "rel_err": error,
            "ok": error < TOLERANCE[dtype]}  # fmt: skip


def check_compile(dtype, device) -> dict:
    """Forward + backward of the method under ``torch.compile(fullgraph=True)`` (aot_eager: the traced graph
    with the ops' fake implementations, then the real kernels) equals eager."""
    shape = BenchShape("sla-compile", heads=2, grid=(3, 16, 24), head_dim=64)
    inputs = leaves(shape, dtype, device, seed=4)
    run = with_projection(MethodRun("sla", {"k_high": 0.2, "block_size": (64, 32)}, shape.layout(), *inputs),
                          torch.Generator(device=device).manual_seed(4), requires_grad=True)  # fmt: skip
    weight = run.ctx.binding.module_state.weight

    def loss(q, k, v):
        return run.method(q, k, v, run.ctx).float().square().sum()

    eager = torch.autograd.grad(loss(*inputs), [*inputs, weight])
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(*inputs), [*inputs, weight])
    error = max(rel_err(g, e) for g, e in zip(got, eager, strict=True))
    return {"check": "compile.fwd_bwd", "shape": shape.name, "dtype": str(dtype), "rel_err": error,
            "ok": error < TOLERANCE[dtype]}  # fmt: skip


def leaves(shape: BenchShape, dtype, device, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    size = (shape.batch, shape.seq_len, shape.heads, shape.head_dim)
    return [torch.randn(size, generator=gen, device=device, dtype=dtype).requires_grad_() for _ in range(3)]


def forward_backward(fn, inputs: list[torch.Tensor], grad: torch.Tensor, extra: list[torch.Tensor]):
    """One forward and backward of ``fn(q, k, v)`` (gradients into inputs and ``extra``)."""

    def step():
        out = fn(*inputs)
        torch.autograd.grad(out, inputs + extra, grad)

    return step


def cudnn(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION] if q.is_cuda else [SDPBackend.MATH]):
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def kernel_time(fn, device: torch.device, top: int = 12) -> dict:
    """GPU kernel milliseconds of one ``fn()`` (profiler sum, no launch gaps) and its largest kernels."""
    if device.type != "cuda":
        return {}
    table = kernel_table(fn, device, repeats=5)
    return {"gpu_kernel_ms": sum(row["us_per_call"] for row in table) / 1e3, "kernels": table[:top]}


def time_sla(shape: BenchShape, dtype, device, k_highs, backends, block_sizes) -> tuple[dict, list[dict]]:
    """cuDNN forward and forward + backward, then sla (and topk) per block size, k_high and backend."""
    q, k, v = leaves(shape, dtype, device)
    grad = torch.randn(q.shape, device=device, dtype=dtype)
    with torch.no_grad():
        base = {"cudnn_fwd": timed(lambda: cudnn(q, k, v), device)}
    cudnn_step = forward_backward(cudnn, [q, k, v], grad, [])
    base["cudnn_fwd_bwd"] = timed(cudnn_step, device) | kernel_time(cudnn_step, device, top=4)
    gen = torch.Generator(device=device).manual_seed(1)
    records = []
    for block_size, k_high, backend in itertools.product(block_sizes, k_highs, backends):
        options = {"k_high": k_high, "k_low": 0.1, "backend": backend, "block_size": block_size}
        run = with_projection(MethodRun("sla", options, shape.layout(), q, k, v), gen, requires_grad=True)
        with torch.no_grad():
            routing, blocks = run.route_and_select()
            out, lse = run.method.attend(routing, blocks, run.ctx)
            parts = {
                "routing_and_classes": timed(lambda r=run: marginal_blocks(*r.route_and_select(), 0.1), device),
                "exact": timed(functools.partial(run.method.attend, routing, blocks, run.ctx), device),
                "linear_branch": timed(functools.partial(run.method.linear_branch, routing, blocks), device),
                "combine_fused": timed(
                    functools.partial(run.method.combine, routing, blocks, out, lse, run.ctx), device
                ),
            }
            forward = timed(run.full, device)
            topk_options = {"density": k_high, "backend": backend, "block_size": block_size}
            topk = timed(MethodRun("topk", topk_options, shape.layout(), q, k, v).full, device)
        projection = [run.ctx.binding.module_state.weight]
        step = forward_backward(lambda a, b, c, r=run: r.method(a, b, c, r.ctx), [q, k, v], grad, projection)
        both = timed(step, device) | kernel_time(step, device)
        records.append({
            "options": options, "forward": forward, "forward_backward": both, "parts": parts, "topk_forward": topk,
            "speedup_fwd_vs_cudnn": base["cudnn_fwd"]["ms"] / forward["ms"],
            "speedup_fwd_bwd_vs_cudnn": base["cudnn_fwd_bwd"]["ms_eager"] / both["ms_eager"],
        })  # fmt: skip
        if device.type == "cuda" and not ({"graph_error"} & (both.keys() | base["cudnn_fwd_bwd"].keys())):
            records[-1]["speedup_fwd_bwd_graph_vs_cudnn"] = base["cudnn_fwd_bwd"]["ms"] / both["ms"]
        if both.get("gpu_kernel_ms") and base["cudnn_fwd_bwd"].get("gpu_kernel_ms"):  # 0: the profiler saw nothing
            records[-1]["speedup_fwd_bwd_gpu_kernels"] = base["cudnn_fwd_bwd"]["gpu_kernel_ms"] / both["gpu_kernel_ms"]
    return base, records


def exact_launch(path: Path, block_sizes: list[tuple[int, int]]) -> BackwardLaunch:
    """The fastest exact-backward launch that ``check_sla_launch.py`` wrote to ``path`` for the one block size."""
    if len(block_sizes) != 1:
        raise SystemExit("--exact-launch applies to one --blocks value (each block size has its own launch)")
    name = "x".join(str(n) for n in block_sizes[0])
    best = json.loads(path.read_text()).get("best_exact_launch", {})
    if name not in best:
        raise SystemExit(f"{path} has no launch for {name} blocks (it has: {', '.join(best) or 'none'})")
    return BackwardLaunch(**best[name])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--shape", default=None, help=f"one of {', '.join(SHAPES)} (default: wan-1.3b-480p on cuda)")
    parser.add_argument("--k-high", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--blocks", nargs="+", default=["128,64", "128,128"],
                        help="(query, key) block sizes as Q,K")  # fmt: skip
    parser.add_argument("--exact-launch", type=Path, default=None,
                        help="check and time the Triton exact backward with the fastest launch of this "
                             "check_sla_launch.py result for the (single) --blocks")  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = SHAPES[args.shape or ("wan-1.3b-480p" if device.type == "cuda" else "tiny-cpu")]
    block_sizes = [tuple(int(n) for n in text.split(",")) for text in args.blocks]
    if args.exact_launch is not None:
        block_sparse_attention_bwd.LAUNCH = exact_launch(args.exact_launch, block_sizes)
    print(f"exact backward launch: {block_sparse_attention_bwd.LAUNCH}")
    checks: list[dict] = []
    if device.type == "cuda":
        checks += check_linear_kernels(1, 12, 32760, 128, torch.bfloat16, device, gathered=False)
        for dtype in (torch.float16, torch.float32):
            checks += check_linear_kernels(2, 3, 1000, 64, dtype, device, gathered=True, feature_map="elu")
    for dtype in (torch.bfloat16, torch.float32) if device.type == "cuda" else (torch.float32,):
        checks.append(check_method(dtype, device))
    checks.append(check_compile(torch.bfloat16 if device.type == "cuda" else torch.float32, device))
    for record in checks:
        print(f"{'PASS' if record['ok'] else 'FAIL'} {record['check']} {record['shape']} {record['dtype']} "
              f"rel_err={record['rel_err']:.2e}")  # fmt: skip
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    base, records = time_sla(shape, dtype, device, args.k_high, kernel_backends(device), block_sizes)
    cudnn_both = base["cudnn_fwd_bwd"]
    print(f"cudnn forward {base['cudnn_fwd']['ms']:.3f} ms, forward+backward {cudnn_both['ms_eager']:.3f} ms eager, "
          f"{cudnn_both['ms']:.3f} ms from a graph where captured")  # fmt: skip
    for r in records:
        parts = " ".join(f"{name} {part['ms']:.3f}" for name, part in r["parts"].items())
        print(f"sla {r['options']}: forward {r['forward']['ms']:.3f} ms ({r['speedup_fwd_vs_cudnn']:.2f}x; topk "
              f"{r['topk_forward']['ms']:.3f}), fwd+bwd eager {r['forward_backward']['ms_eager']:.3f} ms "
              f"({r['speedup_fwd_bwd_vs_cudnn']:.2f}x); parts: {parts}")  # fmt: skip
        if "speedup_fwd_bwd_graph_vs_cudnn" in r:
            print(f"  fwd+bwd from a CUDA graph {r['forward_backward']['ms']:.3f} ms "
                  f"({r['speedup_fwd_bwd_graph_vs_cudnn']:.2f}x cuDNN's, also from a graph)")  # fmt: skip
        if "speedup_fwd_bwd_gpu_kernels" in r:
            print(f"  fwd+bwd GPU kernels {r['forward_backward']['gpu_kernel_ms']:.3f} ms "
                  f"({r['speedup_fwd_bwd_gpu_kernels']:.2f}x cuDNN's kernels); largest:")  # fmt: skip
            for row in r["forward_backward"]["kernels"]:
                print(f"    {row['us_per_call']:8.1f} us  x{row['launches']:.0f}  {row['kernel']}")
    launch = dataclasses.asdict(block_sparse_attention_bwd.LAUNCH)
    result = {"environment": environment(device), "shape": shape.name, "dtype": str(dtype), "checks": checks,
              "baselines": base, "sla": records, "exact_backward_launch": launch,
              "targets": {"forward_at_0.05": 14.0, "forward_backward": 8.0}}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0 if all(record["ok"] for record in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
