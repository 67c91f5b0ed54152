"""Rectified SpaAttn: block statistics and the rectifying pass (Triton, interpreter) against float64
formulas, the critical set (top-p with a floor, 3-D neighbours, exact density), the no-compensation
case, the method against its float64 definition, and the options."""

from __future__ import annotations

import math

import pytest
import torch

from dit_accel.bench import standalone_context
from dit_accel.config import MethodConfig
from dit_accel.kernels import rectified_ops
from dit_accel.kernels.rectified_reference import (
    block_stats_reference,
    rectified_merge_reference,
    rectified_row_weights,
)
from dit_accel.kernels.rectified_stats import block_stats_triton
from dit_accel.kernels.rectified_tail import rectified_merge_triton
from dit_accel.kernels.reference import block_mask_from_lists, keep_count, select_blocks_reference
from dit_accel.layout import TokenLayout
from dit_accel.methods.rectified import RectifiedAttention, RectifiedConfig, neighbour_mask
from dit_accel.methods.topk import TopKAttention, TopKConfig


def bhsd(gen: torch.Generator, batch: int, heads: int, seq: int, dim: int) -> torch.Tensor:
    """``(B, H, S, D)`` view of a Diffusers-layout tensor, with a shared direction per 8 rows so that
    block means are far from zero (as on real Q/K: GAPR then compensates some blocks, not none)."""
    x = torch.randn(batch, seq, heads, dim, generator=gen).transpose(1, 2)
    shared = torch.randn(batch, heads, math.ceil(seq / 8), dim, generator=gen).repeat_interleave(8, 2)
    return x + 2.0 * shared[:, :, :seq]


