"""``flashblock``: cached block-external attention for block diffusion (FlashBlock, METHODS.md), training-free.

Each attention call's keys are split into external keys — fixed context the current block is
generated against: SkyReels-V2 diffusion forcing's clean prefix frames, FLUX Kontext's context-image
tokens, AlignedGen's appended reference tokens (``layout.external_keys``) — and internal keys (the
rest: the block being denoised, the text). The attention of every query over the external keys, its
output and LSE, is cached per layer, per call of the step (CFG's cond and uncond) and per head on
refresh steps; on reuse steps only the internal part is computed and the two are merged exactly by
LSE. Which heads may reuse is decided per layer by a short calibration: the external part is computed
fresh on the first steps that have one, and a head whose output's cosine between consecutive steps
falls below ``min_cosine`` or whose mean |ΔLSE| exceeds ``max_lse_change`` is recomputed every step.
Every head is refreshed after ``refresh_every`` steps, and whenever the external keys change (a new
block became clean).

The internal part runs exactly on the engine, or through a block-sparse method (``inner="topk"``...):
the inner method selects and computes the internal keys' blocks (and approximates the rest by its
tail), while the external part is the cache. Under SkyReels-V2's block-causal frame mask both parts
are computed as rectangles of query blocks over the keys they may see, so masked blocks are skipped.

The cache is freed at the start of each denoising run, at the end of a pipeline call
(``maybe_free_model_hooks``), by :meth:`FlashBlockAttention.reset` and by ``handle.remove()``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from dit_accel.config import AccelerateConfig, MethodConfig, check_range
from dit_accel.context import AttentionContext
from dit_accel.forward_info import ForwardInfo
from dit_accel.kernels.flashblock_drift import head_drift
from dit_accel.kernels.flashblock_ranges import (
    Rect,
    attend_rect,
    empty_part,
    part_rectangles,
    rectangles_attention,
    write_rows,
)
from dit_accel.layout import TokenLayout
from dit_accel.registry import get_method

from .base import AttentionMethod, BlockSparseMethod

Tensor = torch.Tensor
STATE_KEY = "flashblock"
# The inner method's options FlashBlock passes on from its own.
SHARED_OPTIONS = ("density", "block_size", "backend", "tile")


def _check_count(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _inner_config(name: str | None, shared: dict[str, Any], options: dict[str, Any]) -> MethodConfig | None:
    """The inner block-sparse method's validated config (None: the internal part runs exactly)."""
    if name is None:
        if options:
            raise ValueError(f"inner_options {sorted(options)} given without an inner method")
        return None
    method = get_method(name)
    combine = getattr(BlockSparseMethod, "combine", None)
    if method.kind != "accelerate" or not issubclass(method, BlockSparseMethod):
        raise ValueError(f"inner must be None or a block-sparse accelerate method, got {name!r}")
    if getattr(method, "combine", None) is not combine:
        raise ValueError(
            f"inner={name!r} overrides combine(); flashblock merges the inner part by its LSE, which only "
            "attend() + tail() provide"
        )
    allowed = method.config_class.option_names()
    passed = {key: value for key, value in shared.items() if key in allowed and value is not None}
    return method.config_class.from_options(**passed, **options)


