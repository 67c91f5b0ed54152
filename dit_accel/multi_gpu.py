"""``--gpus N``: run a command on N GPUs of one host under Diffusers' context parallelism (Ulysses).

The command re-launches itself through ``torch.distributed.run`` (torchrun), one process a GPU; each
process joins the process group and splits the transformer's sequence with
``enable_parallelism(ContextParallelConfig(ulysses_degree=N))``. dit-accel's methods run inside it
(:mod:`dit_accel.context_parallel`); rank 0 prints and writes the results.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.distributed as dist


def relaunch(gpus: int, argv: list[str]) -> int | None:
    """Run ``dit-accel <argv>`` under torchrun on ``gpus`` processes and return its exit status.

    None when there is nothing to launch: one GPU, or this process is already one torchrun started.
    """
    if gpus < 1:
        raise ValueError(f"--gpus must be >= 1, got {gpus}")
    if gpus == 1 or "LOCAL_RANK" in os.environ:
        return None
    if torch.cuda.device_count() < gpus:
        raise ValueError(f"--gpus {gpus}: this machine has {torch.cuda.device_count()} CUDA GPUs")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}"]
    return subprocess.call([*command, "-m", "dit_accel.cli", *argv])


def setup(gpus: int) -> torch.device:
    """Join this torchrun process's group (NCCL) and return its GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != gpus:
        raise ValueError(f"--gpus {gpus} but torchrun started {world} processes")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    return device


def parallelize(model: torch.nn.Module, gpus: int) -> None:
    """Split the transformer's sequence over the ``gpus`` ranks with Diffusers' Ulysses attention."""
    from diffusers import ContextParallelConfig

    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=gpus))


def is_main() -> bool:
    """True in a single-process run and on rank 0."""
    return not dist.is_initialized() or dist.get_rank() == 0


def finish() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()
