"""What a method may know about the transformer forward a call belongs to.

The step-tracking hook fills one :class:`ForwardInfo` before every transformer forward (outside
any compiled region), from the adapter's reading of the forward's arguments and from the step
tracker. Processors and methods read it through ``ctx.info``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

Tile = tuple[int, int, int]


@dataclass
class ForwardInfo:
    """Facts of one transformer forward, shared by all its attention calls.

    Attributes:
        grid: latent token grid ``(T, H, W)`` after patching, or None when tokens form no raster.
        video_start: index of the first video (image) token in the attention sequence.
        video_len: number of video tokens.
        text_len: number of text tokens joined to the sequence (FLUX); 0 when none or added later.
        device: device of the hidden states.
        timestep: the forward's noise level (largest entry of a per-token timestep).
        step_index: denoising step of this forward (0-based).
        num_steps: number of denoising steps, when known.
        token_tile: the tile order video tokens are in for the whole forward (None: raster).
        token_order, token_inverse: the permutation into that order and its inverse.
        token_order_after_text: ``token_order`` shifted past leading text tokens (FLUX rotary rows).
        pos_embed, img_ids, txt_ids: FLUX's rotary module and position ids (for ShiftPE).
        external_start, external_len: sequence positions of fixed-context tokens (see
            :class:`~dit_accel.layout.TokenLayout`): SkyReels-V2's clean prefix frames, Kontext's context image.
        causal_block: tokens per block of a block-causal frame mask (SkyReels-V2), 0 when none.
        frame_timesteps: per-frame timesteps of a diffusion-forcing call (largest over the batch), else None.
    """

    grid: Tile | None = None
    video_start: int = 0
    video_len: int = 0
    text_len: int = 0
    device: torch.device | None = None
    timestep: float | None = None
    step_index: int = 0
    num_steps: int | None = None
    token_tile: Tile | None = None
    token_order: torch.Tensor | None = None
    token_inverse: torch.Tensor | None = None
    token_order_after_text: torch.Tensor | None = None
    pos_embed: Any = None
    img_ids: torch.Tensor | None = None
    txt_ids: torch.Tensor | None = None
    external_start: int = 0
    external_len: int = 0
    causal_block: int = 0
    frame_timesteps: tuple[float, ...] | None = None

    @property
    def has_video(self) -> bool:
        return self.video_len > 0 and self.device is not None
