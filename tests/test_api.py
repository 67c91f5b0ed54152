"""apply() / handle behaviour and option validation."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch
from tiny_models import FAMILIES, run, tiny_wan, wan_inputs

import dit_accel
from dit_accel import TopKConfig
from dit_accel.pipelines import find_adapter


def test_list_methods_contains_builtins():
    methods = dit_accel.list_methods()
    assert {"dense", "topk", "aligned_gen"} <= set(methods)
    assert methods == sorted(methods)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_remove_restores_exact_processor_objects(name):
    make_model, _ = FAMILIES[name]
    model = make_model()
    modules = find_adapter(model).attention_modules(model)
    before = [m.processor for m in modules]
    handle = dit_accel.apply(model, "topk", density=0.5)
    assert all(m.processor is not p for m, p in zip(modules, before, strict=True))
    handle.remove()
    assert all(m.processor is p for m, p in zip(modules, before, strict=True))
    assert not handle.active
    handle.remove()  # idempotent
    assert model._diffusers_hook.get_hook("dit_accel_steps") is None


def test_context_manager_removes_and_output_returns_to_stock():
    model, inputs = tiny_wan(), wan_inputs()
    reference = run(model, inputs)
    with dit_accel.apply(model, "topk", density=0.25, block_size=16) as handle:
        sparse = run(model, inputs)
        assert handle.active
    assert not handle.active
    assert not torch.equal(sparse, reference)
    assert torch.equal(run(model, inputs), reference)


def test_apply_accepts_config_instance():
    model = tiny_wan()
    config = TopKConfig(density=0.3, block_size=16)
    with dit_accel.apply(model, config) as handle:
        assert handle.config is config


def test_apply_twice_is_refused_until_removed():
    model = tiny_wan()
    handle = dit_accel.apply(model, "dense")
    with pytest.raises(ValueError, match="already applied"):
        dit_accel.apply(model, "topk")
    handle.remove()
    dit_accel.apply(model, "topk").remove()


@pytest.mark.parametrize(
    ("method", "options", "error", "match"),
    [
        ("nope", {}, ValueError, "allowed methods: .*dense, .*topk"),
        ("topk", {"densty": 0.1}, TypeError, r"unknown option\(s\) \['densty'\].*allowed options: .*density"),
        ("topk", {"density": 0.0}, ValueError, r"density must be in \(0.0, 1.0\]"),
        ("topk", {"density": 1.5}, ValueError, "density must be in"),
        ("topk", {"top_p": -0.1}, ValueError, "top_p must be in"),
        ("topk", {"density": 0.1, "top_p": 0.5}, ValueError, "either density or top_p"),
        ("topk", {"min_blocks": 0}, ValueError, "min_blocks must be an int >= 1"),
        ("topk", {"block_size": 48}, ValueError, "block_size entries must be one of"),
        ("topk", {"block_size": (64, 64, 64)}, TypeError, "block_size must be an int or a"),
        ("topk", {"tile": (2, 8)}, ValueError, "tile must be three positive ints"),
        ("dense", {"dense_steps": -1}, ValueError, "dense_steps must be >= 0"),
        ("dense", {"dense_steps": 1.5}, ValueError, r"dense_steps must be in \[0.0, 1.0\]"),
        ("dense", {"dense_layers": "2"}, TypeError, "dense_layers must be an int"),
        ("dense", {"num_inference_steps": 0}, ValueError, "num_inference_steps must be a positive int"),
    ],
)
def test_bad_options_raise_clear_errors(method, options, error, match):
    with pytest.raises(error, match=match):
        dit_accel.apply(tiny_wan(num_layers=1), method, **options)


def test_config_instance_with_extra_options_is_refused():
    with pytest.raises(TypeError, match="given together with a TopKConfig"):
        dit_accel.apply(tiny_wan(num_layers=1), TopKConfig(), density=0.2)


def test_unsupported_targets_are_refused():
    with pytest.raises(TypeError, match="unsupported model class Linear; supported: WanTransformer3DModel"):
        dit_accel.apply(torch.nn.Linear(2, 2), "dense")
    with pytest.raises(TypeError, match="takes a Diffusers pipeline or transformer model"):
        dit_accel.apply(object(), "dense")


def test_custom_processors_are_not_silently_replaced():
    model = tiny_wan(num_layers=1)

    class UserProcessor(type(model.blocks[0].attn1.processor)):
        pass

    model.blocks[0].attn1.set_processor(UserProcessor())
    with pytest.raises(ValueError, match="uses processor UserProcessor"):
        dit_accel.apply(model, "topk")
    registry = getattr(model, "_diffusers_hook", None)
    assert registry is None or registry.get_hook("dit_accel_steps") is None


def test_attention_backend_survives_apply_and_remove():
    model = tiny_wan(num_layers=1)
    model.set_attention_backend("native")
    original = model.blocks[0].attn1.processor
    with dit_accel.apply(model, "dense"):
        assert model.blocks[0].attn1.processor._attention_backend == original._attention_backend
    assert model.blocks[0].attn1.processor is original


def test_import_loads_neither_torch_diffusers_nor_triton():
    """``import dit_accel`` stays light; Diffusers loads when a name that needs it is first used."""
    import subprocess
    import sys

    code = (
        "import sys, dit_accel\n"
        "heavy = [m for m in ('torch', 'diffusers', 'triton') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "dit_accel.apply\n"
        "assert 'diffusers' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@dataclasses.dataclass
class _ProjectionConfig(dit_accel.MethodConfig):
    method: ClassVar[str] = "projection_test"


class _Projection(dit_accel.AttentionMethod):
    """A stateful method: dense attention plus a per-layer learned map, zero-initialised."""

    name = "projection_test"
    config_class = _ProjectionConfig

    def layer_state(self, layer_index, num_layers, attention):
        state = torch.nn.Linear(16, 16, bias=False)  # tiny_wan's head_dim
        torch.nn.init.zeros_(state.weight)
        return state

    def __call__(self, q, k, v, ctx):
        out = ctx.dense(q, k, v)
        return out + ctx.module_state(out)


def test_per_layer_state_saves_with_the_model_and_leaves_with_remove(monkeypatch):
    from dit_accel import registry

    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    dit_accel.register_method(_Projection)
    model, reference = tiny_wan(num_layers=2), run(tiny_wan(num_layers=2), wan_inputs())
    with dit_accel.apply(model, "projection_test"):
        keys = [k for k in model.state_dict() if "dit_accel_state" in k]
        assert keys == ["blocks.0.attn1.dit_accel_state.weight", "blocks.1.attn1.dit_accel_state.weight"]
        torch.testing.assert_close(run(model, wan_inputs()), reference)
        with torch.no_grad():
            model.blocks[0].attn1.dit_accel_state.weight.fill_(0.1)
        assert not torch.allclose(run(model, wan_inputs()), reference)
    assert not [k for k in model.state_dict() if "dit_accel_state" in k]
    assert torch.equal(run(model, wan_inputs()), reference)


def test_family_defaults_fill_only_the_options_left_unset(monkeypatch):
    """Options declared None take the applied model's family defaults; set options and other families keep theirs."""
    from dit_accel import registry
    from dit_accel.config import AccelerateConfig
    from dit_accel.methods.topk import TopKAttention

    @dataclasses.dataclass
    class FamilyConfig(AccelerateConfig):
        method: ClassVar[str] = "family_probe"
        family_defaults: ClassVar[dict] = {
            "default": {"density": 0.25, "dense_layers": 0},
            "wan": {"density": 0.5, "dense_layers": 1},
        }
        density: float | None = None
        dense_layers: int | float | None = None
        top_p: float | None = None
        min_blocks: int = 1

    class FamilyProbe(TopKAttention):
        name = "family_probe"
        config_class = FamilyConfig

    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    dit_accel.register_method(FamilyProbe)
    wan = tiny_wan()
    with dit_accel.apply(wan, "family_probe") as handle:
        assert (handle.config.density, handle.config.dense_layers) == (0.5, 1)
        assert handle.method.config is handle.config
    with dit_accel.apply(wan, "family_probe", density=0.125) as handle:
        assert (handle.config.density, handle.config.dense_layers) == (0.125, 1)
    assert FamilyConfig().for_family("flux").density == 0.25  # no flux table: the "default" one
    assert FamilyConfig().for_family(None).dense_layers == 0
    with pytest.raises(ValueError, match="density"):
        FamilyConfig(density=2.0)


