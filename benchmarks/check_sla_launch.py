"""GPU sweep of the launch of sla's linear-branch backward: rows per step and warps per program.

    python benchmarks/check_sla_launch.py --out sla_launch.json
    TRITON_INTERPRET=1 python benchmarks/check_sla_launch.py --device cpu --out /tmp/l.json   # smoke run

At the Wan-1.3B shape (1, 12, 32760, 128) bf16, k_high 0.05 / k_low 0.1 classes, 128x128 and 128x64
blocks, stop 29's profile of sla's forward + backward put ``_linear_output_bwd`` (0.69 ms) next to
FA4's backward as the largest kernel: with D x D tiles in registers at 8 warps it likely spills. This
times ``sla_linear_backward_triton`` (the dq kernel's ``ROWS_PER_STEP`` and the warps of both of its
kernels, ``launch_warps``) per launch, median of CUDA-event timings, and checks each launch's
gradients against the default launch's (max relative error), so a faster launch can be adopted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import torch
from check_routing import measure_launch
from check_sla import classes, rel_err

from dit_accel.bench import environment, median_ms
from dit_accel.kernels import sla_linear_bwd

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


def sweep(shape, block, device, dtype, rows_options, warps_options) -> list[dict]:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    blocks = [(128, 128), (128, 64)] if device.type == "cuda" else [(64, 32)]
    rows_options, warps_options = ((16, 32, 64), (4, 8, 16)) if device.type == "cuda" else ((16,), (4,))
    records = [r for block in blocks for r in sweep(SHAPES[device.type], block, device, dtype, rows_options,
                                                    warps_options)]  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(device), "shape": SHAPES[device.type],
                                    "dtype": str(dtype), "records": records}, indent=1))  # fmt: skip
    print(f"wrote {args.out}")
    bad = [r for r in records if r.get("max_rel_err_vs_default", 0.0) > 2e-2 or "error" in r]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
