"""Backward of block-sparse attention: Triton (interpreter) and the op's autograd vs float64 autograd."""

from __future__ import annotations

import math

import pytest
import torch
from test_kernels import random_block_lists, rel_err

from dit_accel import kernels
from dit_accel.kernels import block_sparse_attention_bwd as bwd
from dit_accel.kernels import reference
from dit_accel.kernels.block_sparse_attention import block_sparse_attention_triton
from dit_accel.kernels.block_sparse_attention_bwd import block_sparse_attention_backward_triton


def test_transpose_block_lists_lists_every_query_block_of_each_key_block():
    gen = torch.Generator().manual_seed(0)
    nq, nk = 7, 5
    indices, counts = random_block_lists(2, 3, nq, nk, gen)
    t_indices, t_counts = reference.transpose_block_lists(indices, counts, nk)
    assert t_indices.shape == (2, 3, nk, nq) and t_indices.dtype == torch.int32 and t_counts.dtype == torch.int32
    for b in range(2):
        for h in range(3):
            for j in range(nk):
                want = [i for i in range(nq) if j in indices[b, h, i, : counts[b, h, i]].tolist()]
                assert t_counts[b, h, j] == len(want)
                assert t_indices[b, h, j, : len(want)].tolist() == want
                assert (t_indices[b, h, j, len(want) :] == -1).all()


CASES = [
    # batch, heads, seq_q, seq_k, head_dim, block_m, block_n, bias, dlse, dtype
    (1, 2, 45, 45, 16, 16, 16, True, False, torch.float32),
    (2, 1, 70, 53, 32, 32, 16, False, True, torch.float32),
    (1, 2, 37, 61, 64, 16, 32, True, True, torch.float16),
    (2, 1, 53, 41, 32, 16, 16, False, False, torch.float16),
    (1, 1, 97, 70, 16, 64, 16, True, True, torch.float32),  # 64-row query blocks (other dk/dv steps: below)
]
TOLERANCE = {torch.float32: 2e-6, torch.float16: 1.5e-3}


