"""Wan's q/k RMS norm + interleaved rotary as a PyTorch custom op: Triton on CUDA, the reference elsewhere.

Registered with ``torch.library.custom_op`` and a fake, like :mod:`.ops`, so compiled processors
trace it without graph breaks. It has no autograd formula: callers that need gradients (fine-tuning)
keep the stock differentiable ops (the Wan processor calls the norm module, then :func:`wan_rotary`).
"""

from __future__ import annotations

import torch

from .ops import HAS_TRITON, use_triton

if HAS_TRITON:
    from .norm_rotary import norm_rotary_triton, unsupported

Tensor = torch.Tensor


def wan_rotary(hidden_states: Tensor, freqs_cos: Tensor, freqs_sin: Tensor) -> Tensor:
    """Wan's interleaved rotary embedding of ``(B, S, H, D)`` rows, the stock processor's arithmetic."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


def norm_rotary_reference(x: Tensor, weight: Tensor | None, eps: float, freqs_cos: Tensor, freqs_sin: Tensor,
                          heads: int) -> Tensor:  # fmt: skip
    """``wan_rotary(rms_norm(x).unflatten(heads))``: x ``(B, S, H·D)`` -> ``(B, S, H, D)``."""
    normed = torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)
    return wan_rotary(normed.unflatten(2, (heads, -1)), freqs_cos, freqs_sin)


@torch.library.custom_op("dit_accel::norm_rotary", mutates_args=())
def norm_rotary(x: Tensor, weight: Tensor | None, eps: float, freqs_cos: Tensor, freqs_sin: Tensor,
                heads: int) -> Tensor:  # fmt: skip
    """RMS norm of x ``(B, S, H·D)`` then Wan's rotary, as ``(B, S, H, D)`` (see :mod:`.norm_rotary`)."""
    # Layouts the kernel does not read (tables the stock ops broadcast otherwise...) take the reference.
    if use_triton(x) and x.dtype != torch.float64 and unsupported(x, weight, freqs_cos, freqs_sin, heads) is None:
        return norm_rotary_triton(x, weight, eps, freqs_cos, freqs_sin, heads)
    return norm_rotary_reference(x, weight, eps, freqs_cos, freqs_sin, heads)


@norm_rotary.register_fake
def _(x, weight, eps, freqs_cos, freqs_sin, heads):
    return x.new_empty(x.shape[0], x.shape[1], heads, x.shape[2] // heads)
