"""PISA's approximate tail: each query row over the pseudo-tokens of its skipped key blocks (Triton).

One program takes ``BLOCK_M`` rows of one query block of one (batch, head). It loads the rows
(gathered through ``q_rows``), then streams every pseudo-token — mean key ``k̄_j``, logit bias
``log n_j``, mean value ``v̄_j`` of ``TOKENS_PER_BLOCK`` consecutive parts of each key block — in
chunks of ``BLOCK_N``, masking the parts of the blocks the query block computes exactly by a
``(query block, key block)`` byte map built from the lists once per call (:mod:`.block_map`): each
chunk's loads depend on no earlier chunk, so they pipeline. Walking the list
alongside the chunks made every chunk wait on the previous one's list position (H200, Wan-1.3B shape,
128x128 blocks, tail merged with the exact part: 0.41 ms; with the map and the exact rows loaded
first, 0.34 ms at the same launch).
Online softmax in fp32 with exp2 accumulates ``Σ n_j e^{s q·k̄_j} v̄_j``, ``Σ n_j e^{s q·k̄_j}``
and, for the first-order term, ``Σ e^{s q·k̄_j}``, all under one running max (so a pseudo-logit
above every exact logit is handled by the LSE merge with the exact part). The first-order term
``Σ e^{s q·k̄_j} · s qᵀH̄`` is one ``tl.dot`` of the query tile with ``H̄`` at the end. Optionally the
exact part's rows are merged in by LSE before the store (one pass instead of a tail write plus a
merge kernel reading both parts).

Reference: :func:`dit_accel.kernels.pisa_reference.pisa_tail_reference`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .block_map import block_map_triton

LOG2E = 1.4426950408889634


@triton.jit
def _exact_rows(ExactOut, ExactLse, b, h, rows, row_ok, offs_d, stride_eb, stride_eh, stride_es, stride_elb,
                stride_elh, stride_els):  # fmt: skip
    """The exact part's LSE (fp32) and output rows of one tile, for the merge."""
    exact_lse = tl.load(ExactLse + b * stride_elb + h * stride_elh + rows * stride_els, mask=row_ok,
                        other=float("-inf")).to(tl.float32)  # fmt: skip
    exact = tl.load(ExactOut + b * stride_eb + h * stride_eh + rows[:, None] * stride_es + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)  # fmt: skip
    return exact_lse, exact


