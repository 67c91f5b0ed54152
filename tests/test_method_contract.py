"""The contract every registered method keeps, on every adapter (Wan, HunyuanVideo, FLUX tiny models, CPU).

A new method gets these checks by registering: output shape/dtype/device, ``remove()`` restores the
model exactly, the CPU path matches the method's own float64 ``reference()``, and bad options or
unsupported inputs raise an error naming the option and the allowed values.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, run

import dit_accel
from dit_accel.methods.base import BlockSparseMethod
from dit_accel.registry import get_method

METHODS = dit_accel.list_methods()


def small_options(name: str) -> dict:
    """Options that make a method compute something other than dense on the tiny models."""
    options = get_method(name).config_class.option_names()
    chosen = {"block_size": 16} if "block_size" in options and name != "dense" else {}
    chosen |= {"dense_steps": 0, "dense_layers": 0}  # no warm-up: every call runs the method
    if "density" in options and name != "dense":
        chosen["density"] = 0.5
    return chosen


def unsupported(name: str, family: str) -> str | None:
    """The error a method must raise on a family it does not serve (None when it serves it)."""
    if get_method(name).kind == "edit" and family != "flux":
        return "FluxTransformer2DModel"
    if name == "prime_composer":  # applied only by compose(), which builds its plan (its own tests cover it)
        return "needs a composition plan"
    return None


def batch_for(name: str) -> int:
    return 2 if get_method(name).kind == "edit" else 1


def inputs_for(family: str, name: str) -> dict:
    make_inputs = FAMILIES[family][1]
    return make_inputs(batch=batch_for(name))


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("name", METHODS)
def test_output_and_remove_restore_exactly(name, family):
    model = FAMILIES[family][0]()
    inputs = inputs_for(family, name)
    processors = [m.processor for m in model.modules() if hasattr(m, "set_processor")]
    before = run(model, inputs)
    if (message := unsupported(name, family)) is not None:
        with pytest.raises((TypeError, ValueError), match=message):
            dit_accel.apply(model, name, **small_options(name))
    else:
        with dit_accel.apply(model, name, **small_options(name)):
            out = run(model, inputs)
        assert out.shape == before.shape and out.dtype == before.dtype and out.device == before.device
        assert torch.isfinite(out).all()
    assert [m.processor for m in model.modules() if hasattr(m, "set_processor")] == processors
    assert not any(name.startswith("dit_accel") for name, _ in model.named_modules())
    assert torch.equal(run(model, inputs), before)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("name", [m for m in METHODS if get_method(m).kind != "edit"])
def test_cpu_path_matches_the_method_reference(name, family):
    """Each attention call's output equals the method's float64 reference on the same q/k/v."""
    model = FAMILIES[family][0]()
    checked = []
    with dit_accel.apply(model, name, **small_options(name)) as handle:
        method = handle.method
        for module in model.modules():
            binding = getattr(getattr(module, "processor", None), "binding", None)
            if binding is None:
                continue

            def spy(q, k, v, ctx, method=method):
                out = method(q, k, v, ctx)
                expected = method.reference(q, k, v, ctx)
                checked.append(float((out.double() - expected).abs().max() / expected.abs().max()))
                return out

            binding.op = spy
        run(model, inputs_for(family, name))
    assert checked and max(checked) < 1e-5, checked


@pytest.mark.parametrize("name", METHODS)
def test_unknown_option_names_the_allowed_ones(name):
    allowed = get_method(name).config_class.option_names()
    with pytest.raises(TypeError, match=f"unknown option.*{allowed[0]}"):
        dit_accel.apply(FAMILIES["wan"][0](), name, not_an_option=1)


@pytest.mark.parametrize("name", dit_accel.list_methods(kind="accelerate"))
def test_accelerate_methods_share_the_common_options(name):
    options = set(get_method(name).config_class.option_names())
    assert {"density", "dense_steps", "dense_layers", "block_size", "backend"} <= options
    model = FAMILIES["wan"][0]()
    if name != "dense":
        with pytest.raises(ValueError, match=r"density must be in \(0.0, 1.0\]"):
            dit_accel.apply(model, name, density=-1.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        dit_accel.apply(model, name, backend="no-such-engine")
    with pytest.raises(ValueError, match="block_size entries must be one of"):
        dit_accel.apply(model, name, block_size=7)


def test_sparse_methods_report_calls_that_ran_dense():
    """Too few tokens for two blocks: the call runs dense and the handle says why.

    Block-sparse methods only: dense, and caches that compute their parts exactly (flashblock), have no blocks.
    """
    model = FAMILIES["wan"][0]()
    for name in dit_accel.list_methods(kind="accelerate"):
        if not issubclass(get_method(name), BlockSparseMethod):
            continue
        with dit_accel.apply(model, name, block_size=256, dense_steps=0, dense_layers=0) as handle:
            run(model, FAMILIES["wan"][1]())
            reasons = handle.dense_fallbacks
        assert len(reasons) == 1 and "too few for two 256x256 blocks" in next(iter(reasons)), reasons
        assert next(iter(reasons.values())) == len(model.blocks)
