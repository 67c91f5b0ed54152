"""torch.compile: processors trace without graph breaks and compiled output equals eager."""

from __future__ import annotations

import pytest
import torch
from tiny_models import flux_inputs, run, tiny_flux, tiny_wan, wan_inputs

import dit_accel


@pytest.mark.parametrize("method", ["dense", "topk"])
def test_wan_block_traces_in_one_graph(method):
    model = tiny_wan(num_layers=1)
    inputs = wan_inputs()
    options = {"density": 0.3, "block_size": 16} if method == "topk" else {}
    with dit_accel.apply(model, method, **options):
        run(model, inputs)  # the hook records the grid of this resolution
        block = model.blocks[0]
        captured = {}

        def grab(module, args, kwargs):
            captured["args"] = args

        hook = block.register_forward_pre_hook(grab, with_kwargs=True)
        eager = run(model, inputs)
        hook.remove()
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
        with torch.no_grad():
            expected = block(*captured["args"])
            got = compiled(*captured["args"])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(eager).all()


@pytest.mark.parametrize(("make_model", "make_inputs"), [(tiny_wan, wan_inputs), (tiny_flux, flux_inputs)])
def test_compiled_model_matches_eager(make_model, make_inputs):
    model, inputs = make_model(), make_inputs()
    with dit_accel.apply(model, "topk", density=0.3, block_size=16):
        eager = run(model, inputs)
        compiled = torch.compile(model, backend="aot_eager")
        with torch.no_grad():
            got = compiled(**inputs, return_dict=False)[0]
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)


def _graphs_for_regional_compile(num_layers: int) -> int:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, inputs = tiny_wan(num_layers=num_layers), wan_inputs()
    with dit_accel.apply(model, "topk", density=0.3, block_size=16, dense_layers=1):
        model.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
        for timestep in (900.0, 800.0, 700.0):
            out = run(model, {**inputs, "timestep": torch.tensor([timestep])})
    assert torch.isfinite(out).all()
    return counters["stats"]["unique_graphs"]


def test_regional_compile_does_not_recompile_per_layer():
    """Blocks share compiled code: the number of graphs does not grow with the number of layers."""
    assert _graphs_for_regional_compile(3) == _graphs_for_regional_compile(6) <= 3
