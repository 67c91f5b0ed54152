"""GPU sweep of the launches of sla's backward kernels: the linear branch's and the exact part's.

    python benchmarks/check_sla_launch.py --out sla_launch.json
    python benchmarks/check_sla_launch.py --parts exact --out exact_launch.json
    TRITON_INTERPRET=1 python benchmarks/check_sla_launch.py --device cpu --out /tmp/l.json   # smoke run

At the Wan-1.3B shape (1, 12, 32760, 128) bf16, k_high 0.05 / k_low 0.1 classes, 128x128 and 128x64
blocks, stop 29's profile of sla's forward + backward put ``_linear_output_bwd`` (0.69 ms) next to
FA4's backward as the largest kernel: with D x D tiles in registers at 8 warps it likely spills. This
times ``sla_linear_backward_triton`` (the dq kernel's ``ROWS_PER_STEP`` and the warps of both of its
kernels, ``launch_warps``) per launch, median of CUDA-event timings, and checks each launch's
gradients against the default launch's (max relative error), so a faster launch can be adopted.

The exact part's Triton backward (``block_sparse_attention_backward_triton``: what sla's 128x64 blocks
ran before FA4's backward got 64-key tiles, and still run off sm90 or with an LSE gradient) was 3.1 ms
of sla's 6.9 ms forward + backward at 128x64 in that profile, its kernels launched without software
pipelining: the ``exact`` part sweeps
its :class:`~dit_accel.kernels.block_sparse_attention_bwd.BackwardLaunch` (warps and pipelining stages
of the dq and dk/dv kernels, query rows per dk/dv step) on the k_high 0.05 lists, one kernel at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
from pathlib import Path

import torch
from check_routing import measure_launch
from check_sla import classes, random_routing, rel_err

from dit_accel.bench import environment, median_ms
from dit_accel.kernels import block_sparse_attention_bwd, sla_linear_bwd
from dit_accel.kernels.block_sparse_attention import block_sparse_attention_triton
from dit_accel.kernels.block_sparse_attention_bwd import BackwardLaunch, block_sparse_attention_backward_triton

SHAPES = {"cuda": (1, 12, 32760, 128), "cpu": (1, 2, 300, 32)}


def problem(shape: tuple[int, int, int, int], block: tuple[int, int], device: torch.device, dtype: torch.dtype):
    """q, k, v in Diffusers' layout transposed, the marginal mask and an output gradient."""
    batch, heads, seq, dim = shape
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(batch, seq, heads, dim, generator=gen, device=device).to(dtype).transpose(1, 2)
               for _ in range(3))  # fmt: skip
    marginal = classes(batch, heads, math.ceil(seq / block[0]), math.ceil(seq / block[1]), block[1], 0.05, 0.1,
                       device, gen)  # fmt: skip
    grad = torch.randn(q.shape, generator=gen, device=device).to(dtype)
    return grad, q, k, v, marginal


def linear_sweep(shape, block, device, dtype, rows_options, warps_options) -> list[dict]:
    grad, q, k, v, marginal = problem(shape, block, device, dtype)

    def backward():
        return sla_linear_bwd.sla_linear_backward_triton(grad, q, k, v, marginal, block_m=block[0], block_n=block[1])

    default = backward()
    records = []
    for rows, warps in itertools.product(rows_options, warps_options):

        def measure():
            error = max(rel_err(g, d) for g, d in zip(backward(), default, strict=True))
            applied = {"ROWS_PER_STEP": sla_linear_bwd.ROWS_PER_STEP, "warps": sla_linear_bwd.launch_warps(q.shape[-1])}
            return {"ms": median_ms(backward, device), "max_rel_err_vs_default": error, "applied": applied}

        settings = {"ROWS_PER_STEP": rows, "launch_warps": lambda _d, w=warps: w}
        record = measure_launch(sla_linear_bwd, settings, f"{block} rows {rows} warps {warps}", measure)
        record["launch"] = {"ROWS_PER_STEP": rows, "warps": warps}
        records.append(record | {"block_size": list(block)})
    return records


