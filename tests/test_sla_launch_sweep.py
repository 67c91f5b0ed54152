"""The launch sweep of ``benchmarks/check_sla_launch.py``: each launch runs with its settings, its
gradients agree with the default launch's, and the module's settings are restored afterwards."""

from __future__ import annotations

import pytest
import torch
from benchmark_scripts import load_script

from dit_accel.kernels import sla_linear_bwd

launch_sweep = load_script("check_sla_launch")


def test_each_launch_matches_the_default_and_settings_are_restored() -> None:
    rows_before, warps_before = sla_linear_bwd.ROWS_PER_STEP, sla_linear_bwd.launch_warps
    records = launch_sweep.sweep((1, 2, 97, 32), (32, 16), torch.device("cpu"), torch.float32, (8, 16), (8,))
    wanted = [{"ROWS_PER_STEP": 8, "warps": 8}, {"ROWS_PER_STEP": 16, "warps": 8}]  # default: 32 rows, 4 warps at D 32
    assert [r["launch"] for r in records] == wanted
    assert [r["applied"] for r in records] == wanted  # what the launcher saw while the launch was timed
    assert all("error" not in r and r["max_rel_err_vs_default"] < 1e-5 for r in records)
    assert all(r["block_size"] == [32, 16] for r in records)
    assert rows_before == sla_linear_bwd.ROWS_PER_STEP and sla_linear_bwd.launch_warps is warps_before


def test_a_launch_that_breaks_the_kernel_is_recorded_not_raised() -> None:
    records = launch_sweep.sweep((1, 1, 40, 32), (32, 16), torch.device("cpu"), torch.float32, (0,), (4,))
    assert "error" in records[0] and "ms" not in records[0]


def test_a_query_block_that_is_not_whole_steps_is_refused() -> None:
    q = k = v = torch.randn(1, 1, 96, 32)
    marginal = torch.ones(1, 1, 2, 6, dtype=torch.bool)
    with pytest.raises(ValueError, match="multiple of 32"):
        sla_linear_bwd.sla_linear_backward_triton(q, q, k, v, marginal, block_m=48, block_n=16)
