"""benchmarks/results_table.py: records of different schemas become rows of their topic's tables."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark_scripts import load_script

KERNEL_RECORD = [
    {
        "kind": "kernel",
        "shape_name": "toy",
        "shape": [1, 2, 300, 64],
        "dtype": "bfloat16",
        "gpu": "NVIDIA H200",
        "torch": "2.11.0",
        "method": "topk",
        "density": 0.25,
        "block_size": [128, 64],
        "ms": 1.23456,
        "tflops": 100.0,
        "speedup_vs_cudnn": 3.5,
        "rel_l1_vs_dense": 0.01234,
    }
]
COMPARE_RECORD = {
    "model": "/somewhere/tiny-wan-t2v",
    "method": "topk",
    "options": {"density": 0.125, "dense_steps": 0},
    "seed": 7,
    "call": {"num_frames": 17, "height": 128, "width": 128, "num_inference_steps": 12},
    "device": "cpu",
    "dtype": "float32",
    "psnr": 15.4321,
    "ssim": 0.4567,
    "speedup": 0.35,
}
FLASHBLOCK_RECORD = {
    "kind": "flashblock_e2e",
    "gpu": "NVIDIA H200",
    "tokens": 300,
    "latent": [5, 6, 10],
    "frame_timesteps": [[0.0, 0.0, 999.0, 999.0, 999.0]],
    "refresh_every": 8,
    "variants": {
        "flashblock_refresh1": {"attention_ms_mean": 10.0, "step_ms_mean": 30.0, "rel_l1_vs_dense": [0.01],
                                "attention_speedup_vs_uncached": 1.0},
        "flashblock": {"attention_ms_mean": 4.0, "step_ms_mean": 24.0, "rel_l1_vs_dense": [0.02, 0.03],
                       "attention_speedup_vs_uncached": 2.5},
    },
}  # fmt: skip


def test_tables_from_two_records(tmp_path: Path) -> None:
    (tmp_path / "kernel").mkdir()
    (tmp_path / "quality").mkdir()
    (tmp_path / "kernel" / "kernel_toy.json").write_text(json.dumps(KERNEL_RECORD))
    (tmp_path / "quality" / "compare_toy.json").write_text(json.dumps(COMPARE_RECORD))
    (tmp_path / "quality" / "other.json").write_text(json.dumps({"anything": 1}))
    (tmp_path / "e2e").mkdir()
    (tmp_path / "e2e" / "fb.json").write_text(json.dumps(FLASHBLOCK_RECORD))

    out = load_script("results_table").main(["--results", str(tmp_path)])

    text = out.read_text()
    assert out == tmp_path / "README.md"
    lines = text.splitlines()
    kernel_row = (
        "| NVIDIA H200 | toy (1, 2, 300, 64) bfloat16 | topk | density=0.25, block_size=[128, 64] | 1.235 | 3.50x "
        "| 0.0123 | kernel_toy.json |"
    )
    compare_group = "| tiny-wan-t2v | 17x128x128, 12 steps | cpu | float32 | topk | 0.125 |  |"
    assert kernel_row in lines
    assert f"{compare_group} 1 | 15.43 | 0.457 | 0.35x |" in lines  # mean over its one run
    assert f"{compare_group} 7 | 15.43 | 0.457 | 0.35x | compare_toy.json |" in lines
    assert "Not tabulated: `other.json`." in lines
    flashblock_call = "| NVIDIA H200 | 300 tokens, latent (5, 6, 10), 2 clean frames | 8 |"
    assert f"{flashblock_call} flashblock | 4.0 | 24.0 | 2.50x | 0.0300 | fb.json |" in lines
    assert "## editors/" not in text  # no folder, no section
