"""GPU kernels (Triton) and their PyTorch references, on plain ``(B, H, S, D)`` tensors.

Nothing here knows about Diffusers, steps or text tokens. Public ops dispatch to Triton on CUDA
and to the reference elsewhere; both are registered as ``torch.ops.dit_accel.*`` custom ops.
"""

from __future__ import annotations

# This folder is installed as ``dit_accel.kernels``. From a checkout's root Python can also see it as a
# top-level package (transformers probes for Hugging Face's ``kernels`` by importing it); imported
# under that name it stays empty, so nothing is imported or registered twice and no import cycle
# through transformers can start here.
if __name__ == "dit_accel.kernels":
    from .api import *  # noqa: F403
    from .api import __all__  # noqa: F401
