"""Model sizes, constructors and the assembled ``WanPipeline`` of the tiny model.

Two presets: :data:`FULL` is the model trained on the H200 and shipped in ``assets/``; :data:`TOY`
is a 1.5 MB version with the same structure for CPU tests and the CPU smoke run of the training
script.

Native size of FULL: 33 frames of 192x192. Its VAE compresses 4x in time (first frame kept) and 4x
in space, keeping ``(F - 1) / 4 + 1 = 9`` latent frames of 48x48; the transformer's (1, 2, 2) patches
make a 9x24x24 grid: 5,184 video tokens per sample, a 41x41 map of 128-token blocks. (Wan's own VAE
is 8x in space; at 4x the same token grid needs a quarter of the pixels, which makes the VAE's job
four times smaller and its training and decoding four times cheaper.) Heads are 64 wide, as the GPU
kernels require.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

from .text import build_text_encoder, build_tokenizer

# The transformer's patches (frames, height, width), in latent pixels.
PATCH = (1, 2, 2)


@dataclass(frozen=True)
class TinyWanSpec:
    """Sizes of every component, and the size and settings the model is meant to be sampled at."""

    num_layers: int
    num_heads: int
    ffn_dim: int
    vae_base_dim: int
    vae_decoder_base_dim: int
    vae_dim_mult: tuple[int, ...]
    vae_temporal_downsample: tuple[bool, ...]
    z_dim: int
    text_dim: int
    text_layers: int
    text_heads: int
    text_ffn_dim: int
    num_frames: int
    height: int
    width: int
    num_inference_steps: int = 30
    guidance_scale: float = 5.0
    # (frames, height, width, steps) of the cheaper call for CPUs, a size the model is trained at too.
    quick: tuple[int, int, int, int] = (17, 128, 128, 12)
    flow_shift: float = 3.0
    head_dim: int = 64

    def __post_init__(self) -> None:
        if len(self.vae_temporal_downsample) != len(self.vae_dim_mult) - 1:
            raise ValueError(
                f"vae_temporal_downsample needs one entry per down-sampling stage ({len(self.vae_dim_mult) - 1}), "
                f"got {self.vae_temporal_downsample}"
            )

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel along height and width: one halving per down-sampling stage."""
        return 2 ** len(self.vae_temporal_downsample)

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame (after the first, which the causal VAE keeps on its own)."""
        return 2 ** sum(self.vae_temporal_downsample)

    def video_tokens(self, num_frames: int, height: int, width: int) -> int:
        """Number of video tokens the transformer sees for one sample of this size."""
        latent_frames = (num_frames - 1) // self.temporal_factor + 1
        grid_h = height // self.spatial_factor // PATCH[1]
        grid_w = width // self.spatial_factor // PATCH[2]
        return latent_frames // PATCH[0] * grid_h * grid_w

    def quick_call(self) -> dict[str, int]:
        """Keyword arguments of the cheaper call that CPUs use (the trained-model test, the second
        evaluation of training): ``quick`` frames, height, width and steps; guidance as at native size."""
        frames, height, width, steps = self.quick
        return {"num_frames": frames, "height": height, "width": width, "num_inference_steps": steps}

    def call_defaults(self) -> dict[str, float | int]:
        """Keyword arguments of a pipeline call at the native size (saved beside the weights)."""
        return {
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
        }


FULL = TinyWanSpec(
    num_layers=8,
    num_heads=4,
    ffn_dim=1024,
    vae_base_dim=16,
    vae_decoder_base_dim=32,
    vae_dim_mult=(1, 2, 2),
    vae_temporal_downsample=(True, True),
    z_dim=16,
    text_dim=128,
    text_layers=2,
    text_heads=4,
    text_ffn_dim=256,
    num_frames=33,
    height=192,
    width=192,
)

TOY = TinyWanSpec(
    num_layers=2,
    num_heads=2,
    ffn_dim=128,
    vae_base_dim=8,
    vae_decoder_base_dim=8,
    vae_dim_mult=(1, 2, 2, 2),
    vae_temporal_downsample=(False, True, True),
    z_dim=8,
    text_dim=32,
    text_layers=1,
    text_heads=2,
    text_ffn_dim=64,
    num_frames=9,
    height=64,
    width=64,
    num_inference_steps=4,
    quick=(5, 32, 32, 2),
)


def make_transformer(spec: TinyWanSpec) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=PATCH,
        num_attention_heads=spec.num_heads,
        attention_head_dim=spec.head_dim,
        in_channels=spec.z_dim,
        out_channels=spec.z_dim,
        text_dim=spec.text_dim,
        freq_dim=256,
        ffn_dim=spec.ffn_dim,
        num_layers=spec.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
    )


def make_vae(spec: TinyWanSpec) -> AutoencoderKLWan:
    """A small Wan VAE (one 2x spatial down-sampling per stage, 2x temporal where the spec says);
    its latent mean/std are set after training.

    ``is_residual`` adds Wan 2.2's parameter-free shortcuts around every down- and up-sampling
    (space/time to channels and back), so the latent starts as a local average of the pixels; trained
    from scratch it reconstructs in a fraction of the steps the plain Wan 2.1 layout needs.
    """
    return AutoencoderKLWan(
        base_dim=spec.vae_base_dim,
        decoder_base_dim=spec.vae_decoder_base_dim,
        z_dim=spec.z_dim,
        dim_mult=list(spec.vae_dim_mult),
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=list(spec.vae_temporal_downsample),
        is_residual=True,
        scale_factor_spatial=spec.spatial_factor,
        scale_factor_temporal=spec.temporal_factor,
        latents_mean=[0.0] * spec.z_dim,
        latents_std=[1.0] * spec.z_dim,
    )


def make_scheduler(spec: TinyWanSpec) -> UniPCMultistepScheduler:
    """Wan's own sampler: UniPC on flow-matching sigmas with ``flow_shift``."""
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=spec.flow_shift
    )


def assemble_pipeline(
    transformer: WanTransformer3DModel,
    vae: AutoencoderKLWan,
    text_encoder: torch.nn.Module,
    spec: TinyWanSpec,
) -> WanPipeline:
    """A ``WanPipeline`` around the given models, with the grammar tokenizer and the scheduler."""
    return WanPipeline(
        tokenizer=build_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=make_scheduler(spec),
        transformer=transformer,
    )


def build_pipeline(spec: TinyWanSpec = TOY, seed: int = 0) -> WanPipeline:
    """A randomly initialised pipeline of the given size (deterministic for a seed), all offline."""
    torch.manual_seed(seed)
    vocab_size = len(build_tokenizer())
    text_encoder = build_text_encoder(vocab_size, spec.text_dim, spec.text_layers, spec.text_heads, spec.text_ffn_dim)
    return assemble_pipeline(make_transformer(spec), make_vae(spec), text_encoder, spec)
