"""benchmarks/routing_recall.py: the share of attention that routing keeps, and the error it causes."""

from __future__ import annotations

import pytest
import torch
from benchmark_scripts import load_script


@pytest.fixture(scope="module")
def recall_module():
    return load_script("routing_recall")


def test_everything_kept_means_full_recall_and_no_error(recall_module) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(203, 16) for _ in range(3))
    result = recall_module.head_recall(q, k, v, block_q=32, block_k=16, density=1.0)
    assert result["recall"] == pytest.approx(1.0, abs=1e-5) and result["oracle"] == pytest.approx(1.0, abs=1e-5)
    assert result["error"] < 1e-5


def test_block_local_attention_is_found_with_one_block(recall_module) -> None:
    """Query block i looks only at key block i: one block per row must keep (nearly) everything."""
    blocks, size, dim = 4, 32, 8
    directions = torch.eye(dim)[:blocks] * 12.0
    q = directions.repeat_interleave(size, dim=0) + 0.01 * torch.randn(blocks * size, dim)
    k = directions.repeat_interleave(size, dim=0)
    v = torch.randn(blocks * size, dim)
    result = recall_module.head_recall(q, k, v, block_q=size, block_k=size, density=1 / blocks)
    assert result["recall"] > 0.99 and result["error"] < 0.02


def test_recall_never_beats_the_oracle(recall_module) -> None:
    torch.manual_seed(1)
    q, k, v = (torch.randn(157, 16) * 2 for _ in range(3))
    for density in (0.1, 0.3, 0.6):
        result = recall_module.head_recall(q, k, v, block_q=32, block_k=16, density=density)
        assert 0.0 < result["recall"] <= result["oracle"] + 1e-6 < 1.0 + 1e-6
        assert 0.0 < result["error"] < 2.0
