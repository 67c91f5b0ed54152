"""Inversion of an image into a FLUX pipeline's noise trajectory (flow matching), for PrimeComposer.

FLUX samples by Euler steps of its velocity, ``x_{i+1} = x_i + (σ_{i+1} - σ_i) v(x_i, σ_i)``, over the
scheduler's sigmas ``σ_0 = 1 > ... > σ_N = 0``. Two ways to get the latents ``z_i`` of an image at
every ``σ_i``:

* ``"ode"`` (default): run that ODE backwards from the clean latents, ``z_i = z_{i+1} - (σ_{i+1} - σ_i)
  v(z_{i+1}, σ_i)``, with the prompt and no guidance (guided velocities do not invert stably). Regenerating
  from ``z_0`` with the same velocities returns close to the image (:func:`regenerate` tests it);
* ``"noise"``: ``z_i = (1 - σ_i) x_0 + σ_i ε`` with one stored noise ``ε``: exact at every level, but ``z_0``
  is just ``ε``, so it is not a starting point that reproduces the image.

The trajectory is indexed like the scheduler's sigmas (``N + 1`` latents, the last the clean ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from .prime_inputs import as_rgb
from .style_reference import encode_style_image

INVERSIONS = ("ode", "noise")


@dataclass(frozen=True)
class PromptInputs:
    """A prompt encoded for direct transformer calls (``encode_prompt``'s outputs)."""

    embeds: torch.Tensor
    pooled: torch.Tensor
    text_ids: torch.Tensor

    @classmethod
    def encode(cls, pipe: Any, prompt: str, max_sequence_length: int) -> PromptInputs:
        embeds, pooled, text_ids = pipe.encode_prompt(
            prompt, prompt_2=None, device=pipe.transformer.device, max_sequence_length=max_sequence_length
        )
        return cls(embeds, pooled, text_ids)


def flux_sigmas(pipe: Any, num_steps: int, image_tokens: int) -> torch.Tensor:
    """The ``N + 1`` sigmas ``FluxPipeline`` samples with for ``image_tokens`` tokens (its time shift included)."""
    config = pipe.scheduler.config
    mu = calculate_shift(
        image_tokens,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )
    pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu, device="cpu")
    return pipe.scheduler.sigmas.detach().double().cpu()


def encode_image(pipe: Any, image: PIL.Image.Image | np.ndarray) -> torch.Tensor:
    """``(1, N, C)`` packed clean latents of an RGB image, as ``FluxPipeline`` packs its own."""
    return encode_style_image(pipe, as_rgb(image, "image"), seed=0).latents


class Velocity:
    """FLUX's velocity ``v(x, σ)`` for one prompt, without guidance (direct transformer calls)."""

    def __init__(self, pipe: Any, prompt: PromptInputs, grid: tuple[int, int]) -> None:
        model = pipe.transformer
        self.model = model
        self.prompt = prompt
        self.img_ids = pipe._prepare_latent_image_ids(1, grid[0], grid[1], model.device, model.dtype)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, sigma: float) -> torch.Tensor:
        dtype = self.model.dtype
        return self.model(
            hidden_states=latents.to(dtype),
            timestep=torch.full((latents.shape[0],), sigma, dtype=dtype, device=latents.device),
            guidance=None,
            pooled_projections=self.prompt.pooled,
            encoder_hidden_states=self.prompt.embeds,
            txt_ids=self.prompt.text_ids,
            img_ids=self.img_ids,
            return_dict=False,
        )[0].float()


def invert(
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    velocity: Velocity | None,
    how: str = "ode",
    seed: int = 0,
    refine: int = 1,
) -> torch.Tensor:
    """``(N + 1, 1, L, C)`` latents of the clean ``latents`` at every sigma (``how``: see the module docstring).

    ``refine`` fixed-point iterations per ODE step, ``z_i <- z_{i+1} - Δσ v(z_i, σ_i)``, make each step the
    exact inverse of the sampler's step (the plain backward step evaluates ``v`` at ``z_{i+1}`` instead).
    """
    if how not in INVERSIONS:
        raise ValueError(f"inversion must be one of {INVERSIONS}, got {how!r}")
    clean = latents.float()
    if how == "noise":
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed)).to(clean.device)
        return torch.stack([(1.0 - float(s)) * clean + float(s) * noise for s in sigmas])
    if velocity is None:
        raise ValueError("ODE inversion needs the model's velocity")
    path = [clean]
    for i in range(len(sigmas) - 2, -1, -1):
        z, step = path[-1], float(sigmas[i + 1] - sigmas[i])
        guess = z - step * velocity(z, float(sigmas[i]))
        for _ in range(refine):
            guess = z - step * velocity(guess, float(sigmas[i]))
        path.append(guess)
    return torch.stack(path[::-1])


def regenerate(start: torch.Tensor, sigmas: torch.Tensor, velocity: Velocity) -> torch.Tensor:
    """Euler sampling from ``start`` at ``σ_0`` to ``σ_N`` with ``velocity`` (inversion's round trip)."""
    z = start.float()
    for i in range(len(sigmas) - 1):
        z = z + float(sigmas[i + 1] - sigmas[i]) * velocity(z, float(sigmas[i]))
    return z
