"""The adapter registry: which adapter serves which transformer class."""

from __future__ import annotations

import torch

from dit_accel.context import LayerBinding

from .base import BoundProcessor, ModelAdapter
from .flux import FluxAdapter
from .hunyuan_video import HunyuanVideoAdapter
from .skyreels_v2 import SkyReelsV2Adapter
from .wan import WanAdapter

ADAPTERS: tuple[ModelAdapter, ...] = (WanAdapter(), HunyuanVideoAdapter(), FluxAdapter(), SkyReelsV2Adapter())


def supported_model_names() -> list[str]:
    return [name for adapter in ADAPTERS for name in adapter.model_class_names]


def find_adapter(model: torch.nn.Module) -> ModelAdapter | None:
    """The adapter serving this transformer, or None if its class is not supported."""
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter
    return None


__all__ = [
    "ADAPTERS",
    "BoundProcessor",
    "LayerBinding",
    "ModelAdapter",
    "find_adapter",
    "supported_model_names",
]
