"""Training-free editing methods (``kind = "edit"``), installed as ``dit_accel.editing``.

``aligned_gen`` (AlignedGen: style-aligned FLUX batches) is registered by name with
``dit_accel.apply``; ``aligned_batch`` runs a style-aligned batch in one call. ``ir_diffusion`` (IR-Diffusion: the same
subjects across a FLUX batch) likewise; ``ir_batch`` runs one. ``prime_composer`` (PrimeComposer) is applied by
``compose``, which builds its plan from a background, an object, its mask and a box.
"""

from __future__ import annotations

from .aligned_batch import aligned_batch
from .aligned_gen import AlignedGenAttention, AlignedGenConfig
from .compose import Composition, compose
from .ir_batch import ir_batch
from .ir_diffusion import IRDiffusionAttention, IRDiffusionConfig
from .prime_composer import PrimeComposerAttention, PrimeComposerConfig

__all__ = [
    "AlignedGenAttention",
    "AlignedGenConfig",
    "Composition",
    "IRDiffusionAttention",
    "IRDiffusionConfig",
    "PrimeComposerAttention",
    "PrimeComposerConfig",
    "aligned_batch",
    "compose",
    "ir_batch",
]
