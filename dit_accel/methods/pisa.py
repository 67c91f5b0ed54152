"""``pisa``: piecewise sparse attention (arXiv 2602.01077), training-free.

Exact attention on the top ``density`` of key blocks per query block; every skipped key block is
approximated by a Taylor expansion of ``exp(s q·k)`` around its mean key, returned as a tail
``(out, lse)`` that the pipeline merges exactly by LSE:

* zeroth order: each ``tail_block``-key part ``j`` of a skipped block is one pseudo-token, logit
  ``s q·k̄_j + log n_j``, value ``v̄_j`` (by default 64-key parts, or the whole key block when smaller);
* first order (``order=1``): the numerator gains ``Σ_{j skipped} e^{s q·k̄_j} · s qᵀH̄``, with
  ``H̄`` the mean over all parts of ``H_j = Σ_{t∈j} (k_t − k̄_j) v_tᵀ`` (one ``D×D`` per head,
  accumulated without storing a ``D×D`` per part), per query row.

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
MAX_TAIL_BLOCK = 64  # default keys per pseudo-token (the key block when smaller)


@dataclass
class PISAConfig(AccelerateConfig):
    """Options of ``pisa`` (besides backend and tile). Options left None take the model family's
    defaults (``family_defaults``; outside a model, the ``"default"`` ones).

    Attributes:
        density: fraction of key blocks each query block computes exactly, in (0, 1]; default 0.125
            on video (Wan, HunyuanVideo), 0.15 on FLUX.
        order: Taylor order of the skipped blocks' approximation: 0 (one pseudo-token per
            ``tail_block`` part) or 1 (adds the first-order term through the per-head mean ``H̄``);
            default 1.
        use_bias: add ``log(‖H_j‖_F + 1e-5)`` to the routing scores (PISA's image routing); default
            on for FLUX, off for video.
        block_size: ``(query, key)`` block sizes; default ``(128, 64)`` (FlashAttention-4 takes
            128-row query blocks; the paper uses 64x64). ``(128, 128)`` with the default 64-key
            pseudo-tokens runs 6% faster (H200, Wan-1.3B shape, density 0.125, FA4: 2.01 against
            2.15 ms) at the same per-call error, but on the tiny model end to end it gains 1.65 dB over
            ``topk`` against 2.29 dB at ``(128, 64)`` (8 pairs): the coarser exact selection costs
            more than one call's error shows.
        tail_block: keys per pseudo-token: each skipped key block is approximated by its parts of
            this many keys (a divisor of the key block), one pseudo-token and one ``H_j`` each; default
            (None) 64, or the key block when smaller (:attr:`tail_keys`). Parts under 16 keys run the
            statistics in PyTorch (the Triton kernel takes 16 or more). Finer pseudo-tokens cost tail
            time, not exact time: on the tiny model's recorded attention, 128-key blocks with 64-key
            pseudo-tokens approximate as well as 64-key blocks (relative L1 0.098 against 0.097; 0.127
            with 128-key pseudo-tokens).
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
    tail_block: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tail_block is not None and (
            isinstance(self.tail_block, bool) or not isinstance(self.tail_block, int) or self.tail_block < 1
            or self.block_k % self.tail_block
        ):  # fmt: skip
            raise ValueError(f"tail_block must divide the key block ({self.block_k}), got {self.tail_block!r}")
        if isinstance(self.order, bool) or self.order not in (0, 1):
            raise ValueError(f"order must be one of 0, 1, got {self.order!r}")
        if self.use_bias is not None and not isinstance(self.use_bias, bool):
            raise ValueError(f"use_bias must be one of True, False, None, got {self.use_bias!r}")

    @property
    def tail_keys(self) -> int:
        """Keys per pseudo-token: ``tail_block``, else 64 or the key block when smaller."""
        return self.tail_block or min(self.block_k, MAX_TAIL_BLOCK)


@dataclass
class PISARouting(Routing):
    """A :class:`Routing` that also holds PISA's statistics of the pseudo-tokens' parts, computed on first use.

    Attributes:
        with_h: compute ``H̄`` (first order).
        with_norms: compute ``‖H_j‖_F`` (routing bias).
        tail_block: keys per pseudo-token (a divisor of ``block_k``).
    """

    with_h: bool = False
    with_norms: bool = False
    tail_block: int = 0
    known_stats: tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None = field(default=None, repr=False)
    known_part_mean: Tensor | None = field(default=None, repr=False)

    @classmethod
    def of(cls, routing: Routing, with_h: bool, with_norms: bool, tail_block: int) -> PISARouting:
        fields = {f.name: getattr(routing, f.name) for f in dataclasses.fields(routing)}
        return cls(**fields, with_h=with_h, with_norms=with_norms, tail_block=tail_block)

    @property
    def tokens_per_block(self) -> int:
        return self.block_k // self.tail_block

    def _pool_both(self) -> None:
        """With pseudo-tokens finer than the key blocks, the one pooling launch takes the keys at the
        pseudo-token size, and the key-block means are their count-weighted averages (one small product):
        the keys are read once for both."""
        from dit_accel import kernels

        fine = self.tail_block != self.block_k
        if not fine or self.known_q_mean is not None or self.known_k_mean is not None or self.q_rows is not None:
            return super()._pool_both()
        keys = self.k[:, :, : self.key_len]
        self.known_q_mean, parts = kernels.pool_blocks_qk(self.q, keys, self.block_q, self.tail_block)
        weights = _part_weights(self.key_len, self.block_k, self.tail_block, self.k.device, parts.dtype)
        padded = torch.nn.functional.pad(parts, (0, 0, 0, weights.numel() - parts.shape[2]))
        b, h, _, d = padded.shape
        self.known_k_mean = (padded * weights[:, None]).view(b, h, -1, self.tokens_per_block, d).sum(dim=3)
        self.known_part_mean = parts

    @property
    def part_mean(self) -> Tensor:
        """fp32 means of the pseudo-tokens' ``tail_block``-key parts ``(B, H, NT, D)``."""
        from dit_accel import kernels

        if self.tail_block == self.block_k:
            return self.k_mean
        if self.known_part_mean is None:
            self.known_part_mean = kernels.pool_blocks(self.k[:, :, : self.key_len], self.tail_block)
        return self.known_part_mean

    @property
    def stats(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(k_mean, v_mean, log_counts, h_bar, h_norm)``: the pseudo-tokens (``tail_block`` keys each)
        and ``H̄`` over them; ``‖H_j‖_F`` of the key blocks (empty tensors for what was not asked)."""
        from dit_accel.kernels.pisa_ops import pisa_block_stats

        from .routing import key_log_counts

        if self.known_stats is None:
            self._pool_both()  # before the statistics read the key means: one launch pools queries and keys
            parts_are_blocks = self.tail_block == self.block_k
            k_mean = self.part_mean
            v_mean, h_bar, h_norm = pisa_block_stats(
                self.k, self.v, k_mean, self.tail_block, self.key_len, self.with_h, self.with_norms and parts_are_blocks
            )
            if self.with_norms and not parts_are_blocks:  # the routing bias is per key block
                h_norm = pisa_block_stats(self.k, self.v, self.k_mean, self.block_k, self.key_len, False, True)[2]
            log_counts = key_log_counts(self.key_len, self.tail_block, self.k.device)
            self.known_stats = (k_mean, v_mean, log_counts, h_bar, h_norm)
        return self.known_stats


def _part_weights(key_len: int, block_k: int, part: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``n_t / n_j`` of each ``part``-key part ``t`` in its key block ``j``, zero-padded to whole key blocks
    (``NK * block_k / part``): the key-block means are these sums of the part means (cached)."""
    from dit_accel import kernels

    from .routing import cached_constant

    def make() -> Tensor:
        per_block = block_k // part
        block_counts = kernels.block_counts(key_len, block_k, device).to(dtype)
        part_counts = kernels.block_counts(key_len, part, device).to(dtype)
        weights = torch.zeros(block_counts.numel() * per_block, device=device, dtype=dtype)
        weights[: part_counts.numel()] = part_counts / block_counts.repeat_interleave(per_block)[: part_counts.numel()]
        return weights

    return cached_constant(("part_weights", key_len, block_k, part, str(device), dtype), make)


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
        return PISARouting.of(super().route(q, k, v, ctx), cfg.order == 1, cfg.use_bias, cfg.tail_keys)

    def prepare(self, info) -> None:
        super().prepare(info)
        if info.has_video:
            from .routing import key_log_counts

            cfg = self.config
            key_log_counts(info.video_len, cfg.tail_keys, info.device)  # read inside compiled code
            if cfg.tail_keys != cfg.block_k:
                _part_weights(info.video_len, cfg.block_k, cfg.tail_keys, info.device, torch.float32)

    def select(self, routing: PISARouting, ctx: AttentionContext):
        """Top ``density`` of ``scores + log n_j`` (``+ log(‖H_j‖_F + 1e-5)`` with ``use_bias``)."""
        if not self.config.use_bias:
            return routing.top_blocks(self.config.density)
        from dit_accel import kernels
        from dit_accel.kernels.block_list import BlockList

        bias = torch.log(routing.stats[4] + NORM_EPS).to(routing.scores.dtype)
        scores = routing.scores + bias[:, :, None, :]
        indices, counts = kernels.select_blocks(scores, self.config.density, None, 1, routing.log_counts)
        return BlockList(indices, counts, routing.block_q, routing.block_k, routing.key_len)

    def attend(self, routing: PISARouting, blocks, ctx: AttentionContext) -> tuple[Tensor, Tensor]:
        """The exact part; where the Triton tail serves, already merged with the tail in one pass."""
        exact = super().attend(routing, blocks, ctx)
        if not self.fuses_tail(routing):
            return exact
        from dit_accel.kernels.pisa_ops import pisa_tail_merge

        return pisa_tail_merge(*self.tail_arguments(routing, blocks), *exact, routing.tokens_per_block)

    def tail(self, routing: PISARouting, blocks, ctx: AttentionContext) -> tuple[Tensor, Tensor] | None:
        """The skipped blocks' pseudo-tokens ``(out, lse)``, in ``attend``'s rows (None: merged in ``attend``)."""
        if self.fuses_tail(routing):
            return None
        from dit_accel.kernels.pisa_ops import pisa_tail

        return pisa_tail(*self.tail_arguments(routing, blocks), routing.tokens_per_block)

    @staticmethod
    def fuses_tail(routing: PISARouting) -> bool:
        """Whether the tail is merged inside the tail kernel (CUDA, not float64) instead of by the pipeline."""
        from dit_accel import kernels

        return kernels.use_triton(routing.q) and routing.q.dtype != torch.float64

    def tail_arguments(self, routing: PISARouting, blocks) -> tuple:
        """The arguments of ``pisa_tail`` / ``pisa_tail_merge`` (before the exact part)."""
        k_mean, v_mean, log_counts, h_bar, _ = routing.stats
        return (
            routing.q, k_mean, v_mean, h_bar if self.config.order == 1 else None, log_counts,
            blocks.indices, blocks.counts, blocks.block_q, routing.scale, routing.q_rows,
        )  # fmt: skip
