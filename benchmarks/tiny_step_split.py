"""Where a stage-2 training step of the tiny Wan model spends its time: rendering the videos,
encoding them with the VAE, and the transformer's forward and backward (text encoder included).

Decides how much data echoing (``--echo``, ``dit_accel/tiny/echo.py``) can buy: it divides the
render and encode parts by the echo factor. Median of ``--repeats`` timed runs after one warm-up,
each part synchronised on its own; the model is randomly initialised (costs do not depend on the
weights) and the videos are real renders.

    python benchmarks/tiny_step_split.py --out benchmarks/results/tiny_step_split_cpu.json --batch 1   # CPU
    python benchmarks/tiny_step_split.py --out $OUT/tiny_step_split_h200.json                        # GPU, plan batches
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dit_accel.tiny.build import FULL, build_pipeline
from dit_accel.tiny.text import encode_prompts
from dit_accel.tiny.train import (
    FULL_PLAN,
    TIMESTEP_SCALE,
    Bucket,
    Denoiser,
    autocast,
    configure_device,
    flow_pair,
    random_videos,
    sample_sigmas,
)

TEXT_LENGTH = 268  # the mean of the padded prompt lengths training draws from


def timed(part: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Seconds ``part`` takes, the device synchronised before and after, and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = part()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def split_step(denoiser: Denoiser, bucket: Bucket, batch: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Median milliseconds of each part of one training step of ``batch`` videos of ``bucket``'s size."""
    pipe, rng = denoiser.pipe, np.random.default_rng(0)
    times: dict[str, list[float]] = {"render": [], "encode": [], "transformer": []}

    def train_step(x0: torch.Tensor, captions: list) -> None:
        sigma = sample_sigmas(batch, FULL.flow_shift, device)
        noisy, target = flow_pair(x0, torch.randn_like(x0), sigma)
        with autocast(device):
            text = encode_prompts(pipe.tokenizer, pipe.text_encoder, [c.text for c in captions], pad_to=TEXT_LENGTH)
            prediction = pipe.transformer(noisy, sigma * TIMESTEP_SCALE, text, return_dict=False)[0]
        torch.nn.functional.mse_loss(prediction.float(), target).backward()

    for repeat in range(repeats + 1):  # the first is a warm-up
        render_s, (captions, videos) = timed(
            lambda: random_videos(rng, batch, bucket.num_frames, bucket.height, bucket.width, device), device
        )
        encode_s, x0 = timed(lambda videos=videos: denoiser.latents(videos, device), device)
        transformer_s, _ = timed(lambda x0=x0, captions=captions: train_step(x0, captions), device)
        if repeat:
            for name, seconds in zip(times, (render_s, encode_s, transformer_s), strict=True):
                times[name].append(seconds)
    medians = {f"{name}_ms": 1000 * statistics.median(values) for name, values in times.items()}
    total = sum(medians.values())
    return {
        **medians,
        "render_and_encode_share": (medians["render_ms"] + medians["encode_ms"]) / total,
        "step_ms": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="videos per step (default: the plan's per size)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = configure_device(args.device)
    pipe = build_pipeline(FULL, seed=0).to(device)
    pipe.vae.requires_grad_(False)
    denoiser = Denoiser(pipe, torch.zeros(FULL.z_dim, device=device), torch.ones(FULL.z_dim, device=device))
    record = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "sizes": [],
    }
    for bucket in FULL_PLAN.buckets:
        batch = args.batch or bucket.batch
        split = split_step(denoiser, bucket, batch, args.repeats, device)
        record["sizes"].append(
            {"frames_height_width": [bucket.num_frames, bucket.height, bucket.width], "batch": batch, **split}
        )
        print(json.dumps(record["sizes"][-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
