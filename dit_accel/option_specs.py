"""A method's options as UI widgets, read from its options dataclass, and the widgets' values back as options.

Each init field of a config becomes an :class:`OptionSpec`: a slider for a number with a declared
range, a checkbox for a bool, a dropdown for ``Literal[...]`` types or declared choices, a number box
for other ints and floats, and a text box (a Python literal) for everything else (tuples, unions such
as ``int | float``, and numbers without a default value, which a number box could not show unset).
Ranges and choices come from the field's metadata (:func:`dit_accel.config.ui_field`), looked up
along the class hierarchy; help text from the ``Attributes:`` sections of the docstrings.

A widget shows the value the method would use on the chosen model family (options declared ``None``
take their family default, see :meth:`~dit_accel.config.MethodConfig.for_family`), and an option is
passed to the method only when its widget no longer shows that value: options left alone stay unset,
so ``apply()`` still fills them for the model it runs on. Free of any UI library.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from .config import UI_CHOICES, UI_HIDDEN, UI_RANGE, MethodConfig

# How a dropdown shows "no value": an option declared None whose family gives it none either.
UNSET = "(default)"
# Slider steps per range for floats without a declared step: 200 (0.005 on [0, 1]).
SLIDER_STEPS = 200


def parse_value(text: str) -> Any:
    """A Python literal (``0.25``, ``(2, 8, 8)``, ``None``) or, when the text is none, the text itself."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def format_value(value: Any) -> str:
    """How a text box shows a value: empty for None, a string as it is, anything else as its literal."""
    if value is None:
        return ""
    return value if isinstance(value, str) else repr(value)


@dataclass(frozen=True)
class OptionSpec:
    """One option as a widget: its kind, the value it shows, its range or choices and its help text."""

    name: str
    kind: str
    value: Any
    help: str = ""
    integer: bool = False
    range: tuple[float, float] | None = None
    choices: tuple[Any, ...] = ()

    @property
    def step(self) -> float:
        """A slider's step: 1 for ints, else a 200th of the range."""
        if self.integer or self.range is None:
            return 1
        return (self.range[1] - self.range[0]) / SLIDER_STEPS

    @property
    def shown(self) -> Any:
        """The widget's initial value in the UI's terms (dropdown label, text, number, bool)."""
        if self.kind == "dropdown":
            return self.label(self.value)
        if self.kind == "text":
            return format_value(self.value)
        return self.value

    @property
    def labels(self) -> list[str]:
        """A dropdown's labels, in the order of :attr:`choices`."""
        return [self.label(choice) for choice in self.choices]

    @staticmethod
    def label(choice: Any) -> str:
        return UNSET if choice is None else str(choice)

    def read(self, raw: Any) -> tuple[bool, Any]:
        """``(changed, option value)`` of a widget value: unchanged when it still shows :attr:`value`."""
        if self.kind == "dropdown":
            value = self.choices[self.labels.index(raw)] if raw in self.labels else raw
        elif self.kind == "text":
            text = "" if raw is None else str(raw)
            value = None if not text.strip() else parse_value(text)
            return text.strip() != self.shown.strip(), value
        elif self.kind == "checkbox":
            value = bool(raw)
        elif raw is None:  # a cleared number box: back to the default
            return False, None
        else:
            value = int(raw) if self.integer and float(raw).is_integer() else raw
        return value != self.value, value


def _metadata(config_class: type, name: str, key: str) -> Any:
    """A field's UI metadata, from the nearest class in the hierarchy that declares it."""
    for klass in config_class.__mro__:
        field = klass.__dict__.get("__dataclass_fields__", {}).get(name)
        if field is not None and key in field.metadata:
            return field.metadata[key]
    return None


def field_docs(config_class: type) -> dict[str, str]:
    """Option name -> its text in the ``Attributes:`` sections of the class's and its bases' docstrings."""
    docs: dict[str, str] = {}
    for klass in reversed(config_class.__mro__):
        text = inspect.cleandoc(klass.__dict__.get("__doc__") or "")
        _, found, section = text.partition("Attributes:")
        if not found:
            continue
        entries = re.findall(r"^    (\w+): (.*(?:\n {8,}.*)*)", section, flags=re.MULTILINE)
        docs |= {name: " ".join(body.replace("``", "`").split()) for name, body in entries}
    return docs


def _types(hint: Any) -> list[Any]:
    """The types of a hint other than None (``float | None`` -> ``[float]``)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return [t for t in (typing.get_args(hint) if union else (hint,)) if t is not type(None)]


def _shown_config(config_class: type[MethodConfig], family: str | None) -> MethodConfig | None:
    """The config with every option at its default for ``family``, or None if defaults alone do not build."""
    try:
        return config_class().for_family(family)
    except (TypeError, ValueError):
        return None


def _spec(config_class: type, field: dataclasses.Field, hint: Any, value: Any, doc: str) -> OptionSpec:
    """The widget of one field, from its type hint, its shown value and its UI metadata."""
    name = field.name
    declared_range = _metadata(config_class, name, UI_RANGE)
    choices = _metadata(config_class, name, UI_CHOICES)
    kinds = _types(hint)
    base = kinds[0] if len(kinds) == 1 else None
    if typing.get_origin(base) is Literal:
        choices = typing.get_args(base)
    if base is bool and value is None:
        choices = (True, False)
    if choices is not None:
        unset = (None,) if value is None else ()
        return OptionSpec(name, "dropdown", value, doc, choices=(*unset, *choices))
    if base is bool:
        return OptionSpec(name, "checkbox", value, doc)
    if base in (int, float):
        # A number box cannot show "unset": a number without a value is a text box, empty until typed in.
        kind = "text" if value is None else "number" if declared_range is None else "slider"
        return OptionSpec(name, kind, value, doc, integer=base is int, range=declared_range)
    return OptionSpec(name, "text", value, doc)


def option_specs(config_class: type[MethodConfig], family: str | None = None) -> list[OptionSpec]:
    """The widgets of a config class's options (hidden ones left out), showing their defaults for ``family``."""
    hints = typing.get_type_hints(config_class)
    docs = field_docs(config_class)
    shown = _shown_config(config_class, family)
    specs = []
    for field in dataclasses.fields(config_class):
        if not field.init or _metadata(config_class, field.name, UI_HIDDEN):
            continue
        if shown is not None:
            value = getattr(shown, field.name)
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            value = None if field.default is dataclasses.MISSING else field.default
        specs.append(_spec(config_class, field, hints[field.name], value, docs.get(field.name, "")))
    return specs


def changed_options(specs: list[OptionSpec], raws: list[Any]) -> dict[str, Any]:
    """The options whose widgets (``raws``, in the order of ``specs``) no longer show their default."""
    options = {}
    for spec, raw in zip(specs, raws, strict=True):
        changed, value = spec.read(raw)
        if changed:
            options[spec.name] = value
    return options


def options_text(options: dict[str, Any]) -> str:
    """``{"density": 0.25, "tile": (2, 8, 8)}`` -> ``"density=0.25, tile=(2, 8, 8)"`` (read back by the demo)."""
    return ", ".join(f"{name}={value!r}" for name, value in options.items())
