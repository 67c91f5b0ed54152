"""Is a GELU fused into the first feed-forward product worth it (CUDA)? Wan-1.3B's feed-forward at 480p.

The compiled Wan-1.3B forward spends ~12 ms (of ~200) in Inductor's stand-alone tanh-GELU over the
(32760, 8960) hidden activation: one write and one read of 587 MB that cuBLASLt's GELU epilogue
(``torch._addmm_activation(..., use_gelu=True)``) avoids. Times the first product + GELU four ways
(eager, ``torch.compile``, the epilogue, and the custom op the fused feed-forward calls) and their
error against float64.

    python benchmarks/check_ffn_gelu.py --out ffn_gelu.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from dit_accel.bench import median_ms
from dit_accel.kernels.ffn_ops import linear_gelu_tanh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32760)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--hidden", type=int, default=8960)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device("cuda")
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(args.tokens, args.dim, device=device, generator=gen).bfloat16()
    weight = (torch.randn(args.hidden, args.dim, device=device, generator=gen) / args.dim**0.5).bfloat16()
    bias = (torch.randn(args.hidden, device=device, generator=gen) * 0.1).bfloat16()

    def stock() -> torch.Tensor:
        return F.gelu(F.linear(x, weight, bias), approximate="tanh")

    def epilogue() -> torch.Tensor:
        return torch._addmm_activation(bias, x, weight.t(), use_gelu=True)

    def op() -> torch.Tensor:  # what the fused feed-forward calls, on Wan's (B, S, C) activations
        return linear_gelu_tanh(x.unsqueeze(0), weight, bias).squeeze(0)

    compiled = torch.compile(stock)
    reference = F.gelu(F.linear(x.double(), weight.double(), bias.double()), approximate="tanh")
    results = {}
    with torch.no_grad():
        for name, fn in (("eager", stock), ("compiled", compiled), ("epilogue", epilogue), ("op", op)):
            out = fn()
            error = float((out.double() - reference).abs().sum() / reference.abs().sum())
            results[name] = {"ms": median_ms(fn, device, warmup_ms=200, rep_ms=1000), "rel_l1_vs_fp64": error}
            print(f"{name:9s} {results[name]['ms']:.3f} ms  rel L1 vs float64 {error:.2e}", flush=True)
    args.out.write_text(json.dumps({"shape": [args.tokens, args.dim, args.hidden], "gpu": torch.cuda.get_device_name(),
                                    "results": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
