"""The demo's logic (dit_accel.demo): options parsing, comparisons and their summary."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

from dit_accel.demo import DemoSession, parse_options, run_comparison, run_style_batch
from tools.tiny_wan.build import TOY, build_pipeline


def test_parse_options_accepts_commas_newlines_and_literals():
    parsed = parse_options("density=0.25, block_size=(32, 16)\ndense_steps=2,  ")
    assert parsed == {"density": 0.25, "block_size": (32, 16), "dense_steps": 2}
    assert parse_options("") == {}
    with pytest.raises(Exception, match="KEY=VALUE"):
        parse_options("density")


def test_run_comparison_returns_a_side_by_side_and_its_numbers():
    session = DemoSession(device="cpu", dtype="float32")
    pipe = build_pipeline(TOY, seed=0)
    pipe.set_progress_bar_config(disable=True)
    session._pipes["toy"] = pipe
    path, summary = run_comparison(
        session, "toy", "topk", "density=0.34, block_size=16", "a red circle moving right on a striped blue background",
        0, steps=2, frames=9, height=64, width=64,
    )  # fmt: skip
    with Image.open(path) as image:
        assert image.size[0] >= 2 * 64 and image.size[1] >= 64
    assert "PSNR" in summary and "SSIM" in summary and "topk" in summary
    with pytest.raises(ValueError, match="unknown method"):
        run_comparison(session, "toy", "nope", "", "a red circle", 0, steps=1, frames=9, height=64, width=64)


def test_style_batch_checks_its_size_against_the_model_before_running():
    session = DemoSession(device="cpu", dtype="float32")
    config = SimpleNamespace(patch_size=1)  # FLUX: 8x VAE, 2x2 packed latents
    session._pipes["flux"] = SimpleNamespace(transformer=SimpleNamespace(config=config), vae_scale_factor=8)
    with pytest.raises(ValueError, match="height must be a multiple of 16 for SimpleNamespace, got 100"):
        run_style_batch(session, "flux", "in ink", "a cat\na dog", "", 0, size="100")
    with pytest.raises(ValueError, match="give a FLUX"):
        run_style_batch(session, " ", "in ink", "a cat\na dog", "", 0)
