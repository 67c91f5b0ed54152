"""The cluster-pair kernel of ``benchmarks/check_cluster_blocks.py`` (svg_ear's variable-size clusters)."""

from __future__ import annotations

import pytest
import torch
from benchmark_scripts import load_script

from dit_accel.kernels import block_mask

cluster_blocks = load_script("check_cluster_blocks")
check_svg_ear = load_script("check_svg_ear")


@pytest.fixture(params=[0, 1])
def pairs(request):
    """Clustered random q/k/v of an odd shape (fresh per seed), 11 query and 17 key clusters."""
    shape = {"batch": 1, "heads": 2, "grid": (3, 5, 7), "text": 0, "dim": 32}  # 105 tokens
    q, k, v, _ = check_svg_ear.inputs(shape, torch.float32, torch.device("cpu"), seed=100 + request.param)
    return cluster_blocks.ClusterPairs(q, k, v, q_clusters=11, k_clusters=17, density=0.3)


def test_cluster_pair_kernel_matches_float64(pairs) -> None:
    out, lse = pairs.variable(block_m=32, block_n=16)
    ref = pairs.reference()
    assert (out.double() - ref).abs().max() <= 1e-4 * ref.abs().max()
    assert torch.isfinite(lse).all()  # every query cluster selected at least one key cluster


def test_selection_holds_the_density_and_the_fixed_grid_covers_it(pairs) -> None:
    assert 0.3 <= pairs.keys_selected() < 0.3 + pairs.k_len.max().item() / pairs.k.shape[1]  # one cluster over
    blocks = pairs.fixed_blocks(32, 16)
    grid = block_mask(blocks.indices, blocks.counts, blocks.num_key_blocks)[0]
    q_of, k_of = cluster_blocks.sorted_labels(pairs.q_len), cluster_blocks.sorted_labels(pairs.k_len)
    rows = torch.arange(pairs.q.shape[1])
    for h in range(pairs.q.shape[0]):
        allowed = pairs.selected[h][q_of[h]][:, k_of[h]]
        computed = grid[h][rows // 32][:, rows // 16]
        assert computed[allowed].all()  # every selected pair lies in a computed block
        assert (computed & ~allowed).any()  # and the grid computes more than the pairs
