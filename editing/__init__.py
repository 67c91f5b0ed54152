"""Training-free editing methods (``kind = "edit"``), installed as ``dit_accel.editing``.

``aligned_gen`` (AlignedGen: style-aligned FLUX batches) is registered by name with
``dit_accel.apply``; ``aligned_batch`` runs a style-aligned batch in one call.
"""

from __future__ import annotations

from .aligned_batch import aligned_batch
from .aligned_gen import AlignedGenAttention, AlignedGenConfig

__all__ = ["AlignedGenAttention", "AlignedGenConfig", "aligned_batch"]
