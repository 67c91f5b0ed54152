"""Whether a module runs its own ``forward``: nothing hooked on it or standing in for it.

The fused stand-ins for stock modules (Wan's q/k norm + rotary, the feed-forwards' product + GELU)
read a module's weights directly. That is only safe when nothing else runs around its call:
accelerate's offload keeps the weights on ``meta`` outside a pre-forward hook, and user hooks
expect to see the call.
"""

from __future__ import annotations

import torch


def runs_own_forward(module: torch.nn.Module) -> bool:
    """No forward (pre-)hooks, no instance-level ``forward``, no accelerate or Diffusers hook."""
    return not (
        module._forward_hooks
        or module._forward_pre_hooks
        or "forward" in vars(module)
        or hasattr(module, "_hf_hook")
        or hasattr(module, "_diffusers_hook")
    )


def needs_grad(x: torch.Tensor, module: torch.nn.Module) -> bool:
    """Whether autograd would record this call (the fused ops have no backward)."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))
