"""Model sizes, constructors and the assembled ``FluxPipeline`` of the tiny FLUX model.

Stock Diffusers and transformers classes at small sizes: ``FluxTransformer2DModel`` (double- and
single-stream blocks, heads 64 wide as the GPU kernels require), ``AutoencoderKL`` without attention
or quant convs (as FLUX's VAE), a ``CLIPTextModel`` for the pooled prompt and a ``T5EncoderModel``
for the prompt tokens, both over the grammar's word-level tokenizer, and FLUX's own
``FlowMatchEulerDiscreteScheduler`` with its resolution-dependent time shift.

Two presets: :data:`FULL` is the model trained on the H200 (``train.py``); :data:`TOY` a version
of the same structure small enough for CPU tests.

Native size of FULL: 128x128. Its VAE compresses 4x (Wan's tiny VAE does too: the attention
test-bed needs tokens, not pixels), keeping 32x32 latents of 8 channels; FLUX packs 2x2 of them
into each token: a 16x16 grid, **256 image tokens**, plus 32 text tokens.

The model has no guidance embedding (FLUX-dev's is distilled from a teacher this project does not
have): it is sampled with true classifier-free guidance, ``negative_prompt=""`` and
``true_cfg_scale``, which :meth:`TinyFluxSpec.call_defaults` holds. The T5 encoder runs without an
attention mask in ``FluxPipeline``, so its output depends on ``max_sequence_length``: the model is
trained at :attr:`TinyFluxSpec.text_length` and must be called with it (the defaults do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast, T5EncoderModel

from tools.tiny_common.text import t5_encoder, word_tokenizer

from .data import vocabulary

# The scheduler's time shift grows with the image token count as FLUX's does (mu from 0.5 at 256
# tokens to 1.15 at 4096; shift = e^mu).
SCHEDULER_SHIFT = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}


@dataclass(frozen=True)
class TinyFluxSpec:
    """Sizes of every component, and the size and settings the model is meant to be sampled at."""

    num_layers: int  # double-stream blocks
    num_single_layers: int
    num_heads: int
    head_dim: int
    rope_axes: tuple[int, int, int]  # FLUX's axes_dims_rope: (text, rows, columns), summing to head_dim
    vae_channels: tuple[int, ...]  # one 2x down-sampling between consecutive entries
    vae_groups: int
    latent_channels: int
    t5_dim: int
    t5_layers: int
    t5_heads: int
    t5_ffn_dim: int
    clip_dim: int
    clip_layers: int
    clip_heads: int
    clip_ffn_dim: int
    text_length: int  # T5 tokens the transformer sees (max_sequence_length), and CLIP's positions
    height: int
    width: int
    num_inference_steps: int = 20
    true_cfg_scale: float = 4.0

    def __post_init__(self) -> None:
        if sum(self.rope_axes) != self.head_dim:
            raise ValueError(f"rope_axes {self.rope_axes} must sum to head_dim {self.head_dim}")
        for name in ("height", "width"):
            if getattr(self, name) % (2 * self.spatial_factor):
                raise ValueError(f"{name} must be a multiple of {2 * self.spatial_factor}, got {getattr(self, name)}")

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel along height and width (the pipeline reads it from the VAE config)."""
        return 2 ** (len(self.vae_channels) - 1)

    def image_tokens(self, height: int, width: int) -> int:
        """Image tokens the transformer sees for one image of this size (2x2 latent pixels each)."""
        return (height // self.spatial_factor // 2) * (width // self.spatial_factor // 2)

    def time_shift(self, height: int, width: int) -> float:
        """The factor by which the scheduler shifts its noise levels at this size (``e^mu``)."""
        shift = SCHEDULER_SHIFT
        mu = calculate_shift(
            self.image_tokens(height, width),
            shift["base_image_seq_len"],
            shift["max_image_seq_len"],
            shift["base_shift"],
            shift["max_shift"],
        )
        return math.exp(mu)

    def call_defaults(self) -> dict[str, Any]:
        """Keyword arguments of a pipeline call at the native size (saved beside the weights)."""
        return {
            "height": self.height,
            "width": self.width,
            "num_inference_steps": self.num_inference_steps,
            "negative_prompt": "",
            "true_cfg_scale": self.true_cfg_scale,
            "max_sequence_length": self.text_length,
        }


FULL = TinyFluxSpec(
    num_layers=2,
    num_single_layers=4,
    num_heads=4,
    head_dim=64,
    rope_axes=(16, 24, 24),
    vae_channels=(32, 64, 64),
    vae_groups=8,
    latent_channels=8,
    t5_dim=128,
    t5_layers=2,
    t5_heads=4,
    t5_ffn_dim=256,
    clip_dim=128,
    clip_layers=2,
    clip_heads=4,
    clip_ffn_dim=256,
    text_length=32,
    height=128,
    width=128,
)

TOY = TinyFluxSpec(
    num_layers=1,
    num_single_layers=1,
    num_heads=2,
    head_dim=16,
    rope_axes=(4, 6, 6),
    vae_channels=(8, 8, 8),
    vae_groups=4,
    latent_channels=4,
    t5_dim=32,
    t5_layers=1,
    t5_heads=2,
    t5_ffn_dim=64,
    clip_dim=32,
    clip_layers=1,
    clip_heads=2,
    clip_ffn_dim=64,
    text_length=32,
    height=32,
    width=32,
    num_inference_steps=4,
)


def build_tokenizer(spec: TinyFluxSpec) -> PreTrainedTokenizerFast:
    """The word-level grammar tokenizer; it serves as both of FLUX's tokenizers. Its
    ``model_max_length`` is CLIP's length in ``FluxPipeline``."""
    return word_tokenizer(vocabulary(), spec.text_length)


def make_transformer(spec: TinyFluxSpec) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * spec.latent_channels,  # the pipeline packs 2x2 latent pixels into a token
        num_layers=spec.num_layers,
        num_single_layers=spec.num_single_layers,
        attention_head_dim=spec.head_dim,
        num_attention_heads=spec.num_heads,
        joint_attention_dim=spec.t5_dim,
        pooled_projection_dim=spec.clip_dim,
        guidance_embeds=False,
        axes_dims_rope=spec.rope_axes,
    )


