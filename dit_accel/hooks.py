"""The transformer-level hook that feeds the step tracker.

Registered through Diffusers' ``HookRegistry`` so that it composes with Diffusers' own caches
(FirstBlockCache, MagCache, TaylorSeer) and receives the pipeline's ``cache_context``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

from . import context_parallel
from .forward_info import ForwardInfo
from .methods.base import AttentionMethod
from .steps import StepTracker, timestep_value
from .tiling import Tile, token_permutation

HOOK_NAME = "dit_accel_steps"


class _ContextOnly(BaseState):
    """No per-context state: the hook only reads the pipeline's cache context."""

    def reset(self, *args: Any, **kwargs: Any) -> None:
        return None


class StepTrackingHook(ModelHook):
    """Before each transformer forward: record the step and what the processors need to know."""

    _is_stateful = True

    def __init__(self, tracker: StepTracker, adapter: Any, method: AttentionMethod) -> None:
        super().__init__()
        self.tracker = tracker
        self.adapter = adapter
        self.method = method
        self.cache_context = StateManager(_ContextOnly)

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        self._observe(module, args, kwargs)
        return args, kwargs

    @torch.compiler.disable
    def _observe(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        arguments = context_parallel.unsharded_arguments(
            module, self.adapter.bind_arguments(module, args, kwargs), HOOK_NAME
        )
        context = self.cache_context._context
        step_index = getattr(context, "step_index", None)
        num_steps = getattr(context, "num_inference_steps", None)
        timestep = arguments.get("timestep")
        t = None if timestep is None else timestep_value(timestep)
        self.tracker.observe(t, step_index=step_index, num_steps=num_steps)
        info = self.adapter.capture(module, arguments)
        info.step_index, info.num_steps = self.tracker.step_index, self.tracker.num_steps
        info.timestep = t
        # Under context parallelism the reorder hooks would see one rank's shard: methods order per call.
        reorder = self.adapter.can_reorder(module, arguments) and not context_parallel.is_enabled(module)
        tile = self.method.token_tile(info) if reorder else None
        if tile is not None and info.grid is not None:
            add_token_order(info, tile)
        self.tracker.info = info
        # Outside any compiled region: methods fill their caches here (tile orders, block sizes),
        # so the traced attention code only ever sees cache hits.
        self.method.prepare(info)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.tracker.reset()
        return module


def add_token_order(info: ForwardInfo, tile: Tile) -> None:
    """Set the index tensors that put this forward's video tokens in tile order."""
    order, inverse = token_permutation(info.grid, tile, info.device)
    info.token_tile, info.token_order, info.token_inverse = tile, order, inverse
    if info.video_start:
        info.token_order_after_text = _after_text(order, info.video_start)


_AFTER_TEXT_CACHE: dict[tuple, torch.Tensor] = {}


def _after_text(order: torch.Tensor, text_len: int) -> torch.Tensor:
    key = (order.data_ptr(), order.numel(), text_len)
    if key not in _AFTER_TEXT_CACHE:
        text = torch.arange(text_len, device=order.device)
        _AFTER_TEXT_CACHE[key] = torch.cat([text, order + text_len])
    return _AFTER_TEXT_CACHE[key]


def install_step_hook(model: torch.nn.Module, tracker: StepTracker, adapter: Any, method: AttentionMethod) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(model)
    if registry.get_hook(HOOK_NAME) is not None:
        raise ValueError(
            f"dit-accel is already applied to this {type(model).__name__}; call handle.remove() on the "
            "existing handle first"
        )
    registry.register_hook(StepTrackingHook(tracker, adapter, method), HOOK_NAME)


def remove_step_hook(model: torch.nn.Module) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.remove_hook(HOOK_NAME, recurse=False)
