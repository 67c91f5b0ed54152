"""Options of an ``edit`` method whose attention runs through an ``accelerate`` method.

:class:`InnerAttentionConfig` holds the ``attention`` option (a method name or its config) and
mirrors the inner method's common options (``dense_steps``, ``block_size``, ...) on the edit
method's config, so the step tracker sees them. The inner method's own options are given flat:
``apply(pipe, "ir_diffusion", attention="topk", density=0.1)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dit_accel.config import MethodConfig
from dit_accel.methods.base import AttentionMethod
from dit_accel.registry import get_method, list_methods

_COMMON_DEFAULTS = {f.name: f.default for f in dataclasses.fields(MethodConfig)}


def acceleration_method(name: str) -> type[AttentionMethod]:
    """The registered method an edit method's attention may run through (any ``accelerate`` method)."""
    allowed = list_methods(kind="accelerate")
    if not isinstance(name, str) or name.lower() not in allowed:
        raise ValueError(f"attention must be one of {allowed} (or a config of one), got {name!r}")
    return get_method(name)


@dataclass
class InnerAttentionConfig(MethodConfig):
    """Base of an edit method's options: ``attention`` is the inner method's name or config.

    After construction ``attention`` is always the inner config instance.
    """

    attention: str | MethodConfig = "dense"

    def __post_init__(self) -> None:
        changed = {
            name: getattr(self, name) for name, default in _COMMON_DEFAULTS.items() if getattr(self, name) != default
        }
        if isinstance(self.attention, str):
            self.attention = acceleration_method(self.attention).config_class(**changed)
        elif isinstance(self.attention, MethodConfig):
            acceleration_method(self.attention.method)
            clashes = sorted(name for name, value in changed.items() if getattr(self.attention, name) != value)
            if clashes:
                raise ValueError(
                    f"{clashes} set on both {type(self).__name__} and its attention config; set them on the latter"
                )
        else:
            raise TypeError(f"attention must be a method name or a MethodConfig, got {type(self.attention).__name__}")
        for name in _COMMON_DEFAULTS:
            setattr(self, name, getattr(self.attention, name))
        super().__post_init__()

    @classmethod
    def own_option_names(cls) -> list[str]:
        """The options of the edit method itself (not of the acceleration)."""
        return [name for name in cls.option_names() if name not in _COMMON_DEFAULTS]

    @classmethod
    def from_options(cls, **options: Any) -> InnerAttentionConfig:
        """Split the edit method's options from the inner method's (validated by the inner config class)."""
        own = {name: options.pop(name) for name in cls.own_option_names() if name in options}
        attention = own.pop("attention", "dense")
        if isinstance(attention, MethodConfig):
            if options:
                raise TypeError(
                    f"options {sorted(options)} given together with an attention config instance; set them on it"
                )
            return cls(attention=attention, **own)
        inner_cls = acceleration_method(attention).config_class
        unknown = sorted(set(options) - set(inner_cls.option_names()))
        if unknown:
            raise TypeError(
                f"unknown option(s) {unknown} for method {cls.method!r} with attention={attention!r}; allowed options: "
                f"{cls.method}: {', '.join(cls.own_option_names())}; {attention}: {', '.join(inner_cls.option_names())}"
            )
        return cls(attention=inner_cls.from_options(**options), **own)