def test_block_map_of_the_requested_layer_and_step():
    model, inputs = tiny_wan(), wan_inputs()
    with dit_accel.apply(model, "topk", density=0.25, block_size=16) as handle:
        handle.capture_block_map(layer=1, step=0)
        run(model, inputs)
        block_map = handle.block_map
        assert block_map is not None and (block_map.layer, block_map.step) == (1, 0)
        codes = block_map.codes
        heads = model.config.num_attention_heads
        assert codes.dtype == torch.uint8 and codes.shape[:2] == (1, heads)
        keep = dit_accel.kernels.keep_count(codes.shape[-1], 0.25, 1)
        assert (codes.sum(-1) == keep).all()  # every query block: exactly its top-density key blocks
        assert block_map.legend == {0: "skipped", 1: "exact"}
        assert block_map.fractions(head=0)["exact"] == pytest.approx(keep / codes.shape[-1])
        image = block_map.picture(head=heads - 1, cell=3)
        assert image.shape == (codes.shape[2] * 3, codes.shape[3] * 3, 3)
        colours = block_map.legend_colours()
        exact_cell = torch.nonzero(codes[0, heads - 1])[0].tolist()
        assert tuple(image[exact_cell[0] * 3, exact_cell[1] * 3]) == colours["exact"] != colours["skipped"]
        with pytest.raises(ValueError, match="head"):
            block_map.picture(head=heads)
        handle.capture_block_map(layer=99, step=0)
        run(model, inputs)
        assert handle.block_map is None
    with pytest.raises(ValueError, match="layer"):
        handle.capture_block_map(layer=-1, step=0)
