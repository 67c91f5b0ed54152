"""A toy tiny-Wan pipeline whose transformer knows the answer, for tests of losses and probes."""

from __future__ import annotations

import torch
from diffusers import WanPipeline

from tools.tiny_wan.build import TOY, build_pipeline
from tools.tiny_wan.train import TIMESTEP_SCALE


def oracle_pipeline(x0: torch.Tensor, first_frame_error: float) -> WanPipeline:
    """A toy pipeline whose transformer reads the exact velocity ``noise - x0`` off the noisy latents and
    the timestep (it knows ``x0``), plus ``first_frame_error`` on latent frame 0."""
    pipe = build_pipeline(TOY)

    def oracle(hidden_states: torch.Tensor, timestep: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor]:
        s = (timestep.float() / TIMESTEP_SCALE).view(-1, 1, 1, 1, 1)
        velocity = (hidden_states.float() - x0) / s
        velocity[:, :, 0] += first_frame_error
        return (velocity,)

    pipe.transformer.forward = oracle
    return pipe
