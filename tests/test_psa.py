"""PSA: the KV pyramid, sampled importance, level assignment, the multi-level kernel (Triton under the
interpreter) against float64 definitions, the Hilbert order, level-map capture and options."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import FAMILIES, run

import dit_accel
from dit_accel.bench import standalone_context
from dit_accel.hilbert import curve_rows, hilbert_permutation, tiles_along_curve
from dit_accel.kernels import keep_count
from dit_accel.kernels.pyramid import pyramid_triton
from dit_accel.kernels.pyramid_attention import PyramidKernelConfig, pyramid_attention_triton
from dit_accel.kernels.pyramid_importance import importance_triton
from dit_accel.kernels.pyramid_levels import (
    EIGHTHS,
    allowed_levels,
    budget_counts,
    cap_levels,
    level_lists_reference,
    lists_from_level_map,
    min_full_count,
    quota_counts,
    quota_levels,
    threshold_levels,
)
from dit_accel.kernels.pyramid_ops import kv_pyramid, pyramid_attention, pyramid_importance, pyramid_level_lists
from dit_accel.kernels.pyramid_reference import (
    importance_reference,
    level_offset,
    pyramid_attention_reference,
    pyramid_reference,
)
from dit_accel.kernels.pyramid_select import level_lists_triton
from dit_accel.layout import TokenLayout
from dit_accel.methods.psa import MAP_LEGEND, PSAConfig
from dit_accel.registry import build_config, method_for
from dit_accel.tiling import tile_permutation


def bhsd(gen: torch.Generator, b: int, s: int, h: int, d: int, dtype=torch.float32) -> torch.Tensor:
    """A (B, H, S, D) view of a (B, S, H, D) tensor, as Diffusers hands attention its inputs."""
    return torch.randn(b, s, h, d, generator=gen).to(dtype).transpose(1, 2)


def pooled_definition(x: torch.Tensor, block_k: int, key_len: int, level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Level-``level`` keys of x by an explicit loop: ``(means, counts)``; a group with no real token is 0."""
    pool = 2 ** (level - 1)
    groups = math.ceil(key_len / block_k) * block_k // pool
    means = torch.zeros(*x.shape[:2], groups, x.shape[3], dtype=torch.float64)
    counts = torch.zeros(groups, dtype=torch.float64)
    for g in range(groups):
        tokens = [t for t in range(g * pool, (g + 1) * pool) if t < key_len]
        counts[g] = len(tokens)
        if tokens:
            means[:, :, g] = x[:, :, tokens].double().mean(2)
    return means, counts


