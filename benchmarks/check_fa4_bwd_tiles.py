"""GPU check: FA4's block-sparse backward on 64-key blocks (sm90 tile configurations) against our Triton one.

    python benchmarks/check_fa4_bwd_tiles.py --out fa4_bwd_tiles.json

FA4 picks its sm90 backward tiles in ``flash_attn.cute.interface._tile_size_bwd_sm90``: 128-key tiles at
head_dim 128, and a block-sparse list's key blocks must be that tile. So ``sla``'s default 128x64 blocks
ran our Triton backward: 2.86 ms of sla's 5.87 ms forward + backward at the Wan-1.3B shape on the H200
(FA4's own backward does the k_high 0.05 lists of 128x128 blocks in 1.42 ms), until this check chose
``fa4.SM90_BACKWARD_TILES``. It swaps in 64-key tile
configurations one at a time (:func:`dit_accel.kernels.fa4.sm90_backward_tiles`), checks each one's
gradients against float64 autograd at a small odd shape and against the Triton backward at the full
shape, with and without a gradient on the LSE (``dlse``, what an LSE merge downstream sends), and times
both on the k_high 0.05 lists of random pooled scores. A configuration that fails to
compile is recorded, not raised; the JSON is rewritten after each one.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch
from check_sla import random_routing

from dit_accel.bench import environment, median_ms
from dit_accel.kernels import fa4, reference
from dit_accel.kernels.block_sparse_attention_bwd import block_sparse_attention_backward_triton

BLOCK = (128, 64)


def candidates() -> dict[str, object]:
    """64-key sm90 backward tiles: the ones the backward runs (``fa4.SM90_BACKWARD_TILES``) and variants."""
    from flash_attn.cute.interface import BwdConfig

    def config(m, stages, sdp_swap, dkv_swap, atom_sdp, atom_dkv, atom_dq, num_wg=2):
        return BwdConfig(m_block_size=m, n_block_size=64, num_stages_Q=stages, num_stages_dO=stages,
                         num_stages_PdS=stages, SdP_swapAB=sdp_swap, dKV_swapAB=dkv_swap, dQ_swapAB=False,
                         AtomLayoutMSdP=atom_sdp, AtomLayoutNdKV=atom_dkv, AtomLayoutMdQ=atom_dq,
                         num_wg=num_wg)  # fmt: skip

    return {
        "m64_s2_swapSdP": config(64, 2, True, False, 1, 1, 1),
        "m64_s2": BwdConfig(**fa4.SM90_BACKWARD_TILES[(64, 128)]),  # what the backward runs
        "m64_s1": config(64, 1, False, False, 1, 1, 1),
        "m64_s2_swapdKV": config(64, 2, True, True, 1, 2, 1),
        "m128_s2": config(128, 2, False, False, 2, 1, 2),
        "m64_s2_1wg": config(64, 2, False, False, 1, 1, 1, num_wg=1),
    }


def problem(batch, heads, seq, dim, device, seed):
    """q, k, v, dout ``(B, S, H, D)`` bf16, the k_high 0.05 lists, FA4's forward output and LSE."""
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v, dout = (torch.randn(batch, seq, heads, dim, generator=gen, device=device).to(torch.bfloat16)
                     for _ in range(4))  # fmt: skip
    nq, nk = math.ceil(seq / BLOCK[0]), math.ceil(seq / BLOCK[1])
    lists = random_routing(batch, heads, nq, nk, BLOCK[1], device, gen).top_blocks(0.05)
    scale = dim**-0.5
    out, lse = fa4.fa4_block_sparse_attention(q, k, v, lists.indices, lists.counts, *BLOCK, scale)
    return q, k, v, dout, lists, out, lse, scale


def fa4_backward(q, k, v, dout, lists, out, lse, scale, dlse=None):
    return fa4.fa4_sparse_backward(dout, dlse, q, k, v, out, lse, lists.indices, lists.counts, *BLOCK, scale)


def triton_backward(q, k, v, dout, lists, out, lse, scale, dlse=None):
    grads = block_sparse_attention_backward_triton(
        *(t.transpose(1, 2) for t in (dout, q, k, v, out)), lse, lists.indices, lists.counts,
        block_m=BLOCK[0], block_n=BLOCK[1], scale=scale, dlse=dlse,
    )  # fmt: skip
    return [g.transpose(1, 2) for g in grads]


def float64_grads(q, k, v, dout, lists, scale, dlse=None):
    """Float64 autograd of the block-sparse reference (``(B, S, H, D)`` in and out), with ``dlse`` on its LSE."""
    leaves = [t.double().transpose(1, 2).requires_grad_() for t in (q, k, v)]
    out, lse = reference.block_sparse_attention_reference(*leaves, lists.indices, lists.counts, block_m=BLOCK[0],
                                                          block_n=BLOCK[1], scale=scale, return_lse=True)  # fmt: skip
    loss = (out * dout.double().transpose(1, 2)).sum()
    if dlse is not None:
        loss = loss + (lse * dlse.double()).sum()
    return [g.transpose(1, 2) for g in torch.autograd.grad(loss, leaves)]


def rel_err(got, want) -> float:
    """Largest max-abs error of the three gradients, each relative to its reference's largest entry."""
    pairs = zip(got, want, strict=True)
    return max(float((g.double() - w.double()).abs().max() / w.double().abs().max()) for g, w in pairs)


def attempt(measure, key: str = "error") -> dict:
    """``measure()``, or its failure under ``key`` (a tile FA4 cannot compile or run is a result)."""
    try:
        return measure()
    except Exception as error:
        text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(error).__name__}: {error}")  # no terminal colours
        return {key: text[:600]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()
    device = torch.device("cuda")
    small = problem(1, 3, 1000, 128, device, seed=1)
    full = problem(1, 12, 32760, 128, device, seed=0)
    gen = torch.Generator(device=device).manual_seed(2)
    small_dlse, full_dlse = (torch.randn(x[-2].shape, generator=gen, device=device) for x in (small, full))
    small_want = float64_grads(*small[:5], small[-1])
    small_want_dlse = float64_grads(*small[:5], small[-1], dlse=small_dlse)
    full_triton = triton_backward(*full)
    full_triton_dlse = triton_backward(*full, dlse=full_dlse)
    result = {"environment": environment(device), "shape": [1, 32760, 12, 128], "block_size": list(BLOCK),
              "triton_backward_ms": median_ms(lambda: triton_backward(*full), device), "configs": {}}  # fmt: skip
    result["triton_small_rel_err_vs_float64"] = rel_err(triton_backward(*small), small_want)
    result["triton_small_rel_err_vs_float64_dlse"] = rel_err(triton_backward(*small, dlse=small_dlse), small_want_dlse)
    print(f"triton backward {result['triton_backward_ms']:.3f} ms", flush=True)
    for name, config in candidates().items():
        with fa4.sm90_backward_tiles(config):
            record = attempt(lambda: {"small_rel_err_vs_float64": rel_err(fa4_backward(*small), small_want),
                                      "full_rel_err_vs_triton": rel_err(fa4_backward(*full), full_triton),
                                      "ms": median_ms(lambda: fa4_backward(*full), device)})  # fmt: skip
            if "error" not in record:
                record |= attempt(lambda: {
                    "small_rel_err_vs_float64_dlse": rel_err(fa4_backward(*small, dlse=small_dlse), small_want_dlse),
                    "full_rel_err_vs_triton_dlse": rel_err(fa4_backward(*full, dlse=full_dlse), full_triton_dlse),
                }, key="dlse_error")  # fmt: skip
        result["configs"][name] = record
        print(f"{name}: {record}", flush=True)
        args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
