"""Exact LSE merge: the union of two key sets, empty parts, far-apart maxima, gradients, Triton."""

from __future__ import annotations

import math

import pytest
import torch

from dit_accel.kernels import merge_attention, reference
from dit_accel.kernels.lse_merge import merge_attention_triton


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention ``(out, lse)`` in the inputs' precision; zero keys give 0 and -inf."""
    logits = q @ k.transpose(-1, -2) * scale
    if k.shape[2] == 0:
        return torch.zeros_like(q), torch.full(q.shape[:3], -math.inf, dtype=q.dtype)
    return torch.softmax(logits, dim=-1) @ v, torch.logsumexp(logits, dim=-1)


def parts(gen: torch.Generator, batch=2, heads=3, seq=37, dim=32, keys=(29, 18), dtype=torch.float64):
    q = torch.randn(batch, heads, seq, dim, generator=gen, dtype=dtype)
    k = torch.randn(batch, heads, sum(keys), dim, generator=gen, dtype=dtype)
    v = torch.randn(batch, heads, sum(keys), dim, generator=gen, dtype=dtype)
    return q, k, v


def test_merge_of_two_key_sets_equals_attention_over_their_union():
    gen = torch.Generator().manual_seed(0)
    q, k, v = parts(gen)
    scale = q.shape[-1] ** -0.5
    split = 29
    o1, l1 = attend(q, k[:, :, :split], v[:, :, :split], scale)
    o2, l2 = attend(q, k[:, :, split:], v[:, :, split:], scale)
    dense, dense_lse = attend(q, k, v, scale)
    out, lse = merge_attention(o1, l1, o2, l2)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    torch.testing.assert_close(out, dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, dense_lse, rtol=0, atol=1e-12)
    wrong, _ = merge_attention(o1, l2, o2, l1)  # swapped weights must not pass
    assert (wrong - dense).abs().max() > 1e-3


def test_empty_parts_contribute_nothing_and_never_give_nan():
    gen = torch.Generator().manual_seed(1)
    out1 = torch.randn(1, 2, 41, 16, generator=gen)
    lse1 = torch.randn(1, 2, 41, generator=gen)
    garbage = torch.full_like(out1, float("nan"))
    empty = torch.full_like(lse1, -math.inf)
    out, lse = merge_attention(out1, lse1, garbage, empty)
    assert torch.equal(out, out1) and torch.equal(lse, lse1)
    out, lse = merge_attention(garbage, empty, out1, lse1)
    assert torch.equal(out, out1) and torch.equal(lse, lse1)
    out, lse = merge_attention(garbage, empty, garbage.clone(), empty.clone())
    assert (out == 0).all() and torch.isneginf(lse).all()


def test_wildly_different_maxima():
    gen = torch.Generator().manual_seed(2)
    out1, out2 = torch.randn(2, 1, 2, 45, 16, generator=gen)
    lse1 = torch.randn(1, 2, 45, generator=gen)
    lse2 = lse1 + 1e3
    lse2[..., ::2] = lse1[..., ::2] - 1e3
    out, lse = merge_attention(out1, lse1, out2, lse2)
    winner = torch.where((lse2 > lse1)[..., None], out2, out1)
    assert torch.equal(out, winner)
    torch.testing.assert_close(lse, torch.maximum(lse1, lse2), rtol=0, atol=0)


def test_output_dtypes_and_layout():
    gen = torch.Generator().manual_seed(3)
    out1 = torch.randn(2, 39, 3, 16, generator=gen).half().transpose(1, 2)
    out2 = torch.randn(2, 3, 39, 16, generator=gen).half()
    lse1, lse2 = torch.randn(2, 2, 3, 39, generator=gen)
    out, lse = merge_attention(out1, lse1, out2, lse2)
    assert out.dtype == torch.float16 and lse.dtype == torch.float32 and out.shape == out1.shape


def test_gradients_match_float64_autograd_of_the_reference():
    gen = torch.Generator().manual_seed(4)
    shape = (1, 2, 9, 8)
    out1, out2 = (torch.randn(*shape, generator=gen, dtype=torch.float64) for _ in range(2))
    lse1 = torch.randn(shape[:3], generator=gen, dtype=torch.float64)
    lse2 = lse1 + 3 * torch.randn(shape[:3], generator=gen, dtype=torch.float64)
    lse2[0, 0, 0] = -math.inf  # an empty part: zero gradient to its output and LSE
    inputs = [t.requires_grad_() for t in (out1, lse1, out2, lse2)]
    assert torch.autograd.gradcheck(lambda *x: merge_attention(*x), inputs)
    g_out = torch.randn(shape, generator=gen, dtype=torch.float64)
    g_lse = torch.randn(shape[:3], generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(merge_attention(*inputs), inputs, (g_out, g_lse))
    want = torch.autograd.grad(reference.merge_attention_reference(*inputs), inputs, (g_out, g_lse))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    assert got[2][0, 0, 0].eq(0).all() and got[3][0, 0, 0] == 0


@pytest.mark.parametrize(
    ("seq", "dim", "dtype"), [(37, 16, torch.float32), (70, 64, torch.float16), (33, 24, torch.float32)]
)
def test_triton_matches_float64_reference(seq, dim, dtype):
    gen = torch.Generator().manual_seed(seq + dim)
    out1 = torch.randn(2, seq, 3, dim, generator=gen).to(dtype).transpose(1, 2)  # (B, S, H, D) view
    out2 = torch.randn(2, 3, seq, dim, generator=gen).to(dtype)
    lse1 = torch.randn(2, 3, seq, generator=gen) * 5
    lse2 = (torch.randn(2, seq, 3, generator=gen) * 5).transpose(1, 2)
    lse1[0, 0, :5] = -math.inf
    lse2[0, 0, 3:8] = -math.inf
    lse2[1, 2, -4:] = lse1[1, 2, -4:] + 1e3
    out2[0, 0, 3:8] = float("nan")
    out, lse = merge_attention_triton(out1, lse1, out2, lse2)
    ref, ref_lse = reference.merge_attention_reference(out1.double(), lse1.double(), out2.double(), lse2.double())
    assert out.dtype == dtype and out.stride() == out1.stride() and lse.dtype == torch.float32
    assert not torch.isnan(out).any() and (out[0, 0, 3:5] == 0).all() and torch.isneginf(lse[0, 0, 3:5]).all()
    tol = 1e-6 if dtype == torch.float32 else 1e-3
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-6, atol=1e-5)


def test_op_passes_opcheck():
    gen = torch.Generator().manual_seed(5)
    out1, out2 = (torch.randn(1, 2, 13, 8, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    lse1, lse2 = (torch.randn(1, 2, 13, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    torch.library.opcheck(merge_attention, (out1, lse1, out2, lse2))
    # (B, H, S, D) views of Diffusers' (B, S, H, D) layout: the output keeps out1's strides, as the fake says
    bshd = torch.randn(1, 13, 2, 8, generator=gen, dtype=torch.float64).transpose(1, 2)
    torch.library.opcheck(merge_attention, (bshd, lse1.detach(), out2.detach(), lse2.detach()))
