"""GPU check of PSA: each kernel against its reference, timings, and the per-level alternative.

Run on the H200::

    python benchmarks/check_psa.py --out benchmarks/results/kernel/check_psa.json

and on a CPU (references only, small shape)::

    python benchmarks/check_psa.py --device cpu --out /tmp/check_psa.json

Checks (a PASS/FAIL line each, with the max error): the KV pyramid (with the similarity pass), the
sampled importance and the multi-level kernel (every tile size, text keys and gathered queries at an
odd small shape) against their fp32 references, at ``(1, 12, 32760, 128)`` bf16 and at an odd small
shape; the alternative "one block-sparse call per level (FA4 where it takes the level, else Triton,
else the pyramid kernel), merged by LSE" against the fused kernel. Timings (ms, medians): the
pyramid, the importance, the level assignment, the fused kernel at each tile/warp setting, the
per-level alternative, the whole ``psa`` call at the default quotas (Hilbert order with its per-layer
K/V gather, and tile order), ``topk`` at the same compute, cuDNN and FA4 dense. Everything goes to
the JSON of ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import triton

from dit_accel import kernels
from dit_accel.bench import BenchShape, MethodRun, environment, graph_ms, median_ms, rel_l1
from dit_accel.kernels.backends import ExtraKeys, dense_attention, sparse_attention
from dit_accel.kernels.block_list import BlockList
from dit_accel.kernels.pyramid_attention import PyramidKernelConfig, pyramid_attention_triton
from dit_accel.kernels.pyramid_levels import (
    PyramidBlocks,
    level_lists_reference,
    lists_from_level_map,
    quota_counts,
    quota_levels,
)
from dit_accel.kernels.pyramid_ops import kv_pyramid, pyramid_attention, pyramid_importance, pyramid_level_lists
from dit_accel.kernels.pyramid_reference import (
    LEVELS,
    importance_reference,
    level_offset,
    level_rows,
    pyramid_attention_reference,
    pyramid_reference,
)
from dit_accel.methods.psa import DEFAULT_QUOTAS

LN2 = math.log(2.0)
# Last key blocks of 56 and 40 tokens: ragged, yet whole multiples of 8, so the per-level
# alternative is exact there too (see per_level_attention).
FULL_SHAPE = (1, 12, 32760, 128)
SMALL_SHAPE = (2, 3, 1000, 64)
CPU_SHAPES = ((1, 2, 1000, 32), (2, 3, 328, 32))


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    finite = torch.isfinite(b)
    if not torch.equal(finite, torch.isfinite(a)):
        return math.inf
    return float((a[finite] - b[finite]).abs().max()) if finite.any() else 0.0


def record(results: list[dict], name: str, error: float, tolerance: float, **fields) -> None:
    ok = error <= tolerance
    results.append({"check": name, "max_abs_error": error, "tolerance": tolerance, "ok": ok, **fields})
    print(f"{'PASS' if ok else 'FAIL'} {name} max error {error:.3g} (tolerance {tolerance:g}) {fields}", flush=True)


def per_level_attention(q, k, v, blocks: PyramidBlocks, scale: float, q_rows=None, extra: ExtraKeys | None = None,
                        backend: str | None = None):  # fmt: skip
    """The fused kernel's result from one block-sparse call per level, merged by LSE.

    Level h's pooled keys form blocks of ``block_k / 2^(h-1)`` keys: the dispatcher runs them on FA4
    where it takes that block size, else Triton (a shared ``+(h-1) ln 2`` bias is added to the
    call's LSE); blocks under 16 keys (too narrow for the block-sparse kernels) run on the pyramid
    kernel restricted to that level. Exact except a ragged last block whose token count is not a
    multiple of 2^(h-1): its partial pooled key gets ``(h-1) ln 2`` instead of ``log(count)``.
    """
    nk, block_k, key_len = blocks.num_key_blocks, blocks.block_k, blocks.key_len
    level_map = blocks.level_map()
    columns = torch.arange(nk, device=level_map.device)
    total = level_rows(nk, block_k)
    merged = None
    for lvl in range(1, LEVELS + 1):
        chosen = level_map == lvl
        indices = torch.where(chosen, columns, nk).sort(dim=-1).values
        indices = torch.where(indices == nk, -1, indices).to(torch.int32)
        counts = chosen.sum(-1, dtype=torch.int32)
        width, pool = block_k >> (lvl - 1), 2 ** (lvl - 1)
        if width < 16:
            level_counts = torch.zeros_like(blocks.level_counts)
            level_counts[..., lvl - 1] = counts
            part = pyramid_attention(q, k, v, blocks.pooled_k, blocks.pooled_v, indices, level_counts,
                                     blocks.block_q, block_k, key_len, scale, q_rows)  # fmt: skip
        else:
            if lvl == 1:
                keys, values, length = k, v, key_len
            else:
                rows = slice(level_offset(lvl, nk, block_k), level_offset(lvl, nk, block_k) + total // pool)
                keys, values, length = (
                    blocks.pooled_k[:, :, rows],
                    blocks.pooled_v[:, :, rows],
                    math.ceil(key_len / pool),
                )
            level_blocks = BlockList(indices, counts, blocks.block_q, width, length)
            out, lse = sparse_attention(q, keys, values, level_blocks, scale=scale, q_rows=q_rows,
                                        extra=extra if lvl == 1 else None, backend=backend)  # fmt: skip
            part = (out, lse + (lvl - 1) * LN2)
        merged = part if merged is None else kernels.merge_attention(*merged, *part)
    return merged


def quota_blocks(q, k, v, block_q: int, block_k: int, quotas=DEFAULT_QUOTAS) -> PyramidBlocks:
    """The lists of ``quotas`` on the sampled importance of q/k, with the pyramid built."""
    key_len = k.shape[2]
    pooled_k, pooled_v, _ = kv_pyramid(k, v, block_k, key_len)
    importance = pyramid_importance(q, k, block_q, block_k, key_len, q.shape[-1] ** -0.5, 8)
    counts = quota_counts(importance.shape[-1], quotas, 0.06)
    blocks = lists_from_level_map(quota_levels(importance, counts), block_q, block_k, key_len)
    return PyramidBlocks(blocks.indices, blocks.level_counts, block_q, block_k, key_len, pooled_k, pooled_v)


def check_kernels(shape, dtype, device, gen, text: int = 0) -> list[dict]:
    """Each kernel against its fp32 reference on one shape (on CPU: the reference ops themselves)."""
    b, h, s, d = shape
    results: list[dict] = []
    q, k, v = (torch.randn(b, s, h, d, device=device, generator=gen).to(dtype).transpose(1, 2) for _ in range(3))
    block_q, block_k, scale = 128, 64, d**-0.5
    pk, pv, sim = kv_pyramid(k, v, block_k, s, True)
    rk, rv, rsim = pyramid_reference(k.float(), v.float(), block_k, s, True)
    error = max(max_err(pk, rk), max_err(pv, rv))
    record(results, "pyramid", error, 2e-2, shape=list(shape), dtype=str(dtype))
    record(results, "pyramid similarity", max_err(sim, rsim), 1e-3, shape=list(shape))
    rows = torch.randperm(s, device=device, generator=gen).to(torch.int32) if text else None
    importance = pyramid_importance(q, k, block_q, block_k, s, scale, 8, rows)
    want = importance_reference(q.float(), k.float(), block_q, block_k, s, scale, 8, rows)
    record(results, "importance", max_err(importance, want), 2e-2, shape=list(shape))
    rules = {"quotas": {"counts": list(quota_counts(importance.shape[-1], DEFAULT_QUOTAS, 0.06))},
             "thresholds": {"thresholds": [0.4, 0.5, 0.6, 0.8], "full_ranks": 3}}  # fmt: skip
    for name, rule in rules.items():
        got = pyramid_level_lists(importance, **rule)
        want_lists = level_lists_reference(importance, **rule)
        mismatches = sum(int((a != b).sum()) for a, b in zip(got, want_lists, strict=True))
        record(results, f"level lists ({name})", float(mismatches), 0.0, shape=list(shape))
    blocks = quota_blocks(q, k, v, block_q, block_k)
    extra = None
    if text:
        ek, ev = (torch.randn(b, h, text, d, device=device, generator=gen).to(dtype) for _ in range(2))
        extra = ExtraKeys(ek, ev, torch.randint(1, text + 1, (b,), device=device, dtype=torch.int32, generator=gen))
    extra_args = (extra.k, extra.v, extra.valid) if extra else ()
    args = (blocks.indices, blocks.level_counts, block_q, block_k, s, scale, rows)
    ref_out, ref_lse = pyramid_attention_reference(
        q.float(), k.float(), v.float(), blocks.pooled_k.float(), blocks.pooled_v.float(), *args,
        *(x.float() if x.is_floating_point() else x for x in extra_args),
    )  # fmt: skip
    out_rows = rows.long() if rows is not None else slice(None)
    tiles = (32, 64, 128) if device.type == "cuda" else (64,)
    for tile in tiles:
        if device.type == "cuda":
            out, lse = pyramid_attention_triton(
                q, k, v, blocks.pooled_k, blocks.pooled_v, blocks.indices, blocks.level_counts, block_q=block_q,
                block_k=block_k, key_len=s, scale=scale, q_rows=rows, extra_k=extra.k if extra else None,
                extra_v=extra.v if extra else None, extra_valid=extra.valid if extra else None,
                config=PyramidKernelConfig(tile=tile),
            )  # fmt: skip
        else:
            out, lse = pyramid_attention(q, k, v, blocks.pooled_k, blocks.pooled_v, *args, *extra_args)
        error = max(max_err(out[:, :, out_rows], ref_out[:, :, out_rows]), max_err(lse, ref_lse))
        record(results, f"pyramid attention tile {tile}", error, 3e-2, shape=list(shape), text=text)
    alt_out, alt_lse = per_level_attention(q, k, v, blocks, scale, rows, extra)
    error = max(max_err(alt_out[:, :, out_rows], ref_out[:, :, out_rows]), max_err(alt_lse, ref_lse))
    record(results, "per-level LSE merge vs reference", error, 3e-2, shape=list(shape), text=text)
    return results


def kernel_timings(device, dtype, gen, shape) -> dict[str, float]:
    """Milliseconds of the parts at one shape, the fused kernel at several launch settings and the alternative."""
    b, h, s, d = shape
    q, k, v = (torch.randn(b, s, h, d, device=device, generator=gen).to(dtype).transpose(1, 2) for _ in range(3))
    scale = d**-0.5
    blocks = quota_blocks(q, k, v, 128, 64)
    importance = pyramid_importance(q, k, 128, 64, s, scale, 8)
    counts = quota_counts(importance.shape[-1], DEFAULT_QUOTAS, 0.06)
    times = {
        "pyramid": median_ms(lambda: kv_pyramid(k, v, 64, s), device),
        "pyramid_with_similarity": median_ms(lambda: kv_pyramid(k, v, 64, s, True), device),
        "importance": median_ms(lambda: pyramid_importance(q, k, 128, 64, s, scale, 8), device),
        "levels_and_lists_torch": median_ms(
            lambda: lists_from_level_map(quota_levels(importance, counts), 128, 64, s), device
        ),
        "levels_and_lists": median_ms(lambda: pyramid_level_lists(importance, list(counts)), device),
        "per_level_lse_merge": median_ms(lambda: per_level_attention(q, k, v, blocks, scale), device),
        "compute_fraction": blocks.density(),
    }
    if device.type == "cuda":
        settings = {f"tile{t}_w{w}_s{n}": {"tile": t, "num_warps": w, "num_stages": n}
                    for t in (32, 64, 128) for w in (4, 8) for n in (2, 3)}  # fmt: skip
        settings["defaults_no_tma"] = {"tma": False}
        for name, options in settings.items():
            config = PyramidKernelConfig(**options)

            def fused(config=config):
                return pyramid_attention_triton(
                    q, k, v, blocks.pooled_k, blocks.pooled_v, blocks.indices, blocks.level_counts,
                    block_q=128, block_k=64, key_len=s, scale=scale, config=config,
                )  # fmt: skip

            try:
                times[f"fused_{name}"] = median_ms(fused, device)
            except triton.runtime.errors.OutOfResources as error:  # a setting this GPU cannot launch
                print(f"fused_{name}: {error}", flush=True)
    else:
        args = (q, k, v, blocks.pooled_k, blocks.pooled_v, blocks.indices, blocks.level_counts, 128, 64, s, scale)
        times["fused_reference"] = median_ms(lambda: pyramid_attention(*args), device)
    return times


def method_timings(device, dtype, gen, grid) -> list[dict]:
    """The whole call: psa at the default quotas (both orders), topk at the same compute, dense baselines."""
    shape = BenchShape("wan", heads=12, grid=grid, head_dim=128 if device.type == "cuda" else 64)
    size = (1, shape.seq_len, shape.heads, shape.head_dim)
    q, k, v = (torch.randn(size, device=device, generator=gen).to(dtype) for _ in range(3))
    reference = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(
        1, 2
    )
    rows: list[dict] = []
    engines = {"cudnn": lambda: dense_attention(q, k, v, "cudnn")}
    if device.type == "cuda":
        engines["fa4"] = lambda: dense_attention(q, k, v, "fa4")
    for name, fn in engines.items():
        rows.append({"run": f"dense {name}", "ms": median_ms(fn, device)})
    compute = sum(quota * 2.0**-lvl for lvl, quota in enumerate(DEFAULT_QUOTAS))
    runs = [
        ("psa quotas hilbert", "psa", {"quotas": DEFAULT_QUOTAS}, False),
        ("psa quotas tiles", "psa", {"quotas": DEFAULT_QUOTAS, "order": "tiles"}, True),
        ("psa thresholds hilbert", "psa", {}, False),
        ("psa density hilbert", "psa", {"density": compute}, False),
        ("topk same compute", "topk", {"density": compute}, True),
    ]
    for label, method, options, pretiled in runs:
        run = MethodRun(method, options, shape.layout(), q, k, v, pretiled=pretiled)
        ms = median_ms(run.full, device)
        routing, blocks = run.route_and_select()
        row = {"run": label, "options": {key: list(x) if isinstance(x, tuple) else x for key, x in options.items()},
               "ms": ms, "ms_graph": graph_ms(run.full, device), "compute_fraction": blocks.density(),
               "ms_route_select": median_ms(run.route_and_select, device),
               "ms_attend": median_ms(lambda run=run, r=routing, bl=blocks: run.method.attend(r, bl, run.ctx), device),
               "rel_l1_vs_dense": rel_l1(run.full(), reference)}  # fmt: skip
        rows.append(row)
    cudnn = rows[0]["ms"]
    for row in rows:
        row["speedup_vs_cudnn"] = cudnn / row["ms"]
        print(f"{row['run']:24s} {row['ms']:8.3f} ms  x{row['speedup_vs_cudnn']:.2f} vs cuDNN  {row}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gen = torch.Generator(device=device).manual_seed(0)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    full, small = (FULL_SHAPE, SMALL_SHAPE) if cuda else CPU_SHAPES
    with torch.no_grad():
        checks = check_kernels(full, dtype, device, gen) + check_kernels(small, dtype, device, gen, text=77)
        timings = kernel_timings(device, dtype, gen, full)
        print(json.dumps(timings, indent=1), flush=True)
        methods = method_timings(device, dtype, gen, (21, 30, 52) if cuda else (3, 12, 16))
    report = {"environment": environment(device), "checks": checks, "timings_ms": timings, "methods": methods}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print("wrote", args.out)
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
