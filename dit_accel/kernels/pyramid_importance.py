"""PSA's block importance from sampled tokens, fused in one kernel (Triton).

For query block ``i`` and key block ``j``, ``samples`` tokens of each are taken at the centres of
equal strata of the block's real tokens (token ``(2s + 1) * n // (2 * samples)`` of a block of
``n``, so a ragged last block is sampled over what it holds). The importance is
``exp(m_ij - max_j m_ij)`` with ``m_ij`` the largest scaled logit between the sampled queries of
``i`` and the sampled keys of ``j``. One program serves a group of query blocks: it scores every key
block in chunks (one ``tl.dot`` per chunk), stores the raw maxima, then rewrites them
exponentiated against the row maxima it kept on the way.

Reference: :func:`.pyramid_reference.importance_reference`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .pyramid_reference import MAX_SAMPLES, check_samples

TILE = MAX_SAMPLES  # sampled rows (and columns) per tl.dot


@triton.jit
def _sample_rows(blocks, length, SIZE: tl.constexpr, SAMPLES: tl.constexpr, GROUP: tl.constexpr):
    """Logical rows of the sampled tokens of ``blocks`` (``(GROUP,)`` -> ``(GROUP * SAMPLES,)``) and their validity."""
    s = tl.arange(0, SAMPLES)
    n = tl.minimum(tl.maximum(length - blocks * SIZE, 0), SIZE)
    pos = ((2 * s[None, :] + 1) * n[:, None]) // (2 * SAMPLES)
    rows = blocks[:, None] * SIZE + pos
    ok = (n[:, None] > 0) & (s[None, :] >= 0)
    return tl.reshape(rows, (GROUP * SAMPLES,)), tl.reshape(ok, (GROUP * SAMPLES,))


@triton.jit
def _importance_fwd(
    Q, K, QRows, Out,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_ob, stride_oh, stride_oq,
    H, Sq, key_len, NQ, NK, scale, D,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, SAMPLES: tl.constexpr,
    GROUP: tl.constexpr, BLOCK_D: tl.constexpr, HAS_QROWS: tl.constexpr,
):  # fmt: skip
    """Grid (query-block groups, B * H); ``GROUP * SAMPLES`` sampled rows per dot side."""
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q_blocks = pid * GROUP + tl.arange(0, GROUP)
    q_logical, q_ok = _sample_rows(q_blocks, Sq, BLOCK_Q, SAMPLES, GROUP)
    if HAS_QROWS:
        q_phys = tl.load(QRows + q_logical, mask=q_ok, other=0).to(tl.int64)
    else:
        q_phys = q_logical.to(tl.int64)
    q_ptr = Q + b * stride_qb + h * stride_qh + q_phys[:, None] * stride_qs + offs_d[None, :]
    qs = tl.load(q_ptr, mask=q_ok[:, None] & d_ok[None, :], other=0.0)
    out_base = Out + b * stride_ob + h * stride_oh + q_blocks[:, None].to(tl.int64) * stride_oq
    q_block_ok = q_blocks < NQ

    row_max = tl.full([GROUP], float("-inf"), dtype=tl.float32)
    for j0 in range(0, NK, GROUP):
        k_blocks = j0 + tl.arange(0, GROUP)
        k_logical, k_ok = _sample_rows(k_blocks, key_len, BLOCK_K, SAMPLES, GROUP)
        k_ptr = K + b * stride_kb + h * stride_kh + k_logical[:, None].to(tl.int64) * stride_ks + offs_d[None, :]
        ks = tl.load(k_ptr, mask=k_ok[:, None] & d_ok[None, :], other=0.0)
        logits = tl.dot(qs, tl.trans(ks)) * scale
        logits = tl.where(q_ok[:, None] & k_ok[None, :], logits, float("-inf"))
        per_pair = tl.reshape(logits, (GROUP, SAMPLES, GROUP, SAMPLES))
        best = tl.max(tl.max(per_pair, axis=3), axis=1)
        row_max = tl.maximum(row_max, tl.max(best, axis=1))
        tl.store(out_base + k_blocks[None, :], best, mask=q_block_ok[:, None] & (k_blocks < NK)[None, :])
    tl.debug_barrier()  # the raw maxima above are read back by other threads of this program
    row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    for j0 in range(0, NK, GROUP):
        k_blocks = j0 + tl.arange(0, GROUP)
        mask = q_block_ok[:, None] & (k_blocks < NK)[None, :]
        raw = tl.load(out_base + k_blocks[None, :], mask=mask, other=0.0)
        tl.store(out_base + k_blocks[None, :], tl.exp(raw - row_max[:, None]), mask=mask)


def importance_triton(
    q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int, key_len: int, scale: float, samples: int,
    q_rows: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """fp32 importance ``(B, H, NQ, NK)``; q ``(B, H, S, D)`` with logical rows ``q_rows`` (or all of
    q), k ``(B, H, rows >= key_len, D)``, both with a contiguous last dimension."""
    check_samples(samples)
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise ValueError("q and k need a contiguous last (head) dimension")
    b, h, _, d = q.shape
    seq_q = q.shape[2] if q_rows is None else q_rows.numel()
    nq, nk = math.ceil(seq_q / block_q), math.ceil(key_len / block_k)
    out = torch.empty(b, h, nq, nk, device=q.device, dtype=torch.float32)
    group = TILE // samples
    _importance_fwd[(triton.cdiv(nq, group), b * h)](
        q, k, q_rows if q_rows is not None else out, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        h, seq_q, key_len, nq, nk, scale, d,
        BLOCK_Q=block_q, BLOCK_K=block_k, SAMPLES=samples, GROUP=group,
        BLOCK_D=max(16, triton.next_power_of_2(d)), HAS_QROWS=q_rows is not None,
        num_warps=4,
    )  # fmt: skip
    return out
