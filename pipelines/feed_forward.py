"""Diffusers feed-forwards with their first product and tanh GELU fused, while a method is applied.

``GELU(approximate="tanh")`` modules (Wan, HunyuanVideo and FLUX feed-forwards) get an instance
``forward`` that calls :func:`~dit_accel.kernels.ffn_ops.linear_gelu_tanh` when the call is on NVIDIA
CUDA outside autocast, wants no gradient and its ``proj`` is a plain, unhooked ``nn.Linear`` with a
bias, whose weights are plain tensors in the input's dtype; any other call (CPU, ROCm, training, a
LoRA-wrapped, offloaded or quantized ``proj``) runs the stock forward.
``apply()`` installs it for methods that do not promise the stock output bit for bit (unless
``DIT_ACCEL_FUSED_FFN=0``: e.g. to let Inductor's max-autotune fuse the GELU into its own GEMMs),
and ``remove()`` takes it away.
"""

from __future__ import annotations

import os
import types

import torch
from diffusers.models.activations import GELU

from dit_accel.kernels.ffn_ops import linear_gelu_tanh

from .module_hooks import needs_grad, runs_own_forward

FUSED_DEVICES = ("cuda",)  # where the op beats the stock pair (elsewhere it is the same two calls)
ENV_VAR = "DIT_ACCEL_FUSED_FFN"
PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)  # not torchao / DTensor subclasses the op cannot take


def _fusable(module: GELU, x: torch.Tensor) -> bool:
    proj = module.proj
    return (
        x.device.type in FUSED_DEVICES
        and torch.version.hip is None  # cuBLASLt's epilogue; ROCm's is not checked
        and not torch.is_autocast_enabled(x.device.type)
        and type(proj) is torch.nn.Linear
        and proj.bias is not None
        and type(x) in PLAIN_TENSORS
        and type(proj.weight) in PLAIN_TENSORS
        and type(proj.bias) in PLAIN_TENSORS
        and proj.weight.dtype == x.dtype
        and proj.weight.device == x.device
        and runs_own_forward(proj)
        and not needs_grad(x, module)
    )


def _fused_forward(self: GELU, hidden_states: torch.Tensor) -> torch.Tensor:
    if _fusable(self, hidden_states):
        return linear_gelu_tanh(hidden_states, self.proj.weight, self.proj.bias)
    return type(self).forward(self, hidden_states)


class FusedFeedForward:
    """One ``GELU`` module's fused forward; ``remove()`` gives the module its stock one back."""

    def __init__(self, module: GELU) -> None:
        self.module = module
        self.forward = types.MethodType(_fused_forward, module)
        module.forward = self.forward

    def remove(self) -> None:
        if vars(self.module).get("forward") is self.forward:
            del self.module.forward
        elif getattr(self.module, "_old_forward", None) is self.forward:  # wrapped since (accelerate, Diffusers hooks)
            self.module._old_forward = types.MethodType(type(self.module).forward, self.module)


def fuse_feed_forwards(model: torch.nn.Module) -> list[FusedFeedForward]:
    """Fuse every unhooked tanh-``GELU`` of ``model`` (none when ``DIT_ACCEL_FUSED_FFN=0``); the returned
    handles undo it."""
    if os.environ.get(ENV_VAR) == "0":
        return []
    return [
        FusedFeedForward(module)
        for module in model.modules()
        if isinstance(module, GELU) and module.approximate == "tanh" and runs_own_forward(module)
    ]
