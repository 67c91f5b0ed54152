"""``svg_ear``: semantic clusters, error-aware routing and centroid compensation (SVG-EAR, arXiv 2603.08982).

Per (batch, head), the video queries and keys are clustered by k-means (warm-started across
denoising steps from the layer's centroids) and permuted so that every cluster is contiguous. The
permuted tokens are cut into fixed blocks for the backend (FA4 / Triton / reference); a cluster
that straddles a block boundary is split between blocks. For each query block, the error probe
estimates what compensating each key block by its clusters' centroids would cost in accuracy; a
budget (top-p of the centroid softmax mass, or a fixed ``density``) is filled with the largest-mass
blocks first and then greedily by error-to-cost. The keys left out are compensated by one
pseudo-key per key cluster (mean key, mean value, logit raised by the log of the number of its keys
left out), merged with the exact part by LSE. Text keys are exact extra keys, never clustered.

The paper's kernel walks variable-size cluster pairs; here clusters are split into the fixed
blocks every backend takes, so the exact part runs on the same engines as ``topk``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from dit_accel.config import AccelerateConfig, check_choice, check_range
from dit_accel.context import AttentionContext
from dit_accel.forward_info import ForwardInfo
from dit_accel.layout import TokenLayout
from dit_accel.tiling import Tile

from .base import AttentionMethod, BlockSparseMethod, Routing

if TYPE_CHECKING:
    from dit_accel.kernels.clustering import Clusters

Tensor = torch.Tensor
ROUTE_BY = ("error", "mass")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


@dataclass
class SVGEARConfig(AccelerateConfig):
    """Options of ``svg_ear`` (besides ``backend``; ``tile`` is unused: clusters set the order).

    Family-dependent options default to None and take the model family's values when applied
    (``family_defaults``; outside a model, the ``"default"`` ones).

    Attributes:
        density: when given, every query block computes exactly this fraction of key blocks, in
            (0, 1] (equal-density comparisons with ``topk``); default None: the ``top_p`` budget.
        top_p: budget when ``density`` is None: the keys of the fewest key blocks holding this
            fraction of a query block's centroid softmax mass, in (0, 1]; default 0.9.
        always_exact: fraction of key blocks, largest centroid mass first, that every query block
            computes exactly whatever the ranking (at least one), in [0, 1]; default 0.05.
        gamma: cost exponent of the error-to-cost ranking ``log ε − gamma · log(|Q_I| |K_J|)``, >= 0.
        route_by: ``"error"`` (error-to-cost ranking) or ``"mass"`` (centroid softmax mass alone).
        compensate: compensate the skipped keys by their clusters' centroids (False drops them).
        q_clusters: query clusters per (batch, head); default 300 (400 on HunyuanVideo). Short
            sequences get fewer: at most one per half query block of tokens.
        k_clusters: key clusters per (batch, head), default 1000; at most one per half key block.
        kmeans_first_iters: k-means iterations when a layer has no centroids yet (its first sparse
            call, or the shape changed), from centroids spread evenly over the sequence.
        kmeans_iters: k-means iterations at later calls, from the layer's previous centroids.
        block_size: ``(query, key)`` block sizes of the cluster-ordered tokens; default ``(128, 64)``.
        dense_steps: steps run dense first; default 0.2 (0.1 on HunyuanVideo). A fraction needs
            the step count: call through a pipeline or pass ``num_inference_steps``.
        dense_layers: leading layers run dense; default 1.
    """

    method: ClassVar[str] = "svg_ear"
    family_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {"q_clusters": 300, "dense_steps": 0.2, "dense_layers": 1},
        "hunyuan_video": {"q_clusters": 400, "dense_steps": 0.1},
    }

    block_size: int | tuple[int, int] = (128, 64)
    density: float | None = None
    dense_steps: int | float | None = None
    dense_layers: int | float | None = None
    top_p: float = 0.9
    always_exact: float = 0.05
    gamma: float = 1.0
    route_by: str = "error"
    compensate: bool = True
    q_clusters: int | None = None
    k_clusters: int = 1000
    kmeans_first_iters: int = 50
    kmeans_iters: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        check_range("always_exact", self.always_exact, 0.0, 1.0)
        check_range("gamma", self.gamma, 0.0, math.inf)
        check_choice("route_by", self.route_by, ROUTE_BY)
        if not isinstance(self.compensate, bool):
            raise TypeError(f"compensate must be True or False, got {self.compensate!r}")
        for name in ("k_clusters", "kmeans_first_iters", "kmeans_iters"):
            _check_positive_int(name, getattr(self, name))
        if self.q_clusters is not None:
            _check_positive_int("q_clusters", self.q_clusters)


def cluster_count(wanted: int, tokens: int, block: int) -> int:
    """Clusters for ``tokens`` rows: ``wanted``, but at most one per half block of rows (and >= 1)."""
    return max(1, min(wanted, tokens // max(1, block // 2)))


class KMeansState(torch.nn.Module):
    """A layer's k-means centroids, kept between calls to warm-start the next one.

    Non-persistent buffers: they follow the model across devices and are not saved. A shape change
    (batch, heads, tokens, cluster count) starts afresh. ``last_labels`` holds the query and key
    labels of the layer's latest call, which :meth:`SVGEARAttention.reference` describes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("q_centroids", None, persistent=False)
        self.register_buffer("k_centroids", None, persistent=False)
        self.last_labels: tuple[Tensor, Tensor] | None = None

    def clusters(self, name: str, x: Tensor, count: int, first_iters: int, iters: int,
                 values: Tensor | None = None) -> Clusters:  # fmt: skip
        """k-means of x ``(B, H, S, D)`` into ``count`` clusters, warm-started when the shapes allow."""
        from dit_accel.kernels.clustering import kmeans, spread_centroids

        start = spread_centroids(x, count)
        previous = getattr(self, f"{name}_centroids")
        warm = previous is not None and previous.shape == start.shape and previous.dtype == start.dtype
        warm = warm and previous.device == start.device
        result = kmeans(x, previous if warm else start, iters if warm else first_iters, values)
        setattr(self, f"{name}_centroids", result.centroids)
        return result


