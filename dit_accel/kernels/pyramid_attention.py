"""PSA's multi-level attention (Triton): each query block walks its (key block, level) entries.

One program computes one query block of one (batch, head) with an online softmax (fp32, exp2 with
the scale folded in): first the extra keys every query sees (text tokens, masked per sample), then
the entries of each level. The keys of level ``h`` are the block's tokens (h = 1) or its pooled
keys (:mod:`.pyramid`), each with the logit bias ``log(count)``: ``(h-1) ln 2`` for a full pooled
key, the log of the real tokens it averages in a ragged last block, ``-inf`` for one averaging none.

A level's entries are walked as one flat run of ``count * keys_per_entry`` keys cut into tiles of
``tile`` keys: an entry with more keys than a tile spans several tiles, and entries smaller than a
tile share one (each column loads its own entry's row). So every level costs its own keys, for any
tile size, and no column ever reads a key of an entry not listed (the official kernel's defect when
a pooled block is smaller than half a tile). Returns ``(out, lse)``, lse natural log fp32.

Reference: :func:`.pyramid_reference.pyramid_attention_reference`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .block_sparse_attention import _online_softmax_step, dot_precision, install_descriptor_allocator, tma_supported
from .pyramid import row_mask
from .pyramid_reference import LEVELS, level_rows

LOG2E = 1.4426950408889634


@triton.jit
def _pyramid_attn_fwd(
    Q, K, V, PK, PV, Out, Lse, QRows, Idx, LevelCnt, EK, EV, EValid,
    stride_qb, stride_qh, stride_qs,
    stride_ob, stride_oh, stride_os,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_pb, stride_ph, stride_ps,
    stride_ib, stride_ih, stride_iq,
    stride_cb, stride_ch, stride_cq,
    stride_ekb, stride_ekh, stride_eks,
    stride_evb, stride_evh, stride_evs,
    stride_lb, stride_lh,
    H, Sq, key_len, k_rows, total_rows, Se, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, TILE: tl.constexpr,
    BLOCK_D: tl.constexpr, HAS_QROWS: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_EVALID: tl.constexpr,
    USE_TMA: tl.constexpr, NK_P2: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (query blocks, B * H). With ``USE_TMA`` the tiles that lie inside one entry (levels whose
    blocks hold at least ``TILE`` keys) are fetched by device-built TMA descriptors."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, TILE)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Sq
    if HAS_QROWS:
        rows = tl.load(QRows + offs_m, mask=row_ok, other=0).to(tl.int64)
    else:
        rows = offs_m.to(tl.int64)
    q_mask = row_mask(row_ok, offs_d, HEAD_DIM, BLOCK_D)
    q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qs + offs_d[None, :], mask=q_mask, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if HAS_EXTRA:
        n_extra = Se
        if HAS_EVALID:
            n_extra = tl.minimum(Se, tl.load(EValid + b))
        ek_base = EK + b * stride_ekb + h * stride_ekh
        ev_base = EV + b * stride_evb + h * stride_evh
        for start in range(0, n_extra, TILE):
            cols = (start + offs_n).to(tl.int64)
            ok = row_mask(cols < n_extra, offs_d, HEAD_DIM, BLOCK_D)
            ek = tl.load(ek_base + cols[:, None] * stride_eks + offs_d[None, :], mask=ok, other=0.0)
            ev = tl.load(ev_base + cols[:, None] * stride_evs + offs_d[None, :], mask=ok, other=0.0)
            bias = tl.where(cols < n_extra, 0.0, float("-inf"))
            acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, q, ek, ev, bias, qk_scale, False, DOT_PRECISION)

    idx_base = Idx + b * stride_ib + h * stride_ih + pid_m * stride_iq
    cnt_base = LevelCnt + b * stride_cb + h * stride_ch + pid_m * stride_cq
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    pk_base = PK + b * stride_pb + h * stride_ph
    pv_base = PV + b * stride_pb + h * stride_ph
    if USE_TMA:
        pooled = total_rows - total_rows // 8
        k_desc = tl.make_tensor_descriptor(k_base, [k_rows, HEAD_DIM], [stride_ks, 1], [TILE, HEAD_DIM])
        v_desc = tl.make_tensor_descriptor(v_base, [k_rows, HEAD_DIM], [stride_vs, 1], [TILE, HEAD_DIM])
        pk_desc = tl.make_tensor_descriptor(pk_base, [pooled, HEAD_DIM], [stride_ps, 1], [TILE, HEAD_DIM])
        pv_desc = tl.make_tensor_descriptor(pv_base, [pooled, HEAD_DIM], [stride_ps, 1], [TILE, HEAD_DIM])
    first = 0
    for lvl in tl.static_range(4):
        keys = BLOCK_K >> lvl  # keys per entry at this level (constexpr: lvl is static)
        pool = 1 << lvl  # tokens per key
        count = tl.load(cnt_base + lvl)
        if lvl == 0:
            kb, vb, stride_k, stride_v, level_row, limit = k_base, v_base, stride_ks, stride_vs, 0, k_rows
        else:
            kb, vb, stride_k, stride_v = pk_base, pv_base, stride_ps, stride_ps
            level_row, limit = total_rows - (total_rows >> (lvl - 1)), total_rows
        if keys >= TILE:  # each tile inside one entry: one index load, contiguous rows
            parts = keys // TILE
            for t in range(0, count * parts):
                j = tl.load(idx_base + first + t // parts)
                within = (t % parts) * TILE + offs_n
                n_tok = tl.minimum(tl.maximum(key_len - (j * BLOCK_K + within * pool), 0), pool)
                live = n_tok > 0
                start = level_row + j * keys + (t % parts) * TILE
                if USE_TMA:
                    if lvl == 0:
                        kt = k_desc.load([start, 0])
                        vt = v_desc.load([start, 0])
                    else:
                        kt = pk_desc.load([start, 0])
                        vt = pv_desc.load([start, 0])
                else:
                    kv = (start + offs_n).to(tl.int64)
                    mask = row_mask(live & (kv < limit), offs_d, HEAD_DIM, BLOCK_D)
                    kt = tl.load(kb + kv[:, None] * stride_k + offs_d[None, :], mask=mask, other=0.0)
                    vt = tl.load(vb + kv[:, None] * stride_v + offs_d[None, :], mask=mask, other=0.0)
                bias = tl.where(live, tl.math.log2(tl.maximum(n_tok, 1).to(tl.float32)), float("-inf"))
                acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, q, kt, vt, bias, qk_scale, False, DOT_PRECISION)
        else:  # several entries share a tile: each column loads its own entry's row
            # The level's list read once: no memory load inside the key loop (a per-tile index load,
            # measured on the H200 at PSA's quotas, made the kernel 44% slower).
            offs_l = tl.arange(0, NK_P2)
            level_list = tl.load(idx_base + first + offs_l, mask=offs_l < count, other=0)
            for t in range(0, tl.cdiv(count * keys, TILE)):
                flat = t * TILE + offs_n
                entry = flat // keys
                within = flat % keys
                listed = entry < count
                j = tl.gather(level_list, tl.minimum(entry, NK_P2 - 1), 0)
                n_tok = tl.minimum(tl.maximum(key_len - (j * BLOCK_K + within * pool), 0), pool)
                live = listed & (n_tok > 0)
                kv = (level_row + j * keys + within).to(tl.int64)
                mask = row_mask(live & (kv < limit), offs_d, HEAD_DIM, BLOCK_D)
                kt = tl.load(kb + kv[:, None] * stride_k + offs_d[None, :], mask=mask, other=0.0)
                vt = tl.load(vb + kv[:, None] * stride_v + offs_d[None, :], mask=mask, other=0.0)
                bias = tl.where(live, tl.math.log2(tl.maximum(n_tok, 1).to(tl.float32)), float("-inf"))
                acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, q, kt, vt, bias, qk_scale, False, DOT_PRECISION)
        first += count

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    o_ptr = Out + b * stride_ob + h * stride_oh + rows[:, None] * stride_os + offs_d[None, :]
    tl.store(o_ptr, o.to(Out.dtype.element_ty), mask=q_mask)
    lse = tl.where(l_i > 0.0, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf"))  # natural log
    tl.store(Lse + b * stride_lb + h * stride_lh + rows, lse, mask=row_ok)


@dataclass(frozen=True)
class PyramidKernelConfig:
    """Launch configuration of the pyramid kernel. Defaults: the H200 sweep's fastest at PSA's quotas
    (Wan-1.3B shape; ``benchmarks/results/kernel/methods_h200_s17/check_psa.json``: 3.12 ms against
    3.34 ms for 64-key tiles, whose 255 registers per thread spill).

    Attributes:
        tile: keys per tile (a power of two >= 16); any size is exact, whatever the levels' sizes.
        num_warps, num_stages: Triton launch parameters.
        tma: fetch the tiles that lie inside one entry with TMA descriptors; None: where the GPU has
            TMA (Hopper or newer) and the tensors allow it (head dim a power of two, 16-byte rows).
    """

    tile: int = 32
    num_warps: int = 4
    num_stages: int = 3
    tma: bool | None = None


def _tma_ready(tensors: tuple[torch.Tensor, ...], head_dim: int) -> bool:
    """Whether TMA descriptors can address these ``(B, H, rows, D)`` tensors (16-byte aligned rows)."""
    if not tma_supported(tensors[0]) or head_dim & (head_dim - 1) or head_dim < 16:
        return False
    return all(t.data_ptr() % 16 == 0 and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1]) for t in tensors)


def pyramid_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pooled_k: torch.Tensor,
    pooled_v: torch.Tensor,
    indices: torch.Tensor,
    level_counts: torch.Tensor,
    *,
    block_q: int,
    block_k: int,
    key_len: int,
    scale: float,
    q_rows: torch.Tensor | None = None,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    extra_valid: torch.Tensor | None = None,
    config: PyramidKernelConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel; same contract as :func:`.pyramid_reference.pyramid_attention_reference`."""
    config = config or PyramidKernelConfig()
    if config.tile < 16 or config.tile & (config.tile - 1):
        raise ValueError(f"tile must be a power of two >= 16, got {config.tile}")
    tensors = (q, k, v, pooled_k, pooled_v, *(t for t in (extra_k, extra_v) if t is not None))
    if any(t.stride(-1) != 1 for t in tensors) or pooled_k.stride() != pooled_v.stride():
        raise ValueError("q, k, v, the pooled levels and extra keys need a contiguous last dimension")
    b, h, _, d = q.shape
    seq_q = q.shape[2] if q_rows is None else q_rows.numel()
    nk = math.ceil(key_len / block_k)
    if indices.shape[-1] != nk or level_counts.shape[-1] != LEVELS:
        raise ValueError(f"lists of {nk} key blocks and {LEVELS} level counts per row expected, got "
                         f"{indices.shape[-1]} and {level_counts.shape[-1]}")  # fmt: skip
    out = torch.empty_like(q)
    lse = torch.full((b, h, q.shape[2]), -math.inf, device=q.device, dtype=torch.float32)
    indices, level_counts = indices.contiguous(), level_counts.contiguous()
    ek = extra_k if extra_k is not None else q
    ev = extra_v if extra_v is not None else q
    use_tma = _tma_ready((k, v, pooled_k, pooled_v), d) if config.tma is None else config.tma
    if use_tma:
        install_descriptor_allocator()
    _pyramid_attn_fwd[(triton.cdiv(seq_q, block_q), b * h)](
        q, k, v, pooled_k, pooled_v, out, lse,
        q_rows if q_rows is not None else level_counts, indices, level_counts, ek, ev,
        extra_valid if extra_valid is not None else level_counts,
        q.stride(0), q.stride(1), q.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        pooled_k.stride(0), pooled_k.stride(1), pooled_k.stride(2),
        indices.stride(0), indices.stride(1), indices.stride(2),
        level_counts.stride(0), level_counts.stride(1), level_counts.stride(2),
        ek.stride(0), ek.stride(1), ek.stride(2),
        ev.stride(0), ev.stride(1), ev.stride(2),
        lse.stride(0), lse.stride(1),
        h, seq_q, key_len, k.shape[2], level_rows(nk, block_k), extra_k.shape[2] if extra_k is not None else 0,
        scale * LOG2E,
        HEAD_DIM=d, BLOCK_M=block_q, BLOCK_K=block_k, TILE=config.tile, BLOCK_D=max(16, triton.next_power_of_2(d)),
        HAS_QROWS=q_rows is not None, HAS_EXTRA=extra_k is not None, HAS_EVALID=extra_valid is not None,
        USE_TMA=use_tma, NK_P2=triton.next_power_of_2(nk), DOT_PRECISION=dot_precision(q),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return out, lse
