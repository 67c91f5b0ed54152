"""AdaIN on attention features: per-channel statistics over image tokens, and renormalisation.

AlignedGen (like StyleAligned) pulls every target image's queries and keys toward the reference's
statistics so that the targets' attention to the shared reference tokens is balanced against their
own tokens. Statistics are per sample, head and channel, taken over the image tokens (dim 1 of a
``(B, S, H, D)`` tensor), in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-5


@dataclass(frozen=True)
class ChannelStats:
    """Mean and standard deviation of ``(B, S, H, D)`` features over S: two ``(B, 1, H, D)`` fp32 tensors."""

    mean: torch.Tensor
    std: torch.Tensor

    def select(self, index: torch.Tensor) -> ChannelStats:
        """The statistics of the samples ``index`` (one row per output sample)."""
        return ChannelStats(self.mean[index], self.std[index])


def channel_stats(x: torch.Tensor) -> ChannelStats:
    """Per-channel statistics of ``x`` over its token dimension; ``std`` includes ``EPS``."""
    x = x.float()
    var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
    return ChannelStats(mean, (var + EPS).sqrt())


def adain(x: torch.Tensor, target: ChannelStats) -> torch.Tensor:
    """``x`` renormalised to ``target``'s per-channel mean and std; returns fp32."""
    own = channel_stats(x)
    return (x.float() - own.mean) / own.std * target.std + target.mean
