"""Method registry: name -> config class and op factory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import MethodConfig
from .context import AttentionOp


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its name, config class, op factory and one-line description."""

    name: str
    config_cls: type[MethodConfig]
    make_op: Callable[[MethodConfig], AttentionOp]
    description: str


_METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> None:
    """Register a method under ``spec.name`` (names are unique)."""
    if spec.name in _METHODS:
        raise ValueError(f"method {spec.name!r} is already registered")
    _METHODS[spec.name] = spec


def list_methods() -> list[str]:
    """Names of every method ``dit_accel.apply`` accepts."""
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    """The spec of a method, or a ``ValueError`` listing the allowed names."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a str or a MethodConfig, got {type(name).__name__}")
    key = name.lower()
    if key not in _METHODS:
        raise ValueError(f"unknown method {name!r}; allowed methods: {', '.join(list_methods())}")
    return _METHODS[key]


def build_config(method: str | MethodConfig, **options: Any) -> MethodConfig:
    """Turn ``("topk", density=0.1)`` or ``TopKConfig(density=0.1)`` into a validated config."""
    if isinstance(method, MethodConfig):
        if options:
            raise TypeError(
                f"options {sorted(options)} given together with a {type(method).__name__} instance; "
                "set them on the config instead"
            )
        get_method(method.method)
        return method
    return get_method(method).config_cls.from_options(**options)


def spec_for(config: MethodConfig) -> MethodSpec:
    return get_method(config.method)
