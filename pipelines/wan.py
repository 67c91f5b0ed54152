"""Adapter for ``WanTransformer3DModel`` (Wan 2.1 / 2.2 T2V, I2V, TI2V): self-attention ``attn1`` only."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.transformers.transformer_wan import _get_qkv_projections
from torch.utils.hooks import RemovableHandle

from dit_accel.context import LayerBinding
from dit_accel.forward_info import ForwardInfo
from dit_accel.kernels.rotary_ops import norm_rotary, wan_rotary
from dit_accel.layout import TokenLayout, video_only_layout

from .base import BoundProcessor, InfoSource, ModelAdapter, reorder_argument, reorder_output, video_forward_info
from .module_hooks import needs_grad, runs_own_forward


def _plain_rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether the fused op may stand in for ``norm(x)``: a ``torch.nn.RMSNorm`` with an explicit eps,
    its weight (if any) on x's device, running its own forward (see :mod:`.module_hooks`)."""
    return (
        isinstance(norm, torch.nn.RMSNorm)
        and norm.eps is not None
        and (norm.weight is None or norm.weight.device == x.device)
        and runs_own_forward(norm)
    )


def prepare_query_key(attn: torch.nn.Module, x: torch.Tensor, norm: torch.nn.Module,
                      rotary_emb: tuple[torch.Tensor, torch.Tensor] | None,
                      fuse: bool = True) -> torch.Tensor:  # fmt: skip
    """``(B, S, H, D)`` query or key from its projection: the module's norm, heads split, Wan's rotary.

    With ``fuse``, an ``RMSNorm`` followed by the rotary runs as one fused op (one read, one write)
    when no gradient is wanted; otherwise (training, other norms, a method that must reproduce the
    stock output bit for bit) the stock sequence of differentiable ops.
    """
    if fuse and rotary_emb is not None and not needs_grad(x, norm) and _plain_rms_norm(norm, x):
        return norm_rotary(x, norm.weight, norm.eps, *rotary_emb, attn.heads)
    x = norm(x).unflatten(2, (attn.heads, -1))
    return wan_rotary(x, *rotary_emb) if rotary_emb is not None else x


class WanSelfAttnProcessor(BoundProcessor):
    """Replaces ``WanAttnProcessor`` on ``attn1``; identical up to q/k/v, then calls the op.

    Wan-architecture families (SkyReels-V2) subclass it with their own projection helper and layout.
    """

    qkv_projections = staticmethod(_get_qkv_projections)

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("WanSelfAttnProcessor serves self-attention (attn1) only")
        query, key, value = self.qkv_projections(attn, hidden_states, None)

        reproduces_stock = getattr(self.binding.op, "reproduces_stock", None)  # a bare op (a test's spy): stock
        fuse = reproduces_stock is not None and not reproduces_stock()
        query = prepare_query_key(attn, query, attn.norm_q, rotary_emb, fuse)
        key = prepare_query_key(attn, key, attn.norm_k, rotary_emb, fuse)
        value = value.unflatten(2, (attn.heads, -1))

        spans = (query.shape[1],)
        hidden_states = self.attend(query, key, value, spans, self.video_layout, attention_mask, rotary_emb)
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.type_as(query)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states

    def video_layout(self, spans: tuple[int, ...]) -> TokenLayout:
        return self.layout(spans[0])

    def layout(self, seq_len: int) -> TokenLayout:
        """The call's token layout: video tokens only."""
        info = self.binding.tracker.info
        return video_only_layout(seq_len, info.grid, info.token_tile)


class WanAdapter(ModelAdapter):
    family = "wan"
    model_class_names = ("WanTransformer3DModel",)
    stock_processor_names = ("WanAttnProcessor",)

    def attention_modules(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.attn1 for block in model.blocks]

    def make_processor(self, binding: LayerBinding) -> BoundProcessor:
        return WanSelfAttnProcessor(binding)

    def capture(self, model: torch.nn.Module, arguments: dict[str, Any]) -> ForwardInfo:
        return video_forward_info(arguments["hidden_states"], tuple(model.config.patch_size))

    def can_reorder(self, model: torch.nn.Module, arguments: dict[str, Any]) -> bool:
        """Per-token timesteps (Wan 2.2 TI2V) reach the blocks in raster order: keep raster then."""
        return arguments["timestep"].ndim == 1

    def install_reorder_hooks(self, model: torch.nn.Module, info: InfoSource) -> list[RemovableHandle]:
        return [
            model.rope.register_forward_hook(reorder_output(info, dim=1)),
            model.blocks[0].register_forward_pre_hook(reorder_argument(info, dim=1)),
            model.norm_out.register_forward_pre_hook(reorder_argument(info, dim=1, inverse=True)),
        ]
