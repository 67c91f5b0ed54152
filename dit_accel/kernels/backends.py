"""One call for exact block-sparse attention, dispatched to the fastest backend that takes the input.

Backends, in order of preference:
1. ``fa4``: FlashAttention-4 on sm90/sm100 when ``flash-attn-4`` is installed (:mod:`.fa4`);
2. ``triton``: our Triton kernel on any other CUDA GPU, and wherever FA4 rejects the input;
3. ``reference``: the PyTorch reference on CPU (and the float64 oracle of the tests).

Every backend returns ``(out, lse)`` with one convention: ``lse`` is the natural-log log-sum-exp of
the scaled logits, fp32 ``(B, H, S)``. The choice is automatic; ``backend=`` per call (``apply(...,
backend=...)``) or the ``DIT_ACCEL_BACKEND`` environment variable override it. A backend that
cannot serve an input falls back to the next one with a one-time warning, never an error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from . import ops, reference
from .block_list import BlockList
from .fa4 import fa4_block_sparse_attention, fa4_dense_attention, fa4_rejects

BACKENDS = ("auto", "fa4", "triton", "reference")
ENV_VAR = "DIT_ACCEL_BACKEND"
TRITON_HEAD_DIMS = (16, 32, 64, 128, 256)

logger = logging.getLogger("dit_accel")
_WARNED: set[str] = set()

Tensor = torch.Tensor


def warn_once(key: str, message: str) -> None:
    """Log a warning the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)


