"""The kernels as PyTorch custom ops: a dispatcher per op plus a fake (shape) implementation.

Each op runs its Triton kernel on CUDA tensors and its PyTorch reference on anything else (CPU,
or when ``DIT_ACCEL_FORCE_REFERENCE=1``). Registering them with ``torch.library.custom_op`` lets
``torch.compile`` trace processors that call them without graph breaks.
"""

from __future__ import annotations

import math
import os

import torch

from . import reference

try:
    from .block_map import block_map_triton
    from .block_pooling import gather_blocks_triton, pool_blocks_triton
    from .block_scores import block_scores_triton
    from .block_selection import MAX_KEY_BLOCKS, select_blocks_triton
    from .block_sparse_attention import block_sparse_attention_triton
    from .block_sparse_attention_bwd import block_sparse_attention_backward_triton
    from .lse_merge import merge_attention_triton
    from .routing import MAX_ROUTED_KEY_BLOCKS, pool_qk_triton, route_blocks_triton

    HAS_TRITON = True
except ImportError:  # pragma: no cover - platforms without Triton
    HAS_TRITON = False
    MAX_KEY_BLOCKS = MAX_ROUTED_KEY_BLOCKS = 0

Tensor = torch.Tensor


def use_triton(t: Tensor) -> bool:
    """Whether the Triton kernels serve this tensor's device."""
    return HAS_TRITON and t.is_cuda and os.environ.get("DIT_ACCEL_FORCE_REFERENCE") != "1"


def _mean_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.custom_op("dit_accel::pool_blocks", mutates_args=())
def pool_blocks(x: Tensor, block: int, rows: Tensor | None = None) -> Tensor:
    """Block means ``(B, H, N, D)`` (fp32) of x ``(B, H, S, D)``, rows gathered through ``rows``."""
    if use_triton(x):
        return pool_blocks_triton(x, block, rows)
    return reference.pool_blocks_reference(x, block, rows).to(_mean_dtype(x))


@pool_blocks.register_fake
def _(x: Tensor, block: int, rows: Tensor | None = None) -> Tensor:
    n = x.shape[2] if rows is None else rows.shape[0]
    return x.new_empty(x.shape[0], x.shape[1], math.ceil(n / block), x.shape[3], dtype=_mean_dtype(x))


@torch.library.custom_op("dit_accel::block_mask", mutates_args=())
def block_mask(indices: Tensor, counts: Tensor, num_blocks: int) -> Tensor:
    """bool ``(B, H, NQ, NK)``: True where the block lists ``indices``/``counts`` name the key block (one
    Triton launch on CUDA instead of the reference's scatter and its helper tensors). Entries inside a
    row's count must be valid key blocks (the reference raises on others; the kernel ignores them)."""
    if use_triton(indices) and indices.dtype == torch.int32:
        return block_map_triton(indices, counts.int(), num_blocks).view(torch.bool)
    return reference.block_mask_from_lists(indices, counts, num_blocks).contiguous()


@block_mask.register_fake
def _(indices: Tensor, counts: Tensor, num_blocks: int) -> Tensor:
    return indices.new_empty(*indices.shape[:-1], num_blocks, dtype=torch.bool)


@torch.library.custom_op("dit_accel::pool_blocks_qk", mutates_args=())
def pool_blocks_qk(q: Tensor, k: Tensor, block_q: int, block_k: int) -> tuple[Tensor, Tensor]:
    """Query- and key-block means of block-ordered q, k: :func:`pool_blocks` of each, in one launch on CUDA
    (one pass reads both; the composed path costs two launches and more than twice the time)."""
    reference.check_query_key_pair(q, k)
    if use_triton(q) and q.dtype != torch.float64 and q.stride(-1) == 1 and k.stride(-1) == 1:
        return pool_qk_triton(q, k, block_q, block_k)
    means = (reference.pool_blocks_reference(x, block) for x, block in ((q, block_q), (k, block_k)))
    return tuple(mean.to(_mean_dtype(q)) for mean in means)


