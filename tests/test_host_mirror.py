"""host_copy: timesteps read on the host without a device round trip once their storage was copied.

CI has no GPU, so the tests treat CPU tensors as device tensors (``_on_host`` patched) and count the
copies through ``_to_host``.
"""

from __future__ import annotations

import pytest
import torch

from dit_accel import host_mirror
from dit_accel.steps import StepTracker, timestep_value


@pytest.fixture
def copies(monkeypatch):
    """Every device-to-host copy host_copy makes, as the tensors copied."""
    made: list[torch.Tensor] = []

    def to_host(t):
        made.append(t)
        return t.clone()

    monkeypatch.setattr(host_mirror, "_on_host", lambda t: False)
    monkeypatch.setattr(host_mirror, "_to_host", to_host)
    monkeypatch.setattr(host_mirror, "_CACHE", type(host_mirror._CACHE)())
    return made


def test_views_of_one_storage_are_copied_once(copies):
    table = torch.linspace(1000.0, 0.0, 11)
    for index in range(11):
        view = table[index].expand(3)  # what Wan's pipeline passes: a view of scheduler.timesteps
        got = host_mirror.host_copy(view)
        assert got.shape == (3,) and torch.equal(got, torch.full((3,), float(table[index])))
    strided = table[1::4]
    assert torch.equal(host_mirror.host_copy(strided), strided)
    assert len(copies) == 1 and copies[0].numel() == 11, "the whole storage, once"
    host_mirror.host_copy(table[:2]).zero_()  # a caller writing into what it got
    assert torch.equal(host_mirror.host_copy(table[:2]), table[:2]) and len(copies) == 1


def test_a_write_through_any_view_makes_a_fresh_copy(copies):
    base = torch.arange(8.0)
    view = base[2:5]
    assert torch.equal(host_mirror.host_copy(view), torch.tensor([2.0, 3.0, 4.0]))
    base[3] = 70.0  # written through the base: the view's version counter moves too
    assert torch.equal(host_mirror.host_copy(view), torch.tensor([2.0, 70.0, 4.0]))
    view.mul_(2)
    assert torch.equal(host_mirror.host_copy(base[:4]), torch.tensor([0.0, 1.0, 4.0, 140.0]))
    assert len(copies) == 3


def test_large_storages_and_inference_tensors_are_copied_every_read(copies):
    large = torch.zeros(host_mirror.MAX_BYTES // 4 + 1)
    for _ in range(2):
        host_mirror.host_copy(large[:2])
    with torch.inference_mode():
        untracked = torch.ones(4)
    for _ in range(2):
        assert torch.equal(host_mirror.host_copy(untracked), torch.ones(4))
    assert len(copies) == 4 and len(host_mirror._CACHE) == 0


def test_the_cache_keeps_a_bounded_number_of_storages(copies):
    tensors = [torch.full((2,), float(i)) for i in range(host_mirror.MAX_CACHED + 3)]
    for t in tensors:
        assert float(host_mirror.host_copy(t)[0]) == float(t[0])
    assert len(host_mirror._CACHE) == host_mirror.MAX_CACHED
    host_mirror.host_copy(tensors[-1])
    assert len(copies) == len(tensors), "the newest storage is still cached"
    host_mirror.host_copy(tensors[0])
    assert len(copies) == len(tensors) + 1, "the oldest was dropped"


def test_a_run_of_timestep_views_costs_one_copy_for_tracking(copies):
    """A scheduler table and the per-step views of it: step tracking reads both without new copies."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from dit_accel.config import MethodConfig

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(12)
    tracker = StepTracker(MethodConfig(dense_steps=0.25), scheduler=scheduler)
    for index, t in enumerate(scheduler.timesteps):
        for _ in range(2):  # classifier-free guidance: two calls per step
            tracker.observe(timestep_value(t.expand(2)))
            assert (tracker.step_index, tracker.num_steps, tracker.warmup) == (index, 12, index < 3)
    assert len(copies) == 1
