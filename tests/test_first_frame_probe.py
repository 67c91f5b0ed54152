"""benchmarks/tiny_first_frame.py: per-frame colour reading and per-latent-frame spatial spread."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
import torch
from benchmark_scripts import load_script
from tiny_oracle import oracle_pipeline

from tools.tiny_wan.build import TOY
from tools.tiny_wan.data import render_video

CAPTIONS = [
    "a red circle moving right on a plain gray background",
    "a blue square growing on a striped white background",
    "a yellow star shrinking on a dotted black background",
]
TURNING = "a green ring turning purple on a dotted black background"


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    return load_script("tiny_first_frame")


def test_rendered_videos_show_their_colour_in_every_frame_but_a_greyed_one(probe: ModuleType) -> None:
    videos = np.stack([render_video(caption, index, 5, 64, 64) for index, caption in enumerate(CAPTIONS)])
    assert probe.colour_by_frame(CAPTIONS, videos) == [1.0] * 5
    videos[1, 0] = 128  # the second video's first frame: a plain grey background, no object
    videos[2, 3] = videos[0, 3]  # the third video's fourth frame: the red circle
    assert probe.colour_by_frame(CAPTIONS, videos) == pytest.approx([2 / 3, 1.0, 1.0, 2 / 3, 1.0])


def test_a_turning_object_counts_with_its_starting_colour(probe: ModuleType) -> None:
    shares = probe.colour_by_frame([TURNING], render_video(TURNING, 0, 9, 64, 64)[None])
    assert shares[0] == 1.0 and shares[-1] == 0.0


def test_spatial_spread_is_per_latent_frame(probe: ModuleType) -> None:
    torch.manual_seed(0)
    latents = torch.randn(3, 4, 5, 6, 7) * torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0]).view(1, 1, 5, 1, 1)
    latents += torch.randn(3, 4, 5, 1, 1) * 10  # per-video, per-channel offsets are not spread across space
    spread = probe.spatial_std_by_latent_frame(latents)
    expected = [float(latents[:, :, t].std(dim=(2, 3)).mean()) for t in range(5)]
    assert spread == pytest.approx(expected, rel=1e-5)
    assert spread[0] == pytest.approx(0.0, abs=1e-5) and spread[1] < spread[2] < spread[3] < spread[4]


def test_relative_error_is_the_first_frames_error_over_its_spatial_variance(probe: ModuleType) -> None:
    torch.manual_seed(2)
    x0 = torch.randn(2, TOY.z_dim, 3, 8, 8) * torch.tensor([0.5, 1.0, 2.0]).view(1, 1, 3, 1, 1)
    prompts = CAPTIONS[:2]
    assert probe.relative_error_by_frame(oracle_pipeline(x0, 0.0), x0, prompts, 0.6, 0) == pytest.approx(
        [0.0, 0.0, 0.0], abs=1e-6
    )
    # a velocity error of 1 on frame 0 is a clean-latent error of sigma = 0.6 there
    relative = probe.relative_error_by_frame(oracle_pipeline(x0, 1.0), x0, prompts, 0.6, 0)
    variance = float(x0[:, :, 0].var(dim=(2, 3)).mean())
    assert relative == pytest.approx([0.36 / variance, 0.0, 0.0], rel=1e-4, abs=1e-6)
