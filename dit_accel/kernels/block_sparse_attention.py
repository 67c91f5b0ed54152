"""Block-sparse FlashAttention forward (Triton), the engine every sparse method runs on.

One program computes one query block of one (batch, head). It walks the key blocks listed for that
query block (online softmax, fp32 accumulation, exp2 with the scale folded in), then the optional
"extra" keys every query attends to (text tokens, masked per sample), and writes the output and
the natural-log LSE. Query rows may be gathered through an index (``q_rows``): the 3-D tile
reordering of video tokens is then free for queries and outputs, and only K/V are copied into tile
order (by ``block_pooling``). On Hopper the listed K/V blocks are fetched with TMA tensor
descriptors; elsewhere (and in the interpreter) with pointer loads.

Reference: :func:`dit_accel.kernels.reference.block_sparse_attention_reference`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton
    TensorDescriptor = None

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def dot_precision(x: torch.Tensor) -> str:
    """fp32 inputs are multiplied as 3xTF32 (about fp32, on the tensor cores; Triton's default, one TF32
    pass, errs ~1e-3), so they match the fp32 reference; 16-bit inputs are unaffected."""
    return "tf32x3" if x.dtype == torch.float32 else "tf32"


@triton.jit
def _online_softmax_step(
    acc, m_i, l_i, q, k, v, col_bias, qk_scale, LAZY_RESCALE: tl.constexpr, DOT_PRECISION: tl.constexpr
):
    """One key tile: update the running max, normaliser and accumulator (log2 domain).

    ``col_bias`` (BLOCK_N,) carries both the per-block logit bias and the -inf of masked columns,
    so masking costs no extra pass over the tile (it rides on the scale's multiply-add). With
    ``LAZY_RESCALE`` the accumulator is rescaled only when some row's max grew by more than 2^8:
    the stale max keeps every p below 256, exact after the final division, and most tiles skip
    the BLOCK_M x HEAD_DIM multiply.
    """
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale + col_bias[None, :]
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    if LAZY_RESCALE:
        if tl.max(m_new - m_i, 0) > 8.0:
            alpha = tl.math.exp2(m_i - m_new)
            acc = acc * alpha[:, None]
            l_i = l_i * alpha
            m_i = m_new
        p = tl.math.exp2(qk - m_i[:, None])
        l_i = l_i + tl.sum(p, 1)
    else:
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        m_i = m_new
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, m_i, l_i


@triton.jit
def _block_sparse_attn_fwd(
    Q, K, V, K_desc, V_desc, Out, Lse, QRows, BlockIdx, BlockCnt, KeyBias, EK, EV, EValid,
    stride_qb, stride_qh, stride_qs,
    stride_ob, stride_oh, stride_os,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ib, stride_ih, stride_iq,
    stride_cb, stride_ch,
    stride_bb, stride_bh,
    stride_ekb, stride_ekh, stride_eks,
    stride_evb, stride_evh, stride_evs,
    stride_lb, stride_lh,
    H, Sq, Sk, Se, k_rows, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    KV_MODE: tl.constexpr, HAS_QROWS: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_EXTRA: tl.constexpr, HAS_EVALID: tl.constexpr, WRITE_LSE: tl.constexpr,
    LAZY_RESCALE: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (query blocks, B * H). ``KV_MODE``: 0 pointer loads, 1 host TMA descriptors over
    contiguous ``(B*H*k_rows, D)`` K/V, 2 TMA descriptors built on the device per (batch, head)
    over any K/V whose rows are 16-byte aligned (e.g. Diffusers' ``(B, S, H, D)``)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Sq
    if HAS_QROWS:
        rows = tl.load(QRows + offs_m, mask=row_ok, other=0).to(tl.int64)
    else:
        rows = offs_m.to(tl.int64)

    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    q = tl.load(q_base + rows[:, None] * stride_qs + offs_d[None, :], mask=row_ok[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    if HAS_EXTRA:
        n_extra = Se
        if HAS_EVALID:
            n_extra = tl.minimum(Se, tl.load(EValid + b))
        ek_base = EK + b.to(tl.int64) * stride_ekb + h.to(tl.int64) * stride_ekh
        ev_base = EV + b.to(tl.int64) * stride_evb + h.to(tl.int64) * stride_evh
        for start in range(0, n_extra, BLOCK_N):
            cols = start + offs_n
            col_ok = cols < n_extra
            ek = tl.load(ek_base + cols[:, None] * stride_eks + offs_d[None, :], mask=col_ok[:, None], other=0.0)
            ev = tl.load(ev_base + cols[:, None] * stride_evs + offs_d[None, :], mask=col_ok[:, None], other=0.0)
            col_bias = tl.where(col_ok, 0.0, float("-inf"))
            acc, m_i, l_i = _online_softmax_step(
                acc, m_i, l_i, q, ek, ev, col_bias, qk_scale, LAZY_RESCALE, DOT_PRECISION
            )

    count = tl.load(BlockCnt + b * stride_cb + h * stride_ch + pid_m)
    idx_base = BlockIdx + b.to(tl.int64) * stride_ib + h.to(tl.int64) * stride_ih + pid_m * stride_iq
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    desc_row0 = pid_bh * k_rows
    if KV_MODE == 2:
        k_dev = tl.make_tensor_descriptor(k_base, [k_rows, HEAD_DIM], [stride_ks, 1], [BLOCK_N, HEAD_DIM])
        v_dev = tl.make_tensor_descriptor(v_base, [k_rows, HEAD_DIM], [stride_vs, 1], [BLOCK_N, HEAD_DIM])
    for i in tl.range(0, count, warp_specialize=WARP_SPECIALIZE):
        j = tl.load(idx_base + i)
        start_n = j * BLOCK_N
        if KV_MODE == 1:
            k = K_desc.load([desc_row0 + start_n, 0])
            v = V_desc.load([desc_row0 + start_n, 0])
        elif KV_MODE == 2:
            k = k_dev.load([start_n, 0])
            v = v_dev.load([start_n, 0])
        else:
            kv_rows = (start_n + offs_n)[:, None].to(tl.int64)
            k = tl.load(k_base + kv_rows * stride_ks + offs_d[None, :], mask=kv_rows < k_rows, other=0.0)
            v = tl.load(v_base + kv_rows * stride_vs + offs_d[None, :], mask=kv_rows < k_rows, other=0.0)
        bias_log2 = 0.0
        if HAS_BIAS:
            bias_log2 = tl.load(KeyBias + b * stride_bb + h * stride_bh + j) * 1.4426950408889634
        col_bias = tl.where(start_n + offs_n < Sk, bias_log2, float("-inf"))
        acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, q, k, v, col_bias, qk_scale, LAZY_RESCALE, DOT_PRECISION)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    o_base = Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(o_base + rows[:, None] * stride_os + offs_d[None, :], o.to(Out.dtype.element_ty), mask=row_ok[:, None])
    if WRITE_LSE:
        lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453
        tl.store(Lse + b * stride_lb + h * stride_lh + rows, lse, mask=row_ok)


@dataclass(frozen=True)
class KernelConfig:
    """Launch configuration. Defaults are the H200 sweep's winners (benchmarks/results/kernel/kernel_sweep*.json).

    Attributes:
        kv_mode: 0 pointer loads, 1 host TMA descriptors (contiguous padded K/V), 2 device-built
            TMA descriptors (any K/V with 16-byte aligned rows); None picks the fastest available.
        num_warps, num_stages: Triton launch parameters.
        lazy_rescale: rescale the accumulator only when a row max grows by more than 2^8.
        warp_specialize: let Triton split the key loop into producer/consumer warps (Hopper+).
        max_block_n: larger key blocks run as this many keys each (the lists split): a 128x128 tile
            in 4 warps spills (H200, Wan-1.3B shape: 128-key blocks ran 2x slower than 64-key ones).
    """

    kv_mode: int | None = None
    num_warps: int = 4
    num_stages: int = 2
    lazy_rescale: bool = False
    warp_specialize: bool = False
    max_block_n: int = 64


def tma_supported(t: torch.Tensor) -> bool:
    """TMA descriptors need Hopper or newer, a CUDA tensor and Triton's host descriptor type."""
    return TensorDescriptor is not None and t.is_cuda and torch.cuda.get_device_capability(t.device)[0] >= 9


def _alloc_descriptor_scratch(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    return torch.empty(size, device="cuda", dtype=torch.int8)


@functools.cache
def install_descriptor_allocator() -> None:
    """Device-built TMA descriptors need global scratch memory; Triton asks this allocator for it."""
    triton.set_allocator(_alloc_descriptor_scratch)


def _pick_kv_mode(k: torch.Tensor, v: torch.Tensor, block_n: int, requested: int | None) -> int:
    if requested is not None:
        return requested
    if not tma_supported(k):
        return 0
    return 1 if k.is_contiguous() and v.is_contiguous() and k.shape[2] % block_n == 0 else 2


def split_key_blocks(
    indices: torch.Tensor, counts: torch.Tensor, key_bias: torch.Tensor | None, block_n: int, part: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Block lists of ``block_n``-key blocks as lists of ``part``-key blocks (the same keys, still
    ascending); entries past a row's count stay unread."""
    if block_n % part:
        raise ValueError(f"key blocks of {block_n} cannot be split into blocks of {part}")
    parts = block_n // part
    offsets = torch.arange(parts, device=indices.device, dtype=indices.dtype)
    split = (indices[..., None] * parts + offsets).flatten(-2)
    bias = key_bias.repeat_interleave(parts, dim=-1) if key_bias is not None else None
    return split, counts * parts, bias


def block_sparse_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    counts: torch.Tensor,
    *,
    block_m: int,
    block_n: int,
    key_bias: torch.Tensor | None = None,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    extra_valid: torch.Tensor | None = None,
    scale: float | None = None,
    q_rows: torch.Tensor | None = None,
    key_len: int | None = None,
    out: torch.Tensor | None = None,
    return_lse: bool = False,
    config: KernelConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the kernel; same contract as the reference.

    K/V blocks are runs of ``block_n`` rows of ``k``/``v`` (``(B, H, rows, D)``, identical strides,
    last dimension contiguous): the padded tile-order copies of :func:`gather_blocks`, or the
    model's own tensors when tokens are already in tile order. q, out and the extra keys may be
    any ``(B, H, S, D)`` views whose last dimension is contiguous.
    """
    b, h, _, d = q.shape
    if d not in (16, 32, 64, 128, 256):
        raise ValueError(f"head_dim must be a power of two in [16, 256], got {d}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1 or k.shape != v.shape:
        raise ValueError("q, k and v need a contiguous last dimension, and k and v the same shape")
    config = config or KernelConfig()
    if block_n > config.max_block_n:
        indices, counts, key_bias = split_key_blocks(indices, counts, key_bias, block_n, config.max_block_n)
        block_n = config.max_block_n
    kv_mode = _pick_kv_mode(k, v, block_n, config.kv_mode)
    if kv_mode == 1 and (not k.is_contiguous() or not v.is_contiguous() or k.shape[2] % block_n):
        raise ValueError("host TMA descriptors need contiguous K/V padded to whole key blocks")
    seq_q = q.shape[2] if q_rows is None else q_rows.numel()
    key_len = k.shape[2] if key_len is None else key_len
    scale = d**-0.5 if scale is None else scale
    out = torch.empty_like(q) if out is None else out
    lse = torch.full((b, h, q.shape[2]), -math.inf, device=q.device, dtype=torch.float32) if return_lse else None
    k_desc = v_desc = k
    if kv_mode == 1:
        k_desc = TensorDescriptor.from_tensor(k.view(-1, d), [block_n, d])
        v_desc = TensorDescriptor.from_tensor(v.view(-1, d), [block_n, d])
    elif kv_mode == 2:
        install_descriptor_allocator()
    indices, counts = indices.contiguous(), counts.contiguous()
    key_bias = key_bias.float().contiguous() if key_bias is not None else None
    dummy = counts
    ek = extra_k if extra_k is not None else q
    ev = extra_v if extra_v is not None else q
    bias = key_bias if key_bias is not None else dummy.float()
    lse_arg = lse if lse is not None else dummy.float()
    grid = (triton.cdiv(seq_q, block_m), b * h)
    _block_sparse_attn_fwd[grid](
        q, k, v, k_desc, v_desc, out, lse_arg,
        q_rows if q_rows is not None else dummy, indices, counts, bias, ek, ev,
        extra_valid if extra_valid is not None else dummy,
        q.stride(0), q.stride(1), q.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        indices.stride(0), indices.stride(1), indices.stride(2),
        counts.stride(0), counts.stride(1),
        bias.stride(0) if key_bias is not None else 0, bias.stride(1) if key_bias is not None else 0,
        ek.stride(0), ek.stride(1), ek.stride(2),
        ev.stride(0), ev.stride(1), ev.stride(2),
        lse_arg.stride(0) if lse is not None else 0, lse_arg.stride(1) if lse is not None else 0,
        h, seq_q, key_len, extra_k.shape[2] if extra_k is not None else 0, k.shape[2], scale * LOG2E,
        HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n,
        KV_MODE=kv_mode, HAS_QROWS=q_rows is not None, HAS_BIAS=key_bias is not None,
        HAS_EXTRA=extra_k is not None, HAS_EVALID=extra_valid is not None, WRITE_LSE=return_lse,
        LAZY_RESCALE=config.lazy_rescale, WARP_SPECIALIZE=config.warp_specialize, DOT_PRECISION=dot_precision(q),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return out, lse
