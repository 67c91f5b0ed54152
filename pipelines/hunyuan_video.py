"""Adapter for ``HunyuanVideoTransformer3DModel``: dual- and single-stream blocks, never the token refiner.

Token order inside these blocks is ``[video, text]``; the text is padded and the padding is masked
by a ``(B, 1, 1, N)`` boolean key mask that the layout turns into per-sample valid text lengths.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.embeddings import apply_rotary_emb
from torch.utils.hooks import RemovableHandle

from dit_accel.context import LayerBinding
from dit_accel.forward_info import ForwardInfo
from dit_accel.layout import TokenLayout

from .base import (
    BoundProcessor,
    DualSingleStreamAdapter,
    InfoSource,
    padding_to_valid_lengths,
    reorder_argument,
    reorder_output,
    video_forward_info,
)


def hunyuan_layout(
    video_len: int, text_len: int, info: ForwardInfo, attention_mask: torch.Tensor | None
) -> TokenLayout:
    """``[video, text]`` layout with the valid text lengths read off the key-padding mask."""
    grid, token_tile = info.grid, info.token_tile
    if grid is not None and grid[0] * grid[1] * grid[2] != video_len:
        grid = token_tile = None
    return TokenLayout(
        seq_len=video_len + text_len,
        video_start=0,
        video_len=video_len,
        grid=grid,
        text_start=video_len,
        text_len=text_len,
        text_valid=padding_to_valid_lengths(attention_mask, video_len, text_len),
        token_tile=token_tile,
    )


class HunyuanVideoBlockProcessor(BoundProcessor):
    """Replaces ``HunyuanVideoAttnProcessor2_0``; identical up to q/k/v, then calls the op."""

    context_parallel_refusal = (
        "HunyuanVideoTransformer3DModel has no context-parallel plan in Diffusers and dit-accel does not "
        "support one: run HunyuanVideo on one GPU (or use dit-accel on Wan / FLUX with ulysses_degree)"
    )

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        video_len = hidden_states.shape[1]
        text_len = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        if attn.add_q_proj is None and encoder_hidden_states is not None:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)

        # 1. QKV projections
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)

        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        # 2. QK normalization
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # 3. Rotational positional embeddings applied to latent stream
        if image_rotary_emb is not None:
            if attn.add_q_proj is None and encoder_hidden_states is not None:
                query = torch.cat(
                    [
                        apply_rotary_emb(query[:, : -encoder_hidden_states.shape[1]], image_rotary_emb, sequence_dim=1),
                        query[:, -encoder_hidden_states.shape[1] :],
                    ],
                    dim=1,
                )
                key = torch.cat(
                    [
                        apply_rotary_emb(key[:, : -encoder_hidden_states.shape[1]], image_rotary_emb, sequence_dim=1),
                        key[:, -encoder_hidden_states.shape[1] :],
                    ],
                    dim=1,
                )
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        # 4. Encoder condition QKV projection and normalization
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            encoder_query = attn.add_q_proj(encoder_hidden_states)
            encoder_key = attn.add_k_proj(encoder_hidden_states)
            encoder_value = attn.add_v_proj(encoder_hidden_states)

            encoder_query = encoder_query.unflatten(2, (attn.heads, -1))
            encoder_key = encoder_key.unflatten(2, (attn.heads, -1))
            encoder_value = encoder_value.unflatten(2, (attn.heads, -1))

            if attn.norm_added_q is not None:
                encoder_query = attn.norm_added_q(encoder_query)
            if attn.norm_added_k is not None:
                encoder_key = attn.norm_added_k(encoder_key)

            query = torch.cat([query, encoder_query], dim=1)
            key = torch.cat([key, encoder_key], dim=1)
            value = torch.cat([value, encoder_value], dim=1)

        # 5. Attention
        info = self.binding.tracker.info
        hidden_states = self.attend(
            query,
            key,
            value,
            (video_len, text_len),
            lambda spans: hunyuan_layout(*spans, info, attention_mask),
            attention_mask,
            image_rotary_emb,
        )
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)

        # 6. Output projection
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = (
                hidden_states[:, : -encoder_hidden_states.shape[1]],
                hidden_states[:, -encoder_hidden_states.shape[1] :],
            )

            if getattr(attn, "to_out", None) is not None:
                hidden_states = attn.to_out[0](hidden_states)
                hidden_states = attn.to_out[1](hidden_states)

            if getattr(attn, "to_add_out", None) is not None:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)

        return hidden_states, encoder_hidden_states


class HunyuanVideoAdapter(DualSingleStreamAdapter):
    family = "hunyuan_video"
    model_class_names = ("HunyuanVideoTransformer3DModel",)
    stock_processor_names = ("HunyuanVideoAttnProcessor2_0",)

    def make_processor(self, binding: LayerBinding) -> BoundProcessor:
        return HunyuanVideoBlockProcessor(binding)

    def capture(self, model: torch.nn.Module, arguments: dict[str, Any]) -> ForwardInfo:
        patch = (model.config.patch_size_t, model.config.patch_size, model.config.patch_size)
        return video_forward_info(arguments["hidden_states"], patch)

    def can_reorder(self, model: torch.nn.Module, arguments: dict[str, Any]) -> bool:
        """Token-replace I2V modulates the first frame's tokens by position: keep raster order."""
        return model.config.image_condition_type != "token_replace"

    def install_reorder_hooks(self, model: torch.nn.Module, info: InfoSource) -> list[RemovableHandle]:
        first = self.first_block(model)
        return [
            model.rope.register_forward_hook(reorder_output(info, dim=0)),
            first.register_forward_pre_hook(reorder_argument(info, dim=1)),
            model.norm_out.register_forward_pre_hook(reorder_argument(info, dim=1, inverse=True)),
        ]
