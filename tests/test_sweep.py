"""``dit-accel sweep``: shared dense runs, one compare record per (variant, pair), paired means."""

from __future__ import annotations

import json
import math

import pytest

from dit_accel.cli import main as cli_main
from dit_accel.compare import compare
from dit_accel.sweep import Variant, pairs, sweep
from tools.tiny_wan.build import TOY, build_pipeline

CALL = {"num_inference_steps": 2, "height": 64, "width": 64, "num_frames": 9, "guidance_scale": None}
SPARSE = "density=0.34 block_size=16"


@pytest.fixture(scope="module")
def wan_pipe():
    pipe = build_pipeline(TOY, seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_variant_parsing_checks_the_method_and_options():
    variant = Variant.parse("topk density=0.25 block_size=(128,64)")
    assert (variant.method, variant.options) == ("topk", {"density": 0.25, "block_size": (128, 64)})
    with pytest.raises(ValueError, match="unknown method"):
        Variant.parse("nope density=0.1")
    with pytest.raises(TypeError, match="allowed options"):
        Variant.parse("topk dens=0.1")
    with pytest.raises(ValueError, match="empty"):
        Variant.parse("  ")


def test_pairs_cycle_the_prompts_with_rising_seeds():
    assert pairs(["a", "b"], 3, 5) == [("a", 5), ("b", 6), ("a", 7)]
    with pytest.raises(ValueError, match="pairs"):
        pairs(["a"], 0, 0)


def test_sweep_matches_single_compares_and_pairs_the_differences(wan_pipe, tmp_path):
    variants = [Variant.parse(f"topk {SPARSE}"), Variant.parse("dense")]
    prompt_pairs = [("a red circle moving right on a striped blue background", 3), ("a blue star growing", 4)]
    summary = sweep(wan_pipe, variants, prompt_pairs, CALL, tmp_path)

    dense, topk = summary["variants"]["dense"], summary["variants"][f"topk {SPARSE}"]
    assert dense["psnr"] == [math.inf, math.inf]  # dense vs dense: identical frames
    assert json.loads((tmp_path / "summary.json").read_text())["variants"]["dense"]["psnr_mean"] is None
    single = [
        compare(wan_pipe, "topk", {"density": 0.34, "block_size": 16}, prompt=p, seed=s,
                **{k: v for k, v in CALL.items() if v is not None}).psnr
        for p, s in prompt_pairs
    ]  # fmt: skip
    assert topk["psnr"] == pytest.approx(single, abs=1e-6)
    assert topk["psnr_mean"] == pytest.approx(sum(single) / 2)
    assert 20 < topk["psnr_min"] <= topk["psnr_max"] < 80
    assert (topk["psnr_vs_baseline"], dense["psnr_vs_baseline"]) == (0.0, math.inf)
    records = sorted(tmp_path.glob("topk*/compare-topk-*.json"))
    assert [json.loads(r.read_text())["seed"] for r in records] == [3, 4]
    assert not list(tmp_path.rglob("*.gif"))  # videos only when asked
    assert "| `topk density=0.34 block_size=16` |" in (tmp_path / "summary.md").read_text()


def test_cli_sweep_writes_the_summary(wan_pipe, tmp_path, capsys):
    wan_pipe.save_pretrained(tmp_path / "model")
    size = ["--steps", "2", "--height", "64", "--width", "64", "--frames", "9"]
    code = cli_main(["sweep", "--model", str(tmp_path / "model"), "--variant", f"topk {SPARSE}", "--pairs", "2",
                     "--first-seed", "7", *size, "--videos", "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [p["seed"] for p in summary["pairs"]] == [7, 8]
    assert len(list((tmp_path / "out").glob("topk*/*.gif"))) == 2
    assert "summary.md" in capsys.readouterr().out
    assert cli_main(["sweep", "--model", str(tmp_path / "model"), "--variant", "topk dens=1"]) == 2


def test_a_variant_that_fails_is_dropped_and_the_rest_still_measured(wan_pipe, tmp_path, monkeypatch):
    import dit_accel.sweep as sweep_module

    real = sweep_module.run_with_method

    def broken_pisa(pipe, config, *args, **kwargs):
        if config.method == "pisa":
            raise RuntimeError("kernel failed to compile")
        return real(pipe, config, *args, **kwargs)

    monkeypatch.setattr(sweep_module, "run_with_method", broken_pisa)
    variants = [Variant.parse(f"topk {SPARSE}"), Variant.parse(f"pisa {SPARSE}"), Variant.parse("dense")]
    summary = sweep(wan_pipe, variants, [("a blue star growing", 1)], CALL, tmp_path)
    assert list(summary["variants"]) == [f"topk {SPARSE}", "dense"]
    assert summary["failed"] == {f"pisa {SPARSE}": "RuntimeError: kernel failed to compile"}
    assert summary["variants"]["dense"]["psnr"] == [math.inf]  # measured after the failure
    assert "Failed, dropped from the sweep: `pisa" in (tmp_path / "summary.md").read_text()
    with pytest.raises(RuntimeError, match="compile"):  # the baseline of the paired differences may not fail
        sweep(wan_pipe, variants[1:], [("a blue star growing", 1)], CALL, tmp_path / "again")
