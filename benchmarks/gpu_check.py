"""GPU correctness at realistic sizes: every Triton kernel against its reference, bf16 and fp16.

Complements the CPU interpreter tests (tiny shapes, no bf16): here the compiled kernels run on the
GPU at thousands of tokens, both K/V load paths (TMA descriptors and pointers), head dims 64 and
128, random block lists with empty and full rows, and the whole ``topk`` op against the reference
pipeline. Prints a table and writes ``gpu_check.json``; exits non-zero if anything is off.

    python benchmarks/gpu_check.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

from dit_accel import kernels
from dit_accel.bench import SHAPES, MethodRun, environment, random_qkv, rel_l1
from dit_accel.kernels import reference
from dit_accel.kernels.block_pooling import gather_blocks_triton, pool_blocks_triton
from dit_accel.kernels.block_selection import select_blocks_triton
from dit_accel.kernels.block_sparse_attention import KernelConfig, block_sparse_attention_triton, tma_supported
from dit_accel.kernels.block_sparse_attention_bwd import block_sparse_attention_backward_triton
from dit_accel.kernels.routing import route_blocks_triton

TOLERANCE = {torch.bfloat16: 1.2e-2, torch.float16: 2e-3}
BACKWARD_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-4}


def random_lists(batch: int, heads: int, nq: int, nk: int, density: float, gen: torch.Generator):
    """Random ascending block lists (about ``density`` of the blocks), with an empty and a full row."""
    scores = torch.rand(batch, heads, nq, nk, generator=gen, device=gen.device)
    indices, counts = reference.select_blocks_reference(scores, density=density)
    indices = torch.cat([indices, indices.new_full((*indices.shape[:-1], nk - indices.shape[-1]), -1)], dim=-1)
    indices[0, 0, 1] = torch.arange(nk, device=gen.device, dtype=torch.int32)
    counts[0, 0, 1] = nk
    counts[0, 0, 0] = 0
    return indices.contiguous(), counts.contiguous()


def check_attention(dtype, dim, bm, bn, kv_mode, seq, extra, gen, lazy=False) -> dict:
    batch, heads = 2, 3
    q = torch.randn(batch, seq, heads, dim, generator=gen, device=gen.device, dtype=dtype).transpose(1, 2)
    k = torch.randn(batch, seq, heads, dim, generator=gen, device=gen.device, dtype=dtype).transpose(1, 2)
    v = torch.randn(batch, seq, heads, dim, generator=gen, device=gen.device, dtype=dtype).transpose(1, 2)
    rows = torch.randperm(seq, generator=gen, device=gen.device).to(torch.int32)
    if kv_mode == 1:
        k_tiled, v_tiled, _ = gather_blocks_triton(k, v, rows, bn)
    else:  # in place on the (B, S, H, D) tensors, as for tokens already in tile order
        k_tiled, v_tiled = k, v
    indices, counts = random_lists(batch, heads, math.ceil(seq / bm), math.ceil(seq / bn), 0.3, gen)
    kwargs = {"block_m": bm, "block_n": bn, "q_rows": rows, "key_len": seq, "return_lse": True}
    if extra:
        kwargs["extra_k"] = torch.randn(batch, extra, heads, dim, generator=gen, device=gen.device, dtype=dtype)
        kwargs["extra_k"] = kwargs["extra_k"].transpose(1, 2)
        kwargs["extra_v"] = torch.randn_like(kwargs["extra_k"])
        kwargs["extra_valid"] = torch.tensor([extra, extra // 3], device=gen.device, dtype=torch.int32)
        kwargs["key_bias"] = torch.randn(batch, heads, math.ceil(seq / bn), generator=gen, device=gen.device)
    config = KernelConfig(kv_mode=kv_mode, lazy_rescale=lazy)
    out, lse = block_sparse_attention_triton(q, k_tiled, v_tiled, indices, counts, config=config, **kwargs)
    ref_kwargs = {
        name: (value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value)
        for name, value in kwargs.items()
    }
    ref, ref_lse = reference.block_sparse_attention_reference(
        q.float(), k_tiled.float(), v_tiled.float(), indices, counts, **ref_kwargs
    )
    finite = torch.isfinite(ref_lse)
    lse_ok = torch.equal(finite, torch.isfinite(lse)) and float((lse[finite] - ref_lse[finite]).abs().max()) < 2e-2
    error = float((out.float() - ref).norm() / ref.norm())
    return {
        "check": "attention", "dtype": str(dtype), "head_dim": dim, "block": [bm, bn], "kv_mode": kv_mode,
        "lazy_rescale": lazy, "seq": seq,
        "extra": extra, "rel_err": error, "lse_ok": lse_ok, "ok": error < TOLERANCE[dtype] and lse_ok,
    }  # fmt: skip


def check_attention_backward(gen, shape=(1, 4, 4000, 128), dtype=torch.bfloat16, bm=128, bn=64) -> dict:
    """Triton dq/dk/dv (with a key bias and an LSE gradient) against fp32 reference autograd, and the
    op's autograd (LSE kept by the forward) against the direct backward call."""
    batch, heads, seq, dim = shape
    device = gen.device
    q, k, v = (
        torch.randn(batch, seq, heads, dim, generator=gen, device=device, dtype=dtype).transpose(1, 2) for _ in range(3)
    )
    nk = math.ceil(seq / bn)
    indices, counts = random_lists(batch, heads, math.ceil(seq / bm), nk, 0.3, gen)
    kwargs = {"block_m": bm, "block_n": bn, "key_len": seq, "scale": dim**-0.5}
    kwargs["key_bias"] = torch.randn(batch, heads, nk, generator=gen, device=device)
    out, lse = block_sparse_attention_triton(q, k, v, indices, counts, return_lse=True, **kwargs)
    dout = torch.randn(batch, heads, seq, dim, generator=gen, device=device, dtype=dtype)
    dlse = torch.randn(batch, heads, seq, generator=gen, device=device)
    got = block_sparse_attention_backward_triton(dout, q, k, v, out, lse, indices, counts, dlse=dlse, **kwargs)
    want = reference.block_sparse_attention_backward_reference(
        dout.float(), q.float(), k.float(), v.float(), None, None, indices, counts, dlse=dlse, **kwargs
    )
    errors = {f"d{name}": float((g.float() - w).norm() / w.norm()) for name, g, w in zip("qkv", got, want, strict=True)}
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    op_out, _ = kernels.block_sparse_attention(
        *leaves, indices, counts, bm, bn, seq, kwargs["scale"], key_bias=kwargs["key_bias"]
    )
    direct = block_sparse_attention_backward_triton(dout, q, k, v, op_out.detach(), lse, indices, counts, **kwargs)
    via_op = torch.autograd.grad(op_out, leaves, dout)
    op_error = max(float((a.float() - b.float()).abs().max()) for a, b in zip(via_op, direct, strict=True))
    ok = max(errors.values()) < BACKWARD_TOLERANCE[dtype] and op_error < 1e-3
    return {
        "check": "attention-backward", "dtype": str(dtype), "shape": list(shape), "block": [bm, bn],
        "rel_err": errors, "op_vs_direct_max_abs": op_error, "ok": ok,
    }  # fmt: skip


