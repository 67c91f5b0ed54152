"""What an attention method knows about the call it serves (:class:`AttentionContext`).

A method is called as ``method(q, k, v, ctx) -> o``. ``q``, ``k`` and ``v`` are in Diffusers' layout
``(B, S, H, D)``, after q/k normalisation and RoPE, exactly what the stock processor would hand to
``dispatch_attention_fn``; ``o`` has the same layout as ``q``. :meth:`AttentionContext.dense` is
that stock call, so any method can fall back to the exact dense result.

Per-layer facts (layer index, state) are read through the layer's :class:`LayerBinding` only when
an op asks for them: under ``torch.compile`` every Python value a traced op reads becomes a guard,
and a layer index read by every layer would recompile each block of a regionally compiled model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from .block_map import BlockMap
from .forward_info import ForwardInfo
from .layout import TokenLayout
from .steps import StepTracker

if TYPE_CHECKING:
    from .methods.base import AttentionMethod


@dataclass
class LayerBinding:
    """One installed processor's link to its handle: the op, the tracker and its place in the model.

    ``state`` is a per-layer dict for plain caches; ``module_state`` is the method's per-layer
    ``nn.Module`` (trained or saved parameters and buffers), registered on the attention module
    so that it moves, saves and loads with the model, and deleted by ``remove()``.
    """

    op: AttentionMethod
    tracker: StepTracker
    layer_index: int
    num_layers: int
    dense_layer: bool
    state: dict[str, Any] = field(default_factory=dict)
    module_state: torch.nn.Module | None = None


@dataclass
class AttentionContext:
    """Everything an op may use besides q, k and v.

    Attributes:
        layout: token ranges and video grid of this call.
        binding: the layer's binding (see the properties for what it offers).
        attention_mask: the mask the stock processor passes to attention (HunyuanVideo text padding).
        rotary_emb: the rotary embedding the model passed to this layer, for ops that re-position keys.
        backend: Diffusers attention backend selected on the processor (``set_attention_backend``).
        parallel_config: Diffusers context-parallel config of the processor, if any.
    """

    layout: TokenLayout
    binding: LayerBinding
    attention_mask: torch.Tensor | None = None
    rotary_emb: Any = None
    backend: Any = None
    parallel_config: Any = None

    @property
    def tracker(self) -> StepTracker:
        return self.binding.tracker

    @property
    def info(self) -> ForwardInfo:
        """Facts of the transformer forward this call belongs to (step, grid, token order)."""
        return self.binding.tracker.info

    @property
    def module_state(self) -> torch.nn.Module | None:
        """The method's per-layer ``nn.Module`` state, if it declared one."""
        return self.binding.module_state

    def wants_block_map(self) -> bool:
        """Whether the handle asked for this call's block map (``handle.capture_block_map``)."""
        request = self.binding.tracker.block_map_request
        if request is None or torch.compiler.is_compiling():
            return False
        return (request.layer, request.step) == (self.binding.layer_index, self.binding.tracker.step_index)

    def keep_block_map(self, codes: torch.Tensor, legend: dict[int, str]) -> None:
        """Store this call's block map on the handle (the first call of the step: cond, under CFG)."""
        tracker = self.binding.tracker
        if tracker.block_map is None:
            request = tracker.block_map_request
            tracker.block_map = BlockMap(codes.detach().to("cpu", torch.uint8), legend, request.layer, request.step)

    def record_dense_fallback(self, method: str, reason: str) -> None:
        """Count a call that ran dense instead of ``method`` (``handle.dense_fallbacks``), warn once."""
        self.binding.tracker.record_dense_fallback(method, reason)

    @property
    def layer_index(self) -> int:
        """Index of the attention layer in the transformer (dual-stream blocks first)."""
        return self.binding.layer_index

    @property
    def num_layers(self) -> int:
        return self.binding.num_layers

    @property
    def state(self) -> dict[str, Any]:
        """Per-layer dict that persists across calls (caches, centroids)."""
        return self.binding.state

    @property
    def in_warmup(self) -> bool:
        """True when an acceleration method must compute exact attention for this call."""
        return self.binding.dense_layer or self.binding.tracker.warmup

    @property
    def step_index(self) -> int:
        return self.binding.tracker.step_index

    @property
    def num_steps(self) -> int | None:
        return self.binding.tracker.num_steps

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
