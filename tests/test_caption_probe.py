"""benchmarks/tiny_caption_probe.py: swapped captions, and losses that differ only by the caption."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from benchmark_scripts import load_script

from tools.tiny_wan.build import TOY, build_pipeline
from tools.tiny_wan.data import COLOURS, MIN_TURN_DEGREES, hue_distance, parse_caption
from tools.tiny_wan.train import Denoiser


@pytest.fixture(scope="module")
def probe():
    return load_script("tiny_caption_probe")


def test_swaps_change_one_word_to_a_wrong_one(probe) -> None:
    captions = probe.probe_captions(200, np.random.default_rng(3))
    assert {c.motion for c in captions} == set(probe.OPPOSITE_MOTION)  # every swappable motion, no turns
    for caption in captions:
        moved, recoloured = probe.motion_swapped(caption), probe.colour_swapped(caption)
        assert moved == replace(caption, motion=moved.motion) and moved.motion != caption.motion
        assert probe.motion_swapped(moved) == caption  # opposites pair up
        assert parse_caption(moved.text) == moved  # still a grammar sentence
        assert recoloured == replace(caption, colour=recoloured.colour)
        assert recoloured.colour != caption.background
        assert hue_distance(COLOURS[recoloured.colour], COLOURS[caption.colour]) >= MIN_TURN_DEGREES


def test_losses_differ_only_through_the_captions(probe) -> None:
    torch.manual_seed(0)
    pipe = build_pipeline(TOY)
    denoiser = Denoiser(pipe, torch.zeros(TOY.z_dim), torch.ones(TOY.z_dim))
    captions = probe.probe_captions(3, np.random.default_rng(0))
    x0 = torch.randn(3, TOY.z_dim, 2, 8, 8)
    variants = {"true": captions, "same": list(captions), "motion": [probe.motion_swapped(c) for c in captions]}
    losses = probe.caption_losses(denoiser, x0, variants, sigma=0.9, seed=5)
    assert losses["same"] == losses["true"]  # shared noise: the same captions give the same loss
    assert losses["motion"] != pytest.approx(losses["true"], rel=1e-6)
    assert probe.caption_losses(denoiser, x0, variants, sigma=0.9, seed=5) == losses
    assert probe.caption_losses(denoiser, x0, variants, sigma=0.9, seed=6)["true"] != losses["true"]
