"""Where the time of a full transformer forward goes, kernel by kernel, dense vs a method (CUDA).

The engine issue's e2e targets compare a method's forward with eager dense; this names the kernels
that separate the two (attention, routing, and any copy or layout pass the method adds), eager and
with Diffusers' regional compile. Prints a table per variant and writes them as JSON. Also the CPU
time to submit one forward and the GPU's idle gaps inside it (the kernel before and after each):
a forward whose wall time exceeds its kernels' sum is waiting for the CPU somewhere.

    python benchmarks/profile_e2e.py --out e2e_profile.json --variant "regional topk density=0.1"
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
from profile_routing import cpu_submit_ms, kernel_table, parse_config
from torch.profiler import ProfilerActivity, profile

import dit_accel
from dit_accel.bench import dense_backends, median_ms
from dit_accel.e2e_models import E2E_MODELS

VARIANTS = ("eager dense", "eager topk density=0.1", "regional dense", "regional topk density=0.1")


def idle_gaps(fn, device: torch.device, threshold_us: float = 20.0) -> dict:
    """The GPU's idle time between consecutive kernels of one ``fn`` call: total, and the largest
    gaps with the kernels around them."""
    fn()
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    kernels = sorted((e for e in prof.events() if e.device_time_total > 0 and e.time_range.elapsed_us() > 0),
                     key=lambda e: e.time_range.start)  # fmt: skip
    gaps, busy_until = [], kernels[0].time_range.end  # the latest end so far: kernels on other streams overlap
    for before, after in itertools.pairwise(kernels):
        gaps.append((after.time_range.start - busy_until, before.key[:60], after.key[:60]))
        busy_until = max(busy_until, after.time_range.end)
    large = sorted((g for g in gaps if g[0] > threshold_us), reverse=True)
    largest = [{"us": g, "before": b, "after": a} for g, b, a in large[:12]]
    return {"idle_us": sum(g for g, _, _ in gaps if g > 0), "gaps_over_threshold": len(large),
            "threshold_us": threshold_us, "largest": largest}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="wan-1.3b", choices=sorted(E2E_MODELS))
    parser.add_argument("--variant", action="append", default=[], help="MODE [METHOD KEY=VALUE ...]; repeatable")
    parser.add_argument("--top", type=int, default=25, help="kernels printed per variant")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device("cuda")
    spec = E2E_MODELS[args.model]
    torch.manual_seed(0)
    model = spec.build(device, torch.bfloat16, {})
    inputs = spec.make_inputs(dict(model.config), spec.default_latent, device, torch.bfloat16)
    compiled = False
    results = []
    with torch.no_grad(), torch.nn.attention.sdpa_kernel(dense_backends(device)["cudnn"]):
        for text in args.variant or VARIANTS:
            mode, *rest = text.split(maxsplit=1)
            if mode == "regional" and not compiled:
                model.compile_repeated_blocks(fullgraph=True)
                compiled = True
            handle = None
            if rest and not rest[0].startswith("dense"):
                method, options = parse_config(rest[0])
                handle = dit_accel.apply(model, method, dense_steps=0, dense_layers=0, **options)

            def forward() -> torch.Tensor:
                return model(**inputs, return_dict=False)[0]

            table = kernel_table(forward, device, repeats=3)
            ms = median_ms(forward, device, warmup_ms=300, rep_ms=2000)
            total_ms = sum(row["us_per_call"] for row in table) / 1e3
            submit_ms, gaps = cpu_submit_ms(forward, device), idle_gaps(forward, device)
            print(f"\n{text}: {ms:.1f} ms wall, {total_ms:.1f} ms of kernels, {submit_ms:.1f} ms to submit, "
                  f"{gaps['idle_us'] / 1e3:.2f} ms idle between kernels", flush=True)  # fmt: skip
            for row in table[: args.top]:
                print(f"  {row['us_per_call'] / 1e3:8.2f} ms  x{row['launches']:.0f}  {row['kernel']}")
            for gap in gaps["largest"]:
                print(f"  idle {gap['us']:8.1f} us  {gap['before']} -> {gap['after']}")
            results.append({"variant": text, "ms": ms, "gpu_ms": total_ms, "submit_ms": submit_ms, "gaps": gaps,
                            "kernels": table})  # fmt: skip
            if handle is not None:
                handle.remove()
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