def check_routing(gen) -> list[dict]:
    results = []
    x = torch.randn(2, 5000, 4, 128, generator=gen, device=gen.device, dtype=torch.bfloat16).transpose(1, 2)
    y = torch.randn_like(x)
    rows = torch.randperm(5000, generator=gen, device=gen.device).to(torch.int32)
    mean_error = float((pool_blocks_triton(x, 128, rows) - reference.pool_blocks_reference(x, 128, rows)).abs().max())
    k_t, v_t, k_mean = gather_blocks_triton(x, y, rows, 64)
    k_ref, v_ref, mean_ref = reference.gather_blocks_reference(x, y, rows, 64)
    gather_ok = torch.equal(k_t, k_ref) and torch.equal(v_t, v_ref)
    gather_ok &= float((k_mean - mean_ref).abs().max()) < 1e-4
    results.append({"check": "pool+gather", "pool_max_err": mean_error, "ok": mean_error < 1e-4 and gather_ok})
    for nk in (512, 1182, 1857):
        scores = torch.randn(1, 4, 64, nk, generator=gen, device=gen.device)
        log_counts = torch.rand(nk, generator=gen, device=gen.device).log()
        for kwargs in ({"density": 0.1}, {"density": 0.05, "min_blocks": 60}, {"top_p": 0.9, "min_blocks": 3}):
            got = select_blocks_triton(scores, log_counts=log_counts, **kwargs)
            ref = reference.select_blocks_reference(scores, log_counts=log_counts, **kwargs)
            if "density" in kwargs:
                same = torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
            else:
                same = int((got[1] - ref[1]).abs().max()) <= 1
            results.append({"check": "select", "nk": nk, **kwargs, "ok": bool(same)})
    return results


