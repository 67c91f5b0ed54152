"""Adapter for ``FluxTransformer2DModel``: dual- and single-stream blocks.

Token order is ``[text, image]``. Single-stream blocks receive text and image already joined, so
the text length of the call is captured from the transformer's ``encoder_hidden_states`` before
the blocks run. The image grid is read off ``img_ids``; tokens that do not form rasters (unusual
id layouts) are treated as a 1-D sequence.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import _get_qkv_projections
from torch.utils.hooks import RemovableHandle

from dit_accel import context_parallel
from dit_accel.context import LayerBinding
from dit_accel.forward_info import ForwardInfo
from dit_accel.layout import TokenLayout

from .base import BoundProcessor, DualSingleStreamAdapter, InfoSource, reorder_argument, reorder_output


def raster_grid_from_ids(img_ids: torch.Tensor | None) -> tuple[int, int, int] | None:
    """``(F, H, W)`` when ``img_ids`` lists F row-major H x W rasters (FLUX, FLUX Kontext), else None."""
    if img_ids is None:
        return None
    ids = img_ids[0] if img_ids.ndim == 3 else img_ids
    if ids.ndim != 2 or ids.shape[-1] < 3 or ids.shape[0] == 0:
        return None
    ids = ids.detach().to("cpu", torch.float64)
    rows = ids[:, 1] - ids[:, 1].min()
    cols = ids[:, 2] - ids[:, 2].min()
    height, width = int(rows.max()) + 1, int(cols.max()) + 1
    count = ids.shape[0]
    if count % (height * width):
        return None
    index = torch.arange(count, dtype=torch.float64)
    expected_rows = torch.div(index, width, rounding_mode="floor") % height
    expected_cols = index % width
    if not (torch.equal(rows, expected_rows) and torch.equal(cols, expected_cols)):
        return None
    return count // (height * width), height, width


def context_image_len(img_ids: torch.Tensor) -> int:
    """Trailing image tokens of a conditioning image (FLUX Kontext tags them with a first id above the target's)."""
    first = (img_ids[0] if img_ids.ndim == 3 else img_ids)[:, 0]
    if first.numel() == 0:
        return 0
    is_context = first != first[0]
    count = int(is_context.sum())
    return count if count and bool(is_context[-count:].all()) else 0


def flux_layout(seq_len: int, text_len: int, info: ForwardInfo) -> TokenLayout:
    video_len = seq_len - text_len
    grid, token_tile = info.grid, info.token_tile
    if grid is not None and grid[0] * grid[1] * grid[2] != video_len:
        grid = token_tile = None
    whole_forward = seq_len == info.text_len + info.video_len and token_tile is None
    return TokenLayout(
        seq_len=seq_len,
        video_start=text_len,
        video_len=video_len,
        grid=grid,
        text_start=0,
        text_len=text_len,
        token_tile=token_tile,
        external_start=info.external_start if whole_forward else 0,
        external_len=info.external_len if whole_forward else 0,
    )


class FluxBlockProcessor(BoundProcessor):
    """Replaces ``FluxAttnProcessor``; identical up to q/k/v, then calls the op."""

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )

        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))

        query = attn.norm_q(query)
        key = attn.norm_k(key)

        if attn.added_kv_proj_dim is not None:
            encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))
            encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))

            encoder_query = attn.norm_added_q(encoder_query)
            encoder_key = attn.norm_added_k(encoder_key)

            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)

        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        info = self.binding.tracker.info
        if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
            text_len = encoder_hidden_states.shape[1]
        else:  # under context parallelism each rank holds its share of the text, then of the image
            text_len = min(context_parallel.local_share(info.text_len, self._parallel_config), query.shape[1])
        spans = (text_len, query.shape[1] - text_len)
        hidden_states = self.attend(
            query,
            key,
            value,
            spans,
            lambda full: flux_layout(sum(full), full[0], info),
            attention_mask,
            image_rotary_emb,
        )
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)

        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]],
                dim=1,
            )
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())

            return hidden_states, encoder_hidden_states
        else:
            return hidden_states


class FluxAdapter(DualSingleStreamAdapter):
    family = "flux"
    model_class_names = ("FluxTransformer2DModel",)
    stock_processor_names = ("FluxAttnProcessor",)

    def make_processor(self, binding: LayerBinding) -> BoundProcessor:
        return FluxBlockProcessor(binding)

    def capture(self, model: torch.nn.Module, arguments: dict[str, Any]) -> ForwardInfo:
        text = arguments.get("encoder_hidden_states")
        img_ids = arguments.get("img_ids")
        text_len = 0 if text is None else int(text.shape[1])
        image = arguments["hidden_states"]
        context = context_image_len(img_ids) if img_ids is not None and img_ids.shape[-2] == image.shape[1] else 0
        return ForwardInfo(
            text_len=text_len,
            grid=raster_grid_from_ids(img_ids),
            video_start=text_len,
            video_len=int(image.shape[1]),
            device=image.device,
            # For ops that re-position tokens (AlignedGen's ShiftPE): the model's own rotary
            # module and position ids, so shifted tables are computed exactly as the model does.
            pos_embed=model.pos_embed,
            img_ids=img_ids,
            txt_ids=arguments.get("txt_ids"),
            # FLUX Kontext: the context image's tokens, fixed context for FlashBlock.
            external_start=text_len + int(image.shape[1]) - context,
            external_len=context,
        )

    def can_reorder(self, model: torch.nn.Module, arguments: dict[str, Any]) -> bool:
        """ControlNet residuals are added in raster order between blocks: keep raster order then."""
        return all(
            arguments.get(name) is None for name in ("controlnet_block_samples", "controlnet_single_block_samples")
        )

    def install_reorder_hooks(self, model: torch.nn.Module, info: InfoSource) -> list[RemovableHandle]:
        first = self.first_block(model)
        return [
            model.pos_embed.register_forward_hook(reorder_output(info, dim=0, after_text=True)),
            first.register_forward_pre_hook(reorder_argument(info, dim=1, keyword="hidden_states"), with_kwargs=True),
            model.norm_out.register_forward_pre_hook(reorder_argument(info, dim=1, inverse=True)),
        ]
