"""Option dataclasses: one per method, validated on construction.

Every method config derives from :class:`MethodConfig`, which holds the options common to all
methods (dense warm-up over steps and layers, block size). Configs are plain dataclasses so they
can be documented field by field, compared, printed and passed around like Diffusers' cache
configs (``FirstBlockCacheConfig``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

BLOCK_SIZES = (16, 32, 64, 128, 256)
# The dispatcher's names (kernels.backends.BACKENDS), kept here so options load without the kernels.
BACKENDS = ("auto", "fa4", "triton", "reference")
# Keys of a field's metadata that say how a UI offers the option (dit_accel.option_specs reads them;
# validation stays in __post_init__): a number's (low, high) range, a fixed set of values, or hidden.
UI_RANGE = "range"
UI_CHOICES = "choices"
UI_HIDDEN = "hidden"


def ui_field(
    default: Any,
    *,
    range: tuple[float, float] | None = None,
    choices: tuple[Any, ...] | None = None,
    hidden: bool = False,
) -> Any:
    """A dataclass field with ``default`` whose metadata tells a UI how to offer it: ``range=(low, high)``
    for a number (a slider), ``choices`` for a fixed set of values (a dropdown), ``hidden`` for an option a
    UI should not show. A subclass that re-declares the field with another default keeps this metadata
    for UIs (they look it up along the class hierarchy)."""
    metadata: dict[str, Any] = {UI_HIDDEN: True} if hidden else {}
    if range is not None:
        metadata[UI_RANGE] = tuple(range)
    if choices is not None:
        metadata[UI_CHOICES] = tuple(choices)
    return dataclasses.field(default=default, metadata=metadata)


def check_fraction_or_count(name: str, value: Any) -> None:
    """Validate a warm-up option: an int count >= 0, a float fraction in [0, 1], or None (family default)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be an int (a count) or a float (a fraction), got {type(value).__name__}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{name} must be >= 0 when given as a count, got {value}")
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0.0, 1.0] when given as a fraction, got {value}")


