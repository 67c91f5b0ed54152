"""Data echoing in stage 2 (tools/tiny_wan/echo.py): which samples a batch holds and how often each is used."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from tools.tiny_wan.echo import EchoPool

SAMPLE_SHAPE = (3, 2, 5)  # an odd latent shape; row i of a batch is filled with its sample id


def encode(ids: range) -> tuple[torch.Tensor, list[str]]:
    latents = torch.tensor(list(ids), dtype=torch.float64).view(-1, 1, 1, 1).expand(-1, *SAMPLE_SHAPE).clone()
    return latents, [f"caption {i}" for i in ids]


def ids_of(latents: torch.Tensor) -> list[int]:
    return latents.flatten(1)[:, 0].long().tolist()


def test_first_batch_is_all_fresh_then_one_part_in_echo() -> None:
    pool, rng = EchoPool(echo=3), np.random.default_rng(0)
    assert pool.fresh_count(7) == 7
    latents, captions = pool.batch(*encode(range(7)), batch=7, rng=rng)
    assert ids_of(latents) == list(range(7)) and captions == [f"caption {i}" for i in range(7)]
    assert pool.fresh_count(7) == 3  # ceil(7 / 3)

    latents, captions = pool.batch(*encode(range(100, 103)), batch=7, rng=rng)
    ids = ids_of(latents)
    assert ids[:3] == [100, 101, 102]
    assert len(set(ids[3:])) == 4 and set(ids[3:]) <= set(range(7))  # drawn without replacement
    assert captions == [f"caption {i}" for i in ids]
    assert torch.equal(latents[3:], encode(ids[3:])[0])  # whole samples, not mixed rows


def test_each_sample_is_used_about_echo_times() -> None:
    batch, echo, steps = 8, 2, 400
    pool, rng = EchoPool(echo), np.random.default_rng(1)
    uses: Counter[int] = Counter()
    next_id = 0
    for _ in range(steps):
        count = pool.fresh_count(batch)
        latents, captions = pool.batch(*encode(range(next_id, next_id + count)), batch=batch, rng=rng)
        next_id += count
        ids = ids_of(latents)
        assert len(ids) == batch and len(set(ids)) == batch
        assert captions == [f"caption {i}" for i in ids]
        uses.update(ids)
    retired = [uses[i] for i in range(next_id - 2 * batch)]  # samples that have left the pool
    assert max(retired) <= 1 + batch // (batch // echo)  # fresh once, then at most once per step in the pool
    assert np.mean(retired) == pytest.approx(echo, abs=0.1)
    assert sum(uses.values()) == steps * batch


def test_echo_one_encodes_everything_and_keeps_nothing() -> None:
    pool, rng = EchoPool(echo=1), np.random.default_rng(2)
    for start in (0, 10):
        assert pool.fresh_count(5) == 5
        latents, _ = pool.batch(*encode(range(start, start + 5)), batch=5, rng=rng)
        assert ids_of(latents) == list(range(start, start + 5))
    assert pool.latents is None


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="echo must be >= 1"):
        EchoPool(echo=0)
    pool, rng = EchoPool(echo=2), np.random.default_rng(3)
    pool.batch(*encode(range(6)), batch=6, rng=rng)
    with pytest.raises(ValueError, match="expected 3 fresh samples"):
        pool.batch(*encode(range(6)), batch=6, rng=rng)
    with pytest.raises(ValueError, match="pool holds"):
        pool.batch(torch.zeros(3, 3, 2, 4), ["a", "b", "c"], batch=6, rng=rng)
