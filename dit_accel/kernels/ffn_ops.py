"""A feed-forward's first product and its tanh GELU as one PyTorch custom op: cuBLASLt's GELU epilogue on CUDA.

Diffusers' ``GELU(approximate="tanh")`` (the feed-forwards of Wan, HunyuanVideo and FLUX) runs the
product, then GELU as its own elementwise kernel over the ``(tokens, hidden)`` activation: at the
Wan-1.3B 480p shape one more write and read of 587 MB a block, ~0.4 ms of a compiled block's 7.
``torch._addmm_activation(..., use_gelu=True)`` applies the same tanh GELU to the product's fp32
accumulator before it is rounded (PyTorch's own decomposition of it is ``gelu(addmm, "tanh")`` on CUDA).
Registered with a fake, like :mod:`.ops`, so compiled blocks trace it without graph breaks. No
autograd formula: callers that need gradients keep the stock modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def linear_gelu_tanh_reference(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``gelu(linear(x, weight, bias), approximate="tanh")``: what the stock module computes."""
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


@torch.library.custom_op("dit_accel::linear_gelu_tanh", mutates_args=())
def linear_gelu_tanh(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``gelu(x @ weight.T + bias, "tanh")`` for x ``(..., in)``: one cuBLASLt call on CUDA."""
    if not x.is_cuda:
        return linear_gelu_tanh_reference(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    return torch._addmm_activation(bias, rows, weight.t(), use_gelu=True).view(*x.shape[:-1], weight.shape[0])


@linear_gelu_tanh.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])