@dataclass
class FlashBlockConfig(AccelerateConfig):
    """Options of ``flashblock``.

    Attributes:
        refresh_every: steps after which every head's cached external part is recomputed (an int
            >= 1; 1 refreshes every step, which is exact attention).
        calibration_steps: step-to-step comparisons of each layer's external part that decide which
            heads reuse it (an int >= 0): the first ``calibration_steps + 1`` steps with external keys
            compute it fresh. 0: no calibration, every head reuses.
        min_cosine: a head whose external output's mean row cosine between consecutive calibration
            steps falls below this is recomputed every step (in [0, 1]; the paper's 0.85).
        max_lse_change: a head whose external LSE moves by more than this on average between
            consecutive calibration steps is recomputed every step (>= 0; the paper's 0.05).
        max_cache_mb: bound on the cache (MiB; None: unbounded). Calls that would exceed it are not
            cached: they compute their external part every step.
        inner: ``None`` to compute the internal keys exactly, or the name of a block-sparse
            ``accelerate`` method (``"topk"``, ``"pisa"``...) that computes them; it takes this
            config's ``density``, ``block_size``, ``backend`` and ``tile``.
        inner_options: further options of the inner method, e.g. ``{"top_p": 0.9}``.
        density: the inner method's density (None: its default); unused without ``inner``.
        backend: engine of the exact parts (and of the inner method).
        block_size: the inner method's ``(query, key)`` blocks; default ``(128, 64)``.
    """

    method: ClassVar[str] = "flashblock"

    block_size: int | tuple[int, int] = (128, 64)
    density: float | None = None
    refresh_every: int = 4
    calibration_steps: int = 2
    min_cosine: float = 0.85
    max_lse_change: float = 0.05
    max_cache_mb: float | None = None
    inner: str | None = None
    inner_options: dict[str, Any] = field(default_factory=dict)
    inner_config: MethodConfig | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_count("refresh_every", self.refresh_every, 1)
        _check_count("calibration_steps", self.calibration_steps, 0)
        check_range("min_cosine", self.min_cosine, 0.0, 1.0)
        check_range("max_lse_change", self.max_lse_change, 0.0, math.inf)
        if self.max_cache_mb is not None:
            check_range("max_cache_mb", self.max_cache_mb, 0.0, math.inf)
        if not isinstance(self.inner_options, dict):
            raise TypeError(f"inner_options must be a dict, got {type(self.inner_options).__name__}")
        shared = {name: getattr(self, name) for name in SHARED_OPTIONS}
        self.inner_config = _inner_config(self.inner, shared, self.inner_options)

    def for_family(self, family: str | None) -> FlashBlockConfig:
        """Family defaults for this config and for the inner method's."""
        resolved = dataclasses.replace(super().for_family(family))
        if resolved.inner_config is not None:
            resolved.inner_config = resolved.inner_config.for_family(family)
        return resolved


@dataclass
class _Cache:
    """One layer's cache for one call of the step (CFG cond / uncond), and its calibration.

    ``out``/``lse`` hold the external part over keys ``span`` for a call of ``shape`` (B, H, S),
    computed in full at step ``refreshed``; ``reused`` marks the heads the last call took from the
    cache. The calibration (worst cosine / ΔLSE per head so far, ``dynamic`` once decided) outlives
    span changes within a run.
    """

    span: tuple[int, int] = (0, 0)
    shape: tuple[int, int, int] = (0, 0, 0)
    out: Tensor | None = None
    lse: Tensor | None = None
    refreshed: int = -1
    reused: Tensor | None = None
    comparisons: int = 0
    min_cosine: Tensor | None = None
    max_lse_change: Tensor | None = None
    dynamic: Tensor | None = None

    def holds(self, span: tuple[int, int], shape: tuple[int, int, int]) -> bool:
        return self.out is not None and self.span == span and self.shape == shape

    def nbytes(self) -> int:
        return 0 if self.out is None else self.out.numel() * self.out.element_size() + self.lse.numel() * 4


@dataclass
class _LayerState:
    """What one attention layer keeps: caches per call of the step, and the inner method's sub-call states."""

    caches: dict[int, _Cache] = field(default_factory=dict)
    inner: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Plan:
    """The rectangles of one call's external and internal parts, and the external key range."""

    span: tuple[int, int]
    external: list[Rect]
    internal: list[Rect]

    @classmethod
    def of(cls, layout: TokenLayout, num_rows: int, num_keys: int, masked: bool) -> _Plan:
        start, length = layout.external_keys
        causal = layout.causal_block if masked else 0
        end = start + length
        internal = [rect for keys in ((0, start), (end, num_keys)) for rect in part_rectangles(num_rows, keys, causal)]
        return cls((start, end), part_rectangles(num_rows, (start, end), causal), internal)


def sub_layout(layout: TokenLayout, first: int, end: int, key_start: int) -> TokenLayout | None:
    """Layout of the queries ``[first, end)`` over the keys ``[first, end)`` plus ``[key_start, first)``
    appended, or None when it cannot be expressed (text cut, appended keys that are not video)."""
    if (first, end, key_start) == (0, layout.seq_len, 0):
        return dataclasses.replace(layout, appended_len=0, appended_grid=None, external_start=0, external_len=0)
    if layout.token_tile is not None:
        return None
    text_inside = layout.text_len > 0 and first <= layout.text_start and layout.text_end <= end
    text_outside = layout.text_len == 0 or layout.text_end <= key_start or layout.text_start >= end
    video_start, video_end = max(layout.video_start, first), min(layout.video_end, end)
    text_len = layout.text_len if text_inside else 0
    appended_is_video = key_start == first or (layout.video_start <= key_start and first <= layout.video_end)
    if not (text_inside or text_outside) or video_end - video_start + text_len != end - first or not appended_is_video:
        return None

    def grid(start: int, stop: int) -> tuple[int, int, int] | None:
        if layout.grid is None or stop <= start:
            return None
        frame = layout.grid[1] * layout.grid[2]
        if (start - layout.video_start) % frame or (stop - start) % frame:
            return None
        return (stop - start) // frame, layout.grid[1], layout.grid[2]

    return TokenLayout(
        seq_len=end - first, video_start=video_start - first, video_len=video_end - video_start,
        grid=grid(video_start, video_end), text_start=layout.text_start - first if text_len else 0,
        text_len=text_len, text_valid=layout.text_valid if text_len else None, cfg_groups=layout.cfg_groups,
        appended_len=first - key_start, appended_grid=grid(key_start, first),
    )  # fmt: skip


