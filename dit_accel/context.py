"""What an attention op knows about the call it serves, and the op interface.

An op is a callable ``op(q, k, v, ctx) -> o``. ``q``, ``k`` and ``v`` are in Diffusers' layout
``(B, S, H, D)``, after q/k normalisation and RoPE, exactly what the stock processor would hand to
``dispatch_attention_fn``; ``o`` has the same layout as ``q``. :meth:`AttentionContext.dense` is
that stock call, so any op can fall back to the exact dense result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from .layout import TokenLayout
from .steps import StepTracker


@dataclass
class AttentionContext:
    """Everything an op may use besides q, k and v.

    Attributes:
        layout: token ranges and video grid of this call.
        layer_index: index of the attention layer in the transformer (dual-stream blocks first).
        num_layers: number of attention layers the handle manages in this transformer.
        tracker: the handle's step tracker (``step_index``, ``num_steps``).
        dense_layer: this layer is inside ``dense_layers`` and must stay exact.
        state: per-layer dict that persists across calls (caches, centroids).
        attention_mask: the mask the stock processor passes to attention (HunyuanVideo text padding).
        rotary_emb: the rotary embedding the model passed to this layer, for ops that re-position keys.
        backend: Diffusers attention backend selected on the processor (``set_attention_backend``).
        parallel_config: Diffusers context-parallel config of the processor, if any.
    """

    layout: TokenLayout
    layer_index: int
    num_layers: int
    tracker: StepTracker
    dense_layer: bool = False
    state: dict[str, Any] = field(default_factory=dict)
    attention_mask: torch.Tensor | None = None
    rotary_emb: Any = None
    backend: Any = None
    parallel_config: Any = None

    @property
    def in_warmup(self) -> bool:
        """True when an acceleration method must compute exact attention for this call."""
        return self.dense_layer or self.tracker.warmup

    @property
    def step_index(self) -> int:
        return self.tracker.step_index

    @property
    def num_steps(self) -> int | None:
        return self.tracker.num_steps

    def dense(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: Any = "stock") -> torch.Tensor:
        """Exact attention through Diffusers' dispatcher, as the stock processor computes it."""
        mask = self.attention_mask if isinstance(attention_mask, str) else attention_mask
        return dispatch_attention_fn(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=0.0,
            is_causal=False,
            backend=self.backend,
            parallel_config=self.parallel_config,
        )


class AttentionOp(Protocol):
    """An attention method: same inputs and output layout as the stock attention call."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext) -> torch.Tensor: ...
