"""dit-accel: sparse, cached and editing attention for Diffusers video and image transformers.

import dit_accel
handle = dit_accel.apply(pipe, "topk", density=0.125, dense_steps=0.2)
video = pipe(prompt).frames[0]
handle.remove()

The package imports lazily: ``import dit_accel`` loads neither Diffusers nor Triton; they load
when a name below is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it (imported on first access).
_EXPORTS = {
    "apply": "dit_accel.api",
    "AttentionHandle": "dit_accel.api",
    "AttentionContext": "dit_accel.context",
    "AccelerateConfig": "dit_accel.config",
    "MethodConfig": "dit_accel.config",
    "ForwardInfo": "dit_accel.forward_info",
    "TokenLayout": "dit_accel.layout",
    "AttentionMethod": "dit_accel.methods.base",
    "BlockSparseMethod": "dit_accel.methods.base",
    "DenseConfig": "dit_accel.methods.dense",
    "TopKConfig": "dit_accel.methods.topk",
    "RecordConfig": "dit_accel.methods.record",
    "AlignedGenConfig": "dit_accel.editing.aligned_gen",
    "list_methods": "dit_accel.registry",
    "register_method": "dit_accel.registry",
}
_SUBMODULES = ("editing", "kernels", "methods", "pipelines")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"dit_accel.{name}")
    raise AttributeError(f"module 'dit_accel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, *_SUBMODULES])
