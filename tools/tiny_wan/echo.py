"""Data echoing for stage 2 of the tiny model's training: each VAE-encoded sample is trained on
several times, with fresh noise each time.

A stage-2 step renders videos, encodes them with the frozen VAE and trains the transformer on the
latents. Rendering and encoding are a large share of that step: on a CPU, where both are
compute-bound, 34% at 17x128x128 and 30% at 33x192x192 (``benchmarks/tiny_step_split.py``); on a
GPU likely more, as convolutions of 16-32 channels run far below the rate of the transformer's
matmuls. Echoing (Choi et al., "Faster Neural
Network Training with Data Echoing", 2019) encodes only ``1/echo`` of each batch anew and fills the
rest from a pool of recently encoded samples, drawn at random so that repeats are spread over
steps. Every use draws its own noise, noise level and caption dropout, so a repeated latent is still
a new training example; what repeats is only the video.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class EchoPool:
    """The latents and captions of one batch size's most recently encoded samples.

    With ``echo`` = 1 every batch is encoded anew and nothing is kept.
    """

    def __init__(self, echo: int) -> None:
        if echo < 1:
            raise ValueError(f"echo must be >= 1, got {echo}")
        self.echo = echo
        self.latents: torch.Tensor | None = None
        self.captions: list[str] = []
        self.cursor = 0

    def fresh_count(self, batch: int) -> int:
        """How many samples of a ``batch`` to render and encode anew: all of the first batch."""
        if self.latents is None or self.echo == 1:
            return batch
        return math.ceil(batch / self.echo)

    def batch(
        self, fresh: torch.Tensor, captions: list[str], batch: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, list[str]]:
        """``fresh`` latents (``fresh_count(batch)`` of them) followed by pooled ones drawn without
        replacement up to ``batch``; the fresh samples then replace the pool's oldest."""
        expected = self.fresh_count(batch)
        if fresh.shape[0] != expected or len(captions) != expected:
            raise ValueError(
                f"expected {expected} fresh samples and captions, got {fresh.shape[0]} and {len(captions)}"
            )
        if self.echo == 1:
            return fresh, captions
        if self.latents is None:
            self.latents, self.captions = fresh.clone(), list(captions)
            return fresh, captions
        if self.latents.shape[1:] != fresh.shape[1:] or self.latents.shape[0] != batch:
            raise ValueError(f"pool holds {tuple(self.latents.shape)}, asked for {batch} of {tuple(fresh.shape[1:])}")
        drawn = rng.choice(batch, size=batch - expected, replace=False)
        pooled = self.latents[torch.as_tensor(drawn, device=fresh.device)]
        pooled_captions = [self.captions[i] for i in drawn]
        slots = (self.cursor + np.arange(expected)) % batch
        self.latents[torch.as_tensor(slots, device=fresh.device)] = fresh
        for slot, caption in zip(slots.tolist(), captions, strict=True):
            self.captions[slot] = caption
        self.cursor = (self.cursor + expected) % batch
        return torch.cat([fresh, pooled]), [*captions, *pooled_captions]
