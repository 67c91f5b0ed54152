"""SVG-EAR: k-means (Triton step, warm starts), cluster order, error probe, routing budget, centroid
tail, and the method on CFG-batched and text-carrying calls against its float64 definition."""

from __future__ import annotations

import math

import pytest
import torch

from dit_accel.bench import standalone_context
from dit_accel.config import ceil_fraction
from dit_accel.kernels import reference
from dit_accel.kernels.centroid_attention import centroid_attention_triton
from dit_accel.kernels.cluster_coverage import uncovered_counts_triton
from dit_accel.kernels.cluster_sums import cluster_sums_triton
from dit_accel.kernels.clustering import (
    cluster_order,
    clusters_from_labels,
    gather_rows,
    kmeans,
    scatter_rows,
    spread_centroids,
)
from dit_accel.kernels.error_probe import error_probe_triton
from dit_accel.kernels.error_selection import always_count, select_by_rank
from dit_accel.kernels.kmeans_assign import kmeans_assign_triton
from dit_accel.kernels.row_permute import permute_rows_triton
from dit_accel.kernels.svg_ear_ops import permute_rows, uncovered_counts
from dit_accel.kernels.svg_ear_reference import (
    centroid_attention_reference,
    cluster_sums_reference,
    error_probe_reference,
    kmeans_assign_reference,
    segment_counts,
    segment_sums,
)
from dit_accel.layout import TokenLayout
from dit_accel.methods.svg_ear import KMeansState, SVGEARAttention, SVGEARConfig, cluster_count


def blobs(gen: torch.Generator, batch=2, heads=3, seq=150, dim=24, centers=6, spread=0.3, dtype=torch.float32):
    """Rows scattered around a few random centres per (batch, head): clusterable data."""
    middle = torch.randn(batch, heads, centers, dim, generator=gen, dtype=torch.float64) * 2
    pick = torch.randint(0, centers, (batch, heads, seq), generator=gen)
    rows = middle.gather(2, pick[..., None].expand(-1, -1, -1, dim))
    return (rows + spread * torch.randn(rows.shape, generator=gen, dtype=torch.float64)).to(dtype)


