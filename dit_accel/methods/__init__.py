"""Attention methods: one module per method, each a config dataclass and an :class:`AttentionMethod`.

Built-ins are registered by name in :mod:`dit_accel.registry` and imported on first use.
"""

from __future__ import annotations

from .base import AttentionMethod, BlockSparseMethod, Routing

__all__ = ["AttentionMethod", "BlockSparseMethod", "Routing"]