@pool_blocks_qk.register_fake
def _(q: Tensor, k: Tensor, block_q: int, block_k: int) -> tuple[Tensor, Tensor]:
    b, h, _, d = q.shape
    dtype = _mean_dtype(q)
    shapes = ((q.shape[2], block_q), (k.shape[2], block_k))
    return tuple(q.new_empty(b, h, math.ceil(n / block), d, dtype=dtype) for n, block in shapes)


@torch.library.custom_op("dit_accel::gather_blocks", mutates_args=())
def gather_blocks(k: Tensor, v: Tensor, rows: Tensor, block: int) -> tuple[Tensor, Tensor, Tensor]:
    """K/V in tile order, zero-padded to whole blocks, and the fp32 key-block means."""
    if use_triton(k):
        return gather_blocks_triton(k, v, rows, block)
    k_tiled, v_tiled, mean = reference.gather_blocks_reference(k, v, rows, block)
    return k_tiled, v_tiled, mean.to(_mean_dtype(k))


@gather_blocks.register_fake
def _(k: Tensor, v: Tensor, rows: Tensor, block: int) -> tuple[Tensor, Tensor, Tensor]:
    b, h, _, d = k.shape
    n = math.ceil(rows.shape[0] / block)
    tiled = k.new_empty(b, h, n * block, d)
    return tiled, torch.empty_like(tiled), k.new_empty(b, h, n, d, dtype=_mean_dtype(k))


@torch.library.custom_op("dit_accel::routing_scores", mutates_args=())
def routing_scores(q_mean: Tensor, k_mean: Tensor, scale: float) -> Tensor:
    """Pooled logits ``scale * q̄ k̄ᵀ`` (fp32 ``(B, H, NQ, NK)``; fp64 for fp64 means) of block means."""
    tiled = q_mean.dim() == k_mean.dim() == 4 and q_mean.shape[:2] == k_mean.shape[:2]
    if use_triton(q_mean) and tiled and q_mean.dtype == k_mean.dtype == torch.float32:
        return block_scores_triton(q_mean, k_mean, scale)
    return reference.routing_scores(q_mean, k_mean, scale)


@routing_scores.register_fake
def _(q_mean: Tensor, k_mean: Tensor, scale: float) -> Tensor:
    dtype = torch.float64 if q_mean.dtype == torch.float64 else torch.float32
    lead = torch.broadcast_shapes(q_mean.shape[:-2], k_mean.shape[:-2])  # as the fallback matmul broadcasts
    return q_mean.new_empty(*lead, q_mean.shape[-2], k_mean.shape[-2], dtype=dtype)


def _selection_width(num_blocks: int, density: float | None, min_blocks: int) -> int:
    return reference.keep_count(num_blocks, density, min_blocks) if density is not None else num_blocks