def exact_launches(device: torch.device) -> list[BackwardLaunch]:
    """The default, then the dq kernel's and the dk/dv kernel's options, one kernel at a time."""
    if device.type == "cpu":
        return [BackwardLaunch(), BackwardLaunch(dkdv_sub_m=16)]
    stages = (1, 2, 3)
    dq = [BackwardLaunch(dq_warps=w, dq_stages=s) for w, s in itertools.product((4, 8), stages)]
    dkdv = [BackwardLaunch(dkdv_warps=w, dkdv_stages=s, dkdv_sub_m=m)
            for m, w, s in itertools.product((32, 64), (4, 8), stages)]  # fmt: skip
    return [BackwardLaunch(), *dq, *dkdv]


def exact_sweep(shape, block, device, dtype, launches: list[BackwardLaunch]) -> list[dict]:
    """The exact part's backward on the critical (top k_high 0.05) lists of random pooled scores, per launch."""
    grad, q, k, v, _ = problem(shape, block, device, dtype)
    gen = torch.Generator(device=device).manual_seed(1)
    nq, nk = math.ceil(shape[2] / block[0]), math.ceil(shape[2] / block[1])
    lists = random_routing(shape[0], shape[1], nq, nk, block[1], device, gen).top_blocks(0.05)
    sizes = {"block_m": block[0], "block_n": block[1]}
    out, lse = block_sparse_attention_triton(q, k, v, lists.indices, lists.counts, return_lse=True, **sizes)

    def backward():
        return block_sparse_attention_backward_triton(grad, q, k, v, out, lse, lists.indices, lists.counts, **sizes)

    default = backward()
    records, seen = [], set()
    for launch in launches:
        try:
            resolved = launch.for_blocks(block[0], block[1], shape[3])
        except ValueError:  # refused at launch: recorded below
            resolved = None
        if resolved is not None and resolved in seen:  # the same kernels as a launch already timed
            continue
        seen.add(resolved)

        def measure():
            error = max(rel_err(g, d) for g, d in zip(backward(), default, strict=True))
            return {"ms": median_ms(backward, device), "max_rel_err_vs_default": error}

        record = measure_launch(block_sparse_attention_bwd, {"LAUNCH": launch}, f"{block} {launch}", measure)
        record["launch"] = dataclasses.asdict(launch)
        record["resolved"] = dataclasses.asdict(resolved) if resolved is not None else None
        records.append(record | {"part": "exact", "block_size": list(block)})
    return records


def best_exact_launch(records: list[dict], block: tuple[int, int]) -> BackwardLaunch | None:
    """The fastest dq settings with the fastest dk/dv settings of ``block``'s sweep (each kernel was swept
    with the other at its default, so the two choices combine); None without a working default launch."""
    swept = [r for r in records if r.get("part") == "exact" and r["block_size"] == list(block) and "ms" in r]
    default = dataclasses.asdict(BackwardLaunch())
    if not any(r["launch"] == default for r in swept):
        return None

    def fastest(fields: tuple[str, ...]) -> dict:
        varied = [r for r in swept if all(r["launch"][f] == default[f] for f in default if f not in fields)]
        best = min(varied, key=lambda r: r["ms"])["launch"]
        return {f: best[f] for f in fields}

    return BackwardLaunch(**fastest(("dq_warps", "dq_stages")), **fastest(("dkdv_warps", "dkdv_stages", "dkdv_sub_m")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--parts", nargs="+", default=["linear", "exact"], choices=("linear", "exact"))
    parser.add_argument("--blocks", nargs="+", default=["128,128", "128,64"],
                        help="(query, key) block sizes as Q,K (on cuda; the cpu smoke run takes 64,32)")  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    blocks = [tuple(int(n) for n in text.split(",")) for text in args.blocks] if device.type == "cuda" else [(64, 32)]
    rows_options, warps_options = ((16, 32, 64), (4, 8, 16)) if device.type == "cuda" else ((16,), (4,))
    shape = SHAPES[device.type]
    records = []
    for block in blocks:
        if "linear" in args.parts:
            records += linear_sweep(shape, block, device, dtype, rows_options, warps_options)
        if "exact" in args.parts:
            records += exact_sweep(shape, block, device, dtype, exact_launches(device))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    best = {f"{q}x{k}": dataclasses.asdict(launch) for q, k in blocks
            if (launch := best_exact_launch(records, (q, k))) is not None}  # fmt: skip
    print(f"fastest exact-backward launches: {best}")
    result = {"environment": environment(device), "shape": SHAPES[device.type], "dtype": str(dtype),
              "records": records, "best_exact_launch": best}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    bad = [r for r in records if r.get("max_rel_err_vs_default", 0.0) > 2e-2 or "error" in r]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