@pytest.mark.parametrize(("key_len", "gathered", "dtype"), [(75, True, torch.float32), (64, False, torch.bfloat16)])
def test_block_stats_triton_matches_float64(key_len, gathered, dtype):
    gen = torch.Generator().manual_seed(key_len)
    q, k, v = (bhsd(gen, 2, 3, 83, 32).to(dtype) for _ in range(3))
    rows = torch.randperm(83, generator=gen)[:70].int() if gathered else None
    got = block_stats_triton(q, k, v, 16, 8, key_len, rows)
    want = block_stats_reference(q.double(), k.double(), v.double(), 16, 8, key_len, rows)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32 and g.shape == w.shape
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5)
    # a mean absolute deviation, not a standard deviation or a mean
    block = k[:, :, :8].double()
    torch.testing.assert_close(got[3][:, :, 0].double(), (block - block.mean(2, keepdim=True)).abs().mean(2),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def merge_inputs(gen, per_row_seq=75, batch=2, heads=3, dim=32, block=16, text=0, padded=False, gathered=False):
    """Exact output, queries, fp32 block statistics, block lists and text keys of one call."""
    full = per_row_seq + 6 if gathered else per_row_seq
    q, k, v = (bhsd(gen, batch, heads, full, dim) for _ in range(3))
    rows = torch.randperm(full, generator=gen)[:per_row_seq].int() if gathered else None
    stats = block_stats_reference(q, k, v, block, block, per_row_seq, rows)
    nq = nk = math.ceil(per_row_seq / block)
    indices, counts = select_blocks_reference(torch.randn(batch, heads, nq, nk, generator=gen), density=0.3)
    extra_k = torch.randn(batch, heads, text, dim, generator=gen) if text else None
    valid = torch.tensor([text, text // 3], dtype=torch.int32) if padded else None
    out = torch.randn(batch, heads, full, dim, generator=gen)
    kwargs = dict(block_q=block, block_k=block, key_len=per_row_seq, scale=dim**-0.5, q_rows=rows, extra_k=extra_k,
                  extra_valid=valid)  # fmt: skip
    return out, q, stats, indices, counts, kwargs


def to64(x):
    return x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


@pytest.mark.parametrize("per_row", [True, False])
def test_reference_follows_the_definition_token_by_token(per_row):
    """R and C from raw q/k/v with explicit loops over rows and blocks (no shared code with the reference)."""
    gen = torch.Generator().manual_seed(21)
    seq, block, dim, text, scale = 37, 8, 8, 5, 0.5
    q, k, v = (bhsd(gen, 1, 1, seq, dim).double() for _ in range(3))
    text_k = torch.randn(1, 1, text, dim, generator=gen, dtype=torch.float64)
    indices, counts = select_blocks_reference(torch.randn(1, 1, 5, 5, generator=gen), density=0.4)
    stats = block_stats_reference(q, k, v, block, block, seq)
    keep, add = rectified_row_weights(q, *stats, indices, counts, block_q=block, block_k=block, key_len=seq,
                                      scale=scale, per_row=per_row, extra_k=text_k,
                                      extra_valid=torch.tensor([3]))  # fmt: skip
    spans = [range(j, min(seq, j + block)) for j in range(0, seq, block)]
    k_bar = [k[0, 0, list(span)].mean(0) for span in spans]
    k_dev = [(k[0, 0, list(span)] - k_bar[j]).abs().mean(0) for j, span in enumerate(spans)]
    sizes = []
    for row in range(seq):
        i = row // block
        if per_row:
            x, err_q = q[0, 0, row], [0.0] * len(spans)
        else:
            x = q[0, 0, list(spans[i])].mean(0)
            x_dev = (q[0, 0, list(spans[i])] - x).abs().mean(0)
            err_q = [float((x_dev @ k_bar[j]).abs()) for j in range(len(spans))]
        weights = [len(span) * math.exp(scale * float(x @ k_bar[j])) for j, span in enumerate(spans)]
        z = sum(weights) + sum(math.exp(scale * float(x @ text_k[0, 0, t])) for t in range(3))
        exact = set(indices[0, 0, i, : counts[0, 0, i]].tolist())
        moved = [j for j in range(len(spans))
                 if j not in exact and abs(float(x @ k_bar[j])) > abs(float(x @ k_dev[j])) + err_q[j]]  # fmt: skip
        v_bar = [v[0, 0, list(span)].mean(0) for span in spans]
        sizes.append((len(moved), len(spans) - len(exact) - len(moved)))
        torch.testing.assert_close(keep[0, 0, row], torch.tensor(1 - sum(weights[j] for j in moved) / z,
                                                                 dtype=torch.float64))  # fmt: skip
        want = sum((weights[j] / z * v_bar[j] for j in moved), torch.zeros(dim, dtype=torch.float64))
        torch.testing.assert_close(add[0, 0, row], want)
    assert sum(n for n, _ in sizes) > 0 and sum(m for _, m in sizes) > 0, "GAPR must both pass and fail"


@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize(("text", "padded", "gathered"), [(0, False, False), (37, True, True), (70, False, False)])
def test_merge_triton_matches_float64(per_row, text, padded, gathered):
    gen = torch.Generator().manual_seed(text + per_row)
    out, q, stats, indices, counts, kwargs = merge_inputs(gen, text=text, padded=padded, gathered=gathered)
    got = rectified_merge_triton(out, q, *stats, indices, counts, per_row=per_row, **kwargs)
    want = rectified_merge_reference(to64(out), to64(q), *map(to64, stats), indices, counts, per_row=per_row,
                                     **{name: to64(x) for name, x in kwargs.items()})  # fmt: skip
    rows = kwargs["q_rows"].long() if gathered else slice(None)
    torch.testing.assert_close(got[:, :, rows].double(), want[:, :, rows], rtol=1e-5, atol=1e-5)
    changed = (want[:, :, rows] - out[:, :, rows].double()).abs().amax(-1)
    assert (changed > 1e-3).double().mean() > 0.05 and changed.max() > 0.05, "some rows must be compensated"


def test_merge_triton_half_per_row():
    gen = torch.Generator().manual_seed(5)
    out, q, stats, indices, counts, kwargs = merge_inputs(gen, per_row_seq=61, text=20)
    out, q = out.half(), q.half()  # fp16: the interpreter has no bf16 tensor-core dot (the GPU check runs bf16)
    got = rectified_merge_triton(out, q, *stats, indices, counts, per_row=True, **kwargs)
    want = rectified_merge_reference(to64(out), to64(q), *map(to64, stats), indices, counts, per_row=True,
                                     **{name: to64(x) for name, x in kwargs.items()})  # fmt: skip
    assert got.dtype == torch.half
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("per_row", [True, False])
def test_no_compensated_block_leaves_the_exact_output_bit_for_bit(per_row):
    """Key deviations far above the means: no block passes GAPR's test, so R = 1 and C = 0."""
    gen = torch.Generator().manual_seed(7)
    out, q, (q_mean, q_mad, k_mean, k_mad, v_mean), indices, counts, kwargs = merge_inputs(gen, text=9)
    stats = (q_mean, q_mad, k_mean, k_mad + 1e4, v_mean)
    for merge in (rectified_merge_triton, rectified_merge_reference):
        assert torch.equal(merge(out, q, *stats, indices, counts, per_row=per_row, **kwargs), out)


def test_ops_dispatch_to_the_reference_on_cpu_and_pass_opcheck():
    gen = torch.Generator().manual_seed(3)
    out, q, stats, indices, counts, kwargs = merge_inputs(gen, per_row_seq=40, batch=1, heads=2, text=5, gathered=True)
    k, v = torch.randn(2, 1, 2, 40, 32, generator=gen)
    got = rectified_ops.block_stats(q, k, v, 16, 16, 40, kwargs["q_rows"])
    for g, w in zip(got, block_stats_reference(q, k, v, 16, 16, 40, kwargs["q_rows"]), strict=True):
        assert torch.equal(g, w)
    torch.library.opcheck(rectified_ops.block_stats, (q, k, v, 16, 16, 40, kwargs["q_rows"]))
    args = (out, q, *stats, indices, counts, 16, 16, 40, 32**-0.5, True, kwargs["q_rows"], kwargs["extra_k"], None)
    assert torch.equal(rectified_ops.rectified_merge(*args), rectified_merge_reference(
        out, q, *stats, indices, counts, **(kwargs | {"extra_valid": None}), per_row=True))  # fmt: skip
    torch.library.opcheck(rectified_ops.rectified_merge, args)


# --- selection ---------------------------------------------------------------------------------------


def test_neighbours_on_a_known_grid():
    # grid (2, 4, 8), tiles (1, 4, 4): four 16-token tiles at (t, w) = (0,0), (0,1), (1,0), (1,1)
    expected = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)
    mask = neighbour_mask((2, 4, 8), (1, 4, 4), 64, 64, 16, 16, torch.device("cpu"))
    assert torch.equal(mask, expected)
    halves = neighbour_mask((2, 4, 8), (1, 4, 4), 64, 64, 16, 8, torch.device("cpu"))  # two key blocks per tile
    assert torch.equal(halves, expected.repeat_interleave(2, dim=1))
    appended = neighbour_mask((2, 4, 8), (1, 4, 4), 64, 96, 16, 16, torch.device("cpu"))
    assert torch.equal(appended, torch.cat([expected, torch.zeros(4, 2, dtype=torch.bool)], dim=1))
    # a 3x3 grid of single-token tiles: the centre touches 5 tiles, a corner 3
    plus = neighbour_mask((1, 3, 3), (1, 1, 1), 9, 9, 1, 1, torch.device("cpu"))
    assert plus[4].sum() == 5 and plus[0].tolist() == [True, True, False, True] + [False] * 5


def call_inputs(gen, grid=(3, 8, 8), text=0, heads=2, dim=32):
    """q/k/v in Diffusers' layout for one call (video first, then text) and its layout."""
    video = math.prod(grid)
    seq = video + text
    q, k, v = (bhsd(gen, 1, heads, seq, dim).transpose(1, 2).contiguous() for _ in range(3))
    valid = torch.tensor([text - 3], dtype=torch.int32) if text else None
    layout = TokenLayout(seq_len=seq, video_start=0, video_len=video, grid=grid, text_start=video, text_len=text,
                         text_valid=valid)  # fmt: skip
    return q, k, v, layout


def routed_call(options: dict, gen: torch.Generator, text: int = 0):
    """``rectified`` on a (3, 8, 8) grid in (1, 4, 4) tiles, 16-token blocks: method, q/k/v, ctx, routing, blocks."""
    method = RectifiedAttention(RectifiedConfig(block_size=16, tile=(1, 4, 4), **options))
    q, k, v, layout = call_inputs(gen, text=text)
    ctx = standalone_context(layout, method.config)
    routing = method.route(q, k, v, ctx)
    return method, (q, k, v), ctx, routing, method.select(routing, ctx)


def chosen_sets(blocks) -> list[set[int]]:
    rows = zip(blocks.indices.flatten(0, 2).tolist(), blocks.counts.flatten().tolist(), strict=True)
    return [set(indices[:count]) for indices, count in rows]


@pytest.mark.parametrize("density", [0.1, 0.3])
def test_density_is_exact_and_takes_the_neighbours_first(density):
    *_, routing, blocks = routed_call({"density": density, "neighbours": True}, torch.Generator().manual_seed(11))
    nk = blocks.num_key_blocks
    want = keep_count(nk, density, 1)
    assert (blocks.counts == want).all() and blocks.indices.shape[-1] == want
    near = neighbour_mask((3, 8, 8), (1, 4, 4), 192, 192, 16, 16, torch.device("cpu"))
    q_mean, _, k_mean, _, _ = routing.stats
    logits = (q_mean @ k_mean.transpose(-1, -2) * routing.scale + routing.log_counts).flatten(0, 2)
    for row, chosen in enumerate(chosen_sets(blocks)):
        mine = set(near[row % near.shape[0]].nonzero().flatten().tolist())
        by_mass = sorted(range(nk), key=lambda j, row=row: -float(logits[row, j]))
        if len(mine) >= want:
            assert chosen == set(sorted(mine, key=by_mass.index)[:want])
        else:
            assert chosen == mine | set([j for j in by_mass if j not in mine][: want - len(mine)])


def test_equal_density_takes_the_largest_mass_without_neighbours_unless_asked():
    """``neighbours=None``: on in top-p mode, off with ``density`` (then exactly the top blocks by P̃)."""
    assert RectifiedConfig().with_neighbours and not RectifiedConfig(density=0.2).with_neighbours
    assert RectifiedConfig(density=0.2, neighbours=True).with_neighbours
    *_, routing, blocks = routed_call({"density": 0.3}, torch.Generator().manual_seed(13))
    q_mean, _, k_mean, _, _ = routing.stats
    assert routing.q_mean is q_mean and routing.k_mean is k_mean  # the statistics' means serve the routing
    logits = (q_mean @ k_mean.transpose(-1, -2) * routing.scale + routing.log_counts).flatten(0, 2)
    want = keep_count(blocks.num_key_blocks, 0.3, 1)
    for row, chosen in enumerate(chosen_sets(blocks)):
        assert chosen == set(logits[row].argsort(descending=True, stable=True)[:want].tolist())


def test_top_p_with_floor_text_mass_and_neighbours():
    """Each row: blocks by P̃ (text keys in the normaliser) until top_p is reached, at least the floor, + neighbours."""
    gen = torch.Generator().manual_seed(12)
    options = {"top_p": 0.5, "drop_rate": 0.9}
    *_, routing, blocks = routed_call(options, gen, text=20)
    q_mean = routing.stats[0].double()
    k_mean = routing.stats[2].double()
    text_k = routing.extra_k[:, :, : int(routing.extra_valid[0])].double()
    video = q_mean @ k_mean.transpose(-1, -2) * routing.scale + routing.log_counts.double()
    text = q_mean @ text_k.transpose(-1, -2) * routing.scale
    z = video.exp().sum(-1) + text.exp().sum(-1)
    shares = (video.exp() / z[..., None]).flatten(0, 2)
    nk = blocks.num_key_blocks
    near = neighbour_mask((3, 8, 8), (1, 4, 4), 192, 192, 16, 16, torch.device("cpu"))
    floor = math.ceil(0.1 * nk)
    sizes = []
    for row, chosen in enumerate(chosen_sets(blocks)):
        order = shares[row].argsort(descending=True).tolist()
        taken, mass = [], 0.0
        for j in order:
            if mass >= 0.5 and len(taken) >= floor:
                break
            taken.append(j)
            mass += float(shares[row, j])
        assert chosen == set(taken) | set(near[row % near.shape[0]].nonzero().flatten().tolist())
        sizes.append(len(taken))
    assert min(sizes) >= floor and max(sizes) > floor, "the test must exercise both the floor and the top-p cut"


def test_without_any_compensation_the_method_is_topk_at_equal_density():
    """Keys spread far around near-zero block means: GAPR compensates nothing, so the output is topk's."""
    gen = torch.Generator().manual_seed(13)
    q, k, v, layout = call_inputs(gen, grid=(1, 8, 16))
    offsets = torch.linspace(-0.02, 0.02, 8).repeat_interleave(16)[None, :, None, None]
    spread = torch.randn(k.shape, generator=gen) * 5
    spread = spread - spread.view(1, 8, 16, *k.shape[2:]).mean(2).repeat_interleave(16, 1)
    options = dict(density=0.25, block_size=16, tile=(1, 4, 4))
    topk = TopKAttention(TopKConfig(**options))
    ctx = standalone_context(layout, topk.config)
    tiled = topk.route(q, k, v, ctx).q_rows.long()  # keys grouped by key block in tile order
    k_blocks = k.clone()
    k_blocks[:, tiled] = offsets.expand(1, 128, *k.shape[2:]) + spread
    rectified = RectifiedAttention(RectifiedConfig(neighbours=False, **options))
    assert torch.equal(rectified(q, k_blocks, v, ctx), topk(q, k_blocks, v, ctx))
    assert not torch.allclose(rectified(q, k, v, ctx), topk(q, k, v, ctx), atol=1e-3)


@pytest.mark.parametrize("per_row", [True, False])
def test_method_matches_its_float64_definition_with_padded_text(per_row):
    gen = torch.Generator().manual_seed(14)
    method, qkv, ctx, routing, blocks = routed_call({"per_row": per_row, "top_p": 0.4}, gen, text=24)
    out = method(*qkv, ctx)[:, :192]  # video rows (a standalone call has no mask for the padded text queries)
    expected = method.reference(*qkv, ctx)[:, :192]
    assert float((out.double() - expected).abs().max() / expected.abs().max()) < 1e-5
    exact, _ = method.attend(routing, blocks, ctx)
    assert (out.transpose(1, 2) - exact[:, :, :192]).abs().max() > 1e-2, "the output must be rectified"


@pytest.mark.parametrize("per_row", [True, False])
def test_block_map_names_exact_pooled_and_dropped_blocks(per_row):
    gen = torch.Generator().manual_seed(15)
    method, _, ctx, routing, blocks = routed_call({"per_row": per_row, "density": 0.25}, gen, text=8)
    codes = method.block_map(routing, blocks, ctx)
    assert method.map_legend() == {0: "dropped", 1: "pooled", 2: "exact"} and codes.dtype == torch.uint8
    assert torch.equal(codes == 2, block_mask_from_lists(blocks.indices, blocks.counts, blocks.num_key_blocks))
    assert (codes == 1).any() and (codes == 0).any()
    if not per_row:  # a query block's rows are rescaled exactly when one of its blocks is pooled
        keep, _ = rectified_row_weights(routing.q, *routing.stats, blocks.indices, blocks.counts, block_q=16,
                                        block_k=16, key_len=192, scale=routing.scale, per_row=False,
                                        q_rows=routing.q_rows)  # fmt: skip
        assert torch.equal((keep[:, :, ::16] < 1), (codes == 1).any(-1))


def test_options_and_family_defaults():
    assert RectifiedConfig().block_size == (128, 128) and RectifiedConfig().per_row is False
    defaults = {f: RectifiedConfig().for_family(f) for f in ("wan", "hunyuan_video", "flux", None)}
    assert [c.drop_rate for c in defaults.values()] == [0.75, 0.8, 0.9, 0.75]
    assert (defaults["wan"].dense_layers, defaults["wan"].dense_steps) == (2, 0.1)
    assert (defaults["flux"].dense_layers, defaults["flux"].dense_steps) == (0, 0)
    assert RectifiedConfig(drop_rate=0.5).for_family("flux").drop_rate == 0.5
    assert RectifiedAttention(RectifiedConfig()).config.drop_rate == 0.75  # built outside apply()
    for bad, message in [
        ({"top_p": 0.0}, r"top_p must be in \(0.0, 1.0\]"),
        ({"drop_rate": 1.0}, r"drop_rate must be in \[0.0, 1.0\) \(1.0 would keep no block\)"),
        ({"drop_rate": -0.1}, r"drop_rate must be in \[0.0, 1.0\]"),
        ({"density": 1.5}, r"density must be in \(0.0, 1.0\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            RectifiedConfig(**bad)
    with pytest.raises(TypeError, match="per_row must be True or False"):
        RectifiedConfig(per_row=1)
    with pytest.raises(TypeError, match=r"unknown option.*neighbours"):
        RectifiedConfig.from_options(neighbors=True)
    assert isinstance(RectifiedConfig(), MethodConfig)
