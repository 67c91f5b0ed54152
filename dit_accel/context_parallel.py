"""Diffusers context parallelism (``transformer.enable_parallelism(ContextParallelConfig(...))``) for our processors.

Under Ulysses (``ulysses_degree=N``) each rank holds 1/N of the sequence with every head. A processor
exchanges it, with Diffusers' own all-to-all (``SeqAllToAllDim``), for the whole sequence of its
``H/N`` heads, runs the method there — routing, token order and text spans see the full sequence,
and per-head state (k-means centroids, FlashBlock caches) holds the rank's own heads — and exchanges
the output back. A call's local sequence may be several spans (FLUX: the rank's text shard, then its
image shard); the gathered rows are regrouped span by span, so the method sees ``[text, image]``.

Ring attention (and Ulysses-anything's uneven shards) is left to Diffusers for the stock ``dense``
call only; other methods refuse it with an error that names the method and suggests ``ulysses_degree``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from diffusers.hooks.context_parallel import EquipartitionSharder, PartitionAnythingSharder
from diffusers.models._modeling_parallel import ContextParallelConfig, ContextParallelInput
from diffusers.models.attention_dispatch import SeqAllToAllDim

Tensor = torch.Tensor

# Diffusers' name for the split hook of a plan entry; "" is the transformer itself.
MODEL_SPLIT_HOOK = "cp_input---"


def cp_config_of(parallel_config: Any) -> ContextParallelConfig | None:
    """The context-parallel part of a processor's or model's ``_parallel_config`` (None when off)."""
    return getattr(parallel_config, "context_parallel_config", None)


def is_enabled(model: torch.nn.Module) -> bool:
    """Whether ``model.enable_parallelism`` turned context parallelism on."""
    return cp_config_of(getattr(model, "_parallel_config", None)) is not None


def local_share(length: int, parallel_config: Any) -> int:
    """Tokens of a ``length``-token span one rank holds under Ulysses (``length`` itself when not sharded)."""
    config = cp_config_of(parallel_config)
    return length if config is None else length // config.ulysses_degree


def check_ulysses(config: ContextParallelConfig, method: str) -> None:
    """Refuse configurations our exchange does not serve: ring (and unified) attention, uneven shards."""
    if config.ring_degree > 1 or config.ulysses_anything:
        what = "ring attention (ring_degree > 1)" if config.ring_degree > 1 else "ulysses_anything"
        raise ValueError(
            f"dit-accel method {method!r} does not support {what} context parallelism; use "
            f"ContextParallelConfig(ulysses_degree=N) (the 'dense' method runs any Diffusers configuration)"
        )


class UlyssesExchange:
    """One call's all-to-all: ``(B, S/N, H, D)`` shards <-> ``(B, S, H/N, D)`` full sequence of local heads.

    ``spans`` are the lengths of the consecutive parts of the local sequence (e.g. text, image); the
    gathered rows are put span-major (all ranks' text, then all ranks' image) and back.
    """

    def __init__(self, config: ContextParallelConfig, spans: tuple[int, ...], num_heads: int, device: torch.device):
        self.world = config.ulysses_degree
        if num_heads % self.world:
            raise ValueError(f"Ulysses needs heads divisible by ulysses_degree: {num_heads} heads, {self.world} ranks")
        self.group = config._ulysses_mesh.get_group()
        self.full_spans = tuple(length * self.world for length in spans)
        self.order, self.inverse = _span_major_indices(spans, self.world, device)

    def gather(self, x: Tensor) -> Tensor:
        """Local sequence of every head -> full sequence of this rank's heads (span-major)."""
        x = SeqAllToAllDim.apply(self.group, x.contiguous(), 2, 1)
        return x if self.order is None else x.index_select(1, self.order)

    def scatter(self, x: Tensor) -> Tensor:
        """The inverse of :meth:`gather`."""
        if self.inverse is not None:
            x = x.index_select(1, self.inverse)
        return SeqAllToAllDim.apply(self.group, x.contiguous(), 1, 2)


@functools.lru_cache(maxsize=64)
def _span_major_indices(spans: tuple[int, ...], world: int, device: torch.device) -> tuple[Tensor | None, ...]:
    """:func:`span_major_order` and its inverse, built once per shape (every layer of every call reuses them)."""
    order = span_major_order(spans, world, device)
    return order, None if order is None else torch.argsort(order)


def span_major_order(spans: tuple[int, ...], world: int, device: torch.device) -> Tensor | None:
    """Rows of the rank-major gathered sequence in span-major order; None when there is one span."""
    if sum(1 for length in spans if length) <= 1:
        return None
    local = sum(spans)
    starts = torch.tensor([0, *spans[:-1]]).cumsum(0).tolist()
    rows = [
        torch.arange(rank * local + start, rank * local + start + length)
        for start, length in zip(starts, spans, strict=True)
        for rank in range(world)
    ]
    return torch.cat(rows).to(device)


def unsharded_arguments(model: torch.nn.Module, arguments: dict[str, Any], hook_name: str) -> dict[str, Any]:
    """The transformer call's arguments as passed, when hook ``hook_name`` runs inside Diffusers' split.

    A hook registered before ``enable_parallelism`` sees the inputs the model-level plan entry has
    already split (FLUX: hidden states, text, ids); they are all-gathered back with Diffusers' sharder
    so that the forward's facts (text length, grid) describe the whole sequence.
    """
    registry = getattr(model, "_diffusers_hook", None)
    order = [] if registry is None else registry._hook_order
    if MODEL_SPLIT_HOOK not in order or order.index(MODEL_SPLIT_HOOK) < order.index(hook_name):
        return arguments
    split = registry.get_hook(MODEL_SPLIT_HOOK)
    config = split.parallel_config
    sharder = PartitionAnythingSharder.unshard_anything if config.ulysses_anything or config.ring_anything else None
    full = dict(arguments)
    for name, plan in split.metadata.items():
        value = arguments.get(name)
        if not isinstance(plan, ContextParallelInput) or plan.split_output or not isinstance(value, Tensor):
            continue
        if plan.expected_dims is None or value.dim() == plan.expected_dims:
            unshard = sharder or EquipartitionSharder.unshard
            full[name] = unshard(value, plan.split_dim, config._flattened_mesh)
    return full
