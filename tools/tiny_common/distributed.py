"""Data-parallel training of the tiny models across the GPUs of one host (``torchrun``), or one process.

Every rank holds the whole model and renders its own videos or images; after each backward the gradients
are averaged with one all-reduce of a flat buffer, so the ranks stay identical without wrapping the
models in DDP (the training code calls ``vae.encode``/``decode`` and the text encoder directly, which
DDP's forward hooks would not see). Rank 0 decides when a stage ends, so all ranks take the same
number of steps, and it alone logs, saves and evaluates. On CPUs the same code runs over gloo.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's rank and the number of processes (1 without ``torchrun``)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_ranks(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group ``torchrun`` describes in the environment; each rank gets its own GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(rank, world), device


def close(ranks: Ranks) -> None:
    if ranks.world > 1:
        dist.destroy_process_group()


def broadcast_(tensors: Iterable[torch.Tensor], ranks: Ranks) -> None:
    """Overwrite the tensors of every rank with rank 0's (in place)."""
    if ranks.world > 1:
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)


def broadcast_state(modules: Iterable[torch.nn.Module], ranks: Ranks) -> None:
    """Start every rank from rank 0's parameters and buffers."""
    broadcast_((t for m in modules for t in (*m.parameters(), *m.buffers())), ranks)


def average_gradients(params: list[torch.nn.Parameter], ranks: Ranks) -> None:
    """Average the gradients over ranks with one all-reduce (a missing gradient counts as zero)."""
    if ranks.world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ranks.world
    for param, piece in zip(params, flat.split([g.numel() for g in grads]), strict=True):
        param.grad = piece.view_as(param).to(param.dtype)


class SharedClock:
    """Rank 0's ``time.monotonic()``, the same on every rank, so that stages end and learning rates
    follow their schedules at the same step everywhere.

    With several ranks, reading it is a broadcast that waits for the GPU, so it is refreshed only
    every ``every`` steps (the host keeps queueing work ahead in between); one process reads its own
    clock at every step.
    """

    def __init__(self, ranks: Ranks, device: torch.device, every: int = 10) -> None:
        self.ranks, self.device, self.every = ranks, device, every
        self.value = self._read()

    def _read(self) -> float:
        now = time.monotonic()
        if self.ranks.world == 1:
            return now
        value = torch.tensor([now], dtype=torch.float64, device=self.device)
        dist.broadcast(value, src=0)
        return float(value.item())

    def now(self, step: int) -> float:
        if self.ranks.world == 1 or step % self.every == 0:
            self.value = self._read()
        return self.value


def in_sync(modules: Iterable[torch.nn.Module], ranks: Ranks, device: torch.device) -> bool:
    """Whether every rank holds the same parameters (compared through a float64 checksum per rank)."""
    if ranks.world == 1:
        return True
    total = torch.zeros(1, dtype=torch.float64, device=device)
    for module in modules:
        for index, param in enumerate(module.parameters()):
            total += (index + 1) * param.detach().double().sum()
    sums = [torch.zeros_like(total) for _ in range(ranks.world)]
    dist.all_gather(sums, total)
    return all(torch.equal(s, sums[0]) for s in sums)
