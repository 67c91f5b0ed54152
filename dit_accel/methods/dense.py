"""``dense``: exact attention through our processors, identical to the stock processors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dit_accel.config import MethodConfig
from dit_accel.context import AttentionContext, AttentionOp


@dataclass
class DenseConfig(MethodConfig):
    """No options beyond the common ones; the reference every method is compared against."""

    method: ClassVar[str] = "dense"


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
    """The stock attention call, bit for bit."""
    return ctx.dense(q, k, v)


def make_dense_op(config: DenseConfig) -> AttentionOp:
    return dense_attention
