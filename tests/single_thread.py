"""An autouse fixture for test modules of tiny tensors: import ``one_thread`` into the module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny shapes: one thread is several times faster than two on a shared, busy CPU (spinning
    OpenMP threads fight the other processes); the previous count is restored after the test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
