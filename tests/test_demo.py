"""The demo's logic (dit_accel.demo): the models it serves, comparisons with videos and a block map,
style-batch checks, and the ``dit-accel demo`` command."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dit_accel.block_map import BlockMap, BlockMapRequest
from dit_accel.cli import main
from dit_accel.demo import (
    KEPT_RUNS,
    NO_FLUX_MODEL,
    DemoSession,
    block_map_request,
    block_map_view,
    model_family,
    parse_options,
    run_comparison,
    run_style_batch,
    shipped_models,
)
from dit_accel.tiny_model import TINY_FLUX_DIR, TINY_MODEL_DIR
from tools.tiny_wan.build import TOY, build_pipeline

PROMPT = "a red circle moving right on a striped blue background"


@pytest.fixture(scope="module")
def session():
    session = DemoSession(["toy"], device="cpu", dtype="float32")
    session.add("toy", build_pipeline(TOY, seed=0))
    return session


def test_parse_options_accepts_commas_newlines_and_literals():
    parsed = parse_options("density=0.25, block_size=(32, 16)\ndense_steps=2,  ")
    assert parsed == {"density": 0.25, "block_size": (32, 16), "dense_steps": 2}
    assert parse_options("") == {}
    with pytest.raises(Exception, match="KEY=VALUE"):
        parse_options("density")


def frame_count(path: str) -> int:
    capture, count = cv2.VideoCapture(path), 0
    while capture.read()[0]:
        count += 1
    return count


def test_a_comparison_gives_playable_videos_metrics_and_the_block_map(session):
    run = run_comparison(session, "toy", "topk", "density=0.34, block_size=16", PROMPT, 0, steps=2, frames=5,
                         height=64, width=64)  # fmt: skip
    result = run.result
    assert run.dense_video.endswith(".webm") and run.method_video.endswith("topk.webm")
    assert frame_count(run.dense_video) == frame_count(run.method_video) == 5
    assert len(result.psnr_per_frame) == len(result.ssim_per_frame) == 5
    assert "PSNR" in run.summary and "SSIM" in run.summary and "topk" in run.summary
    # Empty layer and step: the middle of the toy's 2 layers, the last of 2 steps. 2x4x4 tokens, blocks of 16: 2x2.
    assert run.map_request == BlockMapRequest(1, 1)
    assert (result.block_map.layer, result.block_map.step) == (1, 1)
    assert result.block_map.codes.shape[-2:] == (2, 2)
    assert result.block_map.fractions()["exact"] == pytest.approx(1 / 2)  # ceil(0.34 * 2) = 1 of 2 key blocks
    record = json.loads(Path(result.outputs["record"]).read_text())
    assert record["block_map"] == {"layer": 1, "step": 1, "fractions": result.block_map.fractions()}
    picture, caption = block_map_view(result.block_map, 1, run.map_request)
    assert picture.shape[2] == 3 and picture.shape[0] > 2 * 128  # the 2x2 map, 128 px a block, then the legend
    assert caption.startswith("Block map of layer 1, step 1, head 1") and "exact 50%" in caption


def test_block_map_layer_and_step_are_checked_against_the_model(session):
    pipe = session.pipeline("toy")
    assert block_map_request(pipe, {"num_inference_steps": 4}, "0", "2") == BlockMapRequest(0, 2)
    with pytest.raises(ValueError, match=r"block map layer must be in \[0, 1\] for this model, got 2"):
        block_map_request(pipe, {"num_inference_steps": 4}, 2, None)
    with pytest.raises(ValueError, match=r"block map step must be in \[0, 3\] for 4 steps, got 4"):
        block_map_request(pipe, {"num_inference_steps": 4}, None, "4")


def test_no_block_map_says_why_and_a_bad_head_is_named():
    picture, caption = block_map_view(None, 0, BlockMapRequest(0, 3))
    assert picture is None and caption.startswith("No block map of layer 0 at step 3: the method ran dense there")
    two_heads = BlockMap(torch.zeros(1, 2, 2, 2, dtype=torch.uint8), {0: "skipped", 1: "exact"}, 0, 0)
    with pytest.raises(ValueError, match=r"head must be in \[0, 1\], got 2"):
        block_map_view(two_heads, 2, BlockMapRequest(0, 0))


def test_only_the_models_the_demo_was_started_with_are_served(session):
    with pytest.raises(ValueError, match="model '/etc' is not one this demo serves; choose one of toy"):
        session.pipeline("/etc")
    with pytest.raises(ValueError, match="is not one this demo serves"):
        run_comparison(session, "../toy", "topk", "", PROMPT, 0, steps=1, frames=9, height=64, width=64)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        run_comparison(session, "toy", "nope", "", PROMPT, 0, steps=1, frames=9, height=64, width=64)


def test_model_families_are_read_without_loading(tmp_path, session):
    assert model_family(str(TINY_MODEL_DIR)) == "wan"
    (tmp_path / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "FluxTransformer2DModel"]}))
    assert model_family(str(tmp_path)) == "flux"
    (tmp_path / "model_index.json").write_text("{broken")
    assert model_family(str(tmp_path)) is None
    assert model_family("no-such-org/no-such-model") is None  # a hub id not in the local cache: unknown
    assert session.family("toy") == "wan"
    both = DemoSession([str(TINY_MODEL_DIR), "no-such-org/flux-like"])
    assert both.style_models() == ["no-such-org/flux-like"]  # video models are not offered for the style batch


def test_each_run_gets_a_fresh_folder_and_old_ones_are_deleted():
    session = DemoSession([])
    folders = [session.output_dir() for _ in range(KEPT_RUNS + 2)]
    assert [folder.is_dir() for folder in folders] == [False, False] + [True] * KEPT_RUNS


def test_the_style_batch_checks_its_inputs_before_running(session):
    with pytest.raises(ValueError, match="this demo serves none: start it without `--model`"):
        run_style_batch(session, None, "in ink", "a cat\na dog", "dense", "", None, 0)
    assert "the shipped tiny FLUX, offline" in NO_FLUX_MODEL
    with pytest.raises(ValueError, match="give at least two subjects"):
        run_style_batch(session, "toy", "in ink", "a cat", "dense", "", None, 0)
    with pytest.raises(TypeError, match="unknown option"):
        run_style_batch(session, "toy", "in ink", "a cat\na dog", "topk", "densty=0.2", None, 0)
    with pytest.raises(ValueError, match=r"toy is a wan model; the style-aligned batch needs a FLUX\.1 model"):
        run_style_batch(session, "toy", "in ink", "a cat\na dog", "topk", "density=0.2", None, 0)


def test_the_demo_command_serves_the_tiny_model_and_the_given_ones(monkeypatch):
    demo_app = pytest.importorskip("dit_accel.demo_app")
    launched = {}
    monkeypatch.setattr(demo_app, "build_app", lambda session: session)
    monkeypatch.setattr(demo_app, "launch", lambda app, *args: launched.update(session=app, args=args))
    assert main(["demo", "--model", "org/a", "--model", "/models/b", "--port", "7000", "--host", "0.0.0.0"]) == 0
    assert launched["session"].models == [*shipped_models(), "org/a", "/models/b"]
    assert launched["args"] == ("0.0.0.0", 7000, False)


def test_the_shipped_models_are_served_by_default_the_tiny_wan_model_first():
    assert shipped_models()[0] == str(TINY_MODEL_DIR)
    assert DemoSession().style_models() == [str(TINY_FLUX_DIR)]  # the style tab's default: the tiny FLUX
    assert all((TINY_MODEL_DIR.parent / Path(model).name / "model_index.json").is_file() for model in shipped_models())
    session = DemoSession()
    assert session.models == shipped_models()
    assert session.label(str(TINY_MODEL_DIR)) == "tiny-wan-t2v (shipped, offline)" and session.label("a/b") == "a/b"


def test_the_picture_shows_each_class_in_its_legend_colour():
    codes = torch.tensor([[[[0, 1], [1, 1]]]], dtype=torch.uint8)
    block_map = BlockMap(codes, {0: "skipped", 1: "exact"}, 0, 0)
    picture, caption = block_map_view(block_map, 0, BlockMapRequest(0, 0))
    colours = block_map.legend_colours()
    # 2x2 blocks of 128 px inside a 1 px frame, then one swatch per class (22 px rows from y = 264)
    assert np.array_equal(picture[1, 1], colours["skipped"]) and np.array_equal(picture[1 + 128, 1], colours["exact"])
    assert np.array_equal(picture[270, 10], colours["skipped"]) and np.array_equal(picture[292, 10], colours["exact"])
    assert "skipped 25%, exact 75%" in caption


def test_the_style_batch_on_the_shipped_tiny_flux_uses_its_native_call(monkeypatch):
    import dit_accel.demo as demo

    calls = []
    real = demo.aligned_batch
    monkeypatch.setattr(demo, "aligned_batch", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    session = DemoSession([str(TINY_FLUX_DIR)], device="cpu", dtype="float32")
    subjects = "a red star\na blue ring"
    images, report = run_style_batch(session, str(TINY_FLUX_DIR), "on a striped gray background", subjects, "dense",
                                     "", None, 0, steps=2)  # fmt: skip
    assert [image.size for image in images] == [(128, 128)] * 2
    native = json.loads((TINY_FLUX_DIR / "generation_defaults.json").read_text())
    assert {k: calls[0][k] for k in ("negative_prompt", "true_cfg_scale", "max_sequence_length")} == {
        k: native[k] for k in ("negative_prompt", "true_cfg_scale", "max_sequence_length")
    }
    assert calls[0]["num_inference_steps"] == 2 and "Gram distance" in report
