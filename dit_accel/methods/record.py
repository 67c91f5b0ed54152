"""``record``: exact attention that also keeps the q/k/v it was given, for kernel tests and benchmarks.

Real q/k/v (after q/k norm and RoPE) are what sparse kernels must be judged on: random tensors give
near-uniform attention. The method copies them to the CPU for the chosen layers and denoising steps
and returns the stock dense result, so the generation itself is unchanged. Saving and loading:
:mod:`dit_accel.recorder` (``record_qkv``, ``load_qkv``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from dit_accel.config import MethodConfig
from dit_accel.context import AttentionContext
from dit_accel.recorder import QKVStore, truncate_video

from .base import AttentionMethod


def _index_set(name: str, value: Any) -> tuple[int, ...] | None:
    """None, an int or a sequence of ints >= 0, as a sorted tuple."""
    if value is None:
        return None
    values = [value] if isinstance(value, int) else value
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be None, an int or a sequence of ints, got {type(value).__name__}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must hold ints >= 0, got {v!r}")
    return tuple(sorted(set(values)))


@dataclass
class RecordConfig(MethodConfig):
    """Options of ``record``.

    Attributes:
        layers: attention-layer indices to record (as counted by the adapter, see
            ``AttentionContext.layer_index``); an int, a sequence, or None for every layer.
        steps: denoising-step indices to record (0-based); an int, a sequence, or None for every step.
        max_tokens: keep at most this many video tokens per call (whole latent frames); None keeps all.
        store: where the recorded calls go (not an option; ``handle.config.store.save(path)``).
    """

    method: ClassVar[str] = "record"

    layers: int | Sequence[int] | None = None
    steps: int | Sequence[int] | None = None
    max_tokens: int | None = None
    store: QKVStore = field(default_factory=QKVStore, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.layers = _index_set("layers", self.layers)
        self.steps = _index_set("steps", self.steps)
        if self.max_tokens is not None and (
            isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1
        ):
            raise ValueError(f"max_tokens must be None or an int >= 1, got {self.max_tokens!r}")


class RecordAttention(AttentionMethod):
    """Dense attention; copies q/k/v of the selected calls into the config's store."""

    name = "record"
    kind = "wrap"
    description = "exact attention that records q/k/v (after RoPE)"
    config_class = RecordConfig
    config: RecordConfig

    def wants(self, ctx: AttentionContext) -> bool:
        cfg = self.config
        return (cfg.layers is None or ctx.layer_index in cfg.layers) and (
            cfg.steps is None or ctx.step_index in cfg.steps
        )

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        if self.wants(ctx):
            layout = ctx.layout
            rq, rk, rv = q, k, v
            if self.config.max_tokens is not None and layout.video_len > self.config.max_tokens:
                index, layout = truncate_video(layout, self.config.max_tokens)
                key_index = torch.cat([index, torch.arange(ctx.layout.seq_len, k.shape[1])]).to(k.device)
                rq, rk, rv = q[:, index.to(q.device)], k[:, key_index], v[:, key_index]
            self.config.store.add(rq, rk, rv, ctx.step_index, ctx.layer_index, layout)
        return ctx.dense(q, k, v)
