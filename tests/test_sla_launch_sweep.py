"""The launch sweep of ``benchmarks/check_sla_launch.py``: each launch runs with its settings, its
gradients agree with the default launch's, and the module's settings are restored afterwards."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from benchmark_scripts import load_script

from dit_accel.kernels import block_sparse_attention_bwd, sla_linear_bwd
from dit_accel.kernels.block_sparse_attention_bwd import BackwardLaunch

launch_sweep = load_script("check_sla_launch")


def test_each_launch_matches_the_default_and_settings_are_restored() -> None:
    rows_before, warps_before = sla_linear_bwd.ROWS_PER_STEP, sla_linear_bwd.launch_warps
    records = launch_sweep.linear_sweep((1, 2, 97, 32), (32, 16), torch.device("cpu"), torch.float32, (8, 16), (8,))
    wanted = [{"ROWS_PER_STEP": 8, "warps": 8}, {"ROWS_PER_STEP": 16, "warps": 8}]  # default: 32 rows, 4 warps at D 32
    assert [r["launch"] for r in records] == wanted
    assert [r["applied"] for r in records] == wanted  # what the launcher saw while the launch was timed
    assert all("error" not in r and r["max_rel_err_vs_default"] < 1e-5 for r in records)
    assert all(r["block_size"] == [32, 16] for r in records)
    assert rows_before == sla_linear_bwd.ROWS_PER_STEP and sla_linear_bwd.launch_warps is warps_before


def test_a_launch_that_breaks_the_kernel_is_recorded_not_raised() -> None:
    records = launch_sweep.linear_sweep((1, 1, 40, 32), (32, 16), torch.device("cpu"), torch.float32, (0,), (4,))
    assert "error" in records[0] and "ms" not in records[0]


def test_a_query_block_that_is_not_whole_steps_is_refused() -> None:
    q = k = v = torch.randn(1, 1, 96, 32)
    marginal = torch.ones(1, 1, 2, 6, dtype=torch.bool)
    with pytest.raises(ValueError, match="multiple of 32"):
        sla_linear_bwd.sla_linear_backward_triton(q, q, k, v, marginal, block_m=48, block_n=16)


def test_each_exact_backward_launch_matches_the_default_and_a_broken_one_is_recorded() -> None:
    before = block_sparse_attention_bwd.LAUNCH
    launches = [
        BackwardLaunch(),
        BackwardLaunch(dkdv_sub_m=16, dq_stages=2),
        BackwardLaunch(dkdv_sub_m=24),
        BackwardLaunch(dq_warps=4, dq_stages=1, dkdv_sub_m=32),  # the default's kernels at these blocks
        BackwardLaunch(dkdv_sub_m=20),
    ]
    records = launch_sweep.exact_sweep((1, 2, 83, 16), (32, 16), torch.device("cpu"), torch.float32, launches)
    assert [r["launch"]["dkdv_sub_m"] for r in records] == [64, 16, 24, 20], "only a launch equal to one timed goes"
    assert records[0]["resolved"] == asdict(BackwardLaunch(4, 1, 4, 1, 32)) and records[2]["resolved"] is None
    assert all(r["max_rel_err_vs_default"] < 1e-5 for r in records[:2])
    assert all("whole steps" in r["error"] and "ms" not in r for r in records[2:]), "every refused launch recorded"
    assert block_sparse_attention_bwd.LAUNCH is before


def test_the_best_exact_launch_combines_the_fastest_setting_of_each_kernel() -> None:
    def record(ms: float, **launch) -> dict:
        return {"part": "exact", "block_size": [128, 64], "ms": ms, "launch": asdict(BackwardLaunch(**launch))}

    broken = {"part": "exact", "block_size": [128, 64], "error": "x"}
    records = [record(3.0), record(2.0, dq_stages=2), record(2.5, dq_warps=4), record(2.6, dkdv_sub_m=32),
               record(2.4, dkdv_warps=8, dkdv_stages=2), broken]  # fmt: skip
    best = launch_sweep.best_exact_launch(records, (128, 64))
    assert best == BackwardLaunch(dq_stages=2, dkdv_warps=8, dkdv_stages=2)
    assert launch_sweep.best_exact_launch(records, (128, 128)) is None, "no default launch of that block: no choice"


def test_check_sla_takes_the_swept_launch_of_its_one_block_size(tmp_path) -> None:
    check_sla = load_script("check_sla")
    path = tmp_path / "launch.json"
    path.write_text(json.dumps({"best_exact_launch": {"128x64": asdict(BackwardLaunch(dq_stages=2, dkdv_sub_m=32))}}))
    assert check_sla.exact_launch(path, [(128, 64)]) == BackwardLaunch(dq_stages=2, dkdv_sub_m=32)
    with pytest.raises(SystemExit, match="no launch for 128x128"):
        check_sla.exact_launch(path, [(128, 128)])
    with pytest.raises(SystemExit, match="one --blocks"):
        check_sla.exact_launch(path, [(128, 64), (128, 128)])