def make_vae(spec: TinyFluxSpec) -> AutoencoderKL:
    """A small ``AutoencoderKL`` (no attention, no quant convs); ``shift_factor`` and
    ``scaling_factor`` are set after training from the latents' measured mean and std."""
    stages = len(spec.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * stages,
        up_block_types=("UpDecoderBlock2D",) * stages,
        block_out_channels=spec.vae_channels,
        layers_per_block=1,
        latent_channels=spec.latent_channels,
        norm_num_groups=spec.vae_groups,
        sample_size=spec.height,
        scaling_factor=1.0,
        shift_factor=0.0,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    )


def make_clip(spec: TinyFluxSpec, vocab_size: int) -> CLIPTextModel:
    """A small ``CLIPTextModel``: it pools at the first ``</s>`` (id 1) of the grammar tokenizer."""
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=spec.clip_dim,
        intermediate_size=spec.clip_ffn_dim,
        num_hidden_layers=spec.clip_layers,
        num_attention_heads=spec.clip_heads,
        max_position_embeddings=spec.text_length,
        projection_dim=spec.clip_dim,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    return CLIPTextModel(config)


def make_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """FLUX's sampler: Euler on flow-matching sigmas, shifted by the image token count."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, use_dynamic_shifting=True, **SCHEDULER_SHIFT)


def assemble_pipeline(
    transformer: FluxTransformer2DModel,
    vae: AutoencoderKL,
    clip: CLIPTextModel,
    t5: T5EncoderModel,
    spec: TinyFluxSpec,
) -> FluxPipeline:
    """A ``FluxPipeline`` around the given models, with the grammar tokenizer and the scheduler."""
    tokenizer = build_tokenizer(spec)
    return FluxPipeline(
        scheduler=make_scheduler(),
        vae=vae,
        text_encoder=clip,
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=tokenizer,
        transformer=transformer,
    )


def build_pipeline(spec: TinyFluxSpec = TOY, seed: int = 0) -> FluxPipeline:
    """A randomly initialised pipeline of the given size (deterministic for a seed), all offline."""
    torch.manual_seed(seed)
    vocab_size = len(build_tokenizer(spec))
    clip = make_clip(spec, vocab_size)
    t5 = t5_encoder(T5EncoderModel, vocab_size, spec.t5_dim, spec.t5_layers, spec.t5_heads, spec.t5_ffn_dim)
    return assemble_pipeline(make_transformer(spec), make_vae(spec), clip, t5, spec)
