"""``pisa``: piecewise sparse attention (arXiv 2602.01077), training-free.

Exact attention on the top ``density`` of key blocks per query block; every skipped key block is
approximated by a Taylor expansion of ``exp(s q·k)`` around its mean key, returned as a tail
``(out, lse)`` that the pipeline merges exactly by LSE:

* zeroth order: block ``j`` is one pseudo-token, logit ``s q·k̄_j + log n_j``, value ``v̄_j``;
* first order (``order=1``): the numerator gains ``Σ_{j skipped} e^{s q·k̄_j} · s qᵀH̄``, with
  ``H̄`` the mean over all key blocks of ``H_j = Σ_{t∈j} (k_t − k̄_j) v_tᵀ`` (one ``D×D`` per head,
  accumulated without storing a ``D×D`` per block), per query row.

Routing is the pooled scores ``s q̄_i·k̄_j + log n_j``, plus ``log(‖H_j‖_F + 1e-5)`` with ``use_bias``
(PISA's image routing). Text keys are always exact; key-only appended tokens are ordinary key blocks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from dit_accel.config import AccelerateConfig, MethodConfig
from dit_accel.context import AttentionContext

from .base import BlockSparseMethod, Routing

Tensor = torch.Tensor
NORM_EPS = 1e-5  # the routing bias is log(‖H_j‖_F + NORM_EPS)


@dataclass
class PISAConfig(AccelerateConfig):
    """Options of ``pisa`` (besides backend and tile). Options left None take the model family's
    defaults (``family_defaults``; outside a model, the ``"default"`` ones).

    Attributes:
        density: fraction of key blocks each query block computes exactly, in (0, 1]; default 0.125
            on video (Wan, HunyuanVideo), 0.15 on FLUX.
        order: Taylor order of the skipped blocks' approximation: 0 (one pseudo-token per block) or
            1 (adds the first-order term through the per-head mean ``H̄``); default 1.
        use_bias: add ``log(‖H_j‖_F + 1e-5)`` to the routing scores (PISA's image routing); default
            on for FLUX, off for video.
        block_size: ``(query, key)`` block sizes; default ``(128, 64)`` (FlashAttention-4 takes
            128-row query blocks; the paper uses 64x64).
        dense_steps: steps run dense first; default 0.2 (10 of 50; the paper's Wan2.1-1.3B setting
            is 0.3). A fraction needs the step count: call through a pipeline or pass
            ``num_inference_steps``.
        dense_layers: leading layers run dense; default 1 on video, 4 on FLUX.
    """

    method: ClassVar[str] = "pisa"
    family_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {"density": 0.125, "dense_steps": 0.2, "dense_layers": 1, "use_bias": False},
        "flux": {"density": 0.15, "dense_steps": 0.2, "dense_layers": 4, "use_bias": True},
    }

    block_size: int | tuple[int, int] = (128, 64)
    density: float | None = None
    dense_steps: int | float | None = None
    dense_layers: int | float | None = None
    order: int = 1
    use_bias: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.order, bool) or self.order not in (0, 1):
            raise ValueError(f"order must be one of 0, 1, got {self.order!r}")
        if self.use_bias is not None and not isinstance(self.use_bias, bool):
            raise ValueError(f"use_bias must be one of True, False, None, got {self.use_bias!r}")


@dataclass
class PISARouting(Routing):
    """A :class:`Routing` that also holds the key blocks' PISA statistics, computed on first use.

    Attributes:
        with_h: compute ``H̄`` (first order).
        with_norms: compute ``‖H_j‖_F`` (routing bias).
    """

    with_h: bool = False
    with_norms: bool = False
    known_stats: tuple[Tensor, Tensor, Tensor] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, routing: Routing, with_h: bool, with_norms: bool) -> PISARouting:
        fields = {f.name: getattr(routing, f.name) for f in dataclasses.fields(routing)}
        return cls(**fields, with_h=with_h, with_norms=with_norms)

    @property
    def stats(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(v_mean, h_bar, h_norm)`` of the key blocks (empty tensors for what was not asked)."""
        from dit_accel.kernels.pisa_ops import pisa_block_stats

        if self.known_stats is None:
            self.known_stats = pisa_block_stats(
                self.k, self.v, self.k_mean, self.block_k, self.key_len, self.with_h, self.with_norms
            )
        return self.known_stats


class PISAAttention(BlockSparseMethod):
    """Exact top blocks; skipped blocks by zeroth- (and first-) order pseudo-tokens, merged by LSE."""

    name = "pisa"
    description = "block-sparse attention + Taylor pseudo-tokens for the skipped blocks (PISA)"
    config_class = PISAConfig
    config: PISAConfig

    def __init__(self, config: MethodConfig) -> None:
        super().__init__(config)
        self.config = self.config.for_family(None)  # options still None (built outside apply()): the defaults

    def route(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> PISARouting:
        cfg = self.config
        return PISARouting.of(super().route(q, k, v, ctx), with_h=cfg.order == 1, with_norms=cfg.use_bias)

    def select(self, routing: PISARouting, ctx: AttentionContext):
        """Top ``density`` of ``scores + log n_j`` (``+ log(‖H_j‖_F + 1e-5)`` with ``use_bias``)."""
        if not self.config.use_bias:
            return routing.top_blocks(self.config.density)
        from dit_accel import kernels
        from dit_accel.kernels.block_list import BlockList

        bias = torch.log(routing.stats[2] + NORM_EPS).to(routing.scores.dtype)
        scores = routing.scores + bias[:, :, None, :]
        indices, counts = kernels.select_blocks(scores, self.config.density, None, 1, routing.log_counts)
        return BlockList(indices, counts, routing.block_q, routing.block_k, routing.key_len)

    def attend(self, routing: PISARouting, blocks, ctx: AttentionContext) -> tuple[Tensor, Tensor]:
        """The exact part; where the Triton tail serves, already merged with the tail in one pass."""
        exact = super().attend(routing, blocks, ctx)
        if not self.fuses_tail(routing):
            return exact
        from dit_accel.kernels.pisa_ops import pisa_tail_merge

        return pisa_tail_merge(*self.tail_arguments(routing, blocks), *exact)

    def tail(self, routing: PISARouting, blocks, ctx: AttentionContext) -> tuple[Tensor, Tensor] | None:
        """The skipped blocks' pseudo-tokens ``(out, lse)``, in ``attend``'s rows (None: merged in ``attend``)."""
        if self.fuses_tail(routing):
            return None
        from dit_accel.kernels.pisa_ops import pisa_tail

        return pisa_tail(*self.tail_arguments(routing, blocks))

    @staticmethod
    def fuses_tail(routing: PISARouting) -> bool:
        """Whether the tail is merged inside the tail kernel (CUDA, not float64) instead of by the pipeline."""
        from dit_accel import kernels

        return kernels.use_triton(routing.q) and routing.q.dtype != torch.float64

    def tail_arguments(self, routing: PISARouting, blocks) -> tuple:
        """The arguments of ``pisa_tail`` / ``pisa_tail_merge`` (before the exact part)."""
        v_mean, h_bar, _ = routing.stats
        return (
            routing.q, routing.k_mean, v_mean, h_bar if self.config.order == 1 else None, routing.log_counts,
            blocks.indices, blocks.counts, blocks.block_q, routing.scale, routing.q_rows,
        )  # fmt: skip
