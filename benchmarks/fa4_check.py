"""GPU check of the backend dispatcher: FA4 and Triton against the reference, gradients, compile, CUDA graphs.

Run on a Hopper/Blackwell GPU with ``flash-attn-4`` importable (``../shared/gpu/FA4.md``)::

    python benchmarks/fa4_check.py --out benchmarks/results/kernel

Checks, each a PASS/FAIL line and a record in ``fa4_check.json``:
* forward of every backend at the Wan2.1-1.3B shape (last key block partial) and with text keys
  merged by LSE, against the fp32 reference (output and LSE);
* FA4 block-sparse backward (dq, dk, dv, with an LSE gradient) against fp32 reference autograd;
* the ``topk`` method on FA4 under ``torch.compile(fullgraph=True)`` and replayed from a CUDA graph.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from dit_accel.bench import environment
from dit_accel.kernels import reference
from dit_accel.kernels.backends import ExtraKeys, sparse_attention
from dit_accel.kernels.block_list import BlockList


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    finite = torch.isfinite(b)
    return float((a[finite] - b[finite]).norm() / b[finite].norm().clamp_min(1e-30))


def random_blocks(b: int, h: int, sq: int, sk: int, bq: int, bk: int, density: float, gen) -> BlockList:
    """Random ascending lists that always include the last (partial) key block for some rows."""
    nq, nk = -(-sq // bq), -(-sk // bk)
    keep = max(1, round(density * nk))
    scores = torch.rand(b, h, nq, nk, device="cuda", generator=gen)
    scores[..., -1] += torch.rand(b, h, nq, device="cuda", generator=gen).round()
    indices, counts = reference.select_blocks_reference(scores, density=keep / nk)
    return BlockList(indices, counts, bq, bk, sk)


def check_forward(gen, shape=(1, 12, 32760, 128), text: int = 0, density: float = 0.1) -> list[dict]:
    b, h, s, d = shape
    q, k, v = (torch.randn(b, s + text, h, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    qh, kh, vh = (x[:, :s].transpose(1, 2) for x in (q, k, v))
    extra = ExtraKeys(k[:, s:].transpose(1, 2), v[:, s:].transpose(1, 2)) if text else None
    blocks = random_blocks(b, h, s, s, 128, 64, density, gen)
    kwargs = dict(extra_k=extra.k.float(), extra_v=extra.v.float()) if text else {}
    ref_out, ref_lse = reference.block_sparse_attention_reference(
        qh.float(), kh.float(), vh.float(), blocks.indices, blocks.counts, block_m=128, block_n=64,
        key_len=s, return_lse=True, **kwargs,
    )  # fmt: skip
    results = []
    for backend in ("fa4", "triton"):
        out, lse = sparse_attention(qh, kh, vh, blocks, extra=extra, backend=backend)
        err, lse_err = rel(out, ref_out), float((lse - ref_lse).abs().max())
        results.append({"check": "forward", "backend": backend, "shape": list(shape), "text": text,
                        "rel_l2": err, "lse_max_abs": lse_err, "ok": err < 1e-2 and lse_err < 1e-2})  # fmt: skip
    return results


def check_backward(gen, block_k: int, shape=(1, 4, 4000, 128), density: float = 0.3) -> dict:
    """Gradients through the FA4 op (with an LSE gradient: FA4's backward for 128-key blocks, Triton's for 64)."""
    b, h, s, d = shape
    q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    blocks = random_blocks(b, h, s, s, 128, block_k, density, gen)
    dout = torch.randn(b, h, s, d, device="cuda", generator=gen)
    dlse = torch.randn(b, h, s, device="cuda", generator=gen)

    def grads(x_q, x_k, x_v, backend):
        leaves = [x.detach().requires_grad_() for x in (x_q, x_k, x_v)]
        qh, kh, vh = (x.transpose(1, 2) for x in leaves)
        if backend == "reference":
            out, lse = reference.block_sparse_attention_reference(
                qh, kh, vh, blocks.indices, blocks.counts, block_m=128, block_n=block_k, key_len=s, return_lse=True
            )
        else:
            out, lse = sparse_attention(qh, kh, vh, blocks, backend=backend)
        finite = torch.isfinite(lse)
        loss = (out.float() * dout).sum() + (torch.where(finite, lse, 0.0) * dlse).sum()
        return torch.autograd.grad(loss, leaves)

    expected = grads(q.float(), k.float(), v.float(), "reference")
    got = grads(q, k, v, "fa4")
    errors = {name: rel(g, e) for name, g, e in zip(("dq", "dk", "dv"), got, expected, strict=True)}
    return {"check": "backward", "backend": "fa4", "block_k": block_k, "shape": list(shape), **errors,
            "ok": max(errors.values()) < 2e-2}  # fmt: skip


def check_compile_and_graph(gen) -> dict:
    """``topk`` on FA4 traced with fullgraph=True and replayed from a CUDA graph equals eager."""
    from dit_accel.bench import SHAPES, MethodRun, random_qkv

    shape = SHAPES["wan-1.3b-480p"]
    q, k, v = random_qkv(shape, torch.bfloat16, torch.device("cuda"))
    run = MethodRun("topk", {"density": 0.1, "backend": "fa4"}, shape.layout(), q, k, v)
    with torch.no_grad():
        eager = run.full()
        compiled = torch.compile(run.method, fullgraph=True)(q, k, v, run.ctx)
        static = [torch.empty_like(eager)]
        graph = torch.cuda.CUDAGraph()
        run.full()
        with torch.cuda.graph(graph):
            static[0] = run.full()
        graph.replay()
    err_compiled, err_graph = rel(compiled, eager), rel(static[0], eager)
    return {"check": "compile+graph", "backend": run.backend(), "rel_compiled": err_compiled, "rel_graph": err_graph,
            "ok": err_compiled < 1e-3 and err_graph < 1e-6}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/kernel")
    args = parser.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    results = check_forward(gen) + check_forward(gen, shape=(2, 4, 4999, 128), text=77, density=0.3)
    checks = {"backward-128": lambda: check_backward(gen, 128), "backward-64": lambda: check_backward(gen, 64),
              "compile+graph": lambda: check_compile_and_graph(gen)}  # fmt: skip
    for name, check in checks.items():
        try:
            results.append(check())
        except Exception as error:  # a failed check is a result, and the others still run
            results.append({"check": name, "error": repr(error)[:500], "ok": False})
    for result in results:
        print(("PASS " if result["ok"] else "FAIL ") + json.dumps(result), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    record = {"env": environment(torch.device("cuda")), "results": results}
    (Path(args.out) / "fa4_check.json").write_text(json.dumps(record, indent=1))
    return 1 if any(not r["ok"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