def check_backend(name: str | None) -> str | None:
    """Validate a backend name (None means automatic)."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


@dataclass(frozen=True)
class ExtraKeys:
    """Keys every query attends to besides its blocks (text tokens), ``(B, H, Se, D)``.

    ``valid`` ``(B,)`` int32, when given, counts each sample's unpadded keys.
    """

    k: Tensor
    v: Tensor
    valid: Tensor | None = None


def requested_backend(backend: str | None) -> str:
    """The backend asked for: the argument, else ``DIT_ACCEL_BACKEND``, else ``auto``."""
    if os.environ.get("DIT_ACCEL_FORCE_REFERENCE") == "1":
        return "reference"
    return check_backend(backend or os.environ.get(ENV_VAR) or "auto")


def resolve_backend(backend: str | None, q: Tensor, block_q: int, block_k: int, *, key_bias: bool = False) -> str:
    """The backend that will serve this call (``fa4``, ``triton`` or ``reference``)."""
    wanted = requested_backend(backend)
    if wanted == "reference":
        return "reference"
    if not q.is_cuda:
        if wanted != "auto":
            warn_once(f"cpu:{wanted}", f"dit-accel: backend {wanted!r} needs CUDA tensors; using the reference")
        return "reference"
    if wanted in ("auto", "fa4"):
        reason = "FA4 takes no per-block logit bias" if key_bias else fa4_rejects(q, block_q, block_k)
        if reason is None:
            return "fa4"
        if wanted == "fa4":
            warn_once(f"fa4:{reason}", f"dit-accel: FA4 backend not used ({reason}); falling back to Triton")
    if ops.HAS_TRITON and q.shape[-1] in TRITON_HEAD_DIMS:
        return "triton"
    warn_once(f"triton:{q.shape[-1]}", f"dit-accel: no GPU kernel for head_dim {q.shape[-1]}; using the reference")
    return "reference"


def _fa4_sparse(q: Tensor, k: Tensor, v: Tensor, blocks: BlockList, scale: float, q_rows: Tensor | None):
    """FA4 over ``(B, H, S, D)`` views; queries gathered through ``q_rows`` first (FA4 cannot gather)."""
    q_in = q if q_rows is None else q.index_select(2, q_rows.long())
    k_in, v_in = k[:, :, : blocks.key_len], v[:, :, : blocks.key_len]
    out, lse = fa4_block_sparse_attention(
        q_in.transpose(1, 2), k_in.transpose(1, 2), v_in.transpose(1, 2),
        blocks.indices, blocks.counts, blocks.block_q, blocks.block_k, scale,
    )  # fmt: skip
    out = out.transpose(1, 2)
    if q_rows is None:
        return out, lse
    full_out = torch.empty_like(q)
    full_lse = lse.new_full(q.shape[:3], float("-inf"))
    full_out[:, :, q_rows.long()] = out
    full_lse[:, :, q_rows.long()] = lse
    return full_out, full_lse


def _extra_only(q: Tensor, k: Tensor, v: Tensor, extra: ExtraKeys, blocks: BlockList, scale: float,
                q_rows: Tensor | None):  # fmt: skip
    """Attention of every query over the extra keys alone (empty block lists: k/v are not read)."""
    # Allocated per call, not cached: under torch.compile this code is traced, and a cache filled
    # during tracing would keep fake tensors.
    counts = blocks.counts.new_zeros(blocks.counts.shape)
    indices = blocks.counts.new_zeros(*blocks.counts.shape, 1)
    return ops.block_sparse_attention(
        q, k, v, indices, counts, blocks.block_q, blocks.block_k, blocks.key_len, scale,
        q_rows=q_rows, extra_k=extra.k, extra_v=extra.v, extra_valid=extra.valid, return_lse=True,
    )  # fmt: skip


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    blocks: BlockList,
    *,
    scale: float | None = None,
    q_rows: Tensor | None = None,
    key_bias: Tensor | None = None,
    extra: ExtraKeys | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact block-sparse attention: each query block over its listed key blocks (+ ``extra`` keys).

    q, k, v are ``(B, H, S, D)`` (any strides, last dimension contiguous). Key block ``j`` is rows
    ``[j * block_k, (j + 1) * block_k)`` of k/v, of which the first ``blocks.key_len`` are real.
    ``q_rows`` maps logical query row r to row ``q_rows[r]`` of q and of the output (the blocks
    are formed in that order). ``key_bias`` ``(B, H, NK)`` adds a constant logit per key block.
    Returns ``(out, lse)``: out shaped like q (only the ``q_rows`` rows written when given),
    lse fp32 ``(B, H, Sq)`` natural log, ``-inf`` for rows that attend to nothing.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    chosen = resolve_backend(backend, q, blocks.block_q, blocks.block_k, key_bias=key_bias is not None)
    if chosen == "fa4":
        out, lse = _fa4_sparse(q, k, v, blocks, scale, q_rows)
        if extra is None:
            return out, lse
        extra_out, extra_lse = _extra_only(q, k, v, extra, blocks, scale, q_rows)
        return ops.merge_attention(out, lse, extra_out, extra_lse)
    kwargs = dict(q_rows=q_rows, key_bias=key_bias, return_lse=True)
    if extra is not None:
        kwargs |= dict(extra_k=extra.k, extra_v=extra.v, extra_valid=extra.valid)
    if chosen == "triton":
        return ops.block_sparse_attention(q, k, v, blocks.indices, blocks.counts, blocks.block_q, blocks.block_k,
                                          blocks.key_len, scale, **kwargs)  # fmt: skip
    out, lse = reference.block_sparse_attention_reference(
        q, k, v, blocks.indices, blocks.counts, block_m=blocks.block_q, block_n=blocks.block_k,
        key_len=blocks.key_len, scale=scale, **kwargs,
    )  # fmt: skip
    return out, lse.float() if q.dtype != torch.float64 else lse


DENSE_BACKENDS = ("fa4", "cudnn", "triton")


def dense_attention(q: Tensor, k: Tensor, v: Tensor, backend: str, scale: float | None = None) -> Tensor:
    """Dense attention on Diffusers' ``(B, S, H, D)`` layout through a named engine.

    ``fa4``: FlashAttention-4; ``cudnn``: PyTorch SDPA's cuDNN kernel; ``triton``: our block-sparse
    kernel with every block listed. Used to time methods against the fastest dense run.
    """
    if backend not in DENSE_BACKENDS:
        raise ValueError(f"dense backend must be one of {', '.join(DENSE_BACKENDS)}, got {backend!r}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if backend == "fa4":
        reason = fa4_rejects(q.transpose(1, 2), 128, 128)
        if reason is None:
            return fa4_dense_attention(q, k, v, scale)[0]
        warn_once(f"dense-fa4:{reason}", f"dit-accel: dense FA4 not used ({reason}); using cuDNN/SDPA")
        backend = "cudnn"
    if backend == "cudnn":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        engines = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
        with sdpa_kernel([*engines, SDPBackend.MATH] if not q.is_cuda else engines):
            out = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale
            )
        return out.transpose(1, 2)
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    blocks = BlockList.full(q.shape[0], q.shape[2], q.shape[1], k.shape[1], 128, 64, q.device)
    return sparse_attention(qh, kh, vh, blocks, scale=scale, backend="triton")[0].transpose(1, 2)
