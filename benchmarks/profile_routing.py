"""Where the routing time of a block-sparse call goes, kernel by kernel (torch.profiler, CUDA).

The engine issue's target is routing <= 0.12 ms at the Wan-1.3B shape; this names the kernels
behind the measured figure so the slow one can be fixed. Prints a table per configuration and
writes it as JSON.

    python benchmarks/profile_routing.py --out routing_profile.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from dit_accel.bench import SHAPES, MethodRun, median_ms, random_qkv

CONFIGS = (
    ("topk", {"density": 0.1, "block_size": (128, 64)}),
    ("topk", {"density": 0.1, "block_size": (128, 128)}),
    ("topk", {"top_p": 0.9, "block_size": (128, 64)}),
)


def kernel_table(fn, device: torch.device, repeats: int = 20) -> list[dict]:
    """Mean GPU microseconds per call of each kernel ``fn`` launches, largest first."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize(device)
    rows = [
        {"kernel": event.key[:90], "us_per_call": event.device_time_total / repeats, "launches": event.count / repeats}
        for event in prof.key_averages()
        if event.device_time_total > 0
    ]
    return sorted(rows, key=lambda row: -row["us_per_call"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="wan-1.3b-480p", choices=sorted(SHAPES))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device("cuda")
    shape = SHAPES[args.shape]
    q, k, v = random_qkv(shape, torch.bfloat16, device)
    results = []
    for method, options in CONFIGS:
        run = MethodRun(method, options, shape.layout(), q, k, v)
        table = kernel_table(run.route_and_select, device)
        total = sum(row["us_per_call"] for row in table)
        wall = median_ms(run.route_and_select, device)
        print(f"\n{method} {options}: GPU kernels {total:.1f} us per routing, wall {wall * 1e3:.1f} us")
        for row in table:
            print(f"  {row['us_per_call']:8.1f} us  x{row['launches']:.0f}  {row['kernel']}")
        results.append({"method": method, "options": {k: str(v) for k, v in options.items()}, "kernels": table,
                        "gpu_us": total, "wall_us": wall * 1e3})  # fmt: skip
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
