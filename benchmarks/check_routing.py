"""GPU check of the routing launches at the Wan-1.3B shape: which pooling layout and select launch is fastest.

    python benchmarks/check_routing.py --out check_routing.json

The engine issue's kernel target (``topk`` 0.1 >= 10x cuDNN) leaves routing about 0.05 ms next to FA4's
block-sparse call, about one read of Q and K. This times, as CUDA-graph replays after an L2 flush:
(a) the pooling launch in each layout of ``routing.POOL_LAYOUT`` (and launch sizes), against the
    bytes it must read (achieved TB/s), PASS/FAIL against the fp32 block means (a third layout, one
    program per block and head with the head index fastest, measured 79 us against 77 us for
    ``head_blocks`` in stop 21's record and was dropped; so did token rows in power-of-two head groups,
    12 heads as 3 programs of 4 without padded lanes: 61.9-62.7 us against 62.3 us in stop 22's);
(b) top-k selection: the composed path (scores from cuBLAS or from ``block_scores``' tiled kernel, per
    tile, + the select kernel, per launch size) and the fused score+select kernel (per launch size),
    PASS/FAIL against the reference selection;
(c) the whole ``topk`` routing step as the method runs it (``MethodRun.route_and_select``).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
from pathlib import Path

import torch

from dit_accel.bench import SHAPES, MethodRun, environment, graph_ms, random_qkv
from dit_accel.kernels import block_scores, block_selection, reference, routing
from dit_accel.methods import base as method_base
from dit_accel.methods.routing import key_log_counts

SHAPE = "wan-1.3b-480p"
DENSITY = 0.1


def with_settings(module, **settings):
    """Set module constants for one measurement; returns the previous values."""
    previous = {name: getattr(module, name) for name in settings}
    for name, value in settings.items():
        setattr(module, name, value)
    return previous


def measure_launch(module, settings: dict, label: str, measure) -> dict:
    """``settings`` (module constants) and ``measure()``'s record for one launch; a launch that fails to
    compile or run is a result, not the end of the run."""
    previous = with_settings(module, **settings)
    try:
        record = {"launch": settings} | measure()
    except Exception as exc:
        record = {"launch": settings, "error": repr(exc)[:300]}
    finally:
        with_settings(module, **previous)
    print(f"  {label} {record}")
    return record


def pooling_records(q, k, block_q, block_k, device) -> list[dict]:
    """Every pooling layout and launch size: ms, TB/s, max abs error against the fp32 means."""
    want_q = reference.pool_blocks_reference(q, block_q)
    want_k = reference.pool_blocks_reference(k, block_k)
    read_bytes = (q.numel() + k.numel()) * q.element_size()

    def measure() -> dict:
        got_q, got_k = routing.pool_qk_triton(q, k, block_q, block_k)
        error = max(float((got_q - want_q).abs().max()), float((got_k - want_k).abs().max()))
        ms = graph_ms(lambda: routing.pool_qk_triton(q, k, block_q, block_k), device)
        return {"ms": ms, "tb_per_s": read_bytes / ms / 1e9, "max_abs_error": error, "check": _verdict(error < 1e-4)}

    launches = [{"POOL_LAYOUT": "head_blocks"}]
    launches += [
        {"POOL_LAYOUT": "token_rows", "POOL_TILE": tile, "POOL_WARPS": warps, "POOL_STAGES": stages}
        for tile, warps, stages in [
            *itertools.product((4096, 8192), (4, 8), (None,)),
            *itertools.product((4096, 8192, 16384), (4, 8), (2, 4)),
        ]
    ]
    return [measure_launch(routing, launch, f"pool {block_q}x{block_k}", measure) for launch in launches]


def selection_records(q, k, block_q, block_k, scale, device) -> list[dict]:
    """Composed (scores + select; scores by cuBLAS or by the tiled Triton kernel) and fused (score+select)
    top-k, per launch size."""
    q_mean, k_mean = routing.pool_qk_triton(q, k, block_q, block_k)
    log_counts = key_log_counts(k.shape[2], block_k, device)
    scores = reference.routing_scores(q_mean, k_mean, scale)
    want = reference.select_blocks_reference(scores, density=DENSITY, log_counts=log_counts)
    width = want[0].shape[-1]
    label = f"select {block_q}x{block_k}"

    def composed(score=block_scores.block_scores_triton):
        scores = score(q_mean, k_mean, scale)
        return block_selection.select_blocks_triton(scores, density=DENSITY, log_counts=log_counts)

    def fused():
        indices, counts = block_selection.empty_block_lists(q_mean.shape[:3], width, True, device)
        routing.score_select_launch(q_mean, k_mean, indices, counts, k.shape[2], block_k, scale, width, None, 1)
        return indices, counts

    def measure(path: str, select) -> dict:
        indices, counts = select()
        mismatched_rows = float((indices != want[0]).any(-1).float().mean())
        # in-kernel fp32 dots round differently from cuBLAS: a near-tie may swap, nothing more
        ok = mismatched_rows < 0.01 and bool(torch.equal(counts, want[1]))
        return {"path": path, "ms": graph_ms(select, device), "mismatched_rows": mismatched_rows, "check": _verdict(ok)}

    cublas = functools.partial(composed, reference.routing_scores)
    records = [
        measure_launch(
            block_selection,
            {"SELECT_ROWS": rows, "SELECT_WARPS": {block_selection.MAX_KEY_BLOCKS: warps}},
            label,
            functools.partial(measure, "composed_cublas_scores", cublas),
        )
        for rows, warps in itertools.product((1, 2), (1, 2))
    ]
    records += [
        measure_launch(
            block_scores,
            {"SCORE_TILE": tile, "SCORE_WARPS": warps, "SCORE_PRECISION": precision},
            label,
            functools.partial(measure, "composed_triton_scores", composed),
        )
        for tile, warps, precision in itertools.product((32, 64), (2, 4), ("ieee", "tf32x3"))
    ]
    records += [
        measure_launch(
            routing,
            {"SCORE_LAUNCH": {routing.MAX_ROUTED_KEY_BLOCKS: (rows, warps)}},
            label,
            functools.partial(measure, "fused", fused),
        )
        for rows, warps in ((8, 4), (16, 8))
    ]
    return records


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device("cuda")
    shape = SHAPES[SHAPE]
    q, k, v = random_qkv(shape, torch.bfloat16, device)
    qh, kh = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, S, D) views, as the methods see them
    scale = shape.head_dim**-0.5
    result = {"environment": environment(device), "shape": SHAPE, "density": DENSITY, "blocks": []}
    for block_q, block_k in ((128, 128), (128, 64)):
        print(f"=== blocks {block_q}x{block_k}")
        entry = {"block_size": [block_q, block_k]}
        entry["pooling"] = pooling_records(qh, kh, block_q, block_k, device)
        entry["selection"] = selection_records(qh, kh, block_q, block_k, scale, device)
        run = MethodRun("topk", {"density": DENSITY, "block_size": (block_q, block_k)}, shape.layout(), q, k, v)
        for one_read in (False, True):  # the method's whole routing step, each path
            previous = with_settings(method_base, ONE_READ_ROUTING=one_read)
            ms = entry[f"topk_routing_ms_one_read_{one_read}"] = graph_ms(run.route_and_select, device)
            with_settings(method_base, **previous)
            print(f"  topk routing step, one-read top-k {one_read}: {ms:.4f} ms")
        result["blocks"].append(entry)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
