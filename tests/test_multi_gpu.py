"""``--gpus N`` relaunches the command under torchrun (one process a GPU); bad counts are named."""

from __future__ import annotations

import sys

import pytest
import torch

from dit_accel import multi_gpu
from dit_accel.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "e2e", "--gpus", "2", "--variants", "eager:dense", "eager:topk"],
        ["generate", "--method", "topk", "-o", "density=0.1", "--gpus", "2", "--out", "wan.mp4"],
    ],
)
def test_gpus_relaunches_the_same_command_under_torchrun(monkeypatch, argv):
    calls = []
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(multi_gpu.subprocess, "call", lambda command: calls.append(command) or 3)
    assert main(argv) == 3  # torchrun's exit status
    (command,) = calls
    assert command[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert command[5:] == ["-m", "dit_accel.cli", *argv]


def test_a_torchrun_process_does_not_relaunch(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert multi_gpu.relaunch(2, ["bench", "e2e", "--gpus", "2"]) is None
    assert multi_gpu.relaunch(1, ["bench", "e2e"]) is None


@pytest.mark.parametrize(("gpus", "visible", "match"), [(0, 4, "--gpus must be >= 1"), (8, 2, "has 2 CUDA GPUs")])
def test_bad_gpu_counts_are_named(monkeypatch, gpus, visible, match):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    with pytest.raises(ValueError, match=match):
        multi_gpu.relaunch(gpus, ["bench", "e2e"])
