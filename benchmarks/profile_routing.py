"""Where the time of a block-sparse call goes, kernel by kernel (torch.profiler, CUDA).

The engine issue's target is routing <= 0.12 ms at the Wan-1.3B shape; this names the kernels
behind the measured figures so the slow one can be fixed: routing (+ selection) and, with
``--attention``, the attention step too. With ``--host``, also where the CPU time of one eager call
goes (cProfile; an eager call whose Python outlasts its kernels is timed at its CPU cost). Prints a
table per configuration and writes it as JSON.

    python benchmarks/profile_routing.py --out routing_profile.json
    python benchmarks/profile_routing.py --attention --out psa.json \
        --config "psa density=0.125" --config "psa density=0.125 order='tiles'"
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import pstats
import shlex
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from dit_accel.bench import SHAPES, MethodRun, median_ms, random_qkv
from dit_accel.compare import parse_option

CONFIGS = (
    "topk density=0.1 block_size=(128,64)",
    "topk density=0.1 block_size=(128,128)",
    "topk top_p=0.9 block_size=(128,64)",
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
        {"kernel": event.key[:240], "us_per_call": event.device_time_total / repeats, "launches": event.count / repeats}
        for event in prof.key_averages()
        if event.device_time_total > 0
    ]
    return sorted(rows, key=lambda row: -row["us_per_call"])


def parse_config(text: str) -> tuple[str, dict]:
    """``"psa density=0.125 order='tiles'"`` -> ``("psa", {"density": 0.125, "order": "tiles"})``."""
    method, *options = shlex.split(text)
    return method, dict(parse_option(option) for option in options)


def profile_phase(name: str, fn, device: torch.device) -> dict:
    """The kernel table of one phase, printed, with its GPU total and eager wall time."""
    table = kernel_table(fn, device)
    total = sum(row["us_per_call"] for row in table)
    wall = median_ms(fn, device) * 1e3
    print(f"  {name}: GPU kernels {total:.1f} us, wall {wall:.1f} us")
    for row in table:
        print(f"    {row['us_per_call']:8.1f} us  x{row['launches']:.0f}  {row['kernel']}")
    return {"kernels": table, "gpu_us": total, "wall_us": wall}


def cpu_submit_ms(fn, device: torch.device, repeats: int = 5) -> float:
    """Median host milliseconds until ``fn`` returns (kernels queued, not finished)."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1e3)
    torch.cuda.synchronize(device)
    return sorted(times)[len(times) // 2]


def host_profile(fn, device: torch.device, calls: int = 50, top: int = 25) -> dict:
    """CPU cost of one eager call: its launch time on an idle GPU queue, and cProfile's heaviest functions."""
    for _ in range(3):
        fn()
    launch = cpu_submit_ms(fn, device, repeats=calls) * 1e3
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
        torch.cuda.synchronize(device)  # a full launch queue would block inside the launches: charge the wait here
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, prim calls, tottime, cumtime, callers)}
    rows = [
        {"function": f"{Path(file).name}:{line}:{name}", "calls_per_call": n / calls,
         "self_us": own / calls * 1e6, "cumulative_us": cum / calls * 1e6}
        for (file, line, name), (n, _, own, cum, _) in stats.items()
    ]  # fmt: skip
    print(f"  host: {launch:.1f} us to launch one call on an idle queue")
    heaviest = sorted(rows, key=lambda row: -row["self_us"])[:top]
    for row in heaviest:
        own, cum, n = row["self_us"], row["cumulative_us"], row["calls_per_call"]
        print(f"    {own:8.1f} us self {cum:8.1f} cum  x{n:.0f}  {row['function']}")
    return {"launch_us": launch, "by_self": heaviest,
            "by_cumulative": sorted(rows, key=lambda row: -row["cumulative_us"])[:top]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="wan-1.3b-480p", choices=sorted(SHAPES))
    parser.add_argument("--config", action="append", default=[], help="METHOD KEY=VALUE ...; repeatable")
    parser.add_argument("--attention", action="store_true", help="profile the attention step as well")
    parser.add_argument("--host", action="store_true", help="profile the full call's CPU time as well")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device("cuda")
    shape = SHAPES[args.shape]
    q, k, v = random_qkv(shape, torch.bfloat16, device)
    results = []
    for text in args.config or CONFIGS:
        method, options = parse_config(text)
        run = MethodRun(method, options, shape.layout(), q, k, v)
        print(f"\n{method} {options}")
        # The routing phase's table keeps its historical top-level keys.
        record = {"method": method, "options": {k: str(v) for k, v in options.items()}}
        record |= profile_phase("routing", run.route_and_select, device)
        if args.attention:
            routing, blocks = run.route_and_select()
            attend = functools.partial(run.method.attend, routing, blocks, run.ctx)
            record["attention"] = profile_phase("attention", attend, device)
            record["full"] = profile_phase("full call", run.full, device)
        if args.host:
            record["host"] = host_profile(run.full, device)
        results.append(record)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