@dataclass
class ClusterRouting(Routing):
    """A :class:`Routing` whose q/k/v are in per-head cluster order (``q_rows`` is None).

    Attributes:
        q_order: ``(B, H, Sq)`` video query rows in cluster order (undone on the output).
        keys: the key :class:`~dit_accel.kernels.clustering.Clusters` (centroids, counts, mean values).
        key_labels: ``(B, H, Sk)`` cluster of each key in cluster order (ascending).
    """

    q_order: Tensor | None = None
    keys: Clusters | None = None
    key_labels: Tensor | None = None


def _video_keys(x: Tensor, layout: TokenLayout) -> Tensor:
    """``(B, H, Sk, D)`` video keys (or values), followed by the appended key-only tokens if any."""
    video = x[:, :, layout.video_slice]
    return torch.cat([video, x[:, :, layout.seq_len :]], dim=2) if layout.appended_len else video


class SVGEARAttention(BlockSparseMethod):
    """k-means-ordered blocks, error-to-cost routing and centroid compensation (see the module)."""

    name = "svg_ear"
    description = "SVG-EAR: k-means clusters, error-aware routing, centroid compensation"
    config_class = SVGEARConfig
    config: SVGEARConfig

    def layer_state(self, layer_index: int, num_layers: int, attention: torch.nn.Module) -> KMeansState:
        return KMeansState()

    def token_tile(self, info: ForwardInfo) -> Tile | None:
        """No once-per-forward tile reorder: the clusters set the order."""
        return None

    # --- clustering and routing ----------------------------------------------------------------

    def _counts(self, q_video: Tensor, k_video: Tensor) -> tuple[int, int]:
        """Query and key cluster counts for this call's token counts."""
        cfg = self.config
        q_wanted = cfg.q_clusters or SVGEARConfig.family_defaults["default"]["q_clusters"]
        return cluster_count(q_wanted, q_video.shape[2], cfg.block_q), cluster_count(
            cfg.k_clusters, k_video.shape[2], cfg.block_k
        )

    def _cluster(self, q_video: Tensor, k_video: Tensor, v_video: Tensor,
                 state: KMeansState) -> tuple[Clusters, Clusters]:  # fmt: skip
        """Query and key clusters of this call (state warm-started and updated), remembered for reference()."""
        cfg = self.config
        q_count, k_count = self._counts(q_video, k_video)
        iters = (cfg.kmeans_first_iters, cfg.kmeans_iters)
        queries = state.clusters("q", q_video, q_count, *iters)
        keys = state.clusters("k", k_video, k_count, *iters, values=v_video)
        state.last_labels = (queries.labels, keys.labels)
        return queries, keys

    @staticmethod
    def _state(ctx: AttentionContext) -> KMeansState:
        """The layer's state; outside a model (no module state), one kept in the context's cache, so
        repeated calls on one context warm-start and each new context starts afresh."""
        state = ctx.module_state
        return state if isinstance(state, KMeansState) else ctx.state.setdefault("svg_ear_kmeans", KMeansState())

    def route(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> ClusterRouting:
        qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
        q_video = qh[:, :, ctx.layout.video_slice]
        k_video, v_video = _video_keys(kh, ctx.layout), _video_keys(vh, ctx.layout)
        queries, keys = self._cluster(q_video, k_video, v_video, self._state(ctx))
        return self._cluster_routing(qh, kh, vh, queries.row_order(), keys, ctx)

    def _cluster_routing(self, qh: Tensor, kh: Tensor, vh: Tensor, q_order: Tensor, keys: Clusters,
                         ctx: AttentionContext) -> ClusterRouting:  # fmt: skip
        """The :class:`ClusterRouting` of ``(B, H, S, D)`` q/k/v for given query order and key clusters."""
        from dit_accel.kernels.clustering import gather_rows

        from .routing import key_log_counts

        layout = ctx.layout
        k_order = keys.row_order()
        k_video, v_video = _video_keys(kh, layout), _video_keys(vh, layout)
        key_len = k_video.shape[2]
        routing = ClusterRouting(
            q=gather_rows(qh[:, :, layout.video_slice], q_order), k=gather_rows(k_video, k_order),
            v=gather_rows(v_video, k_order), q_rows=None, key_rows=k_order, key_len=key_len,
            scale=qh.shape[-1] ** -0.5, block_q=self.config.block_q, block_k=self.config.block_k,
            log_counts=key_log_counts(key_len, self.config.block_k, qh.device),
            q_order=q_order, keys=keys, key_labels=keys.labels.gather(2, k_order),
        )  # fmt: skip
        if layout.text_len:
            routing.extra_k, routing.extra_v = kh[:, :, layout.text_slice], vh[:, :, layout.text_slice]
            routing.extra_valid = layout.text_valid
        return routing

    def select(self, routing: ClusterRouting, ctx: AttentionContext):
        """Top-mass blocks, then error-to-cost (or mass) ranking until the budget is spent."""
        from dit_accel import kernels
        from dit_accel.kernels.block_list import BlockList
        from dit_accel.kernels.error_selection import always_count, select_by_rank
        from dit_accel.kernels.svg_ear_ops import error_probe

        cfg = self.config
        keys = routing.keys
        log_err, log_mass = error_probe(routing.q_mean, routing.k, routing.v, routing.key_labels, keys.centroids,
                                        keys.value_means, routing.scale, routing.block_k)  # fmt: skip
        rank = log_mass
        if cfg.route_by == "error":
            log_q = kernels.block_counts(routing.q.shape[2], routing.block_q, log_err.device).to(log_err.dtype).log()
            rank = log_err - cfg.gamma * (log_q[:, None] + routing.log_counts.to(log_err.dtype))
        key_counts = kernels.block_counts(routing.key_len, routing.block_k, log_err.device)
        always = always_count(key_counts.numel(), cfg.always_exact)
        top_p = cfg.top_p if cfg.density is None else None
        indices, counts = select_by_rank(log_mass, rank, key_counts, always=always, density=cfg.density, top_p=top_p)
        return BlockList(indices, counts, routing.block_q, routing.block_k, routing.key_len)

    def _uncovered(self, routing: ClusterRouting, blocks) -> Tensor:
        from dit_accel import kernels
        from dit_accel.kernels.svg_ear_ops import uncovered_counts

        selected = kernels.block_mask(blocks.indices, blocks.counts, blocks.num_key_blocks)
        return uncovered_counts(selected, routing.keys.counts, routing.key_len, routing.block_k)

    def tail(self, routing: ClusterRouting, blocks, ctx: AttentionContext) -> tuple[Tensor, Tensor] | None:
        """One pseudo-key per key cluster for the keys each query block skipped (None: dropped)."""
        if not self.config.compensate:
            return None
        from dit_accel.kernels.svg_ear_ops import centroid_attention

        keys = routing.keys
        log_weights = self._uncovered(routing, blocks).to(keys.centroids.dtype).log()
        return centroid_attention(routing.q, keys.centroids, keys.value_means, log_weights, routing.block_q,
                                  routing.scale)  # fmt: skip

    def map_legend(self) -> dict[int, str]:
        return {0: "approximated" if self.config.compensate else "skipped", 1: "exact"}

    def _assemble(self, out: Tensor, q: Tensor, k: Tensor, v: Tensor, routing: ClusterRouting,
                  ctx: AttentionContext) -> Tensor:  # fmt: skip
        """Undo the per-head cluster order, then the base's assembly (text rows exact)."""
        from dit_accel.kernels.clustering import scatter_rows

        return super()._assemble(scatter_rows(out, routing.q_order), q, k, v, routing, ctx)

    # --- the float64 definition ----------------------------------------------------------------

    def reference(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """Float64 definition of a call, given its clustering (the layer's latest labels, or a fresh
        standalone k-means): each video query attends, in one softmax, to the keys of its query
        block's selected key blocks, the valid text keys and (with ``compensate``) one pseudo-key
        per key cluster weighted by the number of its keys the block skipped.
        """
        if ctx.in_warmup or self.dense_reason(ctx) is not None or self.full_density_set():
            return AttentionMethod.reference(self, q, k, v, ctx)
        from dit_accel.kernels.clustering import cluster_order, clusters_from_labels

        q64, k64, v64 = (x.double() for x in (q, k, v))
        qh, kh, vh = (x.transpose(1, 2) for x in (q64, k64, v64))
        q_video = qh[:, :, ctx.layout.video_slice]
        k_video, v_video = _video_keys(kh, ctx.layout), _video_keys(vh, ctx.layout)
        labels = self._state(ctx).last_labels
        if labels is not None and labels[0].shape == q_video.shape[:3] and labels[1].shape == k_video.shape[:3]:
            q_count, k_count = self._counts(q_video, k_video)
            q_order = cluster_order(labels[0], q_count)[0]
            keys = clusters_from_labels(k_video, labels[1], k_count, v_video)
        else:
            queries, keys = self._cluster(q_video, k_video, v_video, KMeansState())
            q_order = queries.row_order()
        routing = self._cluster_routing(qh, kh, vh, q_order, keys, ctx)
        out = self._reference_video(routing, self.select(routing, ctx))
        return self._assemble(out, q64, k64, v64, routing, ctx)

    def _reference_video(self, routing: ClusterRouting, blocks) -> Tensor:
        """Float64 ``(B, H, Sq, D)`` output of the video queries, in cluster order (one softmax)."""
        from dit_accel.kernels.reference import block_mask_from_lists

        q, scale = routing.q, routing.scale
        selected = block_mask_from_lists(blocks.indices, blocks.counts, blocks.num_key_blocks)
        block_keys = selected.repeat_interleave(routing.block_k, dim=3)[..., : routing.key_len]
        allowed = block_keys.repeat_interleave(routing.block_q, dim=2)[:, :, : q.shape[2]]
        logits = [(q @ routing.k.transpose(-1, -2) * scale).masked_fill(~allowed, -math.inf)]
        values = [routing.v]
        if routing.extra_k is not None:
            text = q @ routing.extra_k.transpose(-1, -2) * scale
            if routing.extra_valid is not None:
                valid = torch.arange(text.shape[-1], device=text.device) < routing.extra_valid.long()[:, None]
                text = text.masked_fill(~valid[:, None, None, :], -math.inf)
            logits.append(text)
            values.append(routing.extra_v)
        if self.config.compensate:
            keys = routing.keys
            members = torch.nn.functional.one_hot(routing.key_labels.long(), keys.counts.shape[-1]).double()
            skipped = (~block_keys).double() @ members
            weights = skipped.log().repeat_interleave(routing.block_q, dim=2)[:, :, : q.shape[2]]
            logits.append(q @ keys.centroids.transpose(-1, -2) * scale + weights)
            values.append(keys.value_means)
        return torch.softmax(torch.cat(logits, dim=-1), dim=-1) @ torch.cat(values, dim=2)