def _queries_then_earlier(x: Tensor, first: int, end: int, key_start: int) -> Tensor:
    """Rows ``[first, end)`` of a ``(B, S, H, D)`` tensor followed by rows ``[key_start, first)`` (a view if none)."""
    if key_start == first:
        return x[:, first:end]
    return torch.cat([x[:, first:end], x[:, key_start:first]], dim=1)


def _starts_new_run(old: tuple | None, new: tuple) -> bool:
    """A timestep (of any frame) that rises, or a different frame count, starts a new denoising run."""
    if old is None or len(old) != len(new):
        return True
    return any(a is not None and b is not None and b > a for a, b in zip(old, new, strict=True))


class FlashBlockAttention(AttentionMethod):
    """External keys' attention cached across steps per head, merged exactly with the internal part."""

    name = "flashblock"
    kind = "accelerate"
    description = "FlashBlock: the external (context) keys' attention cached across steps, merged by LSE"
    config_class = FlashBlockConfig
    config: FlashBlockConfig

    def __init__(self, config: FlashBlockConfig) -> None:
        super().__init__(config)
        inner = config.inner_config
        self.inner: BlockSparseMethod | None = None if inner is None else get_method(inner.method)(inner)
        self.stats: Counter[str] = Counter()
        self._states: list[dict[str, Any]] = []
        self._cache_bytes = 0
        self._signature: tuple | None = None
        self._iteration = 0
        self._slot = 0

    # --- steps and memory --------------------------------------------------------------------

    def token_tile(self, info: ForwardInfo) -> tuple[int, int, int] | None:
        """The inner method's tile order, unless the forward declares external tokens (they must stay contiguous)."""
        return None if self.inner is None or info.external_len else self.inner.token_tile(info)

    def prepare(self, info: ForwardInfo) -> None:
        """Count denoising steps and the calls within one (CFG) from the forward's timesteps."""
        if self.inner is not None:
            self.inner.prepare(info)
        signature = info.frame_timesteps or (info.timestep,)
        if signature == self._signature and None not in signature:
            self._slot += 1
            return
        if _starts_new_run(self._signature, signature):
            self.reset()
        else:
            self._iteration += 1
        self._signature, self._slot = signature, 0

    def reset(self) -> None:
        """Free every cache and calibration; the next call starts a new denoising run."""
        for state in self._states:
            state.pop(STATE_KEY, None)
        self._states.clear()
        self._cache_bytes = 0
        self._signature, self._iteration, self._slot = None, 0, 0

    def attach(self, target: Any, transformers: list[torch.nn.Module]) -> Callable[[], None]:
        """Free the cache when a pipeline call ends (its ``maybe_free_model_hooks``) and on ``remove()``."""
        undo_inner = self.inner.attach(target, transformers) if self.inner is not None else None
        name = "maybe_free_model_hooks"
        release = None if isinstance(target, torch.nn.Module) else getattr(target, name, None)
        own = name in vars(target) if release is not None else False
        if release is not None:

            def release_and_reset(*args: Any, **kwargs: Any) -> Any:
                self.reset()
                return release(*args, **kwargs)

            setattr(target, name, release_and_reset)

        def detach() -> None:
            self.reset()
            if release is not None:
                setattr(target, name, release) if own else delattr(target, name)
            if undo_inner is not None:
                undo_inner()

        return detach

    @property
    def cache_bytes(self) -> int:
        """Bytes held by the cache now."""
        return self._cache_bytes

    # --- the call -------------------------------------------------------------------------------

    def _reason(self, ctx: AttentionContext) -> str | None:
        """Why this call with external keys cannot be split (it then runs dense), or None."""
        if ctx.attention_mask is not None and not ctx.layout.causal_block:
            return "the attention mask is not a block-causal frame mask flashblock can split"
        return None

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        if ctx.in_warmup:
            return ctx.dense(q, k, v)
        if not ctx.layout.external_keys[1]:
            return self.inner(q, k, v, ctx) if self.inner is not None else ctx.dense(q, k, v)
        reason = self._reason(ctx)
        if reason is not None:
            ctx.record_dense_fallback(self.name, reason)
            return ctx.dense(q, k, v)
        from dit_accel import kernels

        plan = _Plan.of(ctx.layout, q.shape[1], k.shape[1], ctx.attention_mask is not None)
        inner_out, inner_lse = self._internal(q, k, v, plan, ctx, self.config.backend)
        external_out, external_lse = self._external(q, k, v, plan, ctx)
        return kernels.merge_attention(inner_out, inner_lse, external_out, external_lse)[0].transpose(1, 2)

    def reference(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """Float64: exact external part, except the heads the last call reused (their cached part), merged
        with the internal part (the inner method's float64 selection and tail where there is one)."""
        if ctx.in_warmup or self._reason(ctx) is not None:
            return super().reference(q, k, v, ctx)
        if not ctx.layout.external_keys[1]:
            return self.inner.reference(q, k, v, ctx) if self.inner is not None else super().reference(q, k, v, ctx)
        from dit_accel.kernels.reference import merge_attention_reference

        q64, k64, v64 = q.double(), k.double(), v.double()
        plan = _Plan.of(ctx.layout, q.shape[1], k.shape[1], ctx.attention_mask is not None)
        inner_out, inner_lse = self._internal(q64, k64, v64, plan, ctx, "reference")
        heads = [x.transpose(1, 2) for x in (q64, k64, v64)]
        external_out, external_lse = rectangles_attention(*heads, plan.external, q.shape[-1] ** -0.5, "reference")
        cache = self._layer(ctx).caches.get(self._slot)
        if cache is not None and cache.reused is not None and cache.holds(plan.span, tuple(external_lse.shape)):
            reused = cache.reused.nonzero().flatten()
            external_out[:, reused] = cache.out[:, reused].double()
            external_lse[:, reused] = cache.lse[:, reused].double()
        return merge_attention_reference(inner_out, inner_lse, external_out, external_lse)[0].transpose(1, 2)

    # --- the parts ----------------------------------------------------------------------------

    def _layer(self, ctx: AttentionContext) -> _LayerState:
        if STATE_KEY not in ctx.state:
            ctx.state[STATE_KEY] = _LayerState()
            self._states.append(ctx.state)
        return ctx.state[STATE_KEY]

    def _internal(self, q: Tensor, k: Tensor, v: Tensor, plan: _Plan, ctx: AttentionContext,
                  backend: str) -> tuple[Tensor, Tensor]:  # fmt: skip
        """``(out, lse)`` ``(B, H, S, ...)`` of every query over the internal keys it may see."""
        heads = [x.transpose(1, 2) for x in (q, k, v)]
        out, lse = empty_part(heads[0])

        def exact(rows: tuple[int, int], keys: tuple[int, int]) -> None:
            if rows[1] > rows[0]:
                write_rows(out, lse, rows[0], *attend_rect(*heads, Rect(rows, keys), q.shape[-1] ** -0.5, backend))

        for rect in plan.internal:
            (r0, r1), (k0, k1) = rect.rows, rect.keys
            first, end = max(r0, k0), min(r1, k1)
            if self.inner is None or end != k1 or first >= end:
                exact(rect.rows, rect.keys)
                continue
            exact((r0, first), rect.keys)
            exact((end, r1), rect.keys)
            if not self._inner_rows(q, k, v, (first, end, k0), ctx, out, lse, backend):
                exact((first, end), rect.keys)
        return out, lse

    def _inner_rows(self, q: Tensor, k: Tensor, v: Tensor, rows: tuple[int, int, int], ctx: AttentionContext,
                    out: Tensor, lse: Tensor, backend: str) -> bool:  # fmt: skip
        """Queries ``[first, end)`` over keys ``[key_start, end)`` through the inner method; False if it cannot."""
        from dit_accel import kernels

        first, end, key_start = rows
        layout = sub_layout(ctx.layout, first, end, key_start)
        if layout is None or self.inner.full_density_set():
            return False
        state = self._layer(ctx).inner.setdefault((end - first, first - key_start), {})
        sub_ctx = dataclasses.replace(
            ctx, layout=layout, attention_mask=None, binding=dataclasses.replace(ctx.binding, state=state)
        )
        if self.inner.dense_reason(sub_ctx) is not None:
            return False
        sub_k, sub_v = (_queries_then_earlier(x, first, end, key_start) for x in (k, v))
        routing = self.inner.route(q[:, first:end], sub_k, sub_v, sub_ctx)
        blocks = self.inner.select(routing, sub_ctx)
        part_out, part_lse = self.inner.attend(routing, blocks, sub_ctx)
        tail = self.inner.tail(routing, blocks, sub_ctx)
        if tail is not None:
            part_out, part_lse = kernels.merge_attention(part_out, part_lse, *tail)
        video = slice(layout.video_start, layout.video_end) if routing.q_rows is not None else slice(None)
        write_rows(out, lse, first + layout.video_start, part_out[:, :, video], part_lse[:, :, video])
        if layout.text_len:
            text = Rect((first + layout.text_start, first + layout.text_end), (key_start, end))
            heads = [x.transpose(1, 2) for x in (q, k, v)]
            write_rows(out, lse, text.rows[0], *attend_rect(*heads, text, q.shape[-1] ** -0.5, backend))
        return True

    def _external(self, q: Tensor, k: Tensor, v: Tensor, plan: _Plan, ctx: AttentionContext) -> tuple[Tensor, Tensor]:
        """The external part: fresh on refresh steps, else the cache with the dynamic heads recomputed."""
        heads = [x.transpose(1, 2) for x in (q, k, v)]
        cfg = self.config

        def fresh(index: Tensor | None = None) -> tuple[Tensor, Tensor]:
            chosen = heads if index is None else [x.index_select(1, index) for x in heads]
            return rectangles_attention(*chosen, plan.external, q.shape[-1] ** -0.5, cfg.backend)

        cache = self._layer(ctx).caches.setdefault(self._slot, _Cache())
        shape = (q.shape[0], q.shape[2], q.shape[1])
        held = cache.holds(plan.span, shape)
        if not held or cache.dynamic is None or self._iteration - cache.refreshed >= cfg.refresh_every:
            out, lse = fresh()
            if held and cache.dynamic is None and cache.refreshed == self._iteration - 1:
                self._calibrate(cache, out, lse)
            self._store(cache, plan.span, shape, out, lse)
            self.stats["external_computed"] += 1
            return out, lse
        dynamic = cache.dynamic.nonzero().flatten()
        if dynamic.numel():
            out, lse = fresh(dynamic)
            cache.out.index_copy_(1, dynamic, out.detach())
            cache.lse.index_copy_(1, dynamic, lse.detach().float())
            self.stats["heads_recomputed"] += dynamic.numel()
        cache.reused = ~cache.dynamic
        self.stats["external_reused"] += 1
        return cache.out, cache.lse

    def _calibrate(self, cache: _Cache, out: Tensor, lse: Tensor) -> None:
        """Fold one step-to-step comparison into the per-head worst cases; decide after enough of them."""
        cosine, change = head_drift(cache.out, cache.lse, out, lse)
        first = cache.min_cosine is None
        cache.min_cosine = cosine if first else torch.minimum(cache.min_cosine, cosine)
        cache.max_lse_change = change if first else torch.maximum(cache.max_lse_change, change)
        cache.comparisons += 1
        if cache.comparisons >= self.config.calibration_steps:
            cfg = self.config
            cache.dynamic = (cache.min_cosine < cfg.min_cosine) | (cache.max_lse_change > cfg.max_lse_change)

    def _store(self, cache: _Cache, span: tuple[int, int], shape: tuple[int, int, int], out: Tensor,
               lse: Tensor) -> None:  # fmt: skip
        """Keep a freshly computed external part, within the memory bound."""
        if self.config.calibration_steps == 0 and cache.dynamic is None:
            cache.dynamic = torch.zeros(shape[1], dtype=torch.bool, device=out.device)
        self._cache_bytes -= cache.nbytes()
        cache.out = cache.lse = None
        limit = self.config.max_cache_mb
        size = out.numel() * out.element_size() + lse.numel() * 4
        if limit is not None and self._cache_bytes + size > limit * 2**20:
            self.stats["uncached"] += 1
            return
        cache.span, cache.shape, cache.refreshed = span, shape, self._iteration
        cache.out, cache.lse = out.detach(), lse.detach().float()
        cache.reused = torch.zeros(shape[1], dtype=torch.bool, device=out.device)
        self._cache_bytes += size