def lloyd(x: torch.Tensor, centroids: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Textbook k-means in float64, one (batch, head) at a time: argmin distance, then means."""
    x, centroids = x.double(), centroids.double().clone()
    labels = torch.empty(x.shape[:3], dtype=torch.long)
    for _ in range(iterations):
        for b in range(x.shape[0]):
            for h in range(x.shape[1]):
                labels[b, h] = torch.cdist(x[b, h], centroids[b, h]).argmin(dim=-1)
                for c in range(centroids.shape[2]):
                    members = x[b, h][labels[b, h] == c]
                    if len(members):
                        centroids[b, h, c] = members.mean(dim=0)
    return labels, centroids


def inertia(x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> float:
    chosen = centroids.double().gather(2, labels.long()[..., None].expand(-1, -1, -1, x.shape[-1]))
    return float(((x.double() - chosen) ** 2).sum())


# --- k-means -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_assignment_step_matches_the_float64_reference(dtype):
    gen = torch.Generator().manual_seed(0)
    x = blobs(gen, seq=150, dim=24, dtype=dtype)
    centroids = spread_centroids(x, 70)  # two centroid tiles
    centroids[..., -1, :] = 64.0  # far from every row: stays empty
    labels = kmeans_assign_triton(x.transpose(1, 2).contiguous().transpose(1, 2), centroids)
    assert labels.dtype == torch.int32 and torch.equal(labels, kmeans_assign_reference(x.double(), centroids.double()))
    assert (labels != 0).any() and (labels != 69).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_cluster_sums_match_the_sums_by_label(dtype):
    """Sorted-segment sums: a cluster longer than a row tile, empty clusters, a ragged cluster tile."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 173, 24, generator=gen).to(dtype)
    values = torch.randn(x.shape, generator=gen).to(dtype)
    labels = torch.randint(0, 37, x.shape[:3], generator=gen, dtype=torch.int32)
    labels[0, 1, :90] = 3  # 90+ rows: several 16-row tiles of one cluster
    labels[..., 5] = 36
    labels[labels == 7] = 8  # cluster 7 empty everywhere
    order, counts = cluster_order(labels, 37)
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)
    sums, value_sums = cluster_sums_triton(strided, order, counts, values, block_clusters=16, block_rows=16)
    torch.testing.assert_close(sums.double(), segment_sums(x.double(), labels, 37), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(value_sums.double(), segment_sums(values.double(), labels, 37), rtol=1e-5, atol=1e-4)
    ref_sums, ref_values = cluster_sums_reference(x.double(), order, counts, values.double())
    torch.testing.assert_close(ref_sums, segment_sums(x.double(), labels, 37))
    torch.testing.assert_close(ref_values, segment_sums(values.double(), labels, 37))
    assert (sums[..., 7, :] == 0).all() and cluster_sums_triton(x, order, counts)[1] is None


def test_kmeans_equals_textbook_lloyd_from_the_same_start():
    gen = torch.Generator().manual_seed(1)
    x = blobs(gen, batch=2, heads=2, seq=97, dim=8, centers=5)
    start = spread_centroids(x, 5)
    result = kmeans(x, start, 6)
    labels, centroids = lloyd(x, start, 6)
    assert torch.equal(result.labels.long(), labels)
    torch.testing.assert_close(result.centroids.double(), centroids, rtol=1e-5, atol=1e-5)
    assert torch.equal(result.counts, torch.stack([(labels == c).sum(-1) for c in range(5)], -1).int())
    # the centroids are the means of the returned clusters
    torch.testing.assert_close(clusters_from_labels(x, result.labels, 5).centroids, result.centroids)


def test_warm_start_keeps_converged_centroids_and_needs_fewer_iterations():
    gen = torch.Generator().manual_seed(2)
    x = blobs(gen, batch=1, heads=2, seq=200, dim=8, centers=8, spread=0.6)
    converged = kmeans(x, spread_centroids(x, 8), 50)
    again = kmeans(x, converged.centroids, 2)
    assert torch.equal(again.labels, converged.labels)
    torch.testing.assert_close(again.centroids, converged.centroids)
    drifted = x + 0.05 * torch.randn(x.shape, generator=gen)  # the next denoising step
    warm = kmeans(drifted, converged.centroids, 2)
    cold = kmeans(drifted, spread_centroids(drifted, 8), 2)
    best = kmeans(drifted, spread_centroids(drifted, 8), 50)
    warm_cost, cold_cost = inertia(drifted, warm.labels, warm.centroids), inertia(drifted, cold.labels, cold.centroids)
    assert warm_cost <= inertia(drifted, best.labels, best.centroids) * 1.02 and warm_cost < 0.9 * cold_cost


def test_layer_state_runs_first_iterations_once_and_restarts_on_a_new_shape(monkeypatch):
    from dit_accel.kernels import clustering

    calls = []
    real = clustering.kmeans_assign
    monkeypatch.setattr(clustering, "kmeans_assign", lambda *a: calls.append(1) or real(*a))
    gen = torch.Generator().manual_seed(3)
    x = blobs(gen, batch=2, heads=2, seq=60, dim=8)
    state = KMeansState()

    def iterations(rows):
        calls.clear()
        state.clusters("k", rows, 4, 7, 2)
        return len(calls)

    assert iterations(x) == 7 and iterations(x) == 2
    assert state.k_centroids.shape == (2, 2, 4, 8) and "k_centroids" not in state.state_dict()
    assert iterations(x[:1]) == 7 and iterations(x[:1]) == 2  # a new batch size starts afresh


def test_cluster_order_is_stable_and_its_inverse_exact():
    gen = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 5, (2, 3, 41), generator=gen, dtype=torch.int32)
    order, counts = cluster_order(labels, 6)
    assert torch.equal(counts, segment_counts(labels, 6)) and (counts[..., 5] == 0).all()
    ordered = labels.gather(2, order)
    assert (ordered[..., 1:] >= ordered[..., :-1]).all()
    same = ordered[..., 1:] == ordered[..., :-1]
    assert (order[..., 1:][same] > order[..., :-1][same]).all()  # original order inside a cluster
    x = torch.randn(2, 3, 41, 24, generator=gen)
    moved = gather_rows(x, order)
    assert torch.equal(moved[0, 1, 7], x[0, 1, order[0, 1, 7]])
    assert torch.equal(scatter_rows(moved, order), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_row_permutation_kernel_matches_gather_and_scatter(dtype):
    """Triton rows in cluster order and back, from Diffusers' (B, S, H, D) layout seen as (B, H, S, D)."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 45, 3, 40, generator=gen).to(dtype).transpose(1, 2)  # odd rows, D padded to 64
    order = torch.argsort(torch.rand(2, 3, 45, generator=gen), dim=-1)
    moved = permute_rows_triton(x, order, inverse=False, block_rows=16)
    assert moved.is_contiguous() and torch.equal(moved, x.gather(2, order[..., None].expand(-1, -1, -1, 40)))
    back = permute_rows_triton(moved, order.int(), inverse=True, block_rows=16)
    assert torch.equal(back, x)
    with pytest.raises(ValueError, match="order must be"):
        permute_rows_triton(x, order[:, :, :-1], inverse=False)


def test_row_permutation_op_passes_opcheck_and_back_propagates():
    """The custom op's schema, fake and autograd registration (opcheck), and gradients equal to torch.gather's."""
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(2, 3, 11, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    order = torch.argsort(torch.rand(2, 3, 11, generator=gen), dim=-1)
    for inverse in (False, True):
        torch.library.opcheck(permute_rows, (x, order, inverse))
    weights = torch.randn(2, 3, 11, 8, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad((scatter_rows(gather_rows(x, order), order) * weights).sum(), x)
    torch.testing.assert_close(grad, weights)
    (grad,) = torch.autograd.grad((gather_rows(x, order) * weights).sum(), x)
    (want,) = torch.autograd.grad((x.gather(2, order[..., None].expand(-1, -1, -1, 8)) * weights).sum(), x)
    torch.testing.assert_close(grad, want)


def test_cluster_counts_adapt_to_short_sequences():
    assert cluster_count(1000, 32760, 64) == 1000 and cluster_count(300, 32760, 128) == 300
    assert cluster_count(1000, 5184, 64) == 162 and cluster_count(300, 200, 16) == 25
    assert cluster_count(300, 3, 128) == 1


# --- error probe ---------------------------------------------------------------------------------


def probe_inputs(gen: torch.Generator, logit_scale: float, batch=1, heads=2, seq_k=100, dim=24, nq=5, clusters=9):
    k = torch.randn(batch, heads, seq_k, dim, generator=gen)
    v = torch.randn(batch, heads, seq_k, dim, generator=gen)
    labels = torch.sort(torch.randint(0, clusters, (batch, heads, seq_k), generator=gen), dim=-1).values.int()
    means = clusters_from_labels(k, labels, clusters, v)
    q_mean = torch.randn(batch, heads, nq, dim, generator=gen) * logit_scale
    return q_mean, k, v, labels, means.centroids, means.value_means


def direct_probe(q_mean, k, v, labels, centroids, value_means, scale, block_k):
    """ε_IJ = Σ_{t∈J} ‖e^{a_t} v_t − e^{b_t} v̄_t‖² and log Σ e^{b_t}, term by term in float64."""
    q_mean, k, v, centroids, value_means = (t.double() for t in (q_mean, k, v, centroids, value_means))
    a = torch.einsum("bhid,bhtd->bhit", q_mean, k) * scale
    logits = torch.einsum("bhid,bhcd->bhic", q_mean, centroids) * scale
    b = logits.gather(-1, labels.long()[:, :, None, :].expand(-1, -1, q_mean.shape[2], -1))
    v_bar = value_means.gather(2, labels.long()[..., None].expand(-1, -1, -1, v.shape[-1]))
    terms = ((a.exp()[..., None] * v[:, :, None] - b.exp()[..., None] * v_bar[:, :, None]) ** 2).sum(-1)
    blocks = torch.arange(k.shape[2]) // block_k
    nk = int(blocks.max()) + 1
    err = torch.stack([terms[..., blocks == j].sum(-1) for j in range(nk)], -1)
    mass = torch.stack([b[..., blocks == j].exp().sum(-1) for j in range(nk)], -1)
    return err.log(), mass.log()


@pytest.mark.parametrize("logit_scale", [1.0, 20.0])  # 20: e^{2a} overflows fp32 without the shift
def test_probe_equals_the_direct_float64_sum(logit_scale):
    gen = torch.Generator().manual_seed(5)
    args = probe_inputs(gen, logit_scale)
    scale, block_k = 24**-0.5, 16
    want_err, want_mass = direct_probe(*args, scale, block_k)
    assert torch.isfinite(want_err).all() and want_err.max() > (90 if logit_scale > 1 else -math.inf)
    for log_err, log_mass in (error_probe_reference(*args, scale, block_k),
                              error_probe_triton(*args, scale, block_k)):  # fmt: skip
        torch.testing.assert_close(log_err.double(), want_err, rtol=0, atol=2e-4)
        torch.testing.assert_close(log_mass.double(), want_mass, rtol=0, atol=2e-5)


def test_probe_is_zero_error_where_a_block_is_its_centroids():
    gen = torch.Generator().manual_seed(6)
    q_mean, k, v, *_ = probe_inputs(gen, 1.0, seq_k=48, clusters=3)
    labels = (torch.arange(48) // 16).int().expand(1, 2, 48).contiguous()
    k[..., 16:32, :] = (k[..., 16:17, :] * 4).round() / 4  # block 1: one key and one value repeated
    v[..., 16:32, :] = (v[..., 16:17, :] * 4).round() / 4  # (quarters: their means are exact)
    means = clusters_from_labels(k.double(), labels, 3, v.double())
    log_err, _ = error_probe_reference(q_mean.double(), k.double(), v.double(), labels, means.centroids,
                                       means.value_means, 24**-0.5, 16)  # fmt: skip
    assert (log_err[..., 1] < log_err[..., [0, 2]].amin(-1) - 40).all()


# --- routing -------------------------------------------------------------------------------------


def brute_force_selection(log_mass, rank, key_counts, always, density, top_p):
    """The budget rule row by row: keep the top-mass blocks, then rank order until the budget."""
    nk = log_mass.shape[-1]
    chosen = torch.zeros(log_mass.shape, dtype=torch.bool)
    for row in range(log_mass.shape[0]):
        by_mass = sorted(range(nk), key=lambda j: (-float(log_mass[row, j]), j))
        first = by_mass[:always]
        rest = sorted((j for j in range(nk) if j not in first), key=lambda j: (-float(rank[row, j]), j))
        if density is not None:
            picked = (first + rest)[: max(always, ceil_fraction(density, nk))]
        else:
            probs = torch.softmax(log_mass[row].double(), -1)
            budget, mass = 0, 0.0
            for j in by_mass:
                if mass >= top_p:
                    break
                budget, mass = budget + int(key_counts[j]), mass + float(probs[j])
            picked, area = list(first), sum(int(key_counts[j]) for j in first)
            for j in rest:
                if area >= budget:
                    break
                picked.append(j)
                area += int(key_counts[j])
        chosen[row, picked] = True
    return chosen


@pytest.mark.parametrize("density, top_p", [(0.3, None), (None, 0.9), (None, 0.5)])
def test_selection_keeps_the_top_mass_blocks_and_fills_the_budget_by_rank(density, top_p):
    gen = torch.Generator().manual_seed(7)
    log_mass = torch.randn(2, 3, 5, 23, generator=gen) * 2
    rank = torch.randn(2, 3, 5, 23, generator=gen)
    rank[0, 0, 0, log_mass[0, 0, 0].argmax()] = -math.inf  # worst rank, yet always kept
    key_counts = reference.block_counts(23 * 16 - 5, 16)
    always = always_count(23, 0.05)
    indices, counts = select_by_rank(log_mass, rank, key_counts, always=always, density=density, top_p=top_p)
    chosen = reference.block_mask_from_lists(indices, counts, 23)
    want = brute_force_selection(log_mass.view(-1, 23), rank.view(-1, 23), key_counts, always, density, top_p)
    assert torch.equal(chosen.view(-1, 23), want)
    assert always == 2 and chosen[0, 0, 0, log_mass[0, 0, 0].argmax()]
    valid = torch.arange(indices.shape[-1]) < counts[..., None]
    listed = torch.where(valid, indices, 1000)
    assert torch.equal(listed, listed.sort(dim=-1).values) and (indices[~valid] == -1).all()
    if density is not None:
        assert (counts == ceil_fraction(density, 23)).all()


@pytest.mark.parametrize(("key_len", "block_k"), [(75, 16), (256, 16)])  # a partial last block; 16 whole ones
def test_uncovered_counts_equal_a_direct_count(key_len, block_k):
    gen = torch.Generator().manual_seed(8)
    clusters = 7
    labels = torch.sort(torch.randint(0, clusters, (2, 3, key_len), generator=gen), dim=-1).values
    labels[1, 2] = clusters - 1  # one cluster holds every key: its run ends at the last key
    counts = torch.stack([(labels == c).sum(-1) for c in range(clusters)], -1).int()
    selected = torch.rand(2, 3, 4, math.ceil(key_len / block_k), generator=gen) < 0.4
    selected[0, 0, 0] = True
    skipped_keys = ~selected.repeat_interleave(block_k, -1)[..., :key_len]  # (B, H, NQ, Sk)
    want = torch.stack([(skipped_keys & (labels == c)[:, :, None]).sum(-1) for c in range(clusters)], -1)
    assert torch.equal(uncovered_counts(selected, counts, key_len, block_k).long(), want)
    got = uncovered_counts_triton(selected, counts, key_len, block_k, block_clusters=4)  # two cluster tiles
    assert got.dtype == torch.int32 and torch.equal(got.long(), want)
    assert (got[0, 0, 0] == 0).all()
    with pytest.raises(ValueError, match="do not match"):
        uncovered_counts_triton(selected, counts, key_len + block_k, block_k)
    torch.library.opcheck(uncovered_counts, (selected, counts, key_len, block_k))


# --- centroid tail -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_centroid_tail_matches_float64(dtype):
    gen = torch.Generator().manual_seed(9)
    b, h, sq, d, clusters, block_q = 2, 3, 70, 24, 70, 32
    q = torch.randn(b, h, sq, d, generator=gen).to(dtype)
    kc, vc = torch.randn(2, b, h, clusters, d, generator=gen)
    counts = torch.randint(0, 4, (b, h, 3, clusters), generator=gen).double()
    counts[0, 1, 2] = 0  # a query block that skipped nothing
    counts[1, 0, 0, :64] = 0  # a whole tile of pseudo-keys removed
    log_w = counts.log()
    out, lse = centroid_attention_triton(q, kc, vc, log_w.float(), block_q, d**-0.5)
    ref_out, ref_lse = centroid_attention_reference(q.double(), kc.double(), vc.double(), log_w, block_q, d**-0.5)
    tol = 2e-3 if dtype == torch.float16 else 2e-5
    torch.testing.assert_close(out.double(), ref_out, rtol=0, atol=tol)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=0, atol=tol)
    assert torch.isneginf(lse[0, 1, 64:]).all() and (out[0, 1, 64:] == 0).all()
    # weight n is n copies of the pseudo-key: row 0 against explicit repeated keys
    reps = counts[0, 0, 0].long()
    keys, values = kc[0, 0].double().repeat_interleave(reps, 0), vc[0, 0].double().repeat_interleave(reps, 0)
    logits = q[0, 0, 0].double() @ keys.T * d**-0.5
    torch.testing.assert_close(ref_out[0, 0, 0], torch.softmax(logits, -1) @ values)
    torch.testing.assert_close(ref_lse[0, 0, 0], torch.logsumexp(logits, -1))


# --- the method ----------------------------------------------------------------------------------


def method_and_context(layout: TokenLayout, **options):
    config = SVGEARConfig(block_size=16, q_clusters=12, k_clusters=20, kmeans_first_iters=8, **options)
    method = SVGEARAttention(config.for_family(None))
    ctx = standalone_context(layout, method.config)
    ctx.binding.module_state = KMeansState()
    return method, ctx


def structured_qkv(gen: torch.Generator, batch: int, seq: int, heads=2, dim=24):
    """q/k around shared centres (a few clusters), so routing has something to find."""
    q = blobs(gen, batch=batch, heads=heads, seq=seq, dim=dim, centers=5, spread=0.5).transpose(1, 2)
    k = blobs(gen, batch=batch, heads=heads, seq=seq, dim=dim, centers=5, spread=0.5).transpose(1, 2)
    return q.contiguous(), k.contiguous(), torch.randn(batch, seq, heads, dim, generator=gen)


@pytest.mark.parametrize(
    "text_start, text_len, valid",
    [(0, 0, None), (0, 9, None), (150, 9, torch.tensor([9, 4], dtype=torch.int32))],
    ids=["video-only", "text-first", "padded-text-after"],
)
def test_call_matches_its_float64_definition(text_start, text_len, valid):
    gen = torch.Generator().manual_seed(10)
    video_start = 0 if text_start else text_len
    layout = TokenLayout(seq_len=150 + text_len, video_start=video_start, video_len=150, text_start=text_start,
                         text_len=text_len, text_valid=valid)  # fmt: skip
    q, k, v = structured_qkv(gen, 2, 150 + text_len)
    for options in ({"density": 0.3}, {}, {"route_by": "mass", "compensate": False}):
        method, ctx = method_and_context(layout, **options)
        out = method(q, k, v, ctx)
        expected = method.reference(q, k, v, ctx)
        assert out.shape == q.shape and out.dtype == q.dtype
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-5)


def test_cfg_batch_equals_separate_calls_and_compensation_counts():
    gen = torch.Generator().manual_seed(11)
    layout = TokenLayout(seq_len=150, video_start=0, video_len=150)
    q, k, v = structured_qkv(gen, 2, 150)
    method, ctx = method_and_context(layout, density=0.3)
    both = method(q, k, v, ctx)
    for i in range(2):
        _, alone_ctx = method_and_context(layout, density=0.3)
        torch.testing.assert_close(both[i : i + 1], method(q[i : i + 1], k[i : i + 1], v[i : i + 1], alone_ctx))
    dense = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) * 24**-0.5, -1)
    dense = torch.einsum("bhqk,bkhd->bqhd", dense, v)
    plain, plain_ctx = method_and_context(layout, density=0.3, compensate=False)
    dropped = plain(q, k, v, plain_ctx)
    assert (both - dense).abs().mean() < 0.8 * (dropped - dense).abs().mean()


def test_calls_outside_a_model_warm_start_per_context(monkeypatch):
    """bench's standalone contexts: repeated calls on one context warm-start, a new context starts afresh."""
    from dit_accel.kernels import clustering

    calls = []
    real = clustering.kmeans_assign
    monkeypatch.setattr(clustering, "kmeans_assign", lambda *a: calls.append(1) or real(*a))
    layout = TokenLayout(seq_len=150, video_start=0, video_len=150)
    q, k, v = structured_qkv(torch.Generator().manual_seed(12), 1, 150)
    method, _ = method_and_context(layout)
    counted = []
    for ctx in [standalone_context(layout, method.config)] * 2 + [standalone_context(layout, method.config)]:
        calls.clear()
        method(q, k, v, ctx)
        counted.append(len(calls))
    assert counted == [16, 4, 16]  # q and k: 8 first iterations each, then 2


def test_options_are_validated_with_the_allowed_values():
    with pytest.raises(ValueError, match="route_by must be one of 'error', 'mass'"):
        SVGEARConfig(route_by="energy")
    with pytest.raises(ValueError, match=r"top_p must be in \(0.0, 1.0\]"):
        SVGEARConfig(top_p=0.0)
    with pytest.raises(ValueError, match="k_clusters must be an int >= 1"):
        SVGEARConfig(k_clusters=0)
    with pytest.raises(TypeError, match="compensate must be True or False"):
        SVGEARConfig(compensate="yes")
    assert SVGEARConfig().for_family("hunyuan_video").q_clusters == 400
    assert SVGEARConfig().for_family("wan").dense_steps == 0.2
    assert SVGEARConfig().for_family("hunyuan_video").dense_steps == 0.1


@pytest.mark.parametrize("density, top_p", [(0.3, None), (None, 0.9)])
def test_selection_without_always_exact_blocks_follows_the_rank_alone(density, top_p):
    gen = torch.Generator().manual_seed(17)
    log_mass = torch.randn(2, 3, 5, 23, generator=gen) * 2
    rank = torch.randn(2, 3, 5, 23, generator=gen)
    rank[0, 0, 0, log_mass[0, 0, 0].argmax()] = -math.inf  # the top-mass block, ranked last: not forced in
    key_counts = reference.block_counts(23 * 16 - 5, 16)
    indices, counts = select_by_rank(log_mass, rank, key_counts, always=0, density=density, top_p=top_p)
    chosen = reference.block_mask_from_lists(indices, counts, 23)
    want = brute_force_selection(log_mass.view(-1, 23), rank.view(-1, 23), key_counts, 0, density, top_p)
    assert torch.equal(chosen.view(-1, 23), want)
    assert not chosen[0, 0, 0, log_mass[0, 0, 0].argmax()]
