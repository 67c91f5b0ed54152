"""Routing in one read (Triton, interpreter) against the composed reference path: pool, score, select."""

from __future__ import annotations

import pytest
import torch

from dit_accel.kernels import reference, route_blocks
from dit_accel.kernels.routing import route_blocks_triton


def composed_routing(q, k, block_q, block_k, scale, **select):
    """The existing path: pool Q, pool K, score, add log n_j, select."""
    q_mean = reference.pool_blocks_reference(q, block_q)
    k_mean = reference.pool_blocks_reference(k, block_k)
    log_counts = reference.block_counts(k.shape[2], block_k).float().log()
    scores = reference.routing_scores(q_mean, k_mean, scale)
    indices, counts = reference.select_blocks_reference(scores, log_counts=log_counts, **select)
    return indices, counts, q_mean, k_mean


def random_qk(batch, heads, seq_q, seq_k, dim, gen, spread=1.0):
    q = torch.randn(batch, seq_q, heads, dim, generator=gen).transpose(1, 2)  # Diffusers' layout
    k = torch.randn(batch, heads, seq_k, dim, generator=gen)
    # a shared direction per key block makes the pooled scores spread out, as on real Q/K
    k += spread * torch.randn(batch, heads, seq_k, 1, generator=gen) * q.mean(dim=2, keepdim=True)
    return q, k


# bf16 is fine here: the kernel's only tl.dot is on the fp32 means (the interpreter mis-evaluates bf16 dots).
CASES = [
    # batch, heads, seq_q, seq_k, dim, block_q, block_k, selection, dtype
    (2, 3, 97, 83, 32, 16, 8, {"density": 0.3}, torch.float32),
    (1, 2, 61, 77, 16, 32, 16, {"density": 0.2, "min_blocks": 3}, torch.bfloat16),
    (1, 2, 45, 45, 64, 16, 16, {"density": 1.0}, torch.float16),
    (2, 1, 77, 97, 32, 16, 8, {"top_p": 0.9, "min_blocks": 2}, torch.float32),
    (1, 3, 53, 71, 16, 16, 8, {"top_p": 0.5}, torch.bfloat16),
]


@pytest.mark.parametrize(("batch", "heads", "seq_q", "seq_k", "dim", "bq", "bk", "select", "dtype"), CASES)
def test_triton_routing_matches_the_composed_reference(batch, heads, seq_q, seq_k, dim, bq, bk, select, dtype):
    gen = torch.Generator().manual_seed(seq_q * 13 + seq_k)
    q, k = random_qk(batch, heads, seq_q, seq_k, dim, gen, spread=20.0 if "top_p" in select else 1.0)
    q, k = q.to(dtype), k.to(dtype)
    scale = dim**-0.5
    indices, counts, q_mean, k_mean = route_blocks_triton(q, k, bq, bk, scale, **select)
    ref_indices, ref_counts, ref_q_mean, ref_k_mean = composed_routing(q.double(), k.double(), bq, bk, scale, **select)
    torch.testing.assert_close(q_mean.double(), ref_q_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_mean.double(), ref_k_mean, rtol=1e-6, atol=1e-6)
    assert indices.dtype == torch.int32 and counts.dtype == torch.int32
    assert torch.equal(counts, ref_counts) and torch.equal(indices, ref_indices)
    if "top_p" in select:
        assert 1 < counts.float().mean() < indices.shape[-1] - 1, "the test must exercise a real top-p cut"


def test_ties_keep_exactly_k_of_the_largest_ascending():
    gen = torch.Generator().manual_seed(1)
    q = torch.ones(1, 2, 37, 16)
    k = torch.randint(0, 3, (1, 2, 61, 1), generator=gen).float().expand(1, 2, 61, 16).contiguous()
    indices, counts, _, k_mean = route_blocks_triton(q, k, 16, 4, 0.25, density=0.25)
    keep = reference.keep_count(16, 0.25, 1)
    assert (counts == keep).all()
    scores = k_mean.sum(-1) * 0.25 + reference.block_counts(61, 4).float().log()
    for b_h in range(2):
        for idx in indices[0, b_h]:
            assert bool((idx.diff() > 0).all()) and len(set(idx.tolist())) == keep
            kept = torch.zeros(16, dtype=torch.bool)
            kept[idx.long()] = True
            assert scores[0, b_h][kept].min() >= scores[0, b_h][~kept].max()


def test_op_and_reference_on_cpu_and_the_fake_shapes():
    gen = torch.Generator().manual_seed(2)
    q, k = random_qk(1, 2, 41, 59, 16, gen)
    for select in ({"density": 0.4}, {"top_p": 0.7, "min_blocks": 2}):
        want = composed_routing(q, k, 16, 8, 0.25, **select)
        for got in (
            route_blocks(q, k, 16, 8, 0.25, **select),
            reference.route_blocks_reference(q, k, 16, 8, 0.25, **select),
        ):
            for g, w in zip(got, want, strict=True):
                assert torch.equal(g, w)
        torch.library.opcheck(route_blocks, (q, k, 16, 8, 0.25), select)
