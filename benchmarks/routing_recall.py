"""How much attention does block routing keep, on real q/k/v of a trained model?

Records self-attention q/k/v (after RoPE) of chosen layers and steps with ``record_qkv``, then for
each recorded call and density, per head and query block:

* ``recall``: the share of the exact attention probability that falls in the key blocks the
  ``topk`` routing selects (pooled q/k scores + log block size, the project's selection kernel);
* ``oracle``: the same share for the best possible choice of as many blocks (top blocks by true mass);
* ``error``: relative L2 error of the attention output restricted to the selected blocks
  (renormalised, as block-sparse attention computes it) against exact attention.

Runs anywhere (exact attention is materialised one head at a time, fp32), e.g. on a CPU:

    python benchmarks/routing_recall.py --model assets/tiny-wan-t2v --out benchmarks/results/quality/x.json \\
        --frames 17 --height 128 --width 128 --steps 12 --layers 0 4 7   # records steps 0, 6 and 11
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from dit_accel import kernels
from dit_accel.bench import environment
from dit_accel.methods.routing import key_log_counts
from dit_accel.recorder import RecordedCall, default_steps, load_qkv, record_qkv
from dit_accel.tiling import default_tile, tile_permutation


def head_recall(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_q: int, block_k: int, density: float
) -> dict[str, float]:
    """Recall, oracle recall and output error of one head; q/k/v ``(S, D)`` in tile order."""
    s, d = q.shape
    scale = d**-0.5
    probs = torch.softmax((q @ k.T) * scale, dim=-1)
    exact = probs @ v
    nq, nk = -(-s // block_q), -(-s // block_k)
    q_block = torch.arange(s) // block_q
    k_block = torch.arange(s) // block_k
    # mass[i, j]: mean over the rows of query block i of the probability on key block j
    mass = torch.zeros(nq, nk).index_add_(0, q_block, torch.zeros(s, nk).index_add_(1, k_block, probs))
    mass /= torch.bincount(q_block, minlength=nq)[:, None]
    scores = kernels.routing_scores(
        kernels.pool_blocks(q[None, None], block_q), kernels.pool_blocks(k[None, None], block_k), scale
    )
    indices, counts = kernels.select_blocks(scores, density, None, 1, key_log_counts(s, block_k, q.device))
    chosen = torch.zeros(nq, nk, dtype=torch.bool)
    for i in range(nq):
        chosen[i, indices[0, 0, i, : counts[0, 0, i]].long()] = True
    kept = int(counts[0, 0, 0])
    oracle = mass.topk(kept, dim=1).values.sum(dim=1)
    allowed = chosen[q_block][:, k_block]
    restricted = probs * allowed
    sparse = (restricted / restricted.sum(dim=-1, keepdim=True)) @ v
    return {
        "recall": float((mass * chosen).sum(dim=1).mean()),
        "oracle": float(oracle.mean()),
        "error": float((sparse - exact).norm() / exact.norm()),
    }


def call_recall(call: RecordedCall, block_q: int, block_k: int, density: float) -> dict[str, float]:
    """Mean over batch entries and heads of :func:`head_recall` for one recorded self-attention call."""
    layout = call.layout
    video = slice(layout.video_start, layout.video_start + layout.video_len)
    order = tile_permutation(layout.grid, default_tile(layout.grid, block_q))
    results = []
    for b in range(call.q.shape[0]):
        for h in range(call.q.shape[2]):
            q, k, v = (x[b, video, h].float()[order] for x in (call.q, call.k, call.v))
            results.append(head_recall(q, k, v, block_q, block_k, density))
    return {key: statistics.fmean(r[key] for r in results) for key in results[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompt", default="a red circle moving right on a striped blue background")
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 4, 7])
    parser.add_argument(
        "--at-steps", type=int, nargs="+", default=None, help="steps to record (default: first, middle and last)"
    )
    parser.add_argument("--densities", type=float, nargs="+", default=[0.125, 0.25, 0.5])
    parser.add_argument("--block-q", type=int, default=128)
    parser.add_argument("--block-k", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="device the pipeline runs on (the recall math runs on the CPU)")
    parser.add_argument("--keep", type=Path, default=None, help="also keep the recorded q/k/v file here")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.at_steps is None:
        args.at_steps = default_steps(args.steps)

    pipe = DiffusionPipeline.from_pretrained(args.model, dtype=torch.float32).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    call = {"num_frames": args.frames, "height": args.height, "width": args.width}
    with tempfile.TemporaryDirectory() as tmp:
        path = record_qkv(
            pipe,
            Path(tmp) / "qkv.safetensors",
            layers=args.layers,
            steps=args.at_steps,
            prompt=args.prompt,
            num_inference_steps=args.steps,
            generator=torch.Generator().manual_seed(0),
            **call,
        )
        calls, _ = load_qkv(path)
        if args.keep is not None:
            args.keep.parent.mkdir(parents=True, exist_ok=True)
            args.keep.write_bytes(path.read_bytes())
    rows = []
    for recorded in calls:
        for density in args.densities:
            row = {"step": recorded.step, "layer": recorded.layer, "call": recorded.call, "density": density}
            row |= call_recall(recorded, args.block_q, args.block_k, density)
            rows.append(row)
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    summary = {
        str(d): {
            key: round(statistics.fmean(r[key] for r in rows if r["density"] == d), 4)
            for key in ("recall", "oracle", "error")
        }
        for d in args.densities
    }
    print("mean over calls:", summary)
    record = {"model": args.model, "prompt": args.prompt, "call": {**call, "num_inference_steps": args.steps}}
    record["environment"] = environment(torch.device(args.device))
    record |= {"block_q": args.block_q, "block_k": args.block_k, "summary": summary, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
