"""Wan's fused q/k RMS norm + rotary: the Triton kernel (interpreter) against float64, and its use."""

import math

import pytest
import torch
from tiny_models import run, tiny_wan, wan_inputs

import dit_accel
from dit_accel.kernels.norm_rotary import norm_rotary_triton, unsupported
from dit_accel.kernels.rotary_ops import norm_rotary, norm_rotary_reference
from dit_accel.pipelines.wan import _plain_rms_norm, prepare_query_key


def rotary_tables(batch: int, seq: int, dim: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch, S, 1, D)`` tables with every column its own angle (Wan repeats them per pair): a kernel
    reading an odd cosine or an even sine would then differ from the stock arithmetic."""
    angles = torch.rand(batch, seq, 1, dim, generator=gen, dtype=torch.float64) * 2 * math.pi
    return angles.cos().float(), angles.sin().float()


def float64_expected(x, weight, eps, cos, sin, heads, dtype):
    """The stock arithmetic in float64, with the norm's output rounded to the input dtype as RMSNorm does."""
    x64 = x.double()
    normed = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        normed = normed * weight.double()
    normed = normed.to(dtype).double().unflatten(2, (heads, -1))
    x1, x2 = normed[..., 0::2], normed[..., 1::2]
    c, s = cos.double()[..., 0::2], sin.double()[..., 1::2]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("batch", "seq", "heads", "dim", "table_batch", "weighted", "fused_qkv"), [
    (2, 7, 3, 10, 1, True, False),   # odd rows, 15 pairs (padded to 16), broadcast table
    (1, 5, 2, 6, 1, False, True),    # no weight; x a slice of a fused projection (row stride 3C)
    (2, 9, 1, 16, 2, True, True),    # one table per batch row
])  # fmt: skip
def test_kernel_matches_float64(batch, seq, heads, dim, table_batch, weighted, fused_qkv, dtype):
    gen = torch.Generator().manual_seed(batch * 100 + seq)
    hidden = heads * dim
    wide = torch.randn(batch, seq, 3 * hidden if fused_qkv else hidden, generator=gen) * 3 + 0.5
    x = wide[..., :hidden].to(dtype)
    weight = (torch.rand(hidden, generator=gen) + 0.5).to(dtype) if weighted else None
    cos, sin = rotary_tables(table_batch, seq, dim, gen)
    out = norm_rotary_triton(x, weight, 1e-6, cos, sin, heads, rows_per_program=4, num_warps=1)
    assert out.shape == (batch, seq, heads, dim) and out.dtype == dtype and out.is_contiguous()
    want = float64_expected(x, weight, 1e-6, cos, sin, heads, dtype)
    tol = 2e-3 if dtype == torch.float16 else 2e-6
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)
    weight64 = weight.double() if weighted else None
    reference = norm_rotary_reference(x.double(), weight64, 1e-6, cos, sin, heads)
    torch.testing.assert_close(reference, float64_expected(x.double(), weight64, 1e-6, cos, sin, heads, torch.float64))


def test_op_passes_opcheck_and_takes_the_reference_for_layouts_the_kernel_does_not_read():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 12, generator=gen)
    cos, sin = rotary_tables(1, 6, 4, gen)
    torch.library.opcheck(norm_rotary, (x, torch.rand(12, generator=gen) + 0.5, 1e-6, cos, sin, 3))
    torch.library.opcheck(norm_rotary, (x, None, 1e-6, cos, sin, 3))
    flat_cos, flat_sin = cos[0], sin[0]  # (S, 1, D): the stock arithmetic broadcasts it too
    want = norm_rotary_reference(x, None, 1e-6, flat_cos, flat_sin, 3)
    torch.testing.assert_close(norm_rotary(x, None, 1e-6, flat_cos, flat_sin, 3), want)
    assert unsupported(x, None, flat_cos, flat_sin, 3) is not None and unsupported(x, None, cos, sin, 3) is None


