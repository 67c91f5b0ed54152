"""Where a stage-2 training step of the tiny Wan model spends its time: rendering the videos,
encoding them with the VAE, and the loss with its backward (text encoder and transformer).

Decides how much data echoing (``--echo``, ``tools/tiny_wan/echo.py``) can buy: it divides the
render and encode parts by the echo factor. Each part is timed on its own with the project's
``median_ms`` (CUDA events after warm-up on a GPU; median of 3 after one warm-up on a CPU), on real
renders and the training code's own ``flow_loss``; the model is randomly initialised, as costs do
not depend on the weights.

    PYTHONPATH=. python benchmarks/tiny_step_split.py --batch 1 \\
        --out benchmarks/results/tiny-model/tiny_step_split_cpu.json  # CPU
    python benchmarks/tiny_step_split.py --out $OUT/tiny_step_split_h200.json  # GPU after gpu_env.sh, plan batches
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dit_accel.bench import environment, median_ms
from tools.tiny_wan.build import FULL, build_pipeline
from tools.tiny_wan.text import CAPTION_TOKENS, PIPELINE_TEXT_LENGTH
from tools.tiny_wan.train import FULL_PLAN, Bucket, Denoiser, configure_device, flow_loss, random_videos

MEAN_TEXT_LENGTH = (CAPTION_TOKENS + PIPELINE_TEXT_LENGTH) // 2  # training pads prompts uniformly in between


def split_step(denoiser: Denoiser, bucket: Bucket, batch: int, device: torch.device) -> dict[str, float]:
    """Median milliseconds of each part of one training step of ``batch`` videos of ``bucket``'s size."""
    rng = np.random.default_rng(0)
    size = (batch, bucket.num_frames, bucket.height, bucket.width)
    captions, videos = random_videos(rng, *size, device)
    x0 = denoiser.latents(videos, device)
    prompts = [c.text for c in captions]
    parts = {
        "render_ms": median_ms(lambda: random_videos(rng, *size, device), device),
        "encode_ms": median_ms(lambda: denoiser.latents(videos, device), device),
        "loss_and_backward_ms": median_ms(
            lambda: flow_loss(denoiser, FULL_PLAN, x0, prompts, MEAN_TEXT_LENGTH, device).backward(), device
        ),
    }
    step = sum(parts.values())
    return {**parts, "step_ms": step, "render_and_encode_share": (parts["render_ms"] + parts["encode_ms"]) / step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="videos per step (default: the plan's per size)")
    args = parser.parse_args()
    device = configure_device(args.device)
    pipe = build_pipeline(FULL, seed=0).to(device)
    pipe.vae.requires_grad_(False)
    denoiser = Denoiser(pipe, torch.zeros(FULL.z_dim, device=device), torch.ones(FULL.z_dim, device=device))
    record = {**environment(device), "threads": torch.get_num_threads(), "sizes": []}
    for bucket in FULL_PLAN.buckets:
        batch = args.batch or bucket.batch
        size = {"frames_height_width": [bucket.num_frames, bucket.height, bucket.width], "batch": batch}
        record["sizes"].append({**size, **split_step(denoiser, bucket, batch, device)})
        print(json.dumps(record["sizes"][-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