# --- the KV pyramid --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "heads", "seq", "dim", "block_k", "dtype"),
    [
        (1, 2, 45, 16, 16, torch.float32),
        (2, 3, 70, 24, 32, torch.float32),
        (1, 1, 37, 32, 16, torch.float16),
        (1, 2, 29, 16, 8, torch.float32),
    ],  # block_k 8: rows padded to the tensor cores' 16
)
def test_pyramid_matches_its_definition_with_ragged_blocks(batch, heads, seq, dim, block_k, dtype):
    gen = torch.Generator().manual_seed(seq + dim)
    k, v = bhsd(gen, batch, seq + 5, heads, dim, dtype), bhsd(gen, batch, seq + 5, heads, dim, dtype)
    k[:, :, : block_k // 2] += 3 * k[:, :, :1]  # similar keys in the first block
    pk, pv, sim = pyramid_triton(k, v, block_k, seq, with_sim=True)  # the 5 rows past seq must be ignored
    rk, rv, rsim = pyramid_reference(k.double(), v.double(), block_k, seq, with_sim=True)
    nk = math.ceil(seq / block_k)
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    for level in range(2, 5):
        rows = slice(level_offset(level, nk, block_k), level_offset(level + 1, nk, block_k))
        for got, x in ((pk, k), (pv, v), (rk, k), (rv, v)):
            want, _ = pooled_definition(x, block_k, seq, level)
            torch.testing.assert_close(got[:, :, rows].double(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(sim.double(), rsim, rtol=1e-5, atol=1e-5)
    last = k[..., (nk - 1) * block_k : seq, :].double()  # the ragged block's similarity at level 2 (gap 2)
    cos = torch.nn.functional.cosine_similarity(last[..., :-2, :], last[..., 2:, :], dim=-1)
    torch.testing.assert_close(rsim[:, :, -1, 0], cos.mean(-1), rtol=1e-6, atol=1e-6)
    assert (sim[:, :, 0, 0] > sim[:, :, 1:, 0].max()).all()


# --- importance ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seq", "dim", "block_q", "block_k", "samples", "gathered"),
    [(45, 16, 16, 16, 4, False), (70, 24, 32, 16, 8, True), (37, 32, 16, 32, 1, True), (100, 16, 16, 16, 16, False)],
)
def test_importance_matches_its_definition(seq, dim, block_q, block_k, samples, gathered):
    gen = torch.Generator().manual_seed(seq * 7 + samples)
    q, k = bhsd(gen, 2, seq + 3, 3, dim), bhsd(gen, 2, seq, 3, dim)
    rows = (torch.randperm(seq, generator=gen) + 3).to(torch.int32) if gathered else None
    q_in = q if gathered else q[:, :, :seq]
    got = importance_triton(q_in, k, block_q, block_k, seq, dim**-0.5, samples, rows)
    ref = importance_reference(q_in.double(), k.double(), block_q, block_k, seq, dim**-0.5, samples, rows)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    logical = rows.long() if gathered else torch.arange(seq)
    i = 1  # one row by the definition (the last key block is ragged)
    n_q = min(block_q, seq - i * block_q)
    picked_q = logical[[i * block_q + (2 * s + 1) * n_q // (2 * samples) for s in range(samples)]]
    best = []
    for j in range(math.ceil(seq / block_k)):
        n_k = min(block_k, seq - j * block_k)
        picked_k = [j * block_k + (2 * s + 1) * n_k // (2 * samples) for s in range(samples)]
        logits = q_in[:, :, picked_q].double() @ k[:, :, picked_k].double().transpose(-1, -2) * dim**-0.5
        best.append(logits.amax((-1, -2)))
    best = torch.stack(best, dim=-1)
    torch.testing.assert_close(ref[:, :, i], torch.exp(best - best.amax(-1, keepdim=True)), rtol=1e-12, atol=1e-12)


# --- the multi-level kernel ------------------------------------------------------------------------


def definition(q, k, v, level_map, block_q, block_k, key_len, scale, q_rows=None, extra=None):
    """Per query row, by loops: softmax over the keys of each listed (block, level) (pooled by an
    explicit mean, logit bias log(count)) and the valid extra keys. Float64 ``(out, lse)`` of the rows."""
    rows = torch.arange(q.shape[2]) if q_rows is None else q_rows.long()
    pooled = {lvl: pooled_definition(k, block_k, key_len, lvl) for lvl in range(2, 5)}
    pooled_v = {lvl: pooled_definition(v, block_k, key_len, lvl)[0] for lvl in range(2, 5)}
    out = torch.zeros(*q.shape[:2], rows.numel(), q.shape[3], dtype=torch.float64)
    lse = torch.full((*q.shape[:2], rows.numel()), -math.inf, dtype=torch.float64)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for r in range(rows.numel()):
                keys, values, bias = [], [], []
                for j in range(level_map.shape[-1]):
                    lvl = int(level_map[b, h, r // block_q, j])
                    if lvl == 1:
                        tokens = range(j * block_k, min(key_len, (j + 1) * block_k))
                        keys += [k[b, h, t].double() for t in tokens]
                        values += [v[b, h, t].double() for t in tokens]
                        bias += [0.0] * len(tokens)
                    elif lvl > 1:
                        per_block = block_k >> (lvl - 1)
                        means, counts = pooled[lvl]
                        for g in range(j * per_block, (j + 1) * per_block):
                            if counts[g] > 0:
                                keys.append(means[b, h, g])
                                values.append(pooled_v[lvl][b, h, g])
                                bias.append(math.log(counts[g]))
                if extra is not None:
                    for t in range(int(extra[2][b]) if extra[2] is not None else extra[0].shape[2]):
                        keys.append(extra[0][b, h, t].double())
                        values.append(extra[1][b, h, t].double())
                        bias.append(0.0)
                if not keys:
                    continue
                logits = torch.stack(keys) @ q[b, h, rows[r]].double() * scale + torch.tensor(bias, dtype=torch.float64)
                lse[b, h, r] = torch.logsumexp(logits, 0)
                out[b, h, r] = torch.softmax(logits, 0) @ torch.stack(values)
    return out, lse


def random_level_map(gen, shape, only: int | None = None) -> torch.Tensor:
    """Random levels (0..4), or a random subset at level ``only``; every map has an empty row."""
    if only is None:
        level_map = torch.randint(0, 5, shape, generator=gen)
    else:
        level_map = torch.where(torch.rand(shape, generator=gen) < 0.6, only, 0)
    level_map[0, 0, 0] = 0
    return level_map.to(torch.int8)


KERNEL_CASES = [
    # batch, heads, seq, dim, block_q, block_k, tile, level (None: mixed), text keys, dtype
    (1, 2, 45, 16, 16, 16, 16, 1, 0, torch.float32),
    (1, 2, 45, 16, 16, 16, 16, 2, 0, torch.float32),
    (2, 1, 53, 32, 16, 32, 16, 3, 3, torch.float32),
    (1, 2, 45, 16, 16, 16, 64, 4, 0, torch.float32),  # 2-key pooled blocks in 64-key tiles
    (2, 3, 70, 24, 32, 32, 16, None, 5, torch.float32),  # D = 24, ragged last blocks
    (1, 1, 77, 32, 16, 64, 32, None, 0, torch.float32),  # blocks larger than a tile
    (2, 2, 37, 16, 16, 16, 32, None, 4, torch.float16),
]


@pytest.mark.parametrize(("batch", "heads", "seq", "dim", "bq", "bk", "tile", "level", "text", "dtype"), KERNEL_CASES)
def test_kernel_matches_float64_definition(batch, heads, seq, dim, bq, bk, tile, level, text, dtype):
    gen = torch.Generator().manual_seed(seq * 13 + tile + (level or 0))
    q = bhsd(gen, batch, seq + 3, heads, dim, dtype)  # three rows the kernel must leave alone
    k, v = bhsd(gen, batch, seq, heads, dim, dtype), bhsd(gen, batch, seq, heads, dim, dtype)
    rows = (torch.randperm(seq, generator=gen) + 3).to(torch.int32)
    level_map = random_level_map(gen, (batch, heads, math.ceil(seq / bq), math.ceil(seq / bk)), level)
    blocks = lists_from_level_map(level_map, bq, bk, seq)
    pk, pv, _ = pyramid_reference(k, v, bk, seq)
    extra = None
    if text:
        extra = (bhsd(gen, batch, text, heads, dim, dtype), bhsd(gen, batch, text, heads, dim, dtype),
                 torch.randint(0, text + 1, (batch,), generator=gen, dtype=torch.int32))  # fmt: skip
    text_args = dict(zip(("extra_k", "extra_v", "extra_valid"), extra, strict=True)) if extra else {}
    out, lse = pyramid_attention_triton(
        q, k, v, pk, pv, blocks.indices, blocks.level_counts, block_q=bq, block_k=bk, key_len=seq,
        scale=dim**-0.5, q_rows=rows, config=PyramidKernelConfig(tile=tile), **text_args,
    )  # fmt: skip
    want_out, want_lse = definition(q, k, v, level_map, bq, bk, seq, dim**-0.5, rows, extra)
    tol = 2e-5 if dtype == torch.float32 else 3e-3
    torch.testing.assert_close(out[:, :, rows.long()].double(), want_out, rtol=tol, atol=tol)
    torch.testing.assert_close(lse[:, :, rows.long()].double(), want_lse, rtol=1e-5, atol=1e-4)
    assert torch.isneginf(lse[:, :, :3]).all()
    if not text:
        assert torch.isneginf(lse[0, 0, rows[:bq].long()]).all()  # the empty row
    pk64, pv64, _ = pyramid_reference(k.double(), v.double(), bk, seq)
    ref_out, ref_lse = pyramid_attention_reference(
        q.double(), k.double(), v.double(), pk64, pv64, blocks.indices, blocks.level_counts,
        bq, bk, seq, dim**-0.5, rows, *(x.double() if x.is_floating_point() else x for x in extra or ()),
    )  # fmt: skip
    torch.testing.assert_close(ref_out[:, :, rows.long()], want_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ref_lse[:, :, rows.long()], want_lse, rtol=1e-10, atol=1e-10)


def test_ops_pass_opcheck():
    gen = torch.Generator().manual_seed(5)
    q, k, v = (bhsd(gen, 1, 40, 2, 16) for _ in range(3))
    pk, pv, sim = kv_pyramid(k, v, 16, 40, True)
    torch.library.opcheck(kv_pyramid, (k, v, 16, 40, True))
    torch.library.opcheck(pyramid_importance, (q, k, 16, 16, 40, 0.25, 4, None))
    blocks = lists_from_level_map(random_level_map(gen, (1, 2, 3, 3)), 16, 16, 40)
    args = (q, k, v, pk, pv, blocks.indices, blocks.level_counts, 16, 16, 40, 0.25)
    torch.library.opcheck(pyramid_attention, args)
    torch.library.opcheck(pyramid_level_lists, (torch.rand(1, 2, 3, 9, generator=gen), [2, 1, 3, 1], None, 0))
    torch.library.opcheck(pyramid_level_lists, (torch.rand(1, 2, 3, 9, generator=gen), None, [0.3, 0.5, 0.6, 0.9], 2))
    assert sim.shape == (1, 2, 3, 3)


# --- level assignment ------------------------------------------------------------------------------


def test_thresholds_and_min_full():
    importance = torch.tensor([1.0, 8.0, 2.0, 1.0, 4.0])[None, None, None]  # mass 1/16, 1/2, 1/8, 1/16, 1/4
    # preceding mass by rank: 0, 0.5, 0.75, 0.875, 0.9375 -> levels 1, 3, 4, skip, skip
    levels = threshold_levels(importance, (0.4, 0.5, 0.6, 0.8), min_full=0.0)
    assert levels.flatten().tolist() == [0, 1, 4, 0, 3]
    levels = threshold_levels(importance, (0.4, 0.5, 0.6, 0.8), min_full=0.4)  # 2 of 5 blocks at level 1
    assert levels.flatten().tolist() == [0, 1, 4, 0, 1]
    levels = threshold_levels(importance, (0.55, 0.7, 0.8, 0.9), min_full=0.0)  # ties keep their order
    assert levels.flatten().tolist() == [4, 1, 3, 0, 1]


def test_quotas_by_rank():
    gen = torch.Generator().manual_seed(0)
    importance = torch.rand(2, 3, 4, 50, generator=gen)
    counts = quota_counts(50, (0.06, 0.1, 0.2, 0.3), min_full=0.1)
    assert counts == (5, 5, 10, 15)
    levels = quota_levels(importance, counts)
    for lvl, n in enumerate(counts, start=1):
        assert ((levels == lvl).sum(-1) == n).all()
    ranked = levels.gather(-1, importance.argsort(-1, descending=True))
    assert (ranked[..., :5] == 1).all() and (ranked[..., 35:] == 0).all()
    assert (ranked.diff(dim=-1)[..., :34] >= 0).all()  # coarser down the ranking
    assert quota_counts(10, (0.5, 0.5, 0.5, 0.0), 0.0) == (5, 5, 0, 0)  # never more than all blocks


@pytest.mark.parametrize("quotas", [(0.06, 0.06, 0.12, 0.24), (0.1, 0.0, 0.3, 0.0), (0.02, 0.2, 0.2, 0.5)])
def test_density_budget_is_exact(quotas):
    for nk in (1, 2, 7, 19, 64, 81, 300, 512):
        for density in (0.03, 0.1, 0.125, 0.25, 0.5, 0.9):
            budget = keep_count(nk, density, 1)
            counts = budget_counts(nk, budget, quotas, 0.06)
            assert sum(n * c for n, c in zip(counts, EIGHTHS, strict=True)) == 8 * budget, (nk, density, counts)
            assert sum(counts) <= nk and min(counts) >= 0
            assert counts[0] >= min(budget, min_full_count(nk, 0.06))


def random_importance(gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """PSA-like importance in [0, 1]: exp of minus a spread, quantised so that rows hold ties, some zeros."""
    importance = torch.exp(-torch.rand(shape, generator=gen) * 30.0)
    importance = (importance * 16).round() / 16  # ties (and zeros) that the ranking must break by index
    return importance.masked_fill(torch.rand(shape, generator=gen) < 0.05, 1.0)


@pytest.mark.parametrize("nk", [1, 5, 37, 70])
@pytest.mark.parametrize(
    "rule",
    [
        {"quotas": (0.0, 0.0, 0.0, 0.0)},  # one level-1 block (min_full), the rest skipped
        {"quotas": (0.06, 0.04, 0.12, 0.4)},
        {"quotas": (0.0, 0.0, 0.0, 1.0)},
        {"thresholds": [0.4, 0.5, 0.6, 0.8], "full_ranks": 0},
        {"thresholds": [0.2, 0.3, 0.9, 1.0], "full_ranks": 3},
    ],
)
def test_level_lists_kernel_matches_its_definition(nk, rule):
    gen = torch.Generator().manual_seed(nk)
    importance = random_importance(gen, (1, 2, 3, nk))
    if "quotas" in rule:
        rule = {"counts": list(quota_counts(nk, rule["quotas"], 0.0))}
    indices, level_counts = level_lists_triton(importance, **rule)
    want_indices, want_counts = level_lists_reference(importance, **rule)
    assert torch.equal(level_counts, want_counts)
    assert torch.equal(indices, want_indices)
    assert level_counts.sum(-1).max() > 0


def test_level_lists_on_threshold_boundaries():
    """Mass landing exactly on a threshold (0.6 before the second block; uniform rows hit 0.4, 0.6,
    0.8): compared in float64 on both sides, as the reference does."""
    rows = [[0.6, 0.4, 0.0, 0.0, 0.0], [1.0] * 5, [0.25] * 5]
    importance = torch.tensor(rows)[None, None]
    rule = {"thresholds": [0.4, 0.5, 0.6, 0.8], "full_ranks": 0}
    indices, level_counts = level_lists_triton(importance, **rule)
    want_indices, want_counts = level_lists_reference(importance, **rule)
    assert torch.equal(level_counts, want_counts) and torch.equal(indices, want_indices)
    assert level_counts[0, 0, 1].tolist() == [2, 1, 0, 1]  # before = 0, 0.2, 0.4, 0.6, 0.8


def test_level_lists_reject_bad_rules():
    importance = torch.rand(1, 1, 2, 8)
    for rule in ({}, {"counts": [1, 1, 1, 1], "thresholds": [0.1, 0.2, 0.3, 0.4]}):
        with pytest.raises(ValueError, match="exactly one"):
            level_lists_triton(importance, **rule)
        with pytest.raises(ValueError, match="exactly one"):
            level_lists_reference(importance, **rule)
    with pytest.raises(ValueError, match="one per level"):
        level_lists_triton(importance, counts=[1, 2, 3])
    with pytest.raises(ValueError, match="fp32/fp16/bf16"):
        level_lists_triton(importance.double(), counts=[1, 1, 1, 1])


def test_similarity_cap_lowers_levels_to_the_coarsest_allowed():
    sim = torch.tensor([[0.9, 0.9, 0.9], [0.9, 0.5, 0.62], [0.5, 0.9, 0.9], [0.9, 0.9, 0.59]])[None, None]
    allowed = allowed_levels(sim, (0.7, 0.65, 0.6))
    level_map = torch.tensor([[4, 4, 4, 4], [3, 3, 2, 0], [1, 2, 3, 4]], dtype=torch.int8)[None, None]
    capped = cap_levels(level_map, allowed)
    assert capped[0, 0].tolist() == [[4, 4, 4, 3], [3, 2, 1, 0], [1, 2, 3, 3]]


def test_lists_round_trip_and_compute():
    gen = torch.Generator().manual_seed(1)
    level_map = random_level_map(gen, (2, 3, 5, 9))
    blocks = lists_from_level_map(level_map, 16, 16, 140)
    assert torch.equal(blocks.level_map(), level_map)
    first = blocks.indices[0, 0, 1, : blocks.level_counts[0, 0, 1, 0]]
    assert (level_map[0, 0, 1, first.long()] == 1).all() and (first.diff() > 0).all()
    weights = torch.tensor([0, 1.0, 0.5, 0.25, 0.125], dtype=torch.float64)
    torch.testing.assert_close(blocks.compute(), weights[level_map.long()].sum(-1))


def routed_call(method_name: str, options: dict, seed: int = 0, grid=(3, 9, 11), text: int = 5):
    """One HunyuanVideo-like call (video then text) of a method outside a model: ``(method, ctx, q, k, v)``."""
    gen = torch.Generator().manual_seed(seed)
    video = math.prod(grid)
    layout = TokenLayout(seq_len=video + text, video_start=0, video_len=video, grid=grid, text_start=video,
                         text_len=text)  # fmt: skip
    config = build_config(method_name, **options)
    q, k, v = (torch.randn(1, video + text, 2, 16, generator=gen) for _ in range(3))
    return method_for(config), standalone_context(layout, config), q, k, v


@pytest.mark.parametrize("density", [0.125, 0.25, 0.5])
def test_psa_at_a_density_computes_what_topk_computes(density):
    psa, ctx, q, k, v = routed_call("psa", {"density": density, "block_size": 16})
    topk, topk_ctx, *_ = routed_call("topk", {"density": density, "block_size": 16})
    blocks = psa.select(psa.route(q, k, v, ctx), ctx)
    kept = topk.select(topk.route(q, k, v, topk_ctx), topk_ctx)
    assert blocks.density() == pytest.approx(kept.density(), abs=1e-12)
    assert (blocks.level_counts[..., 1:].sum(-1) > 0).all()  # pooled levels are used
    assert torch.isfinite(psa(q, k, v, ctx)).all()


# --- token order -----------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(3, 9, 11), (5, 7, 3), (2, 6, 10), (1, 9, 11), (4, 4, 4), (1, 1, 7), (9, 24, 24)])
def test_hilbert_order_is_a_permutation_of_unit_steps(grid):
    order = hilbert_permutation(grid)
    assert torch.equal(order.sort().values, torch.arange(math.prod(grid)))
    t, rest = order // (grid[1] * grid[2]), order % (grid[1] * grid[2])
    coords = torch.stack([t, rest // grid[2], rest % grid[2]], dim=1)
    assert ((coords[1:] - coords[:-1]).abs().sum(1) == 1).all()
    tiled = tiles_along_curve(grid, (2, 4, 4))
    assert torch.equal(tiled.sort().values, torch.arange(math.prod(grid)))


def test_curve_rows_follow_the_current_token_order():
    grid, tile = (3, 9, 11), (1, 4, 4)
    rows = curve_rows(7, grid, "hilbert", tile, "cpu", source_tile=tile)
    now = tile_permutation(grid, tile)  # raster index of the token at each current position
    assert torch.equal(now[rows.long() - 7], hilbert_permutation(grid))


# --- the method ------------------------------------------------------------------------------------


def test_block_map_shows_the_levels():
    model = FAMILIES["wan"][0]()
    with dit_accel.apply(model, "psa", block_size=16, dense_steps=0) as handle:
        handle.capture_block_map(layer=1, step=0)
        run(model, FAMILIES["wan"][1]())
        block_map = handle.block_map
    assert block_map.codes.shape == (1, 2, 19, 19) and block_map.legend == MAP_LEGEND
    codes = block_map.codes
    assert (codes == 4).any() and ((codes > 0) & (codes < 4)).any()  # exact and pooled blocks
    picture, colours = block_map.picture(head=1, cell=3), block_map.legend_colours()
    assert picture.shape == (57, 57, 3)
    for i, j in ((0, 0), (5, 11), (18, 3)):
        assert tuple(picture[3 * i + 1, 3 * j + 2]) == colours[MAP_LEGEND[int(codes[0, 1, i, j])]]
    level_map = random_level_map(torch.Generator().manual_seed(2), (1, 2, 3, 4))
    blocks = lists_from_level_map(level_map, 16, 16, 60)
    codes = handle.method.block_map(None, blocks, None)
    assert codes.dtype == torch.uint8 and torch.equal(codes.long(), torch.where(level_map > 0, 5 - level_map.long(), 0))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"thresholds": (0.5, 0.4, 0.6, 0.8)}, "thresholds must be ascending"),
        ({"thresholds": (0.4, 0.5)}, "thresholds must be 4 numbers"),
        ({"quotas": (0.5, 0.5, 0.5, 0.5)}, "quotas must sum"),
        ({"min_full": 1.5}, r"min_full must be in \[0.0, 1.0\]"),
        ({"sim_cap": True, "density": 0.1}, "sim_cap cannot be combined with density"),
        ({"samples": 6}, "samples must be a power of two"),
        ({"order": "zigzag"}, "order must be one of 'hilbert', 'hilbert_tiles', 'tiles'"),
        ({"sim_thresholds": (0.7, 2.0, 0.6)}, r"sim_thresholds must be in \[-1.0, 1.0\]"),
    ],
)
def test_bad_options_name_the_allowed_values(options, message):
    with pytest.raises(ValueError, match=message):
        PSAConfig(**options)


def test_order_tiles_keeps_the_per_forward_tile_reorder():
    tiles, ctx, q, k, v = routed_call("psa", {"order": "tiles", "block_size": 16, "density": 0.5})
    curve, curve_ctx, *_ = routed_call("psa", {"order": "hilbert", "block_size": 16, "density": 0.5})
    assert tiles.token_order(ctx) is None and tiles.route(q, k, v, ctx).q_rows is not None
    rows = curve.route(q, k, v, curve_ctx).q_rows
    assert torch.equal(rows.long(), hilbert_permutation((3, 9, 11)))
