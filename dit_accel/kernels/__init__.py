"""GPU kernels (Triton) and their PyTorch references, on plain ``(B, H, S, D)`` tensors.

Nothing here knows about Diffusers, steps or text tokens. Public ops dispatch to Triton on CUDA
and to the reference elsewhere; both are registered as ``torch.ops.dit_accel.*`` custom ops.
"""

from __future__ import annotations

from .api import *  # noqa: F403
from .api import __all__  # noqa: F401
