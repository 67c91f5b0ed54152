"""A method's options as widgets (dit_accel.option_specs): kinds from type hints and field metadata, the
shown defaults per model family, and widget values read back as only the options the user changed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pytest

from dit_accel.config import AccelerateConfig, ui_field
from dit_accel.demo import parse_options
from dit_accel.option_specs import UNSET, changed_options, field_docs, option_specs, options_text
from dit_accel.registry import get_method, list_methods


@dataclass
class ToyConfig(AccelerateConfig):
    """Options of a toy method.

    Attributes:
        strength: how strong, in [0, 2]; a second
            line of help.
        count: how many.
        flag: on or off.
        mode: one of three.
        picked: a declared choice.
        shape: a tuple.
        maybe: a family-dependent switch.
        spread: a family-dependent number.
    """

    method: ClassVar[str] = "toy"
    family_defaults: ClassVar[dict[str, dict[str, Any]]] = {"flux": {"spread": 0.75, "maybe": True}}

    density: float | None = 0.5  # re-declared without metadata: keeps AccelerateConfig's range
    strength: float = ui_field(1.0, range=(0.0, 2.0))
    count: int = 3
    flag: bool = False
    mode: Literal["a", "b", "c"] = "b"
    picked: str = ui_field("x", choices=("x", "y"))
    shape: tuple[int, int] = (2, 4)
    maybe: bool | None = None
    spread: float | None = ui_field(None, range=(0.0, 1.0))


def specs_by_name(family: str | None = None) -> dict[str, Any]:
    return {spec.name: spec for spec in option_specs(ToyConfig, family)}


def test_each_type_gets_its_widget_with_range_choices_and_help():
    specs = specs_by_name()
    kinds = {name: spec.kind for name, spec in specs.items()}
    assert kinds == {
        "dense_steps": "text", "dense_layers": "text", "block_size": "text", "density": "slider",
        "backend": "dropdown", "tile": "text", "strength": "slider", "count": "number", "flag": "checkbox",
        "mode": "dropdown", "picked": "dropdown", "shape": "text", "maybe": "dropdown", "spread": "text",
    }  # fmt: skip
    assert "num_inference_steps" not in specs  # hidden: pipelines set it
    assert specs["strength"].range == (0.0, 2.0) and specs["strength"].step == pytest.approx(0.01)
    assert specs["density"].range == (0.0, 1.0)  # inherited through the re-declared field
    assert specs["count"].integer and not specs["strength"].integer
    assert specs["mode"].labels == ["a", "b", "c"] and specs["backend"].labels == ["auto", "fa4", "triton", "reference"]
    assert specs["maybe"].labels == [UNSET, "True", "False"] and specs["maybe"].shown == UNSET
    assert specs["strength"].help == "how strong, in [0, 2]; a second line of help."
    assert specs["backend"].help.startswith("engine of the exact block-sparse part")  # from AccelerateConfig
    assert specs["shape"].shown == "(2, 4)" and specs["tile"].shown == ""


def test_family_defaults_are_shown_and_a_known_range_becomes_a_slider():
    flux = specs_by_name("flux")
    assert (flux["spread"].kind, flux["spread"].value) == ("slider", 0.75)
    assert (flux["maybe"].kind, flux["maybe"].value) == ("checkbox", True)
    assert specs_by_name("wan")["spread"].value is None


def test_only_changed_widgets_become_options_with_their_types():
    specs = option_specs(ToyConfig, "flux")
    shown = {spec.name: spec.shown for spec in specs}
    assert changed_options(specs, list(shown.values())) == {}
    changes = {"strength": 1.5, "count": 5.0, "flag": True, "mode": "c", "shape": "(4, 4)", "tile": "(1, 2, 2)",
               "spread": 0.75, "maybe": False, "backend": "triton", "dense_steps": "0.2"}  # fmt: skip
    options = changed_options(specs, list({**shown, **changes}.values()))
    assert options == {"strength": 1.5, "count": 5, "flag": True, "mode": "c", "shape": (4, 4), "tile": (1, 2, 2),
                       "maybe": False, "backend": "triton", "dense_steps": 0.2}  # fmt: skip
    assert type(options["count"]) is int
    cleared = changed_options(specs, list({**shown, "block_size": " ", "count": None}.values()))
    assert cleared == {"block_size": None}  # a cleared text box sends None; a cleared number keeps the default
    unset = option_specs(ToyConfig, None)  # spread has no default here: an empty text box until typed in
    typed = changed_options(unset, [{"spread": "0.3"}.get(spec.name, spec.shown) for spec in unset])
    assert typed == {"spread": 0.3}


@pytest.mark.parametrize("family", ["wan", "hunyuan_video", "flux", None])
def test_every_registered_method_offers_its_options_and_sends_none_it_was_not_asked_to(family):
    for method in list_methods(kind="accelerate"):
        config_class = get_method(method).config_class
        specs = option_specs(config_class, family)
        assert {spec.name for spec in specs} <= set(config_class.option_names())
        assert changed_options(specs, [spec.shown for spec in specs]) == {}, method


def test_options_text_reads_back_as_the_same_options():
    options = {"density": 0.25, "tile": (2, 8, 8), "order": "hilbert", "inner": None, "extra": {"a": [1, 2]}}
    assert parse_options(options_text(options)) == options
    assert options_text({}) == ""


def test_field_docs_of_subclass_override_their_base():
    docs = field_docs(ToyConfig)
    assert docs["density"].startswith("fraction of key blocks")  # AccelerateConfig's
    assert docs["count"] == "how many."
