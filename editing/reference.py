"""What target images take from the style reference at one attention layer, and the cache of it.

In-batch, the reference is image 0 of each CFG group and its features are computed on the fly. With
an external style image they are captured once per denoising step by a separate transformer pass
(:mod:`dit_accel.editing.style_reference`) and kept in a :class:`ReferenceStore` until the step ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adain import ChannelStats, adain, channel_stats
from .rope import Table, rotate, rows, unrotate


class CaptureComplete(Exception):
    """Raised by the op to end a capture pass once no later layer needs the reference's features."""


@dataclass(frozen=True)
class ReferenceFeatures:
    """The reference's share of one layer, for ``G`` references (one per CFG group).

    Attributes:
        q_stats: per-channel statistics of the reference's image-token queries, before RoPE.
        k_stats: the same for its image-token keys.
        keys: ``(G, N, H, D)`` image-token keys with RoPE at ShiftPE positions ``(row, col + W)``.
        values: ``(G, N, H, D)`` image-token values.
    """

    q_stats: ChannelStats
    k_stats: ChannelStats
    keys: torch.Tensor
    values: torch.Tensor

    @classmethod
    def from_attention(
        cls, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, image: slice, table: Table, shift: Table
    ) -> ReferenceFeatures:
        """Features of the reference from its RoPE'd ``(G, S, H, D)`` q/k/v; ``image`` are its image rows."""
        image_table = rows(table, image)
        image_keys = k[:, image]
        return cls(
            q_stats=channel_stats(unrotate(q[:, image], image_table)),
            k_stats=channel_stats(unrotate(image_keys, image_table)),
            keys=rotate(image_keys, shift).to(k.dtype),
            values=v[:, image],
        )

    def select(self, index: torch.Tensor) -> ReferenceFeatures:
        """The features each output sample uses: row ``index[i]`` for sample i."""
        return ReferenceFeatures(
            self.q_stats.select(index), self.k_stats.select(index), self.keys[index], self.values[index]
        )


def align_image_tokens(x: torch.Tensor, stats: ChannelStats, image: slice, table: Table) -> torch.Tensor:
    """``x`` with its image tokens AdaIN'd to ``stats`` before RoPE (then re-rotated); text tokens unchanged."""
    image_table = rows(table, image)
    aligned = rotate(adain(unrotate(x[:, image], image_table), stats), image_table)
    out = x.clone()
    out[:, image] = aligned.to(x.dtype)
    return out


class ReferenceStore:
    """Per-layer features of an external style reference, valid for one denoising step.

    Attributes:
        features: layer index -> :class:`ReferenceFeatures` captured at ``timestep``.
        timestep: the timestep the features belong to (``None`` when empty).
        capturing: True while the capture pass runs; the op then records instead of sharing.
    """

    def __init__(self) -> None:
        self.features: dict[int, ReferenceFeatures] = {}
        self.timestep: float | None = None
        self.capturing = False

    def clear(self) -> None:
        """Free the cached features."""
        self.features.clear()
        self.timestep = None

    def layer(self, index: int) -> ReferenceFeatures:
        if index not in self.features:
            raise RuntimeError(
                f"no style-reference features for attention layer {index}: the capture pass did not run for "
                "this transformer call (was the transformer's forward hook removed?)"
            )
        return self.features[index]
