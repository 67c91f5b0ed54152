"""dit-accel: sparse, cached and editing attention for Diffusers video and image transformers.

import dit_accel
handle = dit_accel.apply(pipe, "topk", density=0.125, dense_steps=0.2)
video = pipe(prompt).frames[0]
handle.remove()
"""

from __future__ import annotations

from . import editing as editing  # importing registers aligned_gen
from . import methods as methods  # importing registers the built-in methods
from .api import AttentionHandle, apply
from .config import MethodConfig
from .context import AttentionContext
from .layout import TokenLayout
from .methods import DenseConfig, TopKConfig
from .registry import list_methods

__version__ = "0.1.0"

__all__ = [
    "AttentionContext",
    "AttentionHandle",
    "DenseConfig",
    "MethodConfig",
    "TokenLayout",
    "TopKConfig",
    "apply",
    "list_methods",
]