def time_routing(gen, shape=(1, 12, 32760, 128), block=(128, 64), dtype=torch.bfloat16) -> list[dict]:
    """Whole routing, the composed path (pool Q, pool K, score, select) vs one-read ``route_blocks``.

    Checks that both select the same blocks (rows whose sets differ are rounding at near-ties), then
    times both with ``triton.testing.do_bench`` (median) on CUDA. Target: <= 0.12 ms at the default
    (Wan-1.3B 480p) shape, where one read of Q and K takes about 0.05 ms.
    """
    batch, heads, seq, dim = shape
    block_q, block_k = block
    q, k = (
        torch.randn(batch, seq, heads, dim, generator=gen, device=gen.device, dtype=dtype).transpose(1, 2)
        for _ in range(2)
    )
    scale = dim**-0.5
    log_counts = reference.block_counts(seq, block_k, gen.device).float().log()
    results = []
    for select in ({"density": 0.1}, {"top_p": 0.9, "min_blocks": 3}):

        def composed(select=select):
            scores = reference.routing_scores(pool_blocks_triton(q, block_q), pool_blocks_triton(k, block_k), scale)
            return select_blocks_triton(scores, log_counts=log_counts, **select)

        def one_read(select=select):
            return route_blocks_triton(q, k, block_q, block_k, scale, **select)

        old, new = composed(), one_read()
        same_rows = ((old[0] == new[0]).all(-1) & (old[1] == new[1])).float().mean()
        result = {"check": "routing-one-read", "shape": list(shape), "block": list(block), **select}
        result["same_rows"] = float(same_rows)
        if gen.device.type == "cuda":
            result["composed_ms"] = do_bench(composed, return_mode="median")
            result["one_read_ms"] = do_bench(one_read, return_mode="median")
            result["speedup"] = result["composed_ms"] / result["one_read_ms"]
        result["ok"] = result["same_rows"] >= 0.99
        results.append(result)
    return results


def check_topk_op(gen) -> list[dict]:
    """The whole topk op (Triton) against the same op on the reference path, per reference layout."""
    results = []
    for name in ("wan-1.3b-480p", "hunyuan-720p", "flux-1024"):
        shape = SHAPES[name]
        small = type(shape)(shape.name, heads=2, grid=shape.grid, text_len=shape.text_len, text_first=shape.text_first)
        q, k, v = random_qkv(small, torch.bfloat16, gen.device, seed=1)
        options = {"density": 0.1}
        fast = MethodRun("topk", options, small.layout(), q, k, v).full()
        os.environ["DIT_ACCEL_FORCE_REFERENCE"] = "1"
        slow = MethodRun("topk", options, small.layout(), q.float(), k.float(), v.float()).full()
        del os.environ["DIT_ACCEL_FORCE_REFERENCE"]
        error = rel_l1(fast, slow)
        results.append({"check": "topk-op", "shape": name, "rel_l1_vs_reference": error, "ok": error < 1.5e-2})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results/kernel")
    args = parser.parse_args()
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    results = []
    for dtype in (torch.bfloat16, torch.float16):
        for dim, bm, bn in ((128, 128, 64), (128, 128, 128), (64, 128, 64), (128, 64, 64)):
            for kv_mode in (1, 2, 0) if tma_supported(torch.empty(1, device=device)) else (0,):
                results.append(check_attention(dtype, dim, bm, bn, kv_mode, 4999, 77, gen, lazy=kv_mode == 2))
    results.append(check_attention(torch.bfloat16, 128, 128, 64, 2, 8192, 0, gen))
    results.append(check_attention_backward(gen))
    results.append(check_attention_backward(gen, dtype=torch.float16, bm=64, bn=64))
    results += check_routing(gen)
    results += time_routing(gen)
    results += check_topk_op(gen)
    for result in results:
        print(("PASS " if result["ok"] else "FAIL ") + json.dumps(result))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(
        json.dumps({"env": environment(device), "results": results}, indent=1)
    )
    failed = sum(not r["ok"] for r in results)
    print(f"{len(results) - failed}/{len(results)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