@torch.library.custom_op("dit_accel::select_blocks", mutates_args=())
def select_blocks(
    scores: Tensor,
    density: float | None = None,
    top_p: float | None = None,
    min_blocks: int = 1,
    log_counts: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Block lists ``(indices, counts)`` from routing scores (top-k by density, or top-p)."""
    if use_triton(scores) and scores.shape[-1] <= MAX_KEY_BLOCKS:
        return select_blocks_triton(scores, density=density, top_p=top_p, min_blocks=min_blocks, log_counts=log_counts)
    return reference.select_blocks_reference(
        scores, density=density, top_p=top_p, min_blocks=min_blocks, log_counts=log_counts
    )


@select_blocks.register_fake
def _(scores, density=None, top_p=None, min_blocks=1, log_counts=None):
    width = _selection_width(scores.shape[-1], density, min_blocks)
    lead = scores.shape[:-1]
    return scores.new_empty(*lead, width, dtype=torch.int32), scores.new_empty(*lead, dtype=torch.int32)


# Attribute on a forward output holding the LSE the caller did not ask for but the backward needs.
# Autograd hands setup_context the very output object in eager mode; when it is absent (traced
# graphs), the backward recomputes the LSE.
_LSE_FOR_BACKWARD = "_dit_accel_lse_for_backward"


def _backward_supported(q_rows: Tensor | None, extra_k: Tensor | None) -> bool:
    return q_rows is None and extra_k is None


@torch.library.custom_op("dit_accel::route_blocks", mutates_args=())
def route_blocks(
    q: Tensor,
    k: Tensor,
    block_q: int,
    block_k: int,
    scale: float,
    density: float | None = None,
    top_p: float | None = None,
    min_blocks: int = 1,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(indices, counts, q_mean, k_mean)`` for block-ordered q, k (see ``reference.route_blocks_reference``).

    The one-read Triton path serves CUDA; other inputs (CPU, fp64, more than
    ``MAX_ROUTED_KEY_BLOCKS`` key blocks) take the composed path: pool, score, select.
    """
    kwargs = dict(density=density, top_p=top_p, min_blocks=min_blocks)
    fits = math.ceil(k.shape[2] / block_k) <= MAX_ROUTED_KEY_BLOCKS and q.stride(-1) == 1 and k.stride(-1) == 1
    if use_triton(q) and q.dtype != torch.float64 and fits:
        return route_blocks_triton(q, k, block_q, block_k, scale, **kwargs)
    q_mean, k_mean = pool_blocks(q, block_q), pool_blocks(k, block_k)
    log_counts = reference.block_counts(k.shape[2], block_k, k.device).float().log()
    indices, counts = select_blocks(routing_scores(q_mean, k_mean, scale), log_counts=log_counts, **kwargs)
    return indices, counts, q_mean, k_mean


@route_blocks.register_fake
def _(q, k, block_q, block_k, scale, density=None, top_p=None, min_blocks=1):
    b, h, seq_q, d = q.shape
    nq, nk = math.ceil(seq_q / block_q), math.ceil(k.shape[2] / block_k)
    width = _selection_width(nk, density, min_blocks)
    return (
        q.new_empty(b, h, nq, width, dtype=torch.int32),
        q.new_empty(b, h, nq, dtype=torch.int32),
        q.new_empty(b, h, nq, d, dtype=_mean_dtype(q)),
        k.new_empty(b, h, nk, d, dtype=_mean_dtype(k)),
    )


@torch.library.custom_op("dit_accel::block_sparse_attention", mutates_args=())
def block_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    indices: Tensor,
    counts: Tensor,
    block_m: int,
    block_n: int,
    key_len: int,
    scale: float,
    q_rows: Tensor | None = None,
    key_bias: Tensor | None = None,
    extra_k: Tensor | None = None,
    extra_v: Tensor | None = None,
    extra_valid: Tensor | None = None,
    return_lse: bool = False,
) -> tuple[Tensor, Tensor]:
    """Block-sparse attention (see ``reference.block_sparse_attention_reference``).

    Returns ``(out, lse)``: ``out`` has q's shape and strides; with ``q_rows`` only those rows are
    written (the caller fills the rest). ``lse`` is ``(B, H, S)`` fp32, or empty when not asked for.
    Differentiable in q, k, v (not with ``q_rows`` or extra keys; ``key_bias`` gets no gradient).
    """
    out = torch.empty_like(q)
    keep_lse = not return_lse and _backward_supported(q_rows, extra_k) and any(t.requires_grad for t in (q, k, v))
    kwargs = dict(
        block_m=block_m,
        block_n=block_n,
        key_bias=key_bias,
        extra_k=extra_k,
        extra_v=extra_v,
        extra_valid=extra_valid,
        scale=scale,
        q_rows=q_rows,
        key_len=key_len,
        out=out,
        return_lse=return_lse or keep_lse,
    )
    if use_triton(q) and q.shape[-1] in (16, 32, 64, 128, 256):
        out, lse = block_sparse_attention_triton(q, k, v, indices, counts, **kwargs)
    else:
        out, lse = reference.block_sparse_attention_reference(q, k, v, indices, counts, **kwargs)
    if lse is not None and q.dtype != torch.float64:
        lse = lse.float()
    if keep_lse:  # for the backward only: handed to setup_context on the output, not returned
        setattr(out, _LSE_FOR_BACKWARD, lse)
    if lse is None or keep_lse:
        return out, q.new_empty(0, dtype=torch.float32)
    return out, lse


