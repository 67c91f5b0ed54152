"""Training-free editing ops, installed as ``dit_accel.editing``.

Importing this package registers ``aligned_gen`` (AlignedGen: style-aligned FLUX batches) with
``dit_accel.apply``.
"""

from __future__ import annotations

from dit_accel.registry import MethodSpec, register_method

from .aligned_batch import aligned_batch
from .aligned_gen import AlignedGenAttention, AlignedGenConfig

register_method(
    MethodSpec(
        "aligned_gen",
        AlignedGenConfig,
        AlignedGenAttention,
        "AlignedGen: style-aligned FLUX batches (ShiftPE + attention sharing), attention through any method",
    )
)

__all__ = ["AlignedGenAttention", "AlignedGenConfig", "aligned_batch"]
