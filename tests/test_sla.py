"""SLA: the linear branch's kernels (forward, backward) against float64, the op under autograd and
compile, the block classes, the options, and the method against its float64 definition on every family."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import FAMILIES, run, tiny_wan, wan_inputs

import dit_accel
from dit_accel.kernels import reference, sla_ops
from dit_accel.kernels.sla_linear import sla_linear_triton
from dit_accel.kernels.sla_linear_bwd import sla_linear_backward_triton
from dit_accel.kernels.sla_linear_reference import (
    feature_map_reference,
    sla_linear_backward_reference,
    sla_linear_reference,
    sla_projected_reference,
)
from dit_accel.methods.sla import SLAConfig, SLAProjection, marginal_blocks


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30))


def autograd_grads(dout, q, k, v, marginal, **kwargs):
    """float64 autograd of the forward reference: the independent oracle of both backwards."""
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    out = sla_linear_reference(*leaves, marginal, **kwargs)
    return torch.autograd.grad(out, leaves, dout.double())


def token_level(q, k, v, marginal, bm, bn, key_len, feature_map, q_rows=None):
    """Independent float64 definition: each query over the keys of its marginal blocks, weights φ(q)·φ(k)."""
    rows = torch.arange(q.shape[2]) if q_rows is None else q_rows.long()
    phi_q = feature_map_reference(q[:, :, rows], feature_map)
    phi_k = feature_map_reference(k[:, :, :key_len], feature_map)
    allowed = marginal.repeat_interleave(bm, 2)[:, :, : rows.numel()].repeat_interleave(bn, 3)[..., :key_len]
    weights = (phi_q @ phi_k.transpose(-1, -2)) * allowed
    out = torch.zeros_like(q)
    out[:, :, rows] = (weights @ v[:, :, :key_len]) / (weights.sum(-1, keepdim=True) + 1e-6)
    return out


def problem(batch, heads, seq_q, key_len, dim, bm, bn, dtype, seed, with_rows=False, key_rows=None):
    """q in Diffusers' layout (transposed view), padded k/v, a marginal mask with an empty and a full row."""
    gen = torch.Generator().manual_seed(seed)
    total_q = seq_q + 5 if with_rows else seq_q
    q = torch.randn(batch, total_q, heads, dim, generator=gen).to(dtype).transpose(1, 2)
    rows = torch.randperm(total_q, generator=gen)[:seq_q].to(torch.int32) if with_rows else None
    key_rows = key_rows or math.ceil(key_len / bn) * bn
    k = torch.randn(batch, heads, key_rows, dim, generator=gen).to(dtype)
    v = torch.randn(batch, heads, key_rows, dim, generator=gen).to(dtype)
    nq, nk = math.ceil(seq_q / bm), math.ceil(key_len / bn)
    marginal = torch.rand(batch, heads, nq, nk, generator=gen) > 0.4
    marginal[0, 0, 0] = False
    marginal[-1, -1, -1] = True
    return q, k, v, marginal, rows, gen


def kwargs_of(bm, bn, key_len, feature_map, rows):
    return dict(block_m=bm, block_n=bn, key_len=key_len, feature_map=feature_map, eps=1e-6, q_rows=rows)


@pytest.mark.parametrize("feature_map", ["softmax", "elu", "relu"])
@pytest.mark.parametrize("with_rows", [False, True])
def test_reference_equals_the_token_level_definition(feature_map, with_rows):
    q, k, v, marginal, rows, _ = problem(2, 3, 45, 37, 16, 16, 8, torch.float64, 0, with_rows, key_rows=44)
    got = sla_linear_reference(q, k, v, marginal, **kwargs_of(16, 8, 37, feature_map, rows))
    want = token_level(q, k, v, marginal, 16, 8, 37, feature_map, rows)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert (got[0, 0, :16] == 0).all() if rows is None else True  # a query block without marginal blocks gives 0


CASES = [
    # batch, heads, seq_q, key_len, dim, block_m, block_n, feature_map, dtype, q_rows
    (2, 3, 45, 37, 16, 16, 16, "softmax", torch.float32, False),
    (1, 2, 70, 53, 32, 32, 16, "elu", torch.float32, True),
    (2, 1, 33, 61, 16, 16, 32, "relu", torch.float32, False),
    (1, 2, 41, 29, 32, 16, 16, "softmax", torch.float16, True),
    (1, 1, 19, 40, 16, 16, 16, "elu", torch.float16, False),
    (1, 2, 150, 70, 16, 128, 16, "relu", torch.float32, True),  # the dq kernel takes 128 rows in four steps
]
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3}


