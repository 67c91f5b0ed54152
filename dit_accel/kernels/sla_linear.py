"""SLA's linear branch, forward (Triton): per-key-block summaries, then each query block's output.

Three passes (see :mod:`.sla_linear_reference` for the definition):

1. ``_key_summary``: one program per key block j of one (batch, head) reads K_j and V_j once and
   writes ``[h_j | z_j]`` (``h_j = φ(K_j)ᵀ V_j`` D x D, ``z_j`` the column sums of φ(K_j)).
2. ``marginal @ summary`` (cuBLAS): the sum over each query block's marginal key blocks, as one
   batched matrix product ``(NQ, NK) @ (NK, D*D + D)``. Cost at the Wan-1.3B shape (12 heads, 256
   query x 512 key blocks, D 128): 2 * NQ * NK * D² = 4.3 GFLOP per head on tensor cores, and every
   h_j read once per tile of query blocks. Walking each query block's critical and negligible lists
   instead ("total minus the listed ones") would read ~77 h_j of 64 KB per query block: 15 GB.
3. ``_linear_output``: one program per query block reads φ(Q_i) (queries gathered through
   ``q_rows``), H_i and Z_i, and writes ``O_l = φ(Q_i) H_i / (φ(Q_i) · Z_i + eps)``, or, for a call
   that needs no gradient, SLA's whole output ``O_s + O_l Projᵀ`` (the projection and the addition
   in the same pass: at the Wan-1.3B shape that saves ~400 MB of reads and writes).

Summaries are kept in bf16 for bf16 inputs (fp32 accumulation everywhere), fp32 otherwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .block_sparse_attention import dot_precision
from .sla_linear_reference import FEATURE_MAPS

# Head dims the kernels take: one D x D tile per program must fit in registers / shared memory.
SLA_HEAD_DIMS = (16, 32, 64, 128)


@triton.jit
def phi(x, row_ok, FEATURE: tl.constexpr):
    """Feature map of fp32 rows (0 softmax over D, 1 elu + 1, 2 relu); rows not ``row_ok`` give 0."""
    if FEATURE == 0:
        e = tl.exp(x - tl.max(x, 1)[:, None])
        p = e / tl.sum(e, 1)[:, None]
    elif FEATURE == 1:
        p = tl.where(x > 0.0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))
    else:
        p = tl.maximum(x, 0.0)
    return tl.where(row_ok[:, None], p, 0.0)


@triton.jit
def load_rows(base, rows, row_ok, stride_s, HEAD_DIM: tl.constexpr):
    """A ``(rows, HEAD_DIM)`` tile as fp32 (rows not ``row_ok`` read as 0)."""
    cols = tl.arange(0, HEAD_DIM)
    return tl.load(base + rows[:, None] * stride_s + cols[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)


@triton.jit
def program_block(H, count, HEAD_DIM: tl.constexpr):
    """This program's block n (grid axis 0) and (batch, head) (axis 1, B * H), and the offset of its
    ``[h | z]`` row in a ``(B, H, count, D*D + D)`` tensor."""
    n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    row = (pid_bh.to(tl.int64) * count + n) * (HEAD_DIM * HEAD_DIM + HEAD_DIM)
    return n, (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64), row


@triton.jit
def key_rows(j, key_len, BLOCK_N: tl.constexpr):
    """Rows of key block j and which of them are real keys."""
    rows = j * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows.to(tl.int64), rows < key_len


@triton.jit
def summary_offsets(HEAD_DIM: tl.constexpr):
    """Offsets of the D x D part and of the D column sums within one ``[h | z]`` row."""
    d = tl.arange(0, HEAD_DIM)
    return d[:, None] * HEAD_DIM + d[None, :], HEAD_DIM * HEAD_DIM + d


@triton.jit
def _key_summary(
    K, V, Summary,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    H, key_len, num_key_blocks,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, FEATURE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (key blocks, B * H): ``Summary[b, h, j] = [φ(K_j)ᵀ V_j | φ(K_j)ᵀ 1]``."""
    j, b, h, row = program_block(H, num_key_blocks, HEAD_DIM)
    rows, row_ok = key_rows(j, key_len, BLOCK_N)
    k = load_rows(K + b * stride_kb + h * stride_kh, rows, row_ok, stride_ks, HEAD_DIM)
    v = tl.load(
        V + b * stride_vb + h * stride_vh + rows[:, None] * stride_vs + tl.arange(0, HEAD_DIM)[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    phi_k = phi(k, row_ok, FEATURE)
    hj = tl.dot(tl.trans(phi_k.to(v.dtype)), v, input_precision=DOT_PRECISION)
    zj = tl.sum(phi_k, 0)
    h_offsets, z_offsets = summary_offsets(HEAD_DIM)
    tl.store(Summary + row + h_offsets, hj.to(Summary.dtype.element_ty))
    tl.store(Summary + row + z_offsets, zj.to(Summary.dtype.element_ty))


@triton.jit
def query_rows(QRows, start, seq_q, ROWS: tl.constexpr, HAS_QROWS: tl.constexpr):
    """Sequence rows of logical query rows ``start ...`` (through ``QRows`` when given), which are real."""
    logical = start + tl.arange(0, ROWS)
    row_ok = logical < seq_q
    if HAS_QROWS:
        rows = tl.load(QRows + logical, mask=row_ok, other=0).to(tl.int64)
    else:
        rows = logical.to(tl.int64)
    return rows, row_ok


@triton.jit
def _linear_output(
    Q, QRows, Sums, Proj, Residual, Out,
    stride_qb, stride_qh, stride_qs,
    stride_rb, stride_rh, stride_rs,
    stride_ob, stride_oh, stride_os,
    H, seq_q, num_query_blocks, eps,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, FEATURE: tl.constexpr, HAS_QROWS: tl.constexpr,
    HAS_PROJ: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (query blocks, B * H): ``Out[rows] = O_l = φ(Q_i) H_i / (φ(Q_i) · Z_i + eps)``; with
    ``HAS_PROJ``, ``Out[rows] = Residual[rows] + O_l Projᵀ`` (SLA's ``O_s + Proj(O_l)`` in one pass)."""
    i, b, h, row = program_block(H, num_query_blocks, HEAD_DIM)
    rows, row_ok = query_rows(QRows, i * BLOCK_M, seq_q, BLOCK_M, HAS_QROWS)
    phi_q = phi(load_rows(Q + b * stride_qb + h * stride_qh, rows, row_ok, stride_qs, HEAD_DIM), row_ok, FEATURE)
    h_offsets, z_offsets = summary_offsets(HEAD_DIM)
    big_h = tl.load(Sums + row + h_offsets)
    big_z = tl.load(Sums + row + z_offsets).to(tl.float32)
    num = tl.dot(phi_q.to(big_h.dtype), big_h, input_precision=DOT_PRECISION)
    den = tl.sum(phi_q * big_z[None, :], 1) + eps
    o = num / den[:, None]
    if HAS_PROJ:
        weight = tl.load(Proj + h_offsets).to(big_h.dtype)
        o = tl.dot(o.to(big_h.dtype), tl.trans(weight), input_precision=DOT_PRECISION)
        o += load_rows(Residual + b * stride_rb + h * stride_rh, rows, row_ok, stride_rs, HEAD_DIM)
    cols = tl.arange(0, HEAD_DIM)
    o_ptrs = Out + b * stride_ob + h * stride_oh + rows[:, None] * stride_os + cols[None, :]
    tl.store(o_ptrs, o.to(Out.dtype.element_ty), mask=row_ok[:, None])


def summary_dtype(x: torch.Tensor) -> torch.dtype:
    """Storage of the summaries and their sums: bf16 for bf16 inputs, else fp32 (fp16 would overflow:
    a sum over thousands of keys of φ(k) v exceeds 65504 for elu/relu features)."""
    return torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32


def launch_warps(head_dim: int) -> int:
    """A D x D fp32 tile per program: 8 warps at D = 128 keep it in registers."""
    return 8 if head_dim >= 128 else 4


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, feature_map: str) -> None:
    if q.shape[-1] not in SLA_HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {SLA_HEAD_DIMS}, got {q.shape[-1]}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1 or k.shape != v.shape:
        raise ValueError("q, k and v need a contiguous last dimension, and k and v the same shape")
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {', '.join(map(repr, FEATURE_MAPS))}, got {feature_map!r}")


def key_summary_triton(k: torch.Tensor, v: torch.Tensor, block_n: int, key_len: int, feature_map: str) -> torch.Tensor:
    """``(B, H, NK, D*D + D)`` summaries ``[h_j | z_j]`` (see :func:`summary_dtype`)."""
    b, h, _, d = k.shape
    nk = triton.cdiv(key_len, block_n)
    summary = torch.empty(b, h, nk, d * d + d, device=k.device, dtype=summary_dtype(k))
    _key_summary[(nk, b * h)](
        k, v, summary,
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        h, key_len, nk,
        HEAD_DIM=d, BLOCK_N=block_n, FEATURE=FEATURE_MAPS.index(feature_map), DOT_PRECISION=dot_precision(k),
        num_warps=launch_warps(d),
    )  # fmt: skip
    return summary


def marginal_sums(marginal: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
    """``(B, H, NQ, D*D + D)``: each query block's sum of the summaries of its marginal key blocks."""
    return torch.matmul(marginal.to(summary.dtype), summary)


def sla_linear_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    marginal: torch.Tensor,
    *,
    block_m: int,
    block_n: int,
    key_len: int | None = None,
    feature_map: str = "softmax",
    eps: float = 1e-6,
    q_rows: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The linear branch; same contract as :func:`.sla_linear_reference.sla_linear_reference`.

    q, k, v are ``(B, H, S, D)`` views with a contiguous last dimension (Diffusers' layout
    transposed is fine); the output has q's shape and strides. With ``residual`` (shaped like q) and
    ``weight`` (D x D) it returns ``residual + O_l weightᵀ`` instead (rows outside ``q_rows``:
    ``residual``'s), saving the passes of a separate projection and addition.
    """
    check_inputs(q, k, v, feature_map)
    b, h, _, d = q.shape
    key_len = k.shape[2] if key_len is None else key_len
    seq_q = q.shape[2] if q_rows is None else q_rows.numel()
    nq = triton.cdiv(seq_q, block_m)
    sums = marginal_sums(marginal, key_summary_triton(k, v, block_n, key_len, feature_map))
    projected = residual is not None
    if projected:
        out = torch.empty_like(residual) if q_rows is None else residual.clone()
        weight = weight.contiguous()
    else:
        out = torch.empty_like(q) if q_rows is None else torch.zeros_like(q)
    source = residual if projected else q
    _linear_output[(nq, b * h)](
        q, q_rows if q_rows is not None else marginal, sums, weight if projected else sums, source, out,
        q.stride(0), q.stride(1), q.stride(2),
        source.stride(0), source.stride(1), source.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        h, seq_q, nq, eps,
        HEAD_DIM=d, BLOCK_M=block_m, FEATURE=FEATURE_MAPS.index(feature_map), HAS_QROWS=q_rows is not None,
        HAS_PROJ=projected, DOT_PRECISION=dot_precision(q), num_warps=launch_warps(d),
    )  # fmt: skip
    return out
