"""PSA's KV pyramid in one pass (Triton): per key block, K and V mean-pooled 2x, 4x and 8x.

Level ``h`` (1..4) of key block ``j`` holds ``block_k / 2^(h-1)`` keys; pooled key ``g`` averages
the tokens ``[j*block_k + g*p, j*block_k + (g+1)*p)``, ``p = 2^(h-1)``, that are real (the last
block may be ragged: its pooled keys then average fewer tokens, or none, and attention adds
``log(count)`` to their logits, see :mod:`.pyramid_attention`). Level 1 is K/V itself; levels 2-4
go to one tensor ``(B, H, 7/8 * NK * block_k, D)``, level ``h`` at rows
``level_offset(h) + j * block_k / 2^(h-1)``. One program reads one key block once and writes
every level, each as one product with a 0/1 pooling matrix.

The same pass can measure the block's key self-similarity for PSA's pooling cap: for level ``h``
the mean cosine of the key pairs ``2^(h-1)`` apart inside the block (1.0 when the block has none).

Reference: :func:`.pyramid_reference.pyramid_reference`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .pyramid_reference import check_block, empty_pyramid, level_rows


@triton.jit
def row_mask(row_ok, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """``(rows, BLOCK_D)`` load mask: the rows in ``row_ok``; the head-dim test is only emitted when
    ``BLOCK_D`` pads ``HEAD_DIM`` (a constant-true column mask keeps loads vectorised)."""
    if HEAD_DIM == BLOCK_D:
        return tl.broadcast_to(row_ok[:, None], (row_ok.shape[0], BLOCK_D))
    return row_ok[:, None] & (offs_d < HEAD_DIM)[None, :]


@triton.jit
def _pool_level(x, BK_P: tl.constexpr, POOL: tl.constexpr, ROWS_P: tl.constexpr, PRECISION: tl.constexpr):
    """Sums of ``POOL`` consecutive rows of ``x`` ``(BK_P, D)`` as one tensor-core product with a 0/1
    pooling matrix: ``(ROWS_P, D)`` fp32, rows past ``BK_P // POOL`` zero. The products by 1.0 are
    exact and accumulate in fp32, and no register reshuffle is needed (a reshape-and-sum per level
    cost about 4x the memory time)."""
    g = tl.arange(0, ROWS_P)
    t = tl.arange(0, BK_P)
    pool = (t[None, :] // POOL == g[:, None]).to(x.dtype)
    return tl.dot(pool, x, input_precision=PRECISION)


@triton.jit
def _pool_and_store(pk, pv, first_row, stride_s, k, v, start, key_len, offs_d, d_ok, BLOCK_K: tl.constexpr,
                    BK_P: tl.constexpr, POOL: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """Store the means of one level: ``BLOCK_K // POOL`` pooled keys of ``POOL`` tokens from token
    ``start`` (sums over at least 16 rows, the tensor cores' minimum; the padding never stored)."""
    ROWS: tl.constexpr = BLOCK_K // POOL
    ROWS_P: tl.constexpr = 16 if ROWS < 16 else ROWS
    k_sum = _pool_level(k, BK_P, POOL, ROWS_P, PRECISION)
    v_sum = _pool_level(v, BK_P, POOL, ROWS_P, PRECISION)
    g = tl.arange(0, ROWS_P)
    count = tl.minimum(tl.maximum(key_len - (start + g * POOL), 0), POOL).to(tl.float32)
    inv = 1.0 / tl.maximum(count, 1.0)
    offsets = (first_row + g)[:, None].to(tl.int64) * stride_s + offs_d[None, :]
    mask = (g < ROWS)[:, None] & d_ok[None, :]
    tl.store(pk + offsets, (k_sum * inv[:, None]).to(pk.dtype.element_ty), mask=mask)
    tl.store(pv + offsets, (v_sum * inv[:, None]).to(pv.dtype.element_ty), mask=mask)


@triton.jit
def _pyramid_fwd(
    K, V, PK, PV, Sim,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_pb, stride_ph, stride_ps,
    H, key_len, total_rows, D,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, WITH_SIM: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (key blocks, B * H); ``BK_P = max(16, BLOCK_K)`` rows loaded (the tensor cores' minimum)."""
    BK_P: tl.constexpr = 16 if BLOCK_K < 16 else BLOCK_K
    j = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    start = j * BLOCK_K
    offs = tl.arange(0, BK_P)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    row_ok = (offs < BLOCK_K) & (start + offs < key_len)
    rows = (start + offs).to(tl.int64)
    k_base = K + b * stride_kb + h * stride_kh
    mask = row_ok[:, None] & d_ok[None, :]
    k = tl.load(k_base + rows[:, None] * stride_ks + offs_d[None, :], mask=mask, other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + rows[:, None] * stride_vs + offs_d[None, :], mask=mask, other=0.0)

    pk = PK + b * stride_pb + h * stride_ph
    pv = PV + b * stride_pb + h * stride_ph
    for lvl in tl.static_range(1, 4):
        first = total_rows - (total_rows >> (lvl - 1)) + j * (BLOCK_K >> lvl)
        _pool_and_store(pk, pv, first, stride_ps, k, v, start, key_len, offs_d, d_ok, BLOCK_K, BK_P, 2 << (lvl - 1),
                        PRECISION)  # fmt: skip

    if WITH_SIM:
        k = k.to(tl.float32)
        norm = tl.sqrt(tl.sum(k * k, axis=1))
        n_real = tl.minimum(key_len - start, BLOCK_K)
        for lvl in tl.static_range(1, 4):
            gap = 1 << lvl
            pair_ok = offs + gap < n_real
            other = tl.load(
                k_base + (rows + gap)[:, None] * stride_ks + offs_d[None, :],
                mask=pair_ok[:, None] & d_ok[None, :], other=0.0,
            ).to(tl.float32)  # fmt: skip
            cos = tl.sum(k * other, axis=1) / tl.maximum(norm * tl.sqrt(tl.sum(other * other, axis=1)), 1e-12)
            pairs = tl.sum(pair_ok.to(tl.float32), axis=0)
            mean = tl.sum(tl.where(pair_ok, cos, 0.0), axis=0) / tl.maximum(pairs, 1.0)
            mean = tl.where(pairs > 0, mean, 1.0)
            tl.store(Sim + pid_bh.to(tl.int64) * (tl.num_programs(0) * 3) + j * 3 + (lvl - 1), mean)


def pyramid_triton(
    k: torch.Tensor, v: torch.Tensor, block_k: int, key_len: int, with_sim: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pooled_k, pooled_v, sim)``: levels 2..4 in k's dtype, and ``sim`` fp32 ``(B, H, NK, 3)``
    (empty without ``with_sim``). k, v are ``(B, H, rows, D)`` with ``rows >= key_len``, any strides
    with a contiguous last dimension; rows past ``key_len`` are never read."""
    check_block(block_k)
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("k and v need a contiguous last (head) dimension")
    b, h, _, d = k.shape
    pk, pv, sim = empty_pyramid(k, block_k, key_len, with_sim)
    nk = math.ceil(key_len / block_k)
    _pyramid_fwd[(nk, b * h)](
        k, v, pk, pv, sim if with_sim else pk,
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        pk.stride(0), pk.stride(1), pk.stride(2),
        h, key_len, level_rows(nk, block_k), d,
        BLOCK_K=block_k, BLOCK_D=max(16, triton.next_power_of_2(d)), WITH_SIM=with_sim,
        PRECISION="ieee" if k.dtype == torch.float32 else "tf32",
        num_warps=4 if block_k * d <= 64 * 128 else 8,  # 4 warps spill at 128-key blocks (tools.hopper_compile)
    )  # fmt: skip
    return pk, pv, sim