def check_range(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> None:
    """Validate that a number lies in [low, high] (or (low, high] with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    below = value <= low if low_open else value < low
    if below or value > high:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}")


def resolve_count(value: int | float | None, total: int | None, name: str) -> int:
    """Turn a count-or-fraction option into a count, given the total it is a fraction of (None: 0)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    if value == 0.0:
        return 0
    if total is None:
        raise ValueError(
            f"{name}={value} is a fraction, but the total it is a fraction of is unknown: call the "
            "transformer through a pipeline, or pass num_inference_steps=... to dit_accel.apply()"
        )
    return round(value * total)


def normalize_block_size(value: Any) -> tuple[int, int]:
    """Return ``(query_block, key_block)`` from an int or a pair, validating each size."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise TypeError(f"block_size must be an int or a (query, key) pair of ints, got {value!r}")
    for size in pair:
        if isinstance(size, bool) or not isinstance(size, int) or size not in BLOCK_SIZES:
            raise ValueError(f"block_size entries must be one of {BLOCK_SIZES}, got {value!r}")
    return int(pair[0]), int(pair[1])


@dataclass
class MethodConfig:
    """Options shared by every method.

    Attributes:
        dense_steps: denoising steps run with exact (dense) attention first; an int is a count of
            steps, a float a fraction of the steps (``0.2`` of 50 steps = 10).
        dense_layers: attention layers run dense, counted from the first; int count or float fraction.
        block_size: token block size for block-sparse methods, an int or a ``(query, key)`` pair,
            each one of 16, 32, 64, 128, 256.
        num_inference_steps: number of denoising steps; only needed when ``dense_steps`` is a
            fraction and the transformer is called directly instead of through a pipeline.

    A method whose defaults differ by model family (PISA's density on FLUX, Rectified's drop rate)
    declares those options with a ``None`` default and lists the values in ``family_defaults``
    (``{"wan": {...}, "hunyuan_video": {...}, "flux": {...}, "default": {...}}``); ``apply()`` fills
    the options left None for the model it is applied to (:meth:`for_family`).
    """

    method: ClassVar[str] = ""
    family_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    dense_steps: int | float = 0
    dense_layers: int | float = 0
    block_size: int | tuple[int, int] = 128
    num_inference_steps: int | None = ui_field(None, hidden=True)  # pipelines report their step count

    def __post_init__(self) -> None:
        check_fraction_or_count("dense_steps", self.dense_steps)
        check_fraction_or_count("dense_layers", self.dense_layers)
        self.block_size = normalize_block_size(self.block_size)
        if self.num_inference_steps is not None and (
            isinstance(self.num_inference_steps, bool)
            or not isinstance(self.num_inference_steps, int)
            or self.num_inference_steps < 1
        ):
            raise ValueError(f"num_inference_steps must be a positive int, got {self.num_inference_steps!r}")

    @property
    def block_q(self) -> int:
        return self.block_size[0]

    @property
    def block_k(self) -> int:
        return self.block_size[1]

    def dense_layer_count(self, num_layers: int) -> int:
        """Number of leading attention layers that always run dense."""
        return min(num_layers, resolve_count(self.dense_layers, num_layers, "dense_layers"))

    def for_family(self, family: str | None) -> MethodConfig:
        """This config with the options left None set to the family's defaults (else the "default" ones).

        Options the user set are kept; the result is validated again. ``family`` is an adapter's
        ``family`` (``"wan"``, ``"hunyuan_video"``, ``"flux"``) or None outside a model.
        """
        table = {**self.family_defaults.get("default", {}), **self.family_defaults.get(family or "default", {})}
        unknown = sorted(set(table) - set(self.option_names()))
        if unknown:
            raise TypeError(f"{type(self).__name__}.family_defaults names unknown options {unknown}")
        missing = {name: value for name, value in table.items() if getattr(self, name) is None}
        return dataclasses.replace(self, **missing) if missing else self

    @classmethod
    def option_names(cls) -> list[str]:
        """The options a user may pass (fields set in ``__init__``)."""
        return [f.name for f in dataclasses.fields(cls) if f.init]

    @classmethod
    def from_options(cls, **options: Any) -> MethodConfig:
        """Build the config, naming any unknown option and the allowed ones."""
        allowed = cls.option_names()
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise TypeError(
                f"unknown option(s) {unknown} for method {cls.method!r}; allowed options: {', '.join(allowed)}"
            )
        return cls(**options)


def ceil_fraction(fraction: float, total: int) -> int:
    """``ceil(fraction * total)`` robust to float noise (0.1 * 30 must give 3, not 4)."""
    return max(0, math.ceil(fraction * total - 1e-9))


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    """Validate that ``value`` is one of ``allowed``, naming them otherwise."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


@dataclass
class AccelerateConfig(MethodConfig):
    """Options shared by every ``accelerate`` method (besides :class:`MethodConfig`'s).

    Attributes:
        density: fraction of key blocks each query block computes exactly, in (0, 1]; methods are
            compared at equal density. What is skipped is dropped or approximated by the method.
        backend: engine of the exact block-sparse part: ``"auto"`` (FlashAttention-4 on
            Hopper/Blackwell when installed, else Triton on CUDA, else the PyTorch reference),
            ``"fa4"``, ``"triton"`` or ``"reference"``. ``DIT_ACCEL_BACKEND`` sets the default.
        tile: 3-D tile ``(t, h, w)`` of latent tokens that blocks are formed from; default chosen
            from the query block size (``(2, 8, 8)`` for 128-token blocks of video).
    """

    density: float | None = ui_field(0.125, range=(0.0, 1.0))
    backend: str = ui_field("auto", choices=BACKENDS)
    tile: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.density is not None:
            check_range("density", self.density, 0.0, 1.0, low_open=True)
        check_choice("backend", self.backend, BACKENDS)
        if self.tile is not None:
            tile = tuple(self.tile)
            if len(tile) != 3 or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in tile):
                raise ValueError(f"tile must be three positive ints (t, h, w), got {self.tile!r}")
            self.tile = tile
