"""Method base classes: each method is one file that overrides only what it changes.

:class:`AttentionMethod` is the interface every method implements (``__call__(q, k, v, ctx)``) with
optional hooks, each with a do-nothing default. :class:`BlockSparseMethod` runs the pipeline every
block-sparse method shares — token order, routing, ``select()``, exact block-sparse attention on the
chosen backend, an optional approximate ``tail()`` merged exactly by LSE, inverse order, exact text
rows — so PISA, Rectified SpaAttn, SVG-EAR, SLA and FlashBlock each override one or two steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from dit_accel.config import AccelerateConfig, MethodConfig
from dit_accel.context import AttentionContext
from dit_accel.forward_info import ForwardInfo
from dit_accel.tiling import Tile, default_tile

KINDS = ("accelerate", "edit", "wrap")
# Routing through the one-read kernel (pool, then score+select in one launch) rather than pool + tiled
# scores + the select kernel. H200, Wan-1.3B shape: the composed path is faster for top-k (stop 22: 0.083
# vs 0.113 ms at 128x128, benchmarks/results/kernel/engine_h200_s22/check_routing.json) and for top-p
# (stop 21: 0.191 vs 0.302 ms at 128x64, gpu_check_split_lists.json; the fused kernel's best: 0.253).
ONE_READ_ROUTING = False
Tensor = torch.Tensor


class AttentionMethod:
    """An attention method: same inputs and output layout as the stock attention call.

    Class attributes name the method, its ``kind`` (``accelerate``: computes attention faster;
    ``edit``: changes what attention computes and runs it through an ``accelerate`` method;
    ``wrap``: observes dense attention, e.g. ``record``), its options dataclass and a one-line
    description. Instances are built by ``dit_accel.apply`` from a validated config.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "accelerate"
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    description: ClassVar[str] = ""

    def __init__(self, config: MethodConfig) -> None:
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """Attention output ``(B, S, H, D)`` for Diffusers-layout q/k/v (after norms and RoPE)."""
        raise NotImplementedError

    def reference(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """What the method computes, in float64 plain PyTorch: the oracle of the contract test."""
        return ctx.dense(q.double(), k.double(), v.double())

    def token_tile(self, info: ForwardInfo) -> Tile | None:
        """The 3-D tile order video tokens should take for the whole forward (None: keep raster)."""
        return None

    def prepare(self, info: ForwardInfo) -> None:
        """Called before each transformer forward, outside compiled code: fill caches here."""

    def attach(self, target: Any, transformers: list[torch.nn.Module]) -> Callable[[], None] | None:
        """Set up what the method needs beyond its processors; returns the undo, run by ``remove()``."""
        return None

    def layer_state(self, layer_index: int, num_layers: int, attention: torch.nn.Module) -> torch.nn.Module | None:
        """Per-layer trained or saved state (``nn.Module``), registered on the attention module."""
        return None

    def runs_diffusers_parallelism(self) -> bool:
        """True when every call is Diffusers' own attention call, which runs any context-parallel
        configuration itself (ring included); otherwise the processor gathers the sequence (Ulysses)."""
        return False

    def reproduces_stock(self) -> bool:
        """True when the method promises the stock processor's output bit for bit: the processor then
        prepares q/k with the stock ops, and ``apply()`` leaves the feed-forwards' product and GELU
        stock, instead of their fused kernels (which round in another order)."""
        return False


@dataclass
class Routing:
    """One routed call, ready for block selection and the backend: ``(B, H, S, D)`` views.

    Block means and scores are computed on first use, so a method that never reads them never
    pays for them.

    Attributes:
        q: queries; with ``q_rows`` the full sequence, else the video queries in block order.
        k, v: video keys/values in block order (views, or zero-padded copies); ``key_len`` real rows.
        q_rows: sequence positions of the logical (block-ordered) query rows, or None.
        key_rows: sequence positions in the call's k of the logical key rows.
        log_counts: ``log n_j`` of each key block ``(NK,)``.
        extra_k, extra_v, extra_valid: text keys every video query attends to, and valid counts.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    q_rows: Tensor | None
    key_rows: Tensor
    key_len: int
    scale: float
    block_q: int
    block_k: int
    log_counts: Tensor
    extra_k: Tensor | None = None
    extra_v: Tensor | None = None
    extra_valid: Tensor | None = None
    known_q_mean: Tensor | None = field(default=None, repr=False)
    known_k_mean: Tensor | None = field(default=None, repr=False)
    known_scores: Tensor | None = field(default=None, repr=False)

    @property
    def q_mean(self) -> Tensor:
        """fp32 query-block means ``(B, H, NQ, D)``."""
        from dit_accel import kernels

        if self.known_q_mean is None:
            self.known_q_mean = kernels.pool_blocks(self.q, self.block_q, self.q_rows)
        return self.known_q_mean

    @property
    def k_mean(self) -> Tensor:
        """fp32 key-block means ``(B, H, NK, D)``."""
        from dit_accel import kernels

        if self.known_k_mean is None:
            self.known_k_mean = kernels.pool_blocks(self.k[:, :, : self.key_len], self.block_k)
        return self.known_k_mean

    def _pool_both(self) -> None:
        """Both block means in one launch when the scores need both, neither is known and the queries are
        block-ordered (the adapters' tile order): H200, Wan-1.3B shape, 60 µs against 131 µs for two
        pooling launches. A method that reads one mean alone pools only that one."""
        from dit_accel import kernels

        if self.known_q_mean is None and self.known_k_mean is None and self.q_rows is None:
            keys = self.k[:, :, : self.key_len]
            self.known_q_mean, self.known_k_mean = kernels.pool_blocks_qk(self.q, keys, self.block_q, self.block_k)

    @property
    def scores(self) -> Tensor:
        """fp32 pooled logits ``scale * q̄ k̄ᵀ`` ``(B, H, NQ, NK)`` (without ``log n_j``)."""
        from dit_accel import kernels

        if self.known_scores is None:
            self._pool_both()
            self.known_scores = kernels.routing_scores(self.q_mean, self.k_mean, self.scale)
        return self.known_scores

    def top_blocks(self, density: float | None, top_p: float | None = None, min_blocks: int = 1):
        """The :class:`BlockList` of the top ``density`` (or ``top_p`` mass) of ``scores + log n_j``.

        Pool (one read of Q and K) + scores + the select kernel; the one-read routing kernel
        (``kernels.route_blocks``) where :data:`ONE_READ_ROUTING` says (off: slower on the H200).
        """
        from dit_accel import kernels
        from dit_accel.kernels.block_list import BlockList

        one_read = ONE_READ_ROUTING and self.q_rows is None and self.known_k_mean is None
        if one_read and self.k.shape[2] == self.key_len:
            indices, counts, self.known_q_mean, self.known_k_mean = kernels.route_blocks(
                self.q, self.k, self.block_q, self.block_k, self.scale, density, top_p, min_blocks
            )
        else:
            indices, counts = kernels.select_blocks(self.scores, density, top_p, min_blocks, self.log_counts)
        return BlockList(indices, counts, self.block_q, self.block_k, self.key_len)

    def extra(self):
        """The text keys as the backend's :class:`ExtraKeys`, or None."""
        from dit_accel.kernels.backends import ExtraKeys

        return None if self.extra_k is None else ExtraKeys(self.extra_k, self.extra_v, self.extra_valid)


class BlockSparseMethod(AttentionMethod):
    """Block-sparse attention over video tokens; text keys always kept, text queries exact.

    Override points, in pipeline order: :meth:`token_order` (rows of the video tokens in the order
    blocks are formed; default the config's 3-D tile order), :meth:`select` (the :class:`BlockList`
    of exact blocks; default top-``density`` of the pooled scores), :meth:`attend` (exact attention
    over the list; default the backend dispatcher), :meth:`tail` (an approximate ``(out, lse)`` for
    what was not selected; default none), :meth:`combine` (joins the two; default the exact LSE
    merge). Calls that cannot run block-sparse run dense and are
    counted in ``handle.dense_fallbacks``.
    """

    config_class: ClassVar[type[MethodConfig]] = AccelerateConfig
    config: AccelerateConfig

    # --- overridable steps ---------------------------------------------------------------------

    def tile(self, grid: Tile | None) -> Tile:
        """The 3-D tile blocks are formed from: ``config.tile``, else one sized to the query block."""
        return self.config.tile or default_tile(grid, self.config.block_q)

    def token_tile(self, info: ForwardInfo) -> Tile | None:
        return None if info.grid is None or self.full_density_set() else self.tile(info.grid)

    def full_density_set(self) -> bool:
        """Density 1.0: every block is computed, so the call is plain dense attention (no routing, no reorder)."""
        return self.config.density is not None and self.config.density >= 1.0

    def reproduces_stock(self) -> bool:
        return self.full_density_set()

    def prepare(self, info: ForwardInfo) -> None:
        from . import routing

        if info.has_video:
            routing.warm_caches(info, self.tile(info.grid), self.config.block_k)

    def token_order(self, ctx: AttentionContext) -> Tensor | None:
        """int32 sequence positions of the video tokens in block order, or None for the tile order.

        Output rows are written back to the same positions, which undoes the order.
        """
        return None

    def select(self, routing: Routing, ctx: AttentionContext):
        """The exact key blocks of each query block: top ``density`` of ``scores + log n_j``."""
        return routing.top_blocks(self.config.density)

    def attend(self, routing: Routing, blocks, ctx: AttentionContext) -> tuple[Tensor, Tensor]:
        """Exact attention over the listed blocks and the text keys: ``(out, lse)`` shaped like ``routing.q``."""
        from dit_accel.kernels.backends import sparse_attention

        return sparse_attention(
            routing.q, routing.k, routing.v, blocks, scale=routing.scale, q_rows=routing.q_rows,
            extra=routing.extra(), backend=self.config.backend,
        )  # fmt: skip

    def tail(self, routing: Routing, blocks, ctx: AttentionContext) -> tuple[Tensor, Tensor] | None:
        """Approximate ``(out, lse)`` over the keys not selected, in ``attend``'s rows; None drops them."""
        return None

    def block_map(self, routing: Routing, blocks, ctx: AttentionContext) -> Tensor:
        """uint8 ``(B, H, NQ, NK)`` code of each (query block, key block), keys of :meth:`map_legend`.

        Default: 1 where the block is computed exactly, 0 elsewhere. Methods with classes of their
        own (pyramid levels, linear blocks) override both.
        """
        from dit_accel import kernels

        return kernels.block_mask(blocks.indices, blocks.counts, blocks.num_key_blocks).to(torch.uint8)

    def map_legend(self) -> dict[int, str]:
        """Names of the :meth:`block_map` codes, least computed first."""
        cls = type(self)
        approximated = cls.tail is not BlockSparseMethod.tail or cls.combine is not BlockSparseMethod.combine
        return {0: "approximated" if approximated else "skipped", 1: "exact"}

    # --- the shared pipeline -------------------------------------------------------------------

    def dense_reason(self, ctx: AttentionContext) -> str | None:
        """Why this call cannot run block-sparse (it then runs dense), or None."""
        from .routing import dense_fallback_reason

        return dense_fallback_reason(ctx, self.config.block_q, self.config.block_k)

    def route(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Routing:
        from .routing import route_video_attention

        return route_video_attention(q, k, v, ctx, self.config.block_q, self.config.block_k,
                                     self.tile(ctx.layout.grid), self.token_order(ctx))  # fmt: skip

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        if ctx.in_warmup:
            return ctx.dense(q, k, v)
        reason = self.dense_reason(ctx)
        if reason is not None:
            ctx.record_dense_fallback(self.name, reason)
            return ctx.dense(q, k, v)
        if self.full_density_set():
            return self.full_density(q, k, v, ctx)
        routing = self.route(q, k, v, ctx)
        blocks = self.select(routing, ctx)
        if ctx.wants_block_map():
            ctx.keep_block_map(self.block_map(routing, blocks, ctx), self.map_legend())
        out, lse = self.attend(routing, blocks, ctx)
        return self._assemble(self.combine(routing, blocks, out, lse, ctx), q, k, v, routing, ctx)

    def combine(self, routing: Routing, blocks, out: Tensor, lse: Tensor, ctx: AttentionContext) -> Tensor:
        """The exact part ``(out, lse)`` with the skipped keys' approximation folded in: ``tail()`` merged by LSE.

        Override where the correction needs the exact part itself (Rectified SpaAttn rescales it).
        """
        tail = self.tail(routing, blocks, ctx)
        if tail is None:
            return out
        from dit_accel import kernels

        return kernels.merge_attention(out, lse, *tail)[0]

    def full_density(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """Density 1.0 keeps every block: exact dense attention on the fastest engine (no routing).

        FA4 dense where the backend resolves to FA4 and no mask is involved, else the stock call.
        """
        from dit_accel.kernels.backends import dense_attention, resolve_backend

        qh = q.transpose(1, 2)
        plain = ctx.attention_mask is None and k.shape[1] == q.shape[1]
        if plain and resolve_backend(self.config.backend, qh, self.config.block_q, self.config.block_k) == "fa4":
            return dense_attention(q, k, v, "fa4")
        return ctx.dense(q, k, v)

    @staticmethod
    def _assemble(out: Tensor, q: Tensor, k: Tensor, v: Tensor, routing: Routing, ctx: AttentionContext) -> Tensor:
        """``(B, S, H, D)`` output: video rows from ``out``, text rows by exact attention."""
        layout = ctx.layout
        out = out.transpose(1, 2)
        if routing.q_rows is None and not layout.video_only:
            full = torch.empty_like(q)
            full[:, layout.video_slice] = out
            out = full
        if layout.text_len:
            out[:, layout.text_slice] = ctx.dense(q[:, layout.text_slice], k, v).to(out.dtype)
        return out

    def reference(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """Float64 definition: video queries over their selected keys and the valid text keys (+ tail)."""
        if ctx.in_warmup or self.dense_reason(ctx) is not None:
            return super().reference(q, k, v, ctx)
        from .routing import masked_reference

        q64, k64, v64 = q.double(), k.double(), v.double()
        routing = self.route(q64, k64, v64, ctx)
        blocks = self.select(routing, ctx)
        return masked_reference(q64, k64, v64, routing, blocks, self.tail(routing, blocks, ctx), ctx)
