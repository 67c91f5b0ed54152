"""Full-size random-weight transformers of the three families, and their inputs, for ``bench e2e``.

Configs are the published ones (Wan2.1-T2V-1.3B, HunyuanVideo, FLUX.1-dev); weights are random, which
is all a timing needs. On a CPU the widths and depths shrink (``cpu_overrides``) so the code path
can be tested; the latent shape stays the caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Tensor = torch.Tensor
Inputs = dict[str, Tensor]


@dataclass(frozen=True)
class E2EModel:
    """One family at full size: Diffusers class name, config, default latent and an input builder."""

    name: str
    model_class: str
    config: dict[str, Any]
    cpu_overrides: dict[str, Any]
    default_latent: tuple[int, ...]
    latent_help: str
    make_inputs: Callable[[dict[str, Any], tuple[int, ...], torch.device, torch.dtype], Inputs]

    def build(self, device: torch.device, dtype: torch.dtype, overrides: dict[str, Any]) -> torch.nn.Module:
        import diffusers

        config = self.config | (self.cpu_overrides if device.type != "cuda" else {}) | overrides
        with torch.device(device):
            return getattr(diffusers, self.model_class)(**config).to(dtype).eval()


def _randn(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, seed: int) -> Tensor:
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=gen, device=device, dtype=dtype)


def wan_inputs(config: dict, latent: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Inputs:
    return {
        "hidden_states": _randn(latent, device, dtype, 0),
        "timestep": torch.full((latent[0],), 500.0, device=device),
        "encoder_hidden_states": _randn((latent[0], 512, config["text_dim"]), device, dtype, 1),
    }


def hunyuan_inputs(config: dict, latent: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Inputs:
    batch = latent[0]
    return {
        "hidden_states": _randn(latent, device, dtype, 0),
        "timestep": torch.full((batch,), 500.0, device=device),
        "encoder_hidden_states": _randn((batch, 256, config["text_embed_dim"]), device, dtype, 1),
        "encoder_attention_mask": torch.ones(batch, 256, dtype=torch.long, device=device),
        "pooled_projections": _randn((batch, config["pooled_projection_dim"]), device, dtype, 2),
        "guidance": torch.full((batch,), 6000.0, device=device),
    }


def flux_inputs(config: dict, latent: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Inputs:
    """A ``(B, C, H, W)`` latent packed 2x2 into FLUX's ``(B, H/2 * W/2, 4C)`` image tokens."""
    batch, channels, height, width = latent
    rows, cols = height // 2, width // 2
    ids = torch.zeros(rows, cols, 3, device=device)
    ids[..., 1] = torch.arange(rows, device=device)[:, None]
    ids[..., 2] = torch.arange(cols, device=device)[None, :]
    return {
        "hidden_states": _randn((batch, rows * cols, channels * 4), device, dtype, 0),
        "encoder_hidden_states": _randn((batch, 512, config["joint_attention_dim"]), device, dtype, 1),
        "pooled_projections": _randn((batch, config["pooled_projection_dim"]), device, dtype, 2),
        "timestep": torch.full((batch,), 0.5, device=device),
        "guidance": torch.full((batch,), 3.5, device=device),
        "img_ids": ids.reshape(-1, 3),
        "txt_ids": torch.zeros(512, 3, device=device),
    }


_SMALL_DUAL_STREAM = {"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16,
                      "pooled_projection_dim": 8}  # fmt: skip

E2E_MODELS = {
    m.name: m
    for m in (
        E2EModel(
            "wan-1.3b", "WanTransformer3DModel",
            {"patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
             "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
             "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6},
            {"num_attention_heads": 2, "attention_head_dim": 64, "ffn_dim": 256, "text_dim": 64, "num_layers": 2},
            (1, 16, 21, 60, 104), "B C F H W: 480p, 81 frames", wan_inputs,
        ),
        E2EModel(
            "hunyuan-video", "HunyuanVideoTransformer3DModel",
            {"in_channels": 16, "out_channels": 16, "num_attention_heads": 24, "attention_head_dim": 128,
             "num_layers": 20, "num_single_layers": 40, "num_refiner_layers": 2, "mlp_ratio": 4.0, "patch_size": 2,
             "patch_size_t": 1, "qk_norm": "rms_norm", "guidance_embeds": True, "text_embed_dim": 4096,
             "pooled_projection_dim": 768, "rope_theta": 256.0, "rope_axes_dim": (16, 56, 56)},
            _SMALL_DUAL_STREAM | {"num_refiner_layers": 1, "text_embed_dim": 8, "rope_axes_dim": (4, 6, 6)},
            (1, 16, 33, 90, 160), "B C F H W: 720p, 129 frames", hunyuan_inputs,
        ),
        E2EModel(
            "flux-dev", "FluxTransformer2DModel",
            {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
             "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
             "guidance_embeds": True, "axes_dims_rope": (16, 56, 56)},
            _SMALL_DUAL_STREAM | {"joint_attention_dim": 8, "axes_dims_rope": (4, 6, 6)},
            (1, 16, 128, 128), "B C H W: 1024 px", flux_inputs,
        ),
    )
}  # fmt: skip
