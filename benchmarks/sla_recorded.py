"""``sla`` on recorded q/k/v (``dit-accel record``): what the linear branch can recover before fine-tuning.

Per k_high and feature map: the mean relative L1 error against fp32 dense of ``topk`` at the same
density, of untrained ``sla`` (projection 0: the exact part alone, the same output as ``topk``), and
of ``sla`` with each layer's projection fitted by least squares to the dense output's residual
(``O_dense - O_s ≈ O_l Wᵀ``) on that layer's recorded calls themselves: the least error the
projections alone can reach on them (fitted on the conditional calls only, the projection does not
carry over to the unconditional ones: measured 0.51 -> 1.41 at k_high 0.05). Fine-tuning the
weights (``finetune-sla``) is what SLA relies on. CPU is fine::

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


def fitted_errors(calls, options: dict, device: torch.device) -> tuple[list[float], list[float]]:
    """Per call: relative L1 of the exact part alone, and with its layer's least-squares projection."""
    by_layer: dict[int, list] = defaultdict(list)
    for call in calls:
        by_layer[call.layer].append(parts(call, options, device))
    untrained, fitted = [], []
    for layer_calls in by_layer.values():
        dim = layer_calls[0][2].shape[-1]
        x = torch.cat([linear.reshape(-1, dim) for _, _, linear in layer_calls]).double()
        y = torch.cat([(dense - exact).reshape(-1, dim) for dense, exact, _ in layer_calls]).double()
        weight = torch.linalg.lstsq(x, y).solution.T.float()
        for dense, exact, linear in layer_calls:
            untrained.append(rel_l1(exact, dense))
            fitted.append(rel_l1(exact + linear @ weight.T, dense))
    return untrained, fitted


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
        for feature_map in args.feature_maps:
            options = {"k_high": k_high, "k_low": 0.1, "feature_map": feature_map}
            untrained, fitted = (statistics.fmean(e) for e in fitted_errors(calls, options, device))
            records.append({"k_high": k_high, "feature_map": feature_map, "topk_rel_l1": topk,
                            "sla_untrained_rel_l1": untrained, "sla_fitted_projection_rel_l1": fitted})  # fmt: skip
            print(f"k_high {k_high} {feature_map:7s}: topk {topk:.4f}  sla untrained {untrained:.4f}  "
                  f"sla with least-squares projections {fitted:.4f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"recorded": args.recorded.name, "calls": len(calls), "records": records}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
