"""The launch sweep of ``benchmarks/check_sla_launch.py``: each launch runs with its settings, its
gradients agree with the default launch's, and the module's settings are restored afterwards."""

from __future__ import annotations

import torch
from benchmark_scripts import load_script

from dit_accel.kernels import sla_linear_bwd

launch_sweep = load_script("check_sla_launch")


def test_each_launch_matches_the_default_and_settings_are_restored() -> None:
    rows_before, warps_before = sla_linear_bwd.ROWS_PER_STEP, sla_linear_bwd.launch_warps
    records = launch_sweep.sweep((1, 2, 97, 32), (32, 16), torch.device("cpu"), torch.float32, (8, 16), (4,))
    assert [r["launch"] for r in records] == [{"ROWS_PER_STEP": 8, "warps": 4}, {"ROWS_PER_STEP": 16, "warps": 4}]
    assert all("error" not in r and r["max_rel_err_vs_default"] < 1e-5 for r in records)
    assert all(r["block_size"] == [32, 16] for r in records)
    assert rows_before == sla_linear_bwd.ROWS_PER_STEP and sla_linear_bwd.launch_warps is warps_before


def test_a_launch_that_breaks_the_kernel_is_recorded_not_raised() -> None:
    records = launch_sweep.sweep((1, 1, 40, 32), (32, 16), torch.device("cpu"), torch.float32, (0,), (4,))
    assert "error" in records[0] and "ms" not in records[0]
