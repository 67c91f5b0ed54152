"""`benchmarks/check_fa4_bwd_tiles.py` on the CPU: its Triton and float64 gradients agree, (B, S, H, D) in and out."""

from __future__ import annotations

import math

import torch
from benchmark_scripts import load_script

from dit_accel.kernels.block_sparse_attention import block_sparse_attention_triton

tiles_check = load_script("check_fa4_bwd_tiles")
check_sla = load_script("check_sla")


def test_the_reference_gradients_of_the_tile_check_match_the_triton_backward() -> None:
    gen = torch.Generator().manual_seed(0)
    batch, seq, heads, dim = 1, 300, 2, 32
    q, k, v, dout = (torch.randn(batch, seq, heads, dim, generator=gen) for _ in range(4))
    block_q, block_k = tiles_check.BLOCK
    routing = check_sla.random_routing(batch, heads, math.ceil(seq / block_q), math.ceil(seq / block_k), block_k,
                                       torch.device("cpu"), gen)  # fmt: skip
    lists = routing.top_blocks(0.3)
    scale = dim**-0.5
    out, lse = block_sparse_attention_triton(*(t.transpose(1, 2) for t in (q, k, v)), lists.indices, lists.counts,
                                             block_m=block_q, block_n=block_k, return_lse=True)  # fmt: skip
    got = tiles_check.triton_backward(q, k, v, dout, lists, out.transpose(1, 2), lse, scale)
    want = tiles_check.float64_grads(q, k, v, dout, lists, scale)
    assert all(g.shape == (batch, seq, heads, dim) for g in got)
    assert tiles_check.rel_err(got, want) < 1e-5
    assert tiles_check.rel_err([g * 1.01 for g in got], want) > 5e-3, "the error measure sees a 1% change"
    dlse = torch.randn(lse.shape, generator=gen)
    got = tiles_check.triton_backward(q, k, v, dout, lists, out.transpose(1, 2), lse, scale, dlse=dlse)
    want_dlse = tiles_check.float64_grads(q, k, v, dout, lists, scale, dlse=dlse)
    assert tiles_check.rel_err(got, want_dlse) < 1e-5 and tiles_check.rel_err(want, want_dlse) > 1e-2


def test_a_failing_measurement_is_recorded_without_terminal_colours() -> None:
    def refused() -> dict:
        raise RuntimeError("\x1b[91m\x1b[1merror[CUDA_LAUNCH_INVALID_CONFIG]:\x1b[0m launch failed")

    assert tiles_check.attempt(refused, key="dlse_error") == {
        "dlse_error": "RuntimeError: error[CUDA_LAUNCH_INVALID_CONFIG]: launch failed"
    }
    assert tiles_check.attempt(lambda: {"ms": 1.0}) == {"ms": 1.0}
