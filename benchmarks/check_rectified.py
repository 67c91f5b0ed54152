"""GPU check of ``rectified`` (Rectified SpaAttn): its kernels against float64, its speed against cuDNN.

Run on the H200 (bf16, Wan2.1-1.3B shape ``(1, 12, 32760, 128)`` plus an odd small shape with text)::

    python benchmarks/check_rectified.py --out benchmarks/results/kernel/check_rectified.json

(a) PASS/FAIL with errors: ``kernels.rectified_stats`` (block means and mean absolute deviations)
    and ``kernels.rectified_tail`` (IPAR + GAPR + ``R·O + C``, per row and per block) against their
    float64 references on the same bf16 inputs, and the whole method against itself with every op
    on the PyTorch reference (``DIT_ACCEL_FORCE_REFERENCE=1``).
(b) Median ms (``dit_accel.bench.median_ms``) of cuDNN dense, ``topk`` and ``rectified`` at equal
    density (default 0.11, ~89% sparsity), ``rectified`` at its own defaults (kept fraction
    reported), the method's parts (block stats, selection, exact attention, rectifying pass), and a
    sweep of the rectifying pass's launch configurations; speedups against cuDNN from the same run.
(c) Every record in the JSON written to ``--out``; ``--recorded`` adds the errors vs dense of both
    methods on recorded q/k/v. ``--device cpu`` runs the reference parts on a small shape.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from dit_accel.bench import MethodRun, dense_runs, environment, median_ms, recorded_errors, rel_l1
from dit_accel.kernels import rectified_ops
from dit_accel.kernels.rectified_reference import block_stats_reference, rectified_merge_reference
from dit_accel.kernels.reference import select_blocks_reference
from dit_accel.layout import TokenLayout

FULL = {"batch": 1, "heads": 12, "grid": (21, 30, 52), "text": 0, "dim": 128}  # Wan2.1-1.3B 480p 81 frames
ODD = {"batch": 2, "heads": 3, "grid": (3, 11, 13), "text": 37, "dim": 64}  # 429 video tokens, padded text
CPU = {"batch": 1, "heads": 2, "grid": (2, 12, 16), "text": 8, "dim": 64}


def inputs(shape: dict, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """q/k/v in Diffusers' layout (video then text) with a shared direction per 64 tokens, and the layout."""
    gen = torch.Generator(device=device).manual_seed(seed)
    video = shape["grid"][0] * shape["grid"][1] * shape["grid"][2]
    size = (shape["batch"], video + shape["text"], shape["heads"], shape["dim"])
    tensors = []
    for _ in range(3):
        x = torch.randn(size, generator=gen, device=device)
        shared = torch.randn(size[0], -(-size[1] // 64), *size[2:], generator=gen, device=device)
        tensors.append((x + shared.repeat_interleave(64, 1)[:, : size[1]]).to(dtype))
    valid = None
    if shape["text"]:
        valid = torch.tensor([shape["text"] - 5 * i for i in range(shape["batch"])], device=device, dtype=torch.int32)
    layout = TokenLayout(seq_len=size[1], video_start=0, video_len=video, grid=shape["grid"], text_start=video,
                         text_len=shape["text"], text_valid=valid)  # fmt: skip
    return (*tensors, layout)


def verdict(name: str, errors: dict[str, float], limits: dict[str, float]) -> dict:
    ok = all(errors[key] <= limit for key, limit in limits.items())
    print(f"{'PASS' if ok else 'FAIL'} {name}: " + ", ".join(f"{k}={v:.3g}" for k, v in errors.items()), flush=True)
    return {"check": name, "pass": ok, **errors, "limits": limits}


def errors_of(got: torch.Tensor, want: torch.Tensor) -> dict[str, float]:
    return {"max_abs": float((got.double() - want.double()).abs().max()), "rel_l1": rel_l1(got, want)}


def check_kernels(shape: dict, device: torch.device, label: str, pretiled: bool) -> list[dict]:
    """Both kernels against float64 references from the same bf16 inputs (``pretiled=False``: rows gathered)."""
    q, k, v, layout = inputs(shape, torch.bfloat16, device)
    run = MethodRun("rectified", {"density": 0.11}, layout, q, k, v, pretiled=pretiled)
    routing, _ = run.route_and_select()
    q64, k64, v64 = (x.double() for x in (routing.q, routing.k, routing.v))
    sizes = (routing.block_q, routing.block_k, routing.key_len)
    want = block_stats_reference(q64, k64, v64, *sizes, routing.q_rows)
    got = rectified_ops.block_stats(routing.q, routing.k, routing.v, *sizes, routing.q_rows)
    names = ("q_mean", "q_mad", "k_mean", "k_mad", "v_mean")
    records = [verdict(f"{label} block stats {name}", errors_of(g, w), {"max_abs": 1e-4})
               for name, g, w in zip(names, got, want, strict=True)]  # fmt: skip
    out = torch.randn_like(routing.q)
    nq, nk = got[0].shape[2], got[2].shape[2]
    scores = torch.randn(*got[0].shape[:2], nq, nk, device=device)
    for density in (0.11, 0.3):
        indices, counts = select_blocks_reference(scores, density=density)
        for per_row in (True, False):
            common = dict(block_q=routing.block_q, block_k=routing.block_k, key_len=routing.key_len,
                          scale=routing.scale, per_row=per_row, q_rows=routing.q_rows)  # fmt: skip
            result = rectified_ops.rectified_merge(
                out, routing.q, *got, indices, counts, **common, extra_k=routing.extra_k,
                extra_valid=routing.extra_valid,
            )  # fmt: skip
            reference = rectified_merge_reference(
                out.double(), q64, *(x.double() for x in got), indices, counts, **common,
                extra_k=None if routing.extra_k is None else routing.extra_k.double(), extra_valid=routing.extra_valid,
            )  # fmt: skip
            rows = slice(None) if routing.q_rows is None else routing.q_rows.long()
            errors = errors_of(result[:, :, rows], reference[:, :, rows])
            changed = (reference - out.double())[:, :, rows].abs().amax(-1) > 1e-3
            errors["rows_changed"] = float(changed.double().mean())
            name = f"{label} rectifying pass per_row={per_row} density={density}"
            records.append(verdict(name, errors, {"rel_l1": 5e-3, "max_abs": 0.1}))
    return records


def check_method(shape: dict, device: torch.device, label: str) -> list[dict]:
    """The whole call on the GPU kernels against the same call with every op on the PyTorch reference."""
    q, k, v, layout = inputs(shape, torch.bfloat16, device, seed=1)
    records = []
    for options in ({"density": 0.11, "per_row": True}, {"density": 0.11, "per_row": False}, {}):
        fast = MethodRun("rectified", options, layout, q, k, v).full()
        os.environ["DIT_ACCEL_FORCE_REFERENCE"] = "1"
        try:
            slow = MethodRun("rectified", options, layout, q, k, v).full()
        finally:
            del os.environ["DIT_ACCEL_FORCE_REFERENCE"]
        video = slice(0, layout.video_len)
        name = f"{label} method {options} vs all-reference ops"
        records.append(verdict(name, errors_of(fast[:, video], slow[:, video]), {"rel_l1": 1e-2}))
    return records


def timings(shape: dict, device: torch.device, density: float) -> list[dict]:
    """Median ms of dense, topk and rectified (whole call and parts); speedups vs cuDNN from this run."""
    q, k, v, layout = inputs(shape, torch.bfloat16 if device.type == "cuda" else torch.float32, device, seed=2)
    records = []
    for name, fn in dense_runs(device).items():
        records.append({"what": f"dense {name}", "ms": median_ms(lambda fn=fn: fn(q, k, v), device)})
    cudnn = records[0]["ms"]
    variants = [("topk", {"density": density, "block_size": (128, 128)}), ("topk", {"density": density})]
    variants += [("rectified", {"density": density, "per_row": per_row}) for per_row in (True, False)]
    variants += [("rectified", {"per_row": per_row}) for per_row in (True, False)]
    for method, options in variants:
        run = MethodRun(method, options, layout, q, k, v)
        _, blocks = run.route_and_select()
        record = {"what": method, "options": options, "ms": median_ms(run.full, device), "kept": blocks.density()}
        if method == "rectified":
            record |= rectified_parts(run, device)
        records.append(record)
    for record in records:
        record["speedup_vs_cudnn"] = cudnn / record["ms"]
        print(f"{record['what']:14s} {record.get('options', '')!s:45s} {record['ms']:8.3f} ms "
              f"{record['speedup_vs_cudnn']:6.2f}x  kept {record.get('kept', 1.0):.3f}", flush=True)  # fmt: skip
    return records


def rectified_parts(run: MethodRun, device: torch.device) -> dict[str, float]:
    """GPU ms of the method's steps: block statistics, selection, exact attention, rectifying pass."""
    method, ctx = run.method, run.ctx
    routing = method.route(run.q, run.k, run.v, ctx)
    stats = lambda: rectified_ops.block_stats(  # noqa: E731
        routing.q, routing.k, routing.v, routing.block_q, routing.block_k, routing.key_len, routing.q_rows
    )
    routing.known_stats = stats()
    blocks = method.select(routing, ctx)
    out, lse = method.attend(routing, blocks, ctx)
    return {
        "ms_stats": median_ms(stats, device),
        "ms_select": median_ms(lambda: method.select(routing, ctx), device),
        "ms_attend": median_ms(lambda: method.attend(routing, blocks, ctx), device),
        "ms_rectify": median_ms(lambda: method.combine(routing, blocks, out, lse, ctx), device),
    }


def sweep(shape: dict, device: torch.device, density: float) -> list[dict]:
    """The rectifying pass under several launch configurations (rows per program, key chunk, warps)."""
    from dit_accel.kernels.rectified_tail import rectified_merge_triton

    q, k, v, layout = inputs(shape, torch.bfloat16, device, seed=3)
    run = MethodRun("rectified", {"density": density}, layout, q, k, v)
    routing, blocks = run.route_and_select()
    out, _ = run.method.attend(routing, blocks, run.ctx)
    common = dict(block_q=routing.block_q, block_k=routing.block_k, key_len=routing.key_len, scale=routing.scale,
                  q_rows=routing.q_rows, extra_k=routing.extra_k, extra_valid=routing.extra_valid)  # fmt: skip
    configs = [(True, r, c, w) for r in (64, 128) for c in (16, 32, 64) for w in (4, 8)]
    configs += [(False, 16, c, w) for c in (32, 64) for w in (4, 8)]
    records = []
    for per_row, rows, chunk, warps in configs:

        def call(per_row=per_row, rows=rows, chunk=chunk, warps=warps):
            return rectified_merge_triton(out, routing.q, *routing.stats, blocks.indices, blocks.counts,
                                          per_row=per_row, rows_per_program=rows, key_chunk=chunk, num_warps=warps,
                                          **common)  # fmt: skip

        try:
            ms = median_ms(call, device, warmup_ms=50, rep_ms=200)
        except Exception as error:  # a config the compiler rejects (shared memory, registers)
            print(f"sweep per_row={per_row} rows={rows} chunk={chunk} warps={warps}: {type(error).__name__}")
            continue
        records.append({"what": "rectify sweep", "per_row": per_row, "rows": rows, "key_chunk": chunk,
                        "num_warps": warps, "ms": ms})  # fmt: skip
    for per_row in (True, False):
        best = min((r for r in records if r["per_row"] == per_row), key=lambda r: r["ms"], default=None)
        print(f"sweep best per_row={per_row}: {best}", flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--density", type=float, default=0.11, help="equal density of the timed methods")
    parser.add_argument("--recorded", type=Path, help="recorded q/k/v (dit-accel record) for errors vs dense")
    args = parser.parse_args()
    device = torch.device(args.device)
    records: list[dict] = []
    if device.type == "cuda":
        records += check_kernels(ODD, device, "odd", pretiled=False)
        records += check_kernels(FULL, device, "full", pretiled=True)
        records += check_method(ODD, device, "odd")
        records += timings(FULL, device, args.density)
        records += sweep(FULL, device, args.density)
    else:
        print("SKIP Triton checks and sweep (no CUDA); timing the PyTorch reference on a small shape")
        records += timings(CPU, device, args.density)
    if args.recorded is not None:
        for method, options in [("topk", {"density": d}) for d in (0.125, 0.25)] + [
            ("rectified", {"density": d, "per_row": p}) for d in (0.125, 0.25) for p in (True, False)
        ]:
            errors = recorded_errors(method, options, args.recorded, device)
            records.append({"what": "recorded", "method": method, "options": options, **errors})
            print(f"recorded {method} {options}: rel L1 {errors['recorded_rel_l1_mean']:.4f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(device), "records": records}, indent=1, default=str))
    print(f"wrote {args.out}")
    if any(r.get("pass") is False for r in records):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