@pytest.mark.parametrize("case", CASES)
def test_triton_forward_and_backward_match_float64(case):
    batch, heads, seq_q, key_len, dim, bm, bn, feature_map, dtype, rows = case
    q, k, v, marginal, q_rows, gen = problem(batch, heads, seq_q, key_len, dim, bm, bn, dtype, seq_q + key_len, rows)
    kwargs = kwargs_of(bm, bn, key_len, feature_map, q_rows)
    want = sla_linear_reference(q.double(), k.double(), v.double(), marginal, **kwargs)
    got = sla_linear_triton(q, k, v, marginal, **kwargs)
    assert got.dtype == dtype and got.stride() == q.stride()
    assert rel(got, want) < TOLERANCE[dtype]
    residual = torch.randn(batch, q.shape[2], heads, dim, generator=gen).to(dtype).transpose(1, 2)
    weight = torch.randn(dim, dim, generator=gen) / dim**0.5
    fused = sla_linear_triton(q, k, v, marginal, residual=residual, weight=weight, **kwargs)
    want_fused = sla_projected_reference(q.double(), k.double(), v.double(), marginal, residual.double(),
                                         weight.double(), **kwargs)  # fmt: skip
    assert fused.dtype == dtype and rel(fused, want_fused) < TOLERANCE[dtype]
    dout = torch.randn(q.shape, generator=gen).to(dtype)
    grads = sla_linear_backward_triton(dout, q, k, v, marginal, **kwargs)
    wants = autograd_grads(dout, q, k, v, marginal, **kwargs)
    written = sla_linear_backward_reference(dout.double(), q.double(), k.double(), v.double(), marginal, **kwargs)
    for name, g, r, w in zip("qkv", grads, written, wants, strict=True):
        assert g.dtype == dtype and rel(g, w) < 5 * TOLERANCE[dtype], name
        assert rel(r, w) < 1e-12, name
    assert (grads[1][:, :, key_len:] == 0).all() and (grads[2][:, :, key_len:] == 0).all()


def test_op_gradients_match_autograd_and_compile():
    """The custom op (CPU: the reference) is differentiable, and traces without graph breaks with gradients."""
    q, k, v, marginal, rows, gen = problem(1, 2, 21, 19, 16, 8, 8, torch.float64, 5, with_rows=True)
    args = (marginal, 8, 8, 19, "elu", 1e-6, rows)
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    weights = torch.randn(q.shape, generator=gen, dtype=torch.float64)

    def loss(a, b, c):
        return (sla_ops.sla_linear_attention(a, b, c, *args) * weights).sum()

    eager = torch.autograd.grad(loss(*leaves), leaves)
    wants = autograd_grads(weights, q, k, v, marginal, **kwargs_of(8, 8, 19, "elu", rows))
    for got, want in zip(eager, wants, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    for got, want in zip(torch.autograd.grad(compiled(*leaves), leaves), eager, strict=True):
        torch.testing.assert_close(got, want)


def test_options_alias_defaults_and_errors():
    assert SLAConfig().k_high == SLAConfig().density == 0.05
    assert SLAConfig(density=0.1).k_high == 0.1 and SLAConfig(k_high=0.2).density == 0.2
    with pytest.raises(ValueError, match="density is an alias of k_high"):
        SLAConfig(k_high=0.1, density=0.2)
    with pytest.raises(ValueError, match=r"k_high must be in \(0.0, 1.0\]"):
        SLAConfig(k_high=0.0)
    with pytest.raises(ValueError, match="k_low must be in"):
        SLAConfig(k_high=0.5, k_low=0.6)
    with pytest.raises(ValueError, match="feature_map must be one of 'softmax', 'elu', 'relu'"):
        SLAConfig(feature_map="tanh")
    with pytest.raises(TypeError, match="weights must be a folder path"):
        SLAConfig(weights=3)


def test_block_classes_partition_each_row():
    """Critical = the listed blocks, negligible = the floor(k_low * NK) lowest-ranked others, marginal = the rest."""
    from dit_accel.methods.base import Routing

    gen = torch.Generator().manual_seed(7)
    nk = 23
    scores = torch.randn(2, 3, 4, nk, generator=gen)
    log_counts = torch.zeros(nk)
    routing = Routing(q=None, k=None, v=None, q_rows=None, key_rows=None, key_len=nk * 16, scale=1.0, block_q=16,
                      block_k=16, log_counts=log_counts, known_scores=scores)  # fmt: skip
    blocks = routing.top_blocks(0.2)
    marginal = marginal_blocks(routing, blocks, k_low=0.25)
    order = scores.argsort(dim=-1)  # ascending
    critical = order[..., -blocks.indices.shape[-1] :]
    negligible = order[..., : math.floor(0.25 * nk)]
    expected = torch.ones_like(marginal).scatter(-1, critical, False).scatter(-1, negligible, False)
    assert torch.equal(marginal, expected)
    assert int(marginal[0, 0, 0].sum()) == nk - 5 - 5
    tied = Routing(q=None, k=None, v=None, q_rows=None, key_rows=None, key_len=nk * 16, scale=1.0, block_q=16,
                   block_k=16, log_counts=log_counts, known_scores=scores.round())  # fmt: skip
    tied_blocks = tied.top_blocks(0.2)
    tied_marginal = marginal_blocks(tied, tied_blocks, k_low=0.25)
    tied_critical = reference.block_mask_from_lists(tied_blocks.indices, tied_blocks.counts, nk)
    assert not (tied_marginal & tied_critical).any(), "ties never make a critical block marginal"
    assert (tied_marginal.sum(-1) == nk - 5 - 5).all(), "ties still leave exactly floor(k_low * NK) negligible"


def check_calls_against_reference(model, inputs, options, seed=0):
    """Random projections; every attention call's output equals the float64 reference. Returns the errors."""
    checked = []
    with dit_accel.apply(model, "sla", **options) as handle:
        gen = torch.Generator().manual_seed(seed)
        for module in model.modules():
            if isinstance(module, SLAProjection):
                with torch.no_grad():
                    module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.5)
            binding = getattr(getattr(module, "processor", None), "binding", None)
            if binding is None:
                continue

            def spy(q, k, v, ctx, method=handle.method):
                out = method(q, k, v, ctx)
                expected = method.reference(q, k, v, ctx)
                checked.append(float((out.double() - expected).abs().max() / expected.abs().max()))
                return out

            binding.op = spy
        run(model, inputs)
    return checked


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_method_with_trained_projections_matches_its_float64_definition(family):
    make_model, make_inputs = FAMILIES[family]
    options = {"k_high": 0.25, "k_low": 0.2, "block_size": 16, "feature_map": "elu"}
    checked = check_calls_against_reference(make_model(), make_inputs(), options)
    assert checked and max(checked) < 1e-5, checked


