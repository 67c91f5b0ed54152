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


def test_both_block_means_in_one_launch_match_pooling_each():
    """The fused pooling (interpreter), its op on CPU and the op's fake agree with pooling Q and K apart,
    on Diffusers-strided queries and a key slice (what routing passes)."""
    from dit_accel.kernels import pool_blocks, pool_blocks_qk
    from dit_accel.kernels.routing import pool_qk_triton

    gen = torch.Generator().manual_seed(3)
    q, k = random_qk(2, 3, 77, 90, 24, gen)
    keys = k[:, :, :83]
    want = (reference.pool_blocks_reference(q.double(), 16), reference.pool_blocks_reference(keys.double(), 8))
    for got in (pool_qk_triton(q, keys, 16, 8), pool_blocks_qk(q, keys, 16, 8)):
        for mean, ref in zip(got, want, strict=True):
            assert mean.dtype == torch.float32
            torch.testing.assert_close(mean.double(), ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(pool_blocks_qk(q, keys, 16, 8)[1], pool_blocks(keys, 8))
    torch.library.opcheck(pool_blocks_qk, (q, keys.contiguous(), 16, 8))
    for wrong in (keys[:, :2], keys[..., :16]):  # fewer heads, another head dim
        for pool in (pool_qk_triton, pool_blocks_qk):
            with pytest.raises(ValueError, match="same batch, heads and head dim"):
                pool(q, wrong, 16, 8)


@pytest.mark.parametrize(
    ("layout", "tile", "stages"),
    [
        ("token_rows", 4096, None),
        ("token_rows", 64, None),
        ("token_rows", 32, None),
        ("head_blocks", 4096, None),
        ("token_rows", 4096, 2),
        ("token_rows", 64, 3),
    ],
)
def test_every_pooling_layout_gives_the_block_means(monkeypatch, layout, tile, stages):
    """Each launch layout of the fused pooling (interpreter) on Diffusers-strided q and a key slice, odd
    sizes and partial last blocks: token rows 4 rows a load (tile 4096), one row a load (64 = 4 heads
    padded x 16), and wider than the tile (32), which falls back to one program per head; the token-rows
    loop unrolled and pipelined."""
    from dit_accel.kernels import routing

    launched = []
    for name in ("_pool_qk", "_pool_qk_token_rows"):
        kernel = getattr(routing, name)
        monkeypatch.setattr(routing, name, _LaunchSpy(kernel, name, launched))
    monkeypatch.setattr(routing, "POOL_LAYOUT", layout)
    monkeypatch.setattr(routing, "POOL_TILE", tile)
    monkeypatch.setattr(routing, "POOL_STAGES", stages)
    gen = torch.Generator().manual_seed(7)
    q, k = random_qk(2, 3, 45, 61, 16, gen)
    keys = k[:, :, :53]
    got = routing.pool_qk_triton(q.to(torch.bfloat16), keys.to(torch.bfloat16), 16, 8)
    for mean, x, block in zip(got, (q, keys), (16, 8), strict=True):
        want = reference.pool_blocks_reference(x.to(torch.bfloat16).double(), block)
        torch.testing.assert_close(mean.double(), want, rtol=1e-6, atol=1e-6)
    assert launched == ["_pool_qk_token_rows" if layout == "token_rows" and tile >= 64 else "_pool_qk"]


@pytest.mark.parametrize(("batch", "heads", "nq", "nk", "dim", "tile"), [(2, 3, 70, 5, 24, 64), (1, 2, 9, 67, 160, 32)])
def test_tiled_scores_match_the_float64_reference(monkeypatch, batch, heads, nq, nk, dim, tile):
    """Score tiles past both edges, a head dim below one dot step (24) and over two (160, in 64-wide steps)."""
    from dit_accel.kernels import block_scores
    from dit_accel.kernels.ops import routing_scores

    monkeypatch.setattr(block_scores, "SCORE_TILE", tile)
    gen = torch.Generator().manual_seed(nq + nk)
    q_mean = torch.randn(batch, heads, nq, dim, generator=gen)
    k_mean = torch.randn(batch, heads, nk, dim, generator=gen)
    got = block_scores.block_scores_triton(q_mean, k_mean, 0.3)
    want = reference.routing_scores(q_mean.double(), k_mean.double(), 0.3)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(routing_scores(q_mean, k_mean, 0.3), want.float())  # the op on CPU: the reference
    fake = torch._subclasses.fake_tensor.FakeTensorMode()
    with fake:
        shape = routing_scores(fake.from_tensor(q_mean), fake.from_tensor(k_mean), 0.3).shape
    assert shape == want.shape
    with pytest.raises(ValueError, match="fp32"):
        block_scores.block_scores_triton(q_mean.double(), k_mean.double(), 0.3)


class _LaunchSpy:
    """Stands in for a Triton kernel: records its name at launch (``kernel[grid](...)``), then launches it."""

    def __init__(self, kernel, name: str, launched: list[str]) -> None:
        self.kernel, self.name, self.launched = kernel, name, launched

    def __getitem__(self, grid):
        self.launched.append(self.name)
        return self.kernel[grid]


def test_methods_route_through_either_path_alike(monkeypatch):
    """``Routing.top_blocks`` gives the same lists through the composed path and the one-read op."""
    from dit_accel.methods import base
    from dit_accel.methods.base import Routing

    gen = torch.Generator().manual_seed(9)
    q, k = random_qk(1, 2, 64, 70, 16, gen)
    log_counts = reference.block_counts(64, 8).float().log()
    common = dict(q=q, q_rows=None, k=k[:, :, :64], v=k[:, :, :64], key_rows=torch.arange(64), key_len=64,
                  scale=0.25, block_q=16, block_k=8, log_counts=log_counts)  # fmt: skip
    from dit_accel import kernels

    calls = []
    one_read_op = kernels.route_blocks
    monkeypatch.setattr(kernels, "route_blocks", lambda *args: calls.append(args) or one_read_op(*args))
    lists = {}
    for one_read in (False, True):
        monkeypatch.setattr(base, "ONE_READ_ROUTING", one_read)
        for select in ((0.3, None), (None, 0.8)):
            blocks = Routing(**common).top_blocks(*select)
            lists[one_read, select] = (blocks.indices, blocks.counts)
        assert len(calls) == (2 if one_read else 0), "the flag picks the path"
    for select in ((0.3, None), (None, 0.8)):
        for got, want in zip(lists[True, select], lists[False, select], strict=True):
            assert torch.equal(got, want)


def test_select_programs_of_several_rows_match_one_row_each(monkeypatch):
    """The select kernel with 2 rows a program (odd row count: a partial last program) keeps the same
    blocks as the reference, top-k and top-p."""
    from dit_accel.kernels import block_selection

    monkeypatch.setattr(block_selection, "SELECT_ROWS", 2)
    gen = torch.Generator().manual_seed(8)
    scores = torch.randn(1, 3, 5, 37, generator=gen) * 3
    log_counts = torch.rand(37, generator=gen).log()
    for select in ({"density": 0.2}, {"top_p": 0.8, "min_blocks": 2}):
        got = block_selection.select_blocks_triton(scores, log_counts=log_counts, **select)
        want = reference.select_blocks_reference(scores, log_counts=log_counts, **select)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


def test_scores_pool_queries_and_keys_together_unless_queries_are_gathered(monkeypatch):
    from dit_accel import kernels
    from dit_accel.methods.base import Routing

    gen = torch.Generator().manual_seed(4)
    q, k = random_qk(1, 2, 64, 70, 16, gen)
    calls = []
    fused = kernels.pool_blocks_qk
    monkeypatch.setattr(kernels, "pool_blocks_qk", lambda *args: calls.append(args) or fused(*args))
    common = dict(k=k, v=k, key_rows=torch.arange(64), key_len=64, scale=0.25, block_q=16, block_k=16,
                  log_counts=torch.zeros(4))  # fmt: skip
    routing = Routing(q=q, q_rows=None, **common)
    scores = routing.scores
    assert len(calls) == 1
    torch.testing.assert_close(routing.q_mean, kernels.pool_blocks(q, 16))
    torch.testing.assert_close(routing.k_mean, kernels.pool_blocks(k[:, :, :64], 16))
    torch.testing.assert_close(scores, reference.routing_scores(routing.q_mean, routing.k_mean, 0.25))
    alone = Routing(q=q, q_rows=None, **common)
    torch.testing.assert_close(alone.q_mean, kernels.pool_blocks(q, 16))
    assert alone.known_k_mean is None and len(calls) == 1, "one mean asked for alone pools only that one"
    gathered = Routing(q=q, q_rows=torch.arange(64).flip(0), **common)
    torch.testing.assert_close(gathered.scores, reference.routing_scores(
        kernels.pool_blocks(q, 16, torch.arange(64).flip(0)), kernels.pool_blocks(k[:, :, :64], 16), 0.25))  # fmt: skip
    assert len(calls) == 1, "gathered queries pool through their rows, apart from the keys"
