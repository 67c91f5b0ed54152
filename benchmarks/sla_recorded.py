"""``sla`` on recorded q/k/v (``dit-accel record``): what the linear branch can recover before fine-tuning.

Per k_high and feature map: the mean relative L1 error against fp32 dense of ``topk`` at the same
density, of untrained ``sla`` (projection 0: the exact part alone, equal to ``topk``), and of ``sla``
with each layer's projection fitted by least squares to the dense output's residual
(``O_dense - O_s ≈ O_l Wᵀ``) on the conditional calls and measured on the unconditional ones
(held out). The fitted projections bound from below what training the projections alone can give;
fine-tuning the weights (``finetune-sla``) goes further. CPU is fine::

    python benchmarks/sla_recorded.py --recorded qkv.safetensors --out sla_recorded.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

from dit_accel.bench import MethodRun, recorded_errors, rel_l1, sdpa_bshd
from dit_accel.recorder import load_qkv


def parts(call, options: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(O_dense, O_s, O_l)`` of one recorded call, ``(B, S, H, D)`` fp32."""
    q, k, v = (x.to(device=device, dtype=torch.float32) for x in (call.q, call.k, call.v))
    run = MethodRun("sla", options, call.layout, q, k, v, pretiled=False)
    routing, blocks = run.route_and_select()
    exact, _ = run.method.attend(routing, blocks, run.ctx)
    linear = run.method.linear_branch(routing, blocks)
    assemble = run.method._assemble
    return sdpa_bshd(q, k, v), assemble(exact, q, k, v, routing, run.ctx), assemble(linear, q, k, v, routing, run.ctx)


def fitted_errors(calls, options: dict, device: torch.device, ridge: float = 1e-4) -> list[float]:
    """Relative L1 on the unconditional calls with per-layer projections fitted on the conditional ones."""
    fit: dict[int, list] = defaultdict(list)
    held_out = []
    for call in calls:
        dense, exact, linear = parts(call, options, device)
        if call.call == 0:
            dim = linear.shape[-1]
            fit[call.layer].append((linear.reshape(-1, dim).double(), (dense - exact).reshape(-1, dim).double()))
        else:
            held_out.append((call.layer, dense, exact, linear))
    weights = {}
    for layer, pairs in fit.items():
        x, y = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype) * x.pow(2).mean()
        weights[layer] = torch.linalg.solve(gram, x.T @ y).T.float()
    return [rel_l1(exact + linear @ weights[layer].T, dense) for layer, dense, exact, linear in held_out]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recorded", type=Path, required=True, help="safetensors file of dit-accel record")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--k-high", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--feature-maps", nargs="+", default=["softmax", "elu", "relu"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    calls, _ = load_qkv(args.recorded)
    records = []
    for k_high in args.k_high:
        topk = recorded_errors("topk", {"density": k_high}, args.recorded, device)["recorded_rel_l1_mean"]
        untrained = recorded_errors("sla", {"k_high": k_high}, args.recorded, device)["recorded_rel_l1_mean"]
        for feature_map in args.feature_maps:
            options = {"k_high": k_high, "k_low": 0.1, "feature_map": feature_map}
            fitted = statistics.fmean(fitted_errors(calls, options, device))
            records.append({"k_high": k_high, "feature_map": feature_map, "topk_rel_l1": topk,
                            "sla_untrained_rel_l1": untrained, "sla_fitted_projection_rel_l1": fitted})  # fmt: skip
            print(f"k_high {k_high} {feature_map:7s}: topk {topk:.4f}  sla untrained {untrained:.4f}  "
                  f"sla fitted projections (held out) {fitted:.4f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"recorded": args.recorded.name, "calls": len(calls), "records": records}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
