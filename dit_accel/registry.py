"""Method registry: name -> method class (an :class:`~dit_accel.methods.base.AttentionMethod`).

Built-in methods are listed by import path and imported on first use, so ``import dit_accel`` stays
light; other methods register their class with :func:`register_method`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import MethodConfig

if TYPE_CHECKING:
    from .methods.base import AttentionMethod

# Built-in methods: name -> "module:Class", imported when first asked for.
BUILTIN_METHODS = {
    "dense": "dit_accel.methods.dense:DenseAttention",
    "topk": "dit_accel.methods.topk:TopKAttention",
    "psa": "dit_accel.methods.psa:PSAAttention",
    "svg_ear": "dit_accel.methods.svg_ear:SVGEARAttention",
    "rectified": "dit_accel.methods.rectified:RectifiedAttention",
    "pisa": "dit_accel.methods.pisa:PISAAttention",
    "sla": "dit_accel.methods.sla:SLAAttention",
    "flashblock": "dit_accel.methods.flashblock:FlashBlockAttention",
    "record": "dit_accel.methods.record:RecordAttention",
    "aligned_gen": "dit_accel.editing.aligned_gen:AlignedGenAttention",
    "prime_composer": "dit_accel.editing.prime_composer:PrimeComposerAttention",
    "ir_diffusion": "dit_accel.editing.ir_diffusion:IRDiffusionAttention",
}

_METHODS: dict[str, type[AttentionMethod]] = {}


def register_method(cls: type[AttentionMethod]) -> type[AttentionMethod]:
    """Register a method class under ``cls.name`` (usable as a class decorator)."""
    from .methods.base import KINDS, AttentionMethod

    if not (isinstance(cls, type) and issubclass(cls, AttentionMethod)):
        raise TypeError(f"register_method takes an AttentionMethod subclass, got {cls!r}")
    if not cls.name or cls.name != cls.config_class.method:
        raise ValueError(
            f"{cls.__name__}.name ({cls.name!r}) must equal its config's method ({cls.config_class.method!r})"
        )
    if cls.kind not in KINDS:
        raise ValueError(f"{cls.__name__}.kind must be one of {KINDS}, got {cls.kind!r}")
    builtin = BUILTIN_METHODS.get(cls.name)
    if cls.name in _METHODS or (builtin is not None and builtin != f"{cls.__module__}:{cls.__qualname__}"):
        raise ValueError(f"method {cls.name!r} is already registered")
    _METHODS[cls.name] = cls
    return cls


def list_methods(kind: str | None = None) -> list[str]:
    """Names of every method ``dit_accel.apply`` accepts (of one ``kind`` if given)."""
    names = sorted(set(BUILTIN_METHODS) | set(_METHODS))
    return names if kind is None else [n for n in names if get_method(n).kind == kind]


def get_method(name: str) -> type[AttentionMethod]:
    """The class of a method, or a ``ValueError`` listing the allowed names."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a str or a MethodConfig, got {type(name).__name__}")
    key = name.lower()
    if key not in _METHODS:
        if key not in BUILTIN_METHODS:
            raise ValueError(f"unknown method {name!r}; allowed methods: {', '.join(list_methods())}")
        module, _, attribute = BUILTIN_METHODS[key].partition(":")
        register_method(getattr(importlib.import_module(module), attribute))
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
    return get_method(method).config_class.from_options(**options)


def method_for(config: MethodConfig, family: str | None = None) -> AttentionMethod:
    """A method instance for a validated config, its family-dependent defaults set for ``family``."""
    return get_method(config.method)(config.for_family(family))
