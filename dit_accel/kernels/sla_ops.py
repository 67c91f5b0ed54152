"""SLA's linear branch as PyTorch custom ops: Triton on CUDA, the reference elsewhere; differentiable.

``dit_accel::sla_linear_attention`` is the forward; its autograd calls the op
``dit_accel::sla_linear_attention_backward``, so that ``torch.compile`` traces both (each has a
fake implementation) without graph breaks, with or without gradients. ``dit_accel::sla_linear_projected``
is the forward-only fused ``O_s + Proj(O_l)`` for calls that need no gradient.
"""

from __future__ import annotations

import torch

from . import sla_linear_reference as reference
from .ops import use_triton

try:
    from .sla_linear import SLA_HEAD_DIMS, sla_linear_triton
    from .sla_linear_bwd import sla_linear_backward_triton
except ImportError:  # pragma: no cover - platforms without Triton
    SLA_HEAD_DIMS = ()

Tensor = torch.Tensor


def _triton_serves(q: Tensor) -> bool:
    return use_triton(q) and q.dtype != torch.float64 and q.shape[-1] in SLA_HEAD_DIMS


def _like(q: Tensor, q_rows: Tensor | None, values: Tensor) -> Tensor:
    """``values`` in a tensor with q's strides (the layout the fake implementation promises)."""
    out = torch.empty_like(q) if q_rows is None else torch.zeros_like(q)
    return out.copy_(values)


@torch.library.custom_op("dit_accel::sla_linear_attention", mutates_args=())
def sla_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    marginal: Tensor,
    block_m: int,
    block_n: int,
    key_len: int,
    feature_map: str,
    eps: float,
    q_rows: Tensor | None = None,
) -> Tensor:
    """SLA's linear attention over each query block's marginal key blocks (see ``sla_linear_reference``).

    q, k, v ``(B, H, S, D)``; ``marginal`` ``(B, H, NQ, NK)`` bool. Returns a tensor shaped (and
    strided) like q: with ``q_rows`` the listed rows hold the output, the others 0.
    """
    kwargs = dict(block_m=block_m, block_n=block_n, key_len=key_len, feature_map=feature_map, eps=eps, q_rows=q_rows)
    if _triton_serves(q):
        return sla_linear_triton(q, k, v, marginal, **kwargs)
    return _like(q, q_rows, reference.sla_linear_reference(q, k, v, marginal, **kwargs))


@sla_linear_attention.register_fake
def _(q, k, v, marginal, block_m, block_n, key_len, feature_map, eps, q_rows=None):
    return torch.empty_like(q)


@torch.library.custom_op("dit_accel::sla_linear_attention_backward", mutates_args=())
def sla_linear_attention_backward(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    marginal: Tensor,
    block_m: int,
    block_n: int,
    key_len: int,
    feature_map: str,
    eps: float,
    q_rows: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` of :func:`sla_linear_attention` (0 for rows outside ``q_rows`` and past ``key_len``)."""
    kwargs = dict(block_m=block_m, block_n=block_n, key_len=key_len, feature_map=feature_map, eps=eps, q_rows=q_rows)
    if _triton_serves(q):
        return sla_linear_backward_triton(grad_out, q, k, v, marginal, **kwargs)
    grads = reference.sla_linear_backward_reference(grad_out, q, k, v, marginal, **kwargs)
    return tuple(torch.empty_like(x).copy_(g) for x, g in zip((q, k, v), grads, strict=True))


@sla_linear_attention_backward.register_fake
def _(grad_out, q, k, v, marginal, block_m, block_n, key_len, feature_map, eps, q_rows=None):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@torch.library.custom_op("dit_accel::sla_linear_projected", mutates_args=())
def sla_linear_projected(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    marginal: Tensor,
    block_m: int,
    block_n: int,
    key_len: int,
    feature_map: str,
    eps: float,
    residual: Tensor,
    weight: Tensor,
    q_rows: Tensor | None = None,
) -> Tensor:
    """SLA's output ``residual + O_l weightᵀ`` in one pass (forward only: calls that need no gradient).

    ``residual`` is shaped like q (rows outside ``q_rows`` are returned as they are); ``weight`` D x D.
    """
    kwargs = dict(block_m=block_m, block_n=block_n, key_len=key_len, feature_map=feature_map, eps=eps, q_rows=q_rows)
    if _triton_serves(q):
        return sla_linear_triton(q, k, v, marginal, residual=residual, weight=weight, **kwargs)
    return torch.empty_like(residual).copy_(
        reference.sla_projected_reference(q, k, v, marginal, residual, weight, **kwargs)
    )


@sla_linear_projected.register_fake
def _(q, k, v, marginal, block_m, block_n, key_len, feature_map, eps, residual, weight, q_rows=None):
    return torch.empty_like(residual)


def _setup(ctx, inputs: tuple, output: Tensor) -> None:
    q, k, v, marginal, block_m, block_n, key_len, feature_map, eps, q_rows = inputs
    ctx.sizes = (block_m, block_n, key_len, feature_map, eps)
    ctx.save_for_backward(q, k, v, marginal, q_rows)


def _backward(ctx, grad_out: Tensor):
    q, k, v, marginal, q_rows = ctx.saved_tensors
    dq, dk, dv = sla_linear_attention_backward(grad_out, q, k, v, marginal, *ctx.sizes, q_rows)
    return dq, dk, dv, *(None,) * 7


sla_linear_attention.register_autograd(_backward, setup_context=_setup)