@pytest.fixture
def uninitialised_memory_is_nan():
    """Deterministic mode fills ``torch.empty`` with NaN: a gradient row the backward forgets to write shows."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize(("batch", "heads", "seq_q", "seq_k", "dim", "bm", "bn", "bias", "dlse", "dtype"), CASES)
@pytest.mark.usefixtures("uninitialised_memory_is_nan")
def test_triton_backward_matches_float64_autograd(batch, heads, seq_q, seq_k, dim, bm, bn, bias, dlse, dtype):
    gen = torch.Generator().manual_seed(seq_q * 7 + seq_k)
    q = torch.randn(batch, seq_q, heads, dim, generator=gen).to(dtype).transpose(1, 2)  # Diffusers' layout
    nq, nk = math.ceil(seq_q / bm), math.ceil(seq_k / bn)
    k = torch.randn(batch, heads, nk * bn + 3, dim, generator=gen).to(dtype)  # padded beyond the last key block
    v = torch.randn(batch, heads, nk * bn + 3, dim, generator=gen).to(dtype)
    indices, counts = random_block_lists(batch, heads, nq, nk, gen)  # empty and full rows
    kwargs = {"block_m": bm, "block_n": bn, "key_len": seq_k, "scale": dim**-0.5}
    kwargs["key_bias"] = torch.randn(batch, heads, nk, generator=gen) if bias else None
    out, lse = block_sparse_attention_triton(q, k, v, indices, counts, return_lse=True, **kwargs)
    dout = torch.randn(batch, heads, seq_q, dim, generator=gen).to(dtype)
    grad_lse = torch.randn(batch, heads, seq_q, generator=gen) if dlse else None
    got = block_sparse_attention_backward_triton(dout, q, k, v, out, lse, indices, counts, dlse=grad_lse, **kwargs)
    ref_kwargs = {key: val.double() if isinstance(val, torch.Tensor) else val for key, val in kwargs.items()}
    want = reference.block_sparse_attention_backward_reference(
        dout.double(), q.double(), k.double(), v.double(), None, None, indices, counts,
        dlse=grad_lse.double() if dlse else None, **ref_kwargs,
    )  # fmt: skip
    for name, g, w in zip("qkv", got, want, strict=True):
        assert g.dtype == dtype and g.shape == w.shape
        assert rel_err(g, w) < TOLERANCE[dtype], f"d{name}"
    assert (got[1][:, :, seq_k:] == 0).all() and (got[2][:, :, seq_k:] == 0).all(), "padding keys get no gradient"
    assert (got[0][0, 0, :bm] == 0).all(), "a query block that attends to nothing gets no gradient"


def test_every_dkdv_row_step_gives_the_same_gradients_and_a_partial_step_is_refused(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    bm, bn, seq = 64, 16, 83
    q, k, v, dout = (torch.randn(1, 1, seq, 16, generator=gen) for _ in range(4))
    indices, counts = random_block_lists(1, 1, math.ceil(seq / bm), math.ceil(seq / bn), gen)
    out, lse = block_sparse_attention_triton(q, k, v, indices, counts, block_m=bm, block_n=bn, return_lse=True)

    def grads():
        return block_sparse_attention_backward_triton(dout, q, k, v, out, lse, indices, counts, block_m=bm, block_n=bn)

    default = grads()
    for sub_m in (16, 32):
        monkeypatch.setattr(bwd, "LAUNCH", bwd.BackwardLaunch(dkdv_sub_m=sub_m, dq_stages=2, dkdv_stages=2))
        for g, w in zip(grads(), default, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(bwd, "LAUNCH", bwd.BackwardLaunch(dkdv_sub_m=48))
    with pytest.raises(ValueError, match="whole steps"):
        grads()


def test_launch_defaults_resolve_per_block_size_and_bad_launches_are_refused():
    launch = bwd.BackwardLaunch()
    assert launch.for_blocks(128, 64, 128) == bwd.BackwardLaunch(8, 3, 4, 1, 64)  # the H200 sweep's fastest
    assert launch.for_blocks(64, 64, 128) == bwd.BackwardLaunch(4, 1, 4, 1, 64), "no stages on a 4-warp dq kernel"
    assert launch.for_blocks(128, 128, 256) == bwd.BackwardLaunch(8, 1, 8, 1, 64), "no stages past head_dim 128"
    assert launch.for_blocks(32, 16, 64).dkdv_sub_m == 32, "a step is at most the query block"
    for bad in ({"dq_warps": 3}, {"dkdv_stages": 0}, {"dq_stages": 0}, {"dkdv_sub_m": 8}):
        with pytest.raises(ValueError):
            bwd.BackwardLaunch(**bad)


def test_op_autograd_on_cpu_matches_reference_autograd():
    gen = torch.Generator().manual_seed(3)
    seq, dim, bm, bn = 43, 16, 16, 8
    q, k, v = (torch.randn(2, 2, seq, dim, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    indices, counts = random_block_lists(2, 2, math.ceil(seq / bm), math.ceil(seq / bn), gen)
    bias = torch.randn(2, 2, math.ceil(seq / bn), generator=gen, dtype=torch.float64)
    args = (indices, counts, bm, bn, seq, 0.3)
    out, lse = kernels.block_sparse_attention(q, k, v, *args, key_bias=bias)
    assert lse.numel() == 0, "the returned value contract is unchanged when grads are needed"
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), dout)
    ref_out, _ = reference.block_sparse_attention_reference(
        q, k, v, indices, counts, block_m=bm, block_n=bn, key_len=seq, scale=0.3, key_bias=bias
    )
    want = torch.autograd.grad(ref_out, (q, k, v), dout)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_op_gradients_through_the_lse_output_pass_gradcheck():
    gen = torch.Generator().manual_seed(4)
    seq, dim = 19, 4
    q, k, v = (torch.randn(1, 1, seq, dim, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    indices, counts = random_block_lists(1, 1, 3, 3, gen)
    counts.clamp_(min=1)  # finite LSE everywhere, so finite differences are defined
    indices[..., 0] = torch.where(indices[..., 0] < 0, 0, indices[..., 0])

    def attention(q, k, v):
        return kernels.block_sparse_attention(q, k, v, indices, counts, 8, 8, seq, 0.5, return_lse=True)

    assert torch.autograd.gradcheck(attention, (q, k, v), fast_mode=True)


@pytest.mark.parametrize("feature", ["q_rows", "extra_k"])
def test_forward_only_features_refuse_a_backward_by_name(feature):
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 1, 32, 16, generator=gen, requires_grad=True) for _ in range(3))
    indices = torch.tensor([[[[0, 1], [0, 1]]]], dtype=torch.int32)
    counts = torch.full((1, 1, 2), 2, dtype=torch.int32)
    extra = {"q_rows": torch.arange(32, dtype=torch.int32)}
    if feature == "extra_k":
        extra = {"extra_k": torch.randn(1, 1, 5, 16), "extra_v": torch.randn(1, 1, 5, 16)}
    out, _ = kernels.block_sparse_attention(q, k, v, indices, counts, 16, 16, 32, 0.25, **extra)
    with pytest.raises(NotImplementedError, match=feature):
        out.sum().backward()


def test_op_passes_opcheck_including_compiled_backward():
    """Traced (AOT) graphs get no kept LSE: their backward recomputes it and must match eager."""
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 1, 21, 8, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    indices = torch.tensor([[[[0, 1], [1, -1]]]], dtype=torch.int32)
    counts = torch.tensor([[[2, 1]]], dtype=torch.int32)
    torch.library.opcheck(kernels.block_sparse_attention, (q, k, v, indices, counts, 16, 16, 21, 0.3))


def test_compiled_graph_with_forward_only_features_builds_and_refuses_only_a_real_backward():
    """torch.compile traces the backward of grad-requiring inputs: that must not fail the forward."""
    gen = torch.Generator().manual_seed(7)
    weight = torch.nn.Parameter(torch.randn(16, 16, generator=gen))
    indices = torch.tensor([[[[0, 1], [0, 1]]]], dtype=torch.int32)
    counts = torch.full((1, 1, 2), 2, dtype=torch.int32)
    rows = torch.randperm(32, generator=gen).to(torch.int32)

    def attention(x):
        q = x @ weight
        return kernels.block_sparse_attention(q, q, q, indices, counts, 16, 16, 32, 0.25, q_rows=rows)[0]

    x = torch.randn(1, 1, 32, 16, generator=gen)
    out = torch.compile(attention, backend="aot_eager")(x)
    torch.testing.assert_close(out, attention(x))
    with pytest.raises(NotImplementedError, match="q_rows"):
        out.sum().backward()


def test_the_cuda_backward_op_has_a_fake_that_a_compiled_backward_traces():
    """The Triton backward sits behind a CUDA op so that AOT autograd traces it with fake tensors instead
    of launching the kernel on them; its fake must give the gradients' shapes, strides and dtypes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from dit_accel.kernels.ops import block_sparse_attention_backward_cuda

    with FakeTensorMode():
        q = torch.empty(1, 37, 2, 16, dtype=torch.bfloat16).transpose(1, 2)  # Diffusers' strides
        k = v = torch.empty(1, 2, 45, 16, dtype=torch.bfloat16)
        out, grad = torch.empty_like(q), torch.empty_like(q)
        lse = torch.empty(1, 2, 37)
        indices, counts = torch.zeros(1, 2, 3, 2, dtype=torch.int32), torch.ones(1, 2, 3, dtype=torch.int32)
        grads = block_sparse_attention_backward_cuda(grad, q, k, v, out, lse, indices, counts, 16, 16, 45, 0.25)
    for got, want in zip(grads, (q, k, v), strict=True):
        assert got.shape == want.shape and got.stride() == want.stride() and got.dtype == want.dtype
