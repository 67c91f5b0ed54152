"""The feed-forwards' fused product + tanh GELU (apply() installs it for methods that change the output):
the op equals the stock pair, the fused forward runs only where it may (device, no gradient, a plain
unhooked Linear), compiles without graph breaks, and remove() gives the stock forward back."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.activations import GELU
from tiny_models import FAMILIES, run, tiny_wan, wan_inputs

import dit_accel
from dit_accel.kernels.ffn_ops import linear_gelu_tanh, linear_gelu_tanh_reference
from dit_accel.pipelines import feed_forward

TOPK = {"density": 0.5, "dense_steps": 0, "dense_layers": 0}


@pytest.fixture
def counted_op(monkeypatch):
    """Lets the fused forward run on the CPU (there the op is its reference) and counts its calls."""
    calls = []

    def spy(x, weight, bias):
        calls.append(x.shape)
        return linear_gelu_tanh(x, weight, bias)

    monkeypatch.setattr(feed_forward, "FUSED_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(feed_forward, "linear_gelu_tanh", spy)
    return calls


def tanh_gelus(model):
    return [m for m in model.modules() if isinstance(m, GELU) and m.approximate == "tanh"]


def test_op_matches_float64_and_its_fake():
    gen = torch.Generator().manual_seed(4)
    x, weight, bias = (
        torch.randn(3, 5, 7, generator=gen),
        torch.randn(11, 7, generator=gen),
        torch.randn(11, generator=gen),
    )
    want = torch.nn.functional.gelu(x.double() @ weight.double().T + bias.double(), approximate="tanh")
    torch.testing.assert_close(linear_gelu_tanh(x, weight, bias).double(), want, rtol=1e-5, atol=1e-5)
    assert (
        linear_gelu_tanh_reference(x, weight, bias) - torch.nn.functional.gelu(x @ weight.T + bias)
    ).abs().max() > 1e-5
    torch.library.opcheck(linear_gelu_tanh, (x, weight, bias))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_fuses_while_applied_and_gets_its_forward_back(family, counted_op):
    build, inputs_of = FAMILIES[family]
    model, inputs = build(), inputs_of()
    gelus = tanh_gelus(model)
    assert gelus, f"{family} has tanh-GELU feed-forwards"
    stock = run(model, inputs)
    with dit_accel.apply(model, "topk", **TOPK):
        assert all("forward" in vars(m) for m in gelus)
        fused = run(model, inputs)
        assert len(counted_op) == len(gelus)  # every feed-forward once per forward
        counted_op.clear()
        with torch.enable_grad():  # training: the stock modules
            model.requires_grad_(True)
            model(**inputs, return_dict=False)[0].sum().backward()
            model.requires_grad_(False)
        assert not counted_op
    assert not any("forward" in vars(m) for m in gelus)
    torch.testing.assert_close(run(model, inputs), stock, rtol=0, atol=0)
    with dit_accel.apply(model, "topk", **TOPK):
        torch.testing.assert_close(run(model, inputs), fused, rtol=0, atol=0)
    assert fused.shape == stock.shape


def test_stock_promising_methods_hooked_or_wrapped_projections_keep_the_stock_pair(counted_op):
    model, inputs = tiny_wan(), wan_inputs()
    with dit_accel.apply(model, "dense"):  # promises the stock output bit for bit
        run(model, inputs)
    assert not counted_op and not any("forward" in vars(m) for m in tanh_gelus(model))
    with pytest.MonkeyPatch.context() as env:
        env.setenv(feed_forward.ENV_VAR, "0")  # opted out
        with dit_accel.apply(model, "topk", **TOPK):
            run(model, inputs)
    assert not counted_op
    first = tanh_gelus(model)[0]
    seen = []
    hook = first.proj.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    with dit_accel.apply(model, "topk", **TOPK):
        run(model, inputs)
    hook.remove()
    assert len(seen) == 1 and len(counted_op) == len(tanh_gelus(model)) - 1  # the hooked one ran stock
    counted_op.clear()
    other = tanh_gelus(model)[1]
    other.register_forward_pre_hook(lambda module, args: None)  # a hooked GELU is left alone entirely
    with dit_accel.apply(model, "topk", **TOPK):
        assert "forward" not in vars(other)
        run(model, inputs)
    assert len(counted_op) == len(tanh_gelus(model)) - 1


def test_compiled_blocks_trace_the_op_without_graph_breaks(counted_op):
    model, inputs = tiny_wan(), wan_inputs()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with dit_accel.apply(model, "topk", **TOPK):
        eager = run(model, inputs)
        for block in model.blocks:
            block.compile(backend=backend, fullgraph=True)
        compiled = run(model, inputs)
    torch._dynamo.reset()
    traced = [n.target for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert traced.count(torch.ops.dit_accel.linear_gelu_tanh.default) == len(model.blocks)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


class _Wrapped(torch.Tensor):
    """A tensor subclass standing in for torchao's quantized weights (the op cannot take them)."""


def test_only_plain_calls_fuse(monkeypatch):
    monkeypatch.setattr(feed_forward, "FUSED_DEVICES", ("cuda", "cpu"))
    module = GELU(6, 10, approximate="tanh")
    x = torch.randn(2, 3, 6)
    with torch.no_grad():
        assert feed_forward._fusable(module, x)
        assert not feed_forward._fusable(module, x.double())  # weights in another dtype
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not feed_forward._fusable(module, x)
        wrapped = GELU(6, 10, approximate="tanh")
        wrapped.proj.weight = torch.nn.Parameter(module.proj.weight.detach().as_subclass(_Wrapped))
        assert not feed_forward._fusable(wrapped, x)
        module.proj.bias = None
        assert not feed_forward._fusable(module, x)
    assert not feed_forward._fusable(GELU(6, 10, approximate="tanh"), x.requires_grad_())  # training


def test_remove_restores_a_forward_wrapped_since(counted_op):
    model, inputs = tiny_wan(), wan_inputs()
    handle = dit_accel.apply(model, "topk", **TOPK)
    gelu = tanh_gelus(model)[0]
    fused = gelu.forward
    gelu._old_forward, gelu.forward = fused, lambda *args: gelu._old_forward(*args)  # as accelerate wraps it
    handle.remove()
    assert gelu._old_forward is not fused and gelu._old_forward.__func__ is GELU.forward
    counted_op.clear()
    run(model, inputs)
    assert not counted_op


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the cuBLASLt epilogue needs CUDA")
def test_cuda_op_matches_float64():
    gen = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(2, 37, 96, device="cuda", generator=gen).bfloat16()
    weight = (torch.randn(200, 96, device="cuda", generator=gen) / 10).bfloat16()
    bias = torch.randn(200, device="cuda", generator=gen).bfloat16()
    want = torch.nn.functional.gelu(x.double() @ weight.double().T + bias.double(), approximate="tanh")
    got = linear_gelu_tanh(x, weight, bias)
    stock = linear_gelu_tanh_reference(x, weight, bias)
    assert got.shape == want.shape and got.dtype == torch.bfloat16
    assert (got.double() - want).abs().mean() <= (stock.double() - want).abs().mean() * 1.05
    torch.library.opcheck(linear_gelu_tanh, (x, weight, bias))