def test_processor_keeps_stock_ops_for_hooked_or_offloaded_norms():
    """Offloading (accelerate) moves the weight in a pre-forward hook: reading it directly would see ``meta``."""
    x = torch.randn(1, 3, 8)
    norm = torch.nn.RMSNorm(8, eps=1e-6)
    assert _plain_rms_norm(norm, x)
    assert not _plain_rms_norm(torch.nn.RMSNorm(8), x)  # eps None: the norm's own default
    meta = torch.nn.RMSNorm(8, eps=1e-6, device="meta")
    assert not _plain_rms_norm(meta, x)
    handle = norm.register_forward_pre_hook(lambda module, args: None)
    assert not _plain_rms_norm(norm, x)
    handle.remove()
    norm._hf_hook = object()
    assert not _plain_rms_norm(norm, x)


def test_kernel_rejects_what_it_cannot_rotate():
    x = torch.randn(1, 4, 12)
    cos = sin = torch.ones(1, 4, 1, 6)
    with pytest.raises(ValueError, match="even D"):
        norm_rotary_triton(x, None, 1e-6, torch.ones(1, 4, 1, 3), torch.ones(1, 4, 1, 3), 4)  # D = 3
    with pytest.raises(ValueError, match="rotary table"):
        norm_rotary_triton(x, None, 1e-6, torch.ones(1, 5, 1, 6), torch.ones(1, 5, 1, 6), 2)  # 5 rows, not 4
    with pytest.raises(ValueError, match="weight"):
        norm_rotary_triton(x, torch.ones(6), 1e-6, cos, sin, 2)


def test_processor_fuses_only_without_gradients(monkeypatch):
    """Inference takes the fused op; with gradients wanted (fine-tuning) the differentiable stock ops."""
    gen = torch.Generator().manual_seed(3)
    attn = torch.nn.Module()
    attn.heads = 2
    norm = torch.nn.RMSNorm(8, eps=1e-6)
    x = torch.randn(1, 5, 8, generator=gen)
    cos, sin = rotary_tables(1, 5, 4, gen)
    calls = []
    monkeypatch.setattr(dit_accel.pipelines.wan, "norm_rotary", lambda *a: calls.append(a) or norm_rotary(*a))
    with torch.no_grad():
        fused = prepare_query_key(attn, x, norm, (cos, sin))
    assert len(calls) == 1
    stock = prepare_query_key(attn, x, norm, (cos, sin))  # the norm's weight wants a gradient
    assert len(calls) == 1 and stock.requires_grad
    stock.sum().backward()
    assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0
    torch.testing.assert_close(fused, stock.detach(), rtol=0, atol=0)


@pytest.mark.parametrize(("method", "options", "fused"), [
    ("dense", {}, False),                      # promises the stock output bit for bit: stock ops
    ("topk", {"density": 1.0}, False),         # density 1.0 is the dense call, same promise
    ("topk", {"density": 0.5, "dense_steps": 0, "dense_layers": 0}, True),
    ("dense", {"backend": "triton"}, True),
])  # fmt: skip
def test_wan_processor_fuses_unless_the_method_reproduces_stock(monkeypatch, method, options, fused):
    model, inputs = tiny_wan(), wan_inputs()
    calls = []
    monkeypatch.setattr(dit_accel.pipelines.wan, "norm_rotary", lambda *a: calls.append(a) or norm_rotary(*a))
    with dit_accel.apply(model, method, **options):
        run(model, inputs)
    assert len(calls) == (2 * len(model.blocks) if fused else 0)


def test_sequential_offload_gives_the_same_output():
    """accelerate's offload leaves the norm weights on ``meta`` outside their hooked call: the processor must
    not read them directly (the fused op's fake would then return uninitialised memory)."""
    accelerate = pytest.importorskip("accelerate")
    model, inputs = tiny_wan(), wan_inputs()
    with dit_accel.apply(model, "topk", density=0.5, dense_steps=0, dense_layers=0):
        want = run(model, inputs)
        accelerate.cpu_offload(model, execution_device=torch.device("cpu"))
        assert model.blocks[0].attn1.norm_q.weight.device.type == "meta"
        torch.testing.assert_close(run(model, inputs), want, rtol=0, atol=0)
