"""Adapter for ``SkyReelsV2Transformer3DModel`` (SkyReels-V2 T2V, I2V and diffusion forcing): ``attn1`` only.

SkyReels-V2 is Wan-architecture: the stock ``SkyReelsV2AttnProcessor`` computes self-attention q/k/v
exactly as Wan's does (its own projection helper, the same interleaved rotary arithmetic), so the Wan
processor and adapter serve it with SkyReels' projection helper. What differs is diffusion forcing
(``enable_diffusion_forcing=True``): the timestep is per latent frame ``(B, F)``, frames whose timestep
is 0 are clean (finished blocks, or a prefix video) and, with ``num_frame_per_block > 1``, the model
passes a block-causal frame mask (a query frame block sees its own and earlier blocks). The adapter
declares both on the layout: the clean leading frames as the call's external keys and the causal
block size in tokens, so a method can split the call without reading the mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from diffusers.models.transformers.transformer_skyreels_v2 import _get_qkv_projections

from dit_accel.context import LayerBinding
from dit_accel.forward_info import ForwardInfo
from dit_accel.layout import TokenLayout

from .base import BoundProcessor
from .wan import WanAdapter, WanSelfAttnProcessor


class SkyReelsV2SelfAttnProcessor(WanSelfAttnProcessor):
    """Replaces ``SkyReelsV2AttnProcessor`` on ``attn1``; identical up to q/k/v, then calls the op."""

    qkv_projections = staticmethod(_get_qkv_projections)

    def layout(self, seq_len: int) -> TokenLayout:
        """Video tokens only, with the clean prefix frames as external keys and the causal block size."""
        layout = super().layout(seq_len)
        info = self.binding.tracker.info
        if layout.grid is None or layout.token_tile is not None:
            return layout
        return dataclasses.replace(layout, external_len=info.external_len, causal_block=info.causal_block)


def clean_prefix_frames(frame_timesteps: list[float]) -> int:
    """Number of leading frames whose timestep is 0 (already denoised: fixed context)."""
    return next((index for index, t in enumerate(frame_timesteps) if t != 0.0), len(frame_timesteps))


class SkyReelsV2Adapter(WanAdapter):
    family = "skyreels_v2"
    model_class_names = ("SkyReelsV2Transformer3DModel",)
    stock_processor_names = ("SkyReelsV2AttnProcessor",)

    def make_processor(self, binding: LayerBinding) -> BoundProcessor:
        return SkyReelsV2SelfAttnProcessor(binding)

    def capture(self, model: torch.nn.Module, arguments: dict[str, Any]) -> ForwardInfo:
        """Wan's facts, plus the causal block size and, in diffusion forcing, the clean prefix frames."""
        info = super().capture(model, arguments)
        _, height, width = info.grid
        per_block = model.config.num_frame_per_block
        if per_block > 1:
            info.causal_block = per_block * height * width
        timestep = arguments["timestep"]
        if arguments.get("enable_diffusion_forcing") and timestep.ndim == 2:
            per_frame = timestep.detach().amax(dim=0).float().cpu().tolist()
            info.frame_timesteps = tuple(per_frame)
            info.external_len = clean_prefix_frames(per_frame) * height * width
        return info

    def can_reorder(self, model: torch.nn.Module, arguments: dict[str, Any]) -> bool:
        """Not under the block-causal mask either: the model builds it in raster order."""
        return super().can_reorder(model, arguments) and model.config.num_frame_per_block == 1
