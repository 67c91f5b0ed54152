"""``dit_accel.apply``: install a method on a pipeline or transformer, and the handle that undoes it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dit_accel.pipelines import ModelAdapter, find_adapter, supported_model_names
from dit_accel.pipelines.feed_forward import fuse_feed_forwards

from .block_map import BlockMap, BlockMapRequest
from .config import MethodConfig
from .context import LayerBinding
from .hooks import install_step_hook, remove_step_hook
from .methods.base import AttentionMethod
from .registry import build_config, method_for
from .steps import StepTracker

STATE_ATTRIBUTE = "dit_accel_state"


@dataclass
class _Installed:
    """One transformer taken over: its adapter, the processors it had before, added state modules."""

    model: torch.nn.Module
    adapter: ModelAdapter
    originals: list[tuple[torch.nn.Module, Any]]
    module_hooks: list[Any]
    stateful: list[torch.nn.Module]


class AttentionHandle:
    """Returned by :func:`apply`. ``remove()`` restores the exact original processors.

    Also a context manager: ``with dit_accel.apply(pipe, "topk", density=0.1): pipe(...)``.
    """

    def __init__(
        self, config: MethodConfig, method: AttentionMethod, tracker: StepTracker, installed: list[_Installed]
    ) -> None:
        self.config = config
        self.method = method
        self.tracker = tracker
        self._installed = installed
        self._detach: list[Callable[[], None]] = []

    @property
    def active(self) -> bool:
        return bool(self._installed)

    @property
    def transformers(self) -> list[torch.nn.Module]:
        return [item.model for item in self._installed]

    @property
    def dense_fallbacks(self) -> dict[str, int]:
        """Reason -> number of attention calls that ran dense instead of the method (e.g. too few tokens)."""
        return dict(self.tracker.dense_fallbacks)

    def capture_block_map(self, layer: int, step: int) -> None:
        """Keep the block map of attention layer ``layer`` at denoising step ``step`` (0-based) of the
        next run, read from :attr:`block_map` afterwards (block-sparse methods; None if it never ran)."""
        self.tracker.block_map_request = BlockMapRequest(layer, step)
        self.tracker.block_map = None

    @property
    def block_map(self) -> BlockMap | None:
        """The captured :class:`~dit_accel.block_map.BlockMap`, if any."""
        return self.tracker.block_map

    def reset(self) -> None:
        """Start step counting afresh (only needed for direct transformer calls)."""
        self.tracker.reset()

    def remove(self) -> None:
        """Restore the original processors and drop the hooks; calling it twice is harmless."""
        while self._detach:
            self._detach.pop()()
        while self._installed:
            item = self._installed.pop()
            for module, processor in item.originals:
                # enable_parallelism() after apply() configured ours: hand its config back.
                processor._parallel_config = module.processor._parallel_config
                module.set_processor(processor)
            for hook in item.module_hooks:
                hook.remove()
            for module in item.stateful:
                delattr(module, STATE_ATTRIBUTE)
            remove_step_hook(item.model)

    def __enter__(self) -> AttentionHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        names = [type(m).__name__ for m in self.transformers]
        return f"AttentionHandle(method={self.config.method!r}, transformers={names}, active={self.active})"


def _transformers_of(target: Any) -> list[torch.nn.Module]:
    """The supported transformers of a pipeline (all of them, e.g. Wan 2.2's two), or the model itself."""
    if isinstance(target, torch.nn.Module):
        if find_adapter(target) is None:
            raise TypeError(
                f"unsupported model class {type(target).__name__}; supported: {', '.join(supported_model_names())}"
            )
        return [target]
    components = getattr(target, "components", None)
    if not isinstance(components, dict):
        raise TypeError(f"apply() takes a Diffusers pipeline or transformer model, got {type(target).__name__}")
    models = [c for c in components.values() if isinstance(c, torch.nn.Module) and find_adapter(c) is not None]
    if not models:
        raise TypeError(
            f"pipeline {type(target).__name__} has no supported transformer; supported: "
            f"{', '.join(supported_model_names())}"
        )
    return models


def _install(model: torch.nn.Module, config: MethodConfig, tracker: StepTracker, method: AttentionMethod) -> _Installed:
    adapter = find_adapter(model)
    modules = adapter.attention_modules(model)
    adapter.check_processors(modules)
    install_step_hook(model, tracker, adapter, method)
    dense_count = config.dense_layer_count(len(modules))
    installed = _Installed(model=model, adapter=adapter, originals=[], module_hooks=[], stateful=[])
    for index, module in enumerate(modules):
        state = method.layer_state(index, len(modules), module)
        if state is not None:
            module.add_module(STATE_ATTRIBUTE, state)
            installed.stateful.append(module)
        binding = LayerBinding(
            op=method,
            tracker=tracker,
            layer_index=index,
            num_layers=len(modules),
            dense_layer=index < dense_count,
            module_state=state,
        )
        installed.originals.append((module, module.processor))
        processor = adapter.make_processor(binding)
        processor._attention_backend = getattr(module.processor, "_attention_backend", None)
        processor._parallel_config = getattr(module.processor, "_parallel_config", None)
        module.set_processor(processor)
    installed.module_hooks = adapter.install_reorder_hooks(model, tracker)
    if not method.reproduces_stock():  # the output changes anyway: fuse the feed-forwards' product and GELU
        installed.module_hooks += fuse_feed_forwards(model)
    return installed


def apply(target: Any, method: str | MethodConfig, **options: Any) -> AttentionHandle:
    """Install an attention method on a Diffusers pipeline or transformer.

    Args:
        target: a pipeline (every supported transformer in it is converted, e.g. Wan 2.2's
            ``transformer`` and ``transformer_2``) or a transformer model.
        method: a method name from :func:`dit_accel.list_methods` or a method config instance.
        **options: the method's options (see its config class), e.g. ``density=0.1``.

    Returns:
        An :class:`AttentionHandle`; ``handle.remove()`` restores the original processors.

    A method that needs more than its processors (AlignedGen's VAE-encoded style image and capture
    hook) overrides ``attach(target, transformers) -> detach``; it is called once after the
    processors are installed, and ``detach()`` runs first in ``handle.remove()``.
    """
    models = _transformers_of(target)
    config = build_config(method, **options).for_family(find_adapter(models[0]).family)
    tracker = StepTracker(config, scheduler=getattr(target, "scheduler", None))
    instance = method_for(config)
    installed: list[_Installed] = []
    handle = AttentionHandle(config, instance, tracker, installed)
    try:
        for model in models:
            installed.append(_install(model, config, tracker, instance))
        detach = instance.attach(target, handle.transformers)
        if detach is not None:
            handle._detach.append(detach)
    except Exception:
        handle.remove()
        raise
    return handle
