"""PISA's per-key-block statistics in one read of K and V (Triton).

For each key block ``j``: the mean value ``v̄_j``; with ``WITH_H`` the block's first-order matrix
``H_j = Σ_{t∈j} (k_t − k̄_j) v_tᵀ`` (one ``tl.dot`` of the centred key tile with the value tile),
summed over the blocks a program walks into one ``D×D`` partial per program (the launcher sums the
partials: no per-block ``D×D`` is ever stored); with ``WITH_NORMS`` ``‖H_j‖_F`` (PISA's routing bias).
Centring each block before the product avoids the cancellation of ``KᵀV − Σ n_j k̄_j v̄_jᵀ`` when
keys share a large mean.

Reference: :func:`dit_accel.kernels.pisa_reference.pisa_block_stats_reference`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

MAX_FP32_SUB_K = 64  # keys per sub-tile when the H product runs on fp32 operands (shared memory)


@dataclass(frozen=True)
class StatsConfig:
    """Launch configuration of the statistics kernel (swept on the GPU by ``benchmarks/check_pisa.py``).

    Defaults: the H200 sweep's fastest (Wan-1.3B shape, 128x128 blocks, with ``H̄``): 0.096 ms, against
    0.299 ms for the earlier fp32 product on 64-key sub-tiles, 512 programs, 8 warps
    (``benchmarks/results/kernel/methods_h200_s23/check_pisa_parts_128x128.json``).

    Attributes:
        programs: programs aimed for per launch: enough to fill an H200 (132 SMs) a few times while
            keeping the ``D×D`` partials of H few (each program writes one).
        sub_k: most keys per sub-tile. Two fp32 128 x 128 tiles (K and V of a 128-key block) need 263 KB
            of shared memory, over the H200's 227 KB, so fp32 operands take at most
            :data:`MAX_FP32_SUB_K`; 16-bit operands (``input_dot``) need half.
        input_dot: the centred keys are rounded to the inputs' dtype for the ``H`` product (16-bit
            inputs: tensor cores at full rate, fp32 accumulation, relative error ~2^-9 per term instead
            of TF32's ~2^-11); False: fp32 operands.
        num_warps, num_stages: Triton launch parameters (heads narrower than 128 run on 4 warps).
    """

    programs: int = 256
    sub_k: int = 128
    input_dot: bool = True
    num_warps: int = 4
    num_stages: int = 2


@triton.jit
def _pisa_block_stats(
    K, V, KMean, VMean, HPart, HNorm,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_mb, stride_mh, stride_mn,
    H, key_len, num_blocks, blocks_per_program, num_programs,
    HEAD_DIM: tl.constexpr, BLOCK_K: tl.constexpr, SUB_K: tl.constexpr, WITH_H: tl.constexpr,
    WITH_NORMS: tl.constexpr, INPUT_DOT: tl.constexpr,
):  # fmt: skip
    """Grid (programs per head, B * H); each program walks ``blocks_per_program`` key blocks."""
    pid_g = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_t = tl.arange(0, SUB_K)
    offs_d = tl.arange(0, HEAD_DIM)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    h_acc = tl.zeros([HEAD_DIM, HEAD_DIM], dtype=tl.float32)
    first = pid_g * blocks_per_program
    last = tl.minimum(first + blocks_per_program, num_blocks)
    for j in range(first, last):
        n = tl.minimum(key_len - j * BLOCK_K, BLOCK_K).to(tl.float32)
        k_mean = tl.load(KMean + b * stride_mb + h * stride_mh + j * stride_mn + offs_d)
        v_sum = tl.zeros([HEAD_DIM], dtype=tl.float32)
        h_j = tl.zeros([HEAD_DIM, HEAD_DIM], dtype=tl.float32)
        for t0 in tl.static_range(0, BLOCK_K, SUB_K):  # sub-tiles: a 128-key fp32 tile pair exceeds shared memory
            rows = j * BLOCK_K + t0 + offs_t
            row_ok = (rows < key_len) & (t0 + offs_t < BLOCK_K)
            rows64 = rows.to(tl.int64)
            v_in = tl.load(v_base + rows64[:, None] * stride_vs + offs_d[None, :], mask=row_ok[:, None], other=0.0)
            v_sum += tl.sum(v_in.to(tl.float32), 0)
            v = v_in if INPUT_DOT else v_in.to(tl.float32)
            if WITH_H or WITH_NORMS:
                k = tl.load(k_base + rows64[:, None] * stride_ks + offs_d[None, :], mask=row_ok[:, None], other=0.0)
                centred = tl.where(row_ok[:, None], k.to(tl.float32) - k_mean[None, :], 0.0)
                if INPUT_DOT:
                    centred = centred.to(v_in.dtype)
                if WITH_NORMS:
                    h_j = tl.dot(tl.trans(centred), v, h_j)
                else:  # accumulate in the dot (no separate D x D product in registers)
                    h_acc = tl.dot(tl.trans(centred), v, h_acc)
        tl.store(VMean + pid_bh.to(tl.int64) * num_blocks * HEAD_DIM + j * HEAD_DIM + offs_d, v_sum / n)
        if WITH_NORMS:
            tl.store(HNorm + pid_bh.to(tl.int64) * num_blocks + j, tl.sqrt(tl.sum(tl.sum(h_j * h_j, 1), 0)))
            if WITH_H:
                h_acc += h_j
    if WITH_H:
        part = HPart + (pid_bh.to(tl.int64) * num_programs + pid_g) * HEAD_DIM * HEAD_DIM
        tl.store(part + offs_d[:, None] * HEAD_DIM + offs_d[None, :], h_acc)


def pisa_block_stats_triton(
    k: torch.Tensor,
    v: torch.Tensor,
    k_mean: torch.Tensor,
    block_k: int,
    key_len: int,
    with_h: bool,
    with_norms: bool,
    config: StatsConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(v_mean, h_bar, h_norm)`` as :func:`~dit_accel.kernels.pisa_reference.pisa_block_stats_reference`.

    k, v ``(B, H, S, D)`` with a contiguous last dimension (any other strides); ``k_mean`` fp32
    ``(B, H, NK, D)``. D a power of two >= 16, ``block_k`` >= 16.
    """
    config = config or StatsConfig()
    dot16 = config.input_dot and k.dtype == v.dtype and k.dtype in (torch.float16, torch.bfloat16)
    sub_k = config.sub_k if dot16 else min(config.sub_k, MAX_FP32_SUB_K)
    if k.stride(-1) != 1 or v.stride(-1) != 1 or k_mean.stride(-1) != 1:
        raise ValueError("k, v and k_mean need a contiguous last (head) dimension")
    b, h, _, d = k.shape
    num_blocks = math.ceil(key_len / block_k)
    per_program = max(1, math.ceil(num_blocks * b * h / config.programs)) if with_h else 1
    programs = math.ceil(num_blocks / per_program)
    device = k.device
    v_mean = torch.empty(b, h, num_blocks, d, device=device, dtype=torch.float32)
    partials = torch.empty(b, h, programs, d, d, device=device, dtype=torch.float32) if with_h else v_mean
    h_norm = torch.empty(b, h, num_blocks, device=device, dtype=torch.float32) if with_norms else v_mean
    k_mean = k_mean.float()
    _pisa_block_stats[(programs, b * h)](
        k, v, k_mean, v_mean, partials, h_norm,
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        k_mean.stride(0), k_mean.stride(1), k_mean.stride(2),
        h, key_len, num_blocks, per_program, programs,
        HEAD_DIM=d, BLOCK_K=block_k, SUB_K=min(block_k, sub_k), WITH_H=with_h, WITH_NORMS=with_norms,
        INPUT_DOT=dot16, num_warps=config.num_warps if d >= 128 else 4,
        num_stages=config.num_stages,
    )  # fmt: skip
    h_bar = partials.sum(dim=2) / num_blocks if with_h else v_mean.new_empty(0)
    return v_mean, h_bar, h_norm if with_norms else v_mean.new_empty(0)
