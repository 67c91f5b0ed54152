"""``dense``: exact attention through our processors, identical to the stock processors by default.

With ``backend`` it runs on a named engine instead (FlashAttention-4, cuDNN, our Triton kernel), so
``compare`` and the benchmarks can time a method against the fastest dense run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dit_accel.config import MethodConfig, check_choice
from dit_accel.context import AttentionContext

from .base import AttentionMethod

DENSE_BACKENDS = ("stock", "fa4", "cudnn", "triton")


@dataclass
class DenseConfig(MethodConfig):
    """Options of ``dense``.

    Attributes:
        backend: ``"stock"`` (Diffusers' own attention call: bit-identical to the stock processor,
            honouring ``set_attention_backend``), ``"fa4"`` (FlashAttention-4), ``"cudnn"``
            (PyTorch SDPA's cuDNN kernel) or ``"triton"`` (our kernel with every block listed).
        density: always 1.0 (dense computes every block); accepted so that methods share options.
    """

    method: ClassVar[str] = "dense"

    backend: str = "stock"
    density: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("backend", self.backend, DENSE_BACKENDS)
        if self.density != 1.0:
            raise ValueError(f"density must be 1.0 for dense (it computes every block), got {self.density!r}")


class DenseAttention(AttentionMethod):
    """The stock attention call, or a named dense engine."""

    name = "dense"
    description = "exact attention (the stock result)"
    config_class = DenseConfig
    config: DenseConfig

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        if self.config.backend == "stock" or ctx.attention_mask is not None or not q.is_cuda:
            return ctx.dense(q, k, v)
        from dit_accel.kernels.backends import dense_attention

        return dense_attention(q, k, v, self.config.backend)

    def runs_diffusers_parallelism(self) -> bool:
        return self.config.backend == "stock"

    def reproduces_stock(self) -> bool:
        return self.config.backend == "stock"