def test_projection_changes_the_output_and_untrained_sla_is_topk():
    model, inputs = tiny_wan(), wan_inputs()
    with dit_accel.apply(model, "topk", density=0.25, block_size=16):
        topk = run(model, inputs)
    with dit_accel.apply(model, "sla", k_high=0.25, block_size=16):
        keys = [key for key in model.state_dict() if "dit_accel_state" in key]
        assert keys == [f"blocks.{i}.attn1.dit_accel_state.weight" for i in range(2)]
        assert torch.equal(run(model, inputs), topk)
        with torch.no_grad():
            model.blocks[0].attn1.dit_accel_state.weight.fill_(0.3)
        assert rel(run(model, inputs), topk) > 1e-3
    assert not [key for key in model.state_dict() if "dit_accel_state" in key]


def test_block_map_shows_the_three_classes():
    """297 video tokens in 16-token blocks: per query block 2 critical, floor(0.25 * 19) = 4 negligible, 13 marginal."""
    model = tiny_wan()
    with dit_accel.apply(model, "sla", k_high=0.1, k_low=0.25, block_size=16) as handle:
        handle.capture_block_map(layer=1, step=0)
        run(model, wan_inputs())
        block_map = handle.block_map
    assert block_map.legend == {0: "negligible (skipped)", 1: "marginal (linear)", 2: "critical (exact)"}
    counts = [(block_map.codes == code).sum(-1) for code in (2, 0, 1)]
    assert [int(c.min()) for c in counts] == [int(c.max()) for c in counts] == [2, 4, 13]


@pytest.mark.parametrize(("dtype", "projected_in"), [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32)])
def test_trained_projection_runs_in_bf16_for_bf16_activations_only(monkeypatch, dtype, projected_in):
    """With gradients, Proj (an fp32 weight) runs in bf16 for bf16 activations, as the fused no-grad pass
    does; fp16 activations are projected in fp32 (an fp16 weight gradient over many rows could overflow).
    The weight's gradient stays fp32, and the output matches the fused no-grad pass. The layer gets the
    branch in its ``(B, S, H, D)`` memory order (a strided view would be copied, with its gradients)."""
    from dit_accel.bench import SHAPES, MethodRun

    shape = SHAPES["tiny-cpu"]
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, shape.seq_len, shape.heads, shape.head_dim, generator=gen).to(dtype).requires_grad_()
               for _ in range(3))  # fmt: skip
    run = MethodRun("sla", {"k_high": 0.2, "block_size": 16}, shape.layout(), q, k, v)
    projection = SLAProjection(shape.head_dim, dtype=torch.float32)
    with torch.no_grad():
        projection.weight.copy_(torch.randn(projection.weight.shape, generator=gen) * 0.3)
    run.ctx.binding.module_state = projection
    seen, linear = [], torch.nn.functional.linear

    def spy(x, weight, *args):
        seen.append((x.dtype, weight.dtype, x.is_contiguous()))
        return linear(x, weight, *args)

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    out = run.full()
    out.float().square().sum().backward()
    assert seen == [(projected_in, projected_in, True)], "the layer takes the branch without copying it"
    assert out.dtype == dtype and projection.weight.grad.dtype == torch.float32
    assert torch.isfinite(projection.weight.grad).all() and projection.weight.grad.abs().max() > 0
    with torch.no_grad():
        fused = run.full()  # the no-grad path: one fused pass
    assert rel(out.detach().float(), fused.float()) < 2e-2