@block_sparse_attention.register_fake
def _(q, k, v, indices, counts, block_m, block_n, key_len, scale, q_rows=None, key_bias=None,
      extra_k=None, extra_v=None, extra_valid=None, return_lse=False):  # fmt: skip
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    lse = q.new_empty(q.shape[:3], dtype=lse_dtype) if return_lse else q.new_empty(0, dtype=torch.float32)
    return torch.empty_like(q), lse


@torch.library.custom_op("dit_accel::forward_only_backward", mutates_args=())
def forward_only_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, features: str
) -> tuple[Tensor, Tensor, Tensor]:
    """The backward of a call with forward-only features: raises when run. An op rather than a
    plain raise so that traced graphs (torch.compile with grad-requiring inputs) still build; it
    takes ``grad_out`` so that graph partitioners keep it in the backward graph."""
    raise NotImplementedError(
        f"block_sparse_attention has no backward with {features}: "
        "they are forward-only features (pass q_rows=None and extra_k=None to train through it)"
    )


@forward_only_backward.register_fake
def _(grad_out, q, k, v, features):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _attention_setup(ctx, inputs: tuple, output: tuple) -> None:
    q, k, v, indices, counts, block_m, block_n, key_len, scale, q_rows, key_bias, extra_k, *_, return_lse = inputs
    out, lse = output
    if not return_lse:
        lse = getattr(out, _LSE_FOR_BACKWARD, None)
        if lse is not None:
            delattr(out, _LSE_FOR_BACKWARD)
    ctx.unsupported = [name for name, t in (("q_rows", q_rows), ("extra_k", extra_k)) if t is not None]
    ctx.sizes = (block_m, block_n, key_len, scale)
    ctx.return_lse = return_lse
    ctx.save_for_backward(q, k, v, indices, counts, key_bias, out, lse)


def _attention_backward(ctx, grad_out: Tensor, grad_lse: Tensor):
    """dq, dk, dv: Triton on CUDA, the reference elsewhere; the LSE is recomputed if none was kept."""
    q, k, v, indices, counts, key_bias, out, lse = ctx.saved_tensors
    if ctx.unsupported:
        return (*forward_only_backward(grad_out, q, k, v, " and ".join(ctx.unsupported)), *(None,) * 12)
    block_m, block_n, key_len, scale = ctx.sizes
    if lse is None:
        with torch.no_grad():
            out, lse = block_sparse_attention(
                q, k, v, indices, counts, block_m, block_n, key_len, scale, key_bias=key_bias, return_lse=True
            )
    kwargs = dict(block_m=block_m, block_n=block_n, key_len=key_len, scale=scale, key_bias=key_bias)
    kwargs["dlse"] = grad_lse if ctx.return_lse else None
    if use_triton(q) and q.dtype != torch.float64 and q.shape[-1] in (16, 32, 64, 128, 256):
        dq, dk, dv = block_sparse_attention_backward_cuda(grad_out, q, k, v, out, lse, indices, counts, **kwargs)
    else:
        dq, dk, dv = reference.block_sparse_attention_backward_reference(
            grad_out, q, k, v, out, lse, indices, counts, **kwargs
        )
    return (dq, dk, dv) + (None,) * 12


