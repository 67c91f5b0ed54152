"""``sla``: sparse-linear attention (SLA, arXiv 2509.24006), fine-tunable.

Per query block the key blocks are ranked by the pooled scores ``s·q̄_i·k̄_j + log n_j``: the top
``k_high`` are *critical* (exact block-sparse attention on the engine's backend), the bottom
``k_low`` *negligible* (skipped), the rest *marginal*: linear attention with a feature map φ over the
marginal blocks only (``kernels.sla_ops``). The output is ``O = O_s + Proj(O_l)``: ``O_s`` the
normalised exact output over the critical blocks and the text keys, ``O_l`` the linear branch and
``Proj`` a D x D linear map per layer (shared by its heads), zero at first, so an untrained ``sla``
equals ``topk`` at ``density = k_high``. Fine-tuning (``dit-accel finetune-sla``,
:func:`dit_accel.finetune_sla.finetune_sla`) trains ``Proj`` (and LoRA adapters or every weight) to
make the model match its dense self; ``weights=`` loads the result.

SLA adds the linear branch to the exact output rather than merging it by LSE: ``combine()`` is
overridden, ``tail()`` is unused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from typing import Any, ClassVar

import torch

from dit_accel import kernels
from dit_accel.config import AccelerateConfig, check_choice, check_range
from dit_accel.context import AttentionContext
from dit_accel.kernels.sla_linear_reference import FEATURE_MAPS, sla_linear_reference

from .base import BlockSparseMethod, Routing

Tensor = torch.Tensor

DEFAULT_K_HIGH = 0.05
# Added to the linear branch's denominator φ(q)·Z, which is 0 for a query block without marginal
# blocks (its O_l is then 0).
EPS = 1e-6


@dataclass
class SLAConfig(AccelerateConfig):
    """Options of ``sla`` (besides backend, tile, dense_steps, dense_layers).

    Attributes:
        k_high: fraction of key blocks per query block computed exactly (critical), in (0, 1];
            default 0.05. ``density`` is the same option under the common name (methods are compared
            at equal density): give one of them; both with different values is an error.
        density: alias of ``k_high``.
        k_low: fraction of key blocks per query block skipped (negligible; the lowest-ranked,
            rounded down), in [0, 1); ``k_high + k_low <= 1``. Default 0.1.
        feature_map: φ of the linear branch, applied per row over the head dimension:
            ``"softmax"`` (default), ``"elu"`` (elu(x) + 1) or ``"relu"``.
        block_size: ``(query, key)`` block sizes; default ``(128, 64)``.
        weights: folder written by ``dit-accel finetune-sla`` (the trained projections, and LoRA
            adapters when trained); None keeps the projections at zero.
    """

    method: ClassVar[str] = "sla"

    block_size: int | tuple[int, int] = (128, 64)
    density: float | None = None
    k_high: float | None = None
    k_low: float = 0.1
    feature_map: str = "softmax"
    weights: str | PathLike | None = None

    def __post_init__(self) -> None:
        if self.density is not None and self.k_high is not None and self.density != self.k_high:
            raise ValueError(
                f"k_high={self.k_high} and density={self.density} given: density is an alias of k_high, give one"
            )
        if self.k_high is not None:
            check_range("k_high", self.k_high, 0.0, 1.0, low_open=True)
            self.density = self.k_high
        elif self.density is None:
            self.density = DEFAULT_K_HIGH
        super().__post_init__()
        self.k_high = self.density
        check_range("k_low", self.k_low, 0.0, 1.0)
        if self.k_low >= 1.0 or self.k_high + self.k_low > 1.0 + 1e-9:
            raise ValueError(f"k_low must be in [0, 1) with k_high + k_low <= 1, got k_low={self.k_low}")
        check_choice("feature_map", self.feature_map, FEATURE_MAPS)
        if self.weights is not None and not isinstance(self.weights, (str, PathLike)):
            raise TypeError(f"weights must be a folder path, got {type(self.weights).__name__}")


class SLAProjection(torch.nn.Linear):
    """``Proj`` of one layer: a D x D linear map without bias, shared by the heads, zero at first."""

    def __init__(self, head_dim: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(head_dim, head_dim, bias=False, device=device, dtype=dtype)
        torch.nn.init.zeros_(self.weight)


def marginal_blocks(routing: Routing, blocks, k_low: float) -> Tensor:
    """``(B, H, NQ, NK)`` bool: the key blocks neither critical (listed in ``blocks``) nor negligible.

    Negligible: the ``floor(k_low * NK)`` lowest-ranked non-critical blocks by ``scores + log n_j``.
    ``blocks`` must be ``routing.top_blocks(...)`` of the same scores (as ``select()`` makes them):
    then the critical blocks are the top ranked and the negligible ones the lowest-ranked of all, so
    the marginal blocks are the top ``NK - floor(k_low * NK)`` (the same selection kernel as ``topk``,
    ties to the lower index) less the critical ones.
    """
    num_blocks = routing.scores.shape[-1]
    critical = kernels.block_mask(blocks.indices, blocks.counts, num_blocks)
    low = min(math.floor(k_low * num_blocks + 1e-9), num_blocks - blocks.indices.shape[-1])
    if low <= 0:
        return ~critical
    kept = routing.top_blocks((num_blocks - low) / num_blocks)
    return kernels.block_mask(kept.indices, kept.counts, num_blocks) & ~critical


class SLAAttention(BlockSparseMethod):
    """Exact attention on critical blocks + a learnt projection of linear attention on marginal ones."""

    name = "sla"
    description = "sparse-linear attention: exact critical blocks + projected linear attention on marginal ones"
    config_class = SLAConfig
    config: SLAConfig

    def layer_state(self, layer_index: int, num_layers: int, attention: torch.nn.Module) -> torch.nn.Module:
        weight = next(attention.parameters())
        return SLAProjection(attention.inner_dim // attention.heads, device=weight.device, dtype=weight.dtype)

    def attach(self, target: Any, transformers: list[torch.nn.Module]) -> Callable[[], None] | None:
        if self.config.weights is None:
            return None
        from dit_accel.sla_weights import load_sla_weights, named_transformers

        return load_sla_weights(self.config.weights, named_transformers(target, transformers), self.config)

    def block_map(self, routing: Routing, blocks, ctx: AttentionContext) -> Tensor:
        """0 negligible (skipped), 1 marginal (linear branch), 2 critical (exact)."""
        critical = kernels.block_mask(blocks.indices, blocks.counts, blocks.num_key_blocks)
        return (2 * critical.to(torch.uint8) + marginal_blocks(routing, blocks, self.config.k_low)).to(torch.uint8)

    def map_legend(self) -> dict[int, str]:
        return {0: "negligible (skipped)", 1: "marginal (linear)", 2: "critical (exact)"}

    def linear_args(self, routing: Routing, blocks) -> tuple:
        """The linear-branch op's arguments before the optional ones (q, k, v, marginal mask, sizes)."""
        cfg = self.config
        marginal = marginal_blocks(routing, blocks, cfg.k_low)
        return (routing.q, routing.k, routing.v, marginal, routing.block_q, routing.block_k, routing.key_len,
                cfg.feature_map, EPS)  # fmt: skip

    def linear_branch(self, routing: Routing, blocks) -> Tensor:
        """``O_l`` in ``attend()``'s rows: linear attention over each query block's marginal blocks."""
        from dit_accel.kernels import sla_ops

        return sla_ops.sla_linear_attention(*self.linear_args(routing, blocks), routing.q_rows)

    @staticmethod
    def projection_weight(ctx: AttentionContext, like: Tensor) -> Tensor:
        """The layer's ``Proj`` weight (zero where the call has none, e.g. outside a model)."""
        state = ctx.module_state
        return state.weight if state is not None else like.new_zeros(like.shape[-1], like.shape[-1])

    def combine(self, routing: Routing, blocks, out: Tensor, lse: Tensor, ctx: AttentionContext) -> Tensor:
        """``O_s + Proj(O_l)``: the projected linear branch is added to the normalised exact output.

        Without gradients one fused pass does it; with them, the differentiable op and a linear layer.
        For bf16 activations the layer runs in bf16 (fp32 accumulation), as the fused pass does: with an
        fp32 weight, an fp32 projection ran as three SIMT GEMMs plus conversions, a fifth of sla's
        forward + backward at the Wan-1.3B shape (benchmarks/check_sla.py). Other activations are
        projected in the weight's dtype (fp16 sums over ~400k rows would overflow in the weight's
        gradient; the fused pass keeps them in fp32 too).

        The layer runs on the branch's ``(B, S, H, D)`` view. The branch is strided like q, which in a
        model is a transposed ``(B, S, H, D)`` tensor; on the ``(B, H, S, D)`` view the layer copied its
        input and gradients (net 0.33 ms of forward + backward at the Wan-1.3B shape on the H200).
        """
        from dit_accel.kernels import sla_ops

        weight = self.projection_weight(ctx, routing.q)
        inputs = (routing.q, routing.k, routing.v, weight, out)
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            linear = self.linear_branch(routing, blocks)
            dtype = linear.dtype if linear.dtype == torch.bfloat16 else weight.dtype
            projected = torch.nn.functional.linear(linear.to(dtype).transpose(1, 2), weight.to(dtype))
            return out + projected.transpose(1, 2).to(out.dtype)
        return sla_ops.sla_linear_projected(*self.linear_args(routing, blocks), out, weight, routing.q_rows)

    def reference(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """Float64: exact attention over the critical blocks and text keys, plus ``Proj`` of the linear branch."""
        exact = super().reference(q, k, v, ctx)
        if ctx.in_warmup or self.dense_reason(ctx) is not None or self.full_density_set():
            return exact
        routing = self.route(q.double(), k.double(), v.double(), ctx)
        blocks = self.select(routing, ctx)
        q64, k64, v64, marginal, block_m, block_n, key_len, feature_map, eps = self.linear_args(routing, blocks)
        linear = sla_linear_reference(q64, k64, v64, marginal, block_m=block_m, block_n=block_n, key_len=key_len,
                                      feature_map=feature_map, eps=eps, q_rows=routing.q_rows)  # fmt: skip
        projected = torch.nn.functional.linear(linear, self.projection_weight(ctx, linear).double())
        if routing.q_rows is None:
            exact[:, ctx.layout.video_slice] += projected.transpose(1, 2)
        else:
            rows = routing.q_rows.long()
            exact[:, rows] += projected[:, :, rows].transpose(1, 2)
        return exact
