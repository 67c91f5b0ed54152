"""GPU check of Wan's fused q/k RMS norm + rotary (``dit_accel/kernels/norm_rotary.py``) at the Wan-1.3B shape.

    python benchmarks/check_norm_rotary.py --out check_norm_rotary.json

(a) PASS/FAIL: the fused op against the stock sequence (``RMSNorm`` module, heads split, the stock
    rotary arithmetic) on bf16 ``(1, 32760, 1536)`` rows with Wan's rotary tables (max abs difference
    within one bf16 rounding of the output), and both against float64.
(b) Median ms of the stock sequence eager and compiled (``torch.compile``, what regional compile
    builds), and of the fused op; then a sweep of its launch (rows per program, warps).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dit_accel.bench import environment, median_ms
from dit_accel.kernels.norm_rotary import norm_rotary_triton
from dit_accel.kernels.rotary_ops import norm_rotary, wan_rotary

SEQ, HEADS, HEAD_DIM = 32760, 12, 128  # Wan2.1-1.3B, 480p, 81 frames


def wan_tables(seq: int, dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, S, 1, D)`` fp32 tables shaped like Wan's: one angle per pair, repeated."""
    positions = torch.arange(seq, device=device, dtype=torch.float64)[:, None]
    inverse = 10000 ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float64) / dim)
    angles = (positions * inverse).repeat_interleave(2, -1)[None, :, None, :]
    return angles.cos().float(), angles.sin().float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, SEQ, HEADS * HEAD_DIM, generator=gen, device=device).mul(2).to(torch.bfloat16)
    norm = torch.nn.RMSNorm(HEADS * HEAD_DIM, eps=1e-6, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(HEADS * HEAD_DIM, generator=gen, device=device) + 0.5)
    cos, sin = wan_tables(SEQ, HEAD_DIM, device)

    def stock() -> torch.Tensor:
        return wan_rotary(norm(x).unflatten(2, (HEADS, -1)), cos, sin)

    def fused() -> torch.Tensor:
        return norm_rotary(x, norm.weight, 1e-6, cos, sin, HEADS)

    records = []
    with torch.no_grad():
        want64 = wan_rotary(
            torch.nn.functional.rms_norm(x.double(), (HEADS * HEAD_DIM,), norm.weight.double(), 1e-6).unflatten(
                2, (HEADS, -1)
            ),
            cos.double(),
            sin.double(),
        )
        got, ref = fused(), stock()
        diff = (got.float() - ref.float()).abs().max().item()
        err_fused = ((got.double() - want64).abs().mean() / want64.abs().mean()).item()
        err_stock = ((ref.double() - want64).abs().mean() / want64.abs().mean()).item()
        passed = diff <= 2 * 2**-8 * ref.float().abs().max().item() and err_fused <= 1.5 * err_stock + 1e-6
        records.append({"what": "fused vs stock", "max_abs_diff": diff, "rel_l1_fused_vs_fp64": err_fused,
                        "rel_l1_stock_vs_fp64": err_stock, "pass": passed})  # fmt: skip
        print(f"{'PASS' if passed else 'FAIL'} fused vs stock: max |diff| {diff:.3g}, rel L1 vs fp64 fused "
              f"{err_fused:.3g} stock {err_stock:.3g}", flush=True)  # fmt: skip
        compiled = torch.compile(stock)
        for name, fn in (("stock eager", stock), ("stock compiled", compiled), ("fused", fused)):
            ms = median_ms(fn, device)
            records.append({"what": name, "ms": ms})
            print(f"{name:15s} {ms * 1e3:8.1f} us", flush=True)
        for rows in (1, 2, 4):
            for warps in (2, 4, 8):
                ms = median_ms(lambda r=rows, w=warps: norm_rotary_triton(x, norm.weight, 1e-6, cos, sin, HEADS, r, w),
                               device)  # fmt: skip
                records.append({"what": "sweep", "rows_per_program": rows, "num_warps": warps, "ms": ms})
                print(f"sweep rows {rows} warps {warps}: {ms * 1e3:8.1f} us", flush=True)
    args.out.write_text(json.dumps({"environment": environment(device), "records": records}, indent=1))
    if not passed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