@torch.library.custom_op("dit_accel::block_sparse_attention_backward", mutates_args=(), device_types="cuda")
def block_sparse_attention_backward_cuda(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    indices: Tensor,
    counts: Tensor,
    block_m: int,
    block_n: int,
    key_len: int,
    scale: float,
    key_bias: Tensor | None = None,
    dlse: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` of :func:`block_sparse_attention` by the Triton kernel, as an op of its own: a
    compiled backward (AOT autograd traces the formula with fake tensors) then calls the kernel instead
    of tracing into it. Elsewhere the backward is the reference's, plain PyTorch that traces as it is."""
    return block_sparse_attention_backward_triton(
        grad_out, q, k, v, out, lse, indices, counts,
        block_m=block_m, block_n=block_n, key_len=key_len, scale=scale, key_bias=key_bias, dlse=dlse,
    )  # fmt: skip


@block_sparse_attention_backward_cuda.register_fake
def _(grad_out, q, k, v, out, lse, indices, counts, block_m, block_n, key_len, scale, key_bias=None, dlse=None):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


block_sparse_attention.register_autograd(_attention_backward, setup_context=_attention_setup)


@torch.library.custom_op("dit_accel::merge_attention", mutates_args=())
def merge_attention(out1: Tensor, lse1: Tensor, out2: Tensor, lse2: Tensor) -> tuple[Tensor, Tensor]:
    """Exact union ``(out, lse)`` of two partial attentions (see ``reference.merge_attention_reference``)."""
    if use_triton(out1) and out1.dtype != torch.float64 and out1.stride(-1) == 1 and out2.stride(-1) == 1:
        return merge_attention_triton(out1, lse1, out2, lse2)
    out, lse = reference.merge_attention_reference(out1, lse1, out2, lse2)
    return torch.empty_like(out1).copy_(out), lse  # out1's layout, as the fake says


@merge_attention.register_fake
def _(out1, lse1, out2, lse2):
    lse_dtype = torch.float64 if out1.dtype == torch.float64 else torch.float32
    return torch.empty_like(out1), out1.new_empty(out1.shape[:3], dtype=lse_dtype)


def _merge_setup(ctx, inputs, output) -> None:
    out1, lse1, out2, lse2 = inputs
    ctx.save_for_backward(out1, lse1, out2, lse2, output[1])


def _merge_backward(ctx, grad_out: Tensor, grad_lse: Tensor | None):
    """With ``a_i = e^{l_i - lse}``: ``d o_i = a_i g``, ``d l_i = a_i (<g, o_i - o> + g_lse)``; empty parts get 0."""
    out1, lse1, out2, lse2, lse = ctx.saved_tensors
    cdt = _mean_dtype(out1)
    lse = lse.to(cdt)
    live = ~torch.isneginf(lse)
    lse_safe = torch.where(live, lse, 0.0)
    a1 = torch.where(live, torch.exp(lse1.to(cdt) - lse_safe), 0.0)
    a2 = torch.where(live, torch.exp(lse2.to(cdt) - lse_safe), 0.0)
    o1 = torch.where(a1[..., None] > 0, out1.to(cdt), 0.0)
    o2 = torch.where(a2[..., None] > 0, out2.to(cdt), 0.0)
    g = grad_out.to(cdt)
    g_dot_o = (g * (a1[..., None] * o1 + a2[..., None] * o2)).sum(-1)
    g_lse = grad_lse.to(cdt) if grad_lse is not None else torch.zeros_like(lse)
    grad_l1 = a1 * ((g * o1).sum(-1) - g_dot_o + g_lse)
    grad_l2 = a2 * ((g * o2).sum(-1) - g_dot_o + g_lse)
    grad_o1 = (a1[..., None] * g).to(out1.dtype)
    grad_o2 = (a2[..., None] * g).to(out2.dtype)
    return grad_o1, grad_l1.to(lse1.dtype), grad_o2, grad_l2.to(lse2.dtype)


merge_attention.register_autograd(_merge_backward, setup_context=_merge_setup)
