"""Tiny random-weight Diffusers transformers built offline from configs, and matching inputs."""

from __future__ import annotations

import torch
from diffusers import (
    FluxTransformer2DModel,
    HunyuanVideoTransformer3DModel,
    SkyReelsV2Transformer3DModel,
    WanTransformer3DModel,
)


def tiny_wan(num_layers: int = 2, seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        text_dim=8,
        freq_dim=16,
        ffn_dim=32,
        num_layers=num_layers,
        rope_max_seq_len=64,
    ).eval()


def wan_inputs(batch: int = 1, frames: int = 3, height: int = 18, width: int = 22, timestep: float = 500.0):
    g = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(batch, 4, frames, height, width, generator=g),
        "timestep": torch.full((batch,), timestep),
        "encoder_hidden_states": torch.randn(batch, 7, 8, generator=g),
    }


def tiny_hunyuan(seed: int = 0) -> HunyuanVideoTransformer3DModel:
    torch.manual_seed(seed)
    return HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=1,
        num_single_layers=2,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        text_embed_dim=8,
        pooled_projection_dim=8,
        rope_axes_dim=(4, 6, 6),
    ).eval()


def hunyuan_inputs(batch: int = 2, frames: int = 3, height: int = 18, width: int = 22, padded_from: int = 5):
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(batch, 9, dtype=torch.long)
    mask[-1, padded_from:] = 0
    return {
        "hidden_states": torch.randn(batch, 4, frames, height, width, generator=g),
        "timestep": torch.full((batch,), 500.0),
        "encoder_hidden_states": torch.randn(batch, 9, 8, generator=g),
        "encoder_attention_mask": mask,
        "pooled_projections": torch.randn(batch, 8, generator=g),
        "guidance": torch.full((batch,), 3500.0),
    }


def tiny_flux(seed: int = 0) -> FluxTransformer2DModel:
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=8,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=8,
        pooled_projection_dim=8,
        axes_dims_rope=(4, 6, 6),
    ).eval()


def flux_image_ids(height: int, width: int) -> torch.Tensor:
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = torch.arange(height)[:, None]
    ids[..., 2] = torch.arange(width)[None, :]
    return ids.reshape(-1, 3)


def flux_inputs(batch: int = 1, height: int = 9, width: int = 11, timestep: float = 0.5):
    g = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(batch, height * width, 8, generator=g),
        "encoder_hidden_states": torch.randn(batch, 6, 8, generator=g),
        "pooled_projections": torch.randn(batch, 8, generator=g),
        "timestep": torch.full((batch,), timestep),
        "img_ids": flux_image_ids(height, width),
        "txt_ids": torch.zeros(6, 3),
    }


def tiny_skyreels(num_layers: int = 2, seed: int = 0, frames_per_block: int = 1) -> SkyReelsV2Transformer3DModel:
    """SkyReels-V2 (Wan architecture); ``frames_per_block > 1`` gives diffusion forcing's block-causal mask."""
    torch.manual_seed(seed)
    return SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        text_dim=8,
        freq_dim=16,
        ffn_dim=32,
        num_layers=num_layers,
        rope_max_seq_len=64,
        num_frame_per_block=frames_per_block,
    ).eval()


def skyreels_inputs(batch: int = 1, frames: int = 3, height: int = 18, width: int = 22, timestep: float = 500.0):
    """Plain (non diffusion-forcing) call: one timestep per sample, like Wan."""
    return wan_inputs(batch, frames, height, width, timestep)


def skyreels_df_inputs(frame_timesteps: list[float], batch: int = 1, height: int = 18, width: int = 22):
    """Diffusion-forcing call: one timestep per latent frame (0 = clean)."""
    inputs = wan_inputs(batch, len(frame_timesteps), height, width)
    inputs["timestep"] = torch.tensor(frame_timesteps).expand(batch, -1).clone()
    inputs["enable_diffusion_forcing"] = True
    return inputs


FAMILIES = {
    "wan": (tiny_wan, wan_inputs),
    "hunyuan_video": (tiny_hunyuan, hunyuan_inputs),
    "flux": (tiny_flux, flux_inputs),
    "skyreels_v2": (tiny_skyreels, skyreels_inputs),
}


def run(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def tiny_wan_pipeline(two_transformers: bool = False):
    """A WanPipeline with a tiny VAE and transformer(s); prompts are given as embeddings."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    ).eval()
    return WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=tiny_wan(seed=0),
        transformer_2=tiny_wan(seed=1) if two_transformers else None,
        boundary_ratio=0.5 if two_transformers else None,
    )


def wan_pipeline_call(steps: int = 4, guidance_scale: float = 5.0, two_transformers: bool = False) -> dict:
    """Call arguments for :func:`tiny_wan_pipeline`: 144 video tokens per call (3 x 6 x 8)."""
    g = torch.Generator().manual_seed(3)
    extra = {"guidance_scale_2": guidance_scale} if two_transformers else {}
    return extra | {
        "prompt_embeds": torch.randn(1, 7, 8, generator=g),
        "negative_prompt_embeds": torch.randn(1, 7, 8, generator=g),
        "height": 96,
        "width": 128,
        "num_frames": 9,
        "num_inference_steps": steps,
        "guidance_scale": guidance_scale,
        "generator": torch.Generator().manual_seed(0),
        "output_type": "pt",
    }