@triton.jit
def _pisa_tail_fwd(
    Q, KMean, VMean, HBar, LogCounts, QRows, Chosen, Out, Lse, ExactOut, ExactLse,
    stride_qb, stride_qh, stride_qs,
    stride_ob, stride_oh, stride_os,
    stride_eb, stride_eh, stride_es,
    stride_elb, stride_elh, stride_els,
    H, Sq, Sq_total, num_q_blocks, num_blocks, num_tokens, qk_scale, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILES_PER_QBLOCK: tl.constexpr,
    TOKENS_PER_BLOCK: tl.constexpr, HAS_QROWS: tl.constexpr, FIRST_ORDER: tl.constexpr, MERGE: tl.constexpr,
    PREFETCH_EXACT: tl.constexpr,
):  # fmt: skip
    """Grid (row tiles, B * H). k̄, v̄ ``(B*H, NT, D)`` (``num_tokens`` pseudo-tokens), H̄ ``(B*H, D, D)``
    contiguous, in q's dtype; ``Chosen`` ``(B*H, NQ, NK)`` int8 contiguous, nonzero for the key blocks
    computed exactly (pseudo-token ``t`` belongs to key block ``t // TOKENS_PER_BLOCK``).
    With ``MERGE`` the exact part's rows (``ExactOut``, ``ExactLse``) are merged in by LSE before the
    store, so the tail's own output never goes to memory."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Sq
    if HAS_QROWS:
        rows = tl.load(QRows + offs_m, mask=row_ok, other=0).to(tl.int64)
    else:
        rows = offs_m.to(tl.int64)
    q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qs + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)  # fmt: skip

    if MERGE and PREFETCH_EXACT:  # issued first: in flight while the tail is computed, held in registers
        exact_lse, exact = _exact_rows(ExactOut, ExactLse, b, h, rows, row_ok, offs_d, stride_eb, stride_eh, stride_es,
                                       stride_elb, stride_elh, stride_els)  # fmt: skip

    q_block = pid_m // TILES_PER_QBLOCK
    chosen_base = Chosen + (pid_bh.to(tl.int64) * num_q_blocks + q_block) * num_blocks
    mean_offsets = pid_bh.to(tl.int64) * num_tokens * HEAD_DIM

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    w_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start in range(0, num_tokens, BLOCK_N):
        cols = start + offs_n
        col_ok = cols < num_tokens
        chosen = tl.load(chosen_base + cols // TOKENS_PER_BLOCK, mask=col_ok, other=1) != 0
        log_n = tl.load(LogCounts + cols, mask=col_ok, other=0.0)
        col_bias = tl.where(col_ok & ~chosen, log_n * 1.4426950408889634, float("-inf"))
        means = mean_offsets + cols[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :]
        k_mean = tl.load(KMean + means, mask=col_ok[:, None], other=0.0)
        v_mean = tl.load(VMean + means, mask=col_ok[:, None], other=0.0)
        qk = tl.dot(q, tl.trans(k_mean)) * qk_scale + col_bias[None, :]
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if FIRST_ORDER:
            w_i = w_i * alpha + tl.sum(p * tl.math.exp2(-log_n * 1.4426950408889634)[None, :], 1)
        acc = tl.dot(p.to(v_mean.dtype), v_mean, acc * alpha[:, None])
        m_i = m_new

    if FIRST_ORDER:
        h_bar = tl.load(HBar + pid_bh.to(tl.int64) * HEAD_DIM * HEAD_DIM + offs_d[:, None] * HEAD_DIM + offs_d[None, :])
        acc += (w_i * scale)[:, None] * tl.dot(q, h_bar)
    empty = l_i == 0.0
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    if MERGE:
        if not PREFETCH_EXACT:
            exact_lse, exact = _exact_rows(ExactOut, ExactLse, b, h, rows, row_ok, offs_d, stride_eb, stride_eh,
                                           stride_es, stride_elb, stride_elh, stride_els)  # fmt: skip
        m = tl.maximum(exact_lse, lse)
        none = m == float("-inf")
        m_safe = tl.where(none, 0.0, m)
        w_exact = tl.exp(exact_lse - m_safe)
        w_tail = tl.exp(lse - m_safe)
        total = tl.where(none, 1.0, w_exact + w_tail)
        exact = tl.where((w_exact > 0.0)[:, None], exact.to(tl.float32), 0.0)  # rows without exact keys: unwritten
        o = exact * (w_exact / total)[:, None] + o * (w_tail / total)[:, None]
        lse = tl.where(none, float("-inf"), m_safe + tl.log(total))
    tl.store(Out + b * stride_ob + h * stride_oh + rows[:, None] * stride_os + offs_d[None, :],
             o.to(Out.dtype.element_ty), mask=row_ok[:, None])  # fmt: skip
    tl.store(Lse + pid_bh.to(tl.int64) * Sq_total + rows, lse, mask=row_ok)


@dataclass(frozen=True)
class TailConfig:
    """Launch configuration of the tail kernel (swept on the GPU by ``benchmarks/check_pisa.py``).

    Defaults: the H200 sweep's fastest for the tail merged with the exact part (Wan-1.3B shape,
    128x128 blocks, order 1: 0.318 ms, against 0.368 ms for 64 x 32 and 0.338 ms for 128 x 64 on 8
    warps; ``benchmarks/results/kernel/methods_h200_s23/check_pisa_parts_128x128_tail.json``).

    Attributes:
        block_m: query rows per program (at most the query block; the query block must be a multiple).
        block_n: pseudo-tokens per chunk.
        num_warps, num_stages: Triton launch parameters.
        prefetch_exact: with a merge, load the exact part's rows before the pseudo-tokens (their
            latency hidden, but held in registers through the loop) rather than after them.
    """

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    prefetch_exact: bool = True


def pisa_tail_triton(
    q: torch.Tensor,
    k_mean: torch.Tensor,
    v_mean: torch.Tensor,
    h_bar: torch.Tensor | None,
    log_counts: torch.Tensor,
    indices: torch.Tensor,
    counts: torch.Tensor,
    block_q: int,
    scale: float,
    q_rows: torch.Tensor | None = None,
    config: TailConfig | None = None,
    merge_into: tuple[torch.Tensor, torch.Tensor] | None = None,
    tokens_per_block: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` as :func:`~dit_accel.kernels.pisa_reference.pisa_tail_reference`.

    q ``(B, H, S, D)`` with a contiguous last dimension, D a power of two >= 16; out has q's shape
    and dtype (only the logical rows written), lse fp32 ``(B, H, S)``. The pseudo-token means and
    ``H̄`` are cast to q's dtype for the tensor-core products; accumulation is fp32. ``merge_into``
    (the exact part's ``(out, lse)``, shaped like q and ``(B, H, S)``) returns the LSE merge of both
    instead (as ``merge_attention``), in the exact output's dtype. ``tokens_per_block`` pseudo-tokens
    stand for each key block of the lists (``k_mean``'s rows ``j * tokens_per_block + t``).
    """
    if q.stride(-1) != 1:
        raise ValueError("q needs a contiguous last (head) dimension")
    config = config or TailConfig()
    b, h, s_total, d = q.shape
    seq = s_total if q_rows is None else q_rows.numel()
    block_m = min(config.block_m, block_q)
    if block_q % block_m:
        raise ValueError(f"the query block ({block_q}) must be a multiple of the tail's block_m ({block_m})")
    num_tokens = k_mean.shape[2]
    num_blocks = math.ceil(num_tokens / tokens_per_block)
    first_order = h_bar is not None and h_bar.numel() > 0
    k_mean = k_mean.to(q.dtype).contiguous()
    v_mean = v_mean.to(q.dtype).contiguous()
    h_bar = h_bar.to(q.dtype).contiguous() if first_order else k_mean
    chosen = block_map_triton(indices, counts, num_blocks)
    exact_out, exact_lse = merge_into if merge_into is not None else (q, counts.new_empty(0, 0, 0))
    if exact_out.stride(-1) != 1:
        raise ValueError("the exact output needs a contiguous last (head) dimension")
    out = torch.empty_like(exact_out if merge_into is not None else q)
    lse = torch.empty(b, h, s_total, device=q.device, dtype=torch.float32)
    grid = (math.ceil(seq / block_m), b * h)
    _pisa_tail_fwd[grid](
        q, k_mean, v_mean, h_bar, log_counts.float().contiguous(), q_rows if q_rows is not None else counts,
        chosen, out, lse, exact_out, exact_lse,
        q.stride(0), q.stride(1), q.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        exact_out.stride(0), exact_out.stride(1), exact_out.stride(2),
        exact_lse.stride(0), exact_lse.stride(1), exact_lse.stride(2),
        h, seq, s_total, chosen.shape[2], num_blocks, num_tokens, scale * LOG2E, scale,
        HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=config.block_n, TILES_PER_QBLOCK=block_q // block_m,
        TOKENS_PER_BLOCK=tokens_per_block,
        HAS_QROWS=q_rows is not None, FIRST_ORDER=first_order, MERGE=merge_into is not None,
        PREFETCH_EXACT=config.prefetch_exact,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return out, lse
