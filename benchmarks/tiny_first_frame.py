"""Is the tiny model's first frame its weak one? Per video frame, how often generated videos show
the caption's colour; per latent frame, how much the VAE latents of real videos vary across space,
and how large the transformer's error on them is against that spread.

    PYTHONPATH=. python benchmarks/tiny_first_frame.py --model assets/tiny-wan-t2v --captions 16 \\
        --out benchmarks/results/tiny-model/tiny_first_frame_run5_cpu.json

The causal VAE codes the first video frame alone and every later latent frame from four video
frames. If that first latent varies less across space (in the normalised units the transformer
predicts), an error of the same size costs the first decoded frame more of its content; the
record's ``suggested_first_frame_weight`` is the squared ratio of the later frames' spatial std to
the first's, the weight that would make the training loss count errors relative to each frame's
content (``--first-frame-weight`` of ``tools.tiny_wan.train``). ``relative_error_by_frame`` checks
the premise on the model: at each noise level, the mean squared error of the clean latents the
transformer's velocity implies, per latent frame, over that frame's spatial variance (1: no better
than a flat guess of the frame's mean). Quick size (17x128x128, 12 steps).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import WanPipeline

from dit_accel.bench import environment
from tools.tiny_wan.build import FULL
from tools.tiny_wan.data import nearest_colour, parse_caption, read_video, render_batch
from tools.tiny_wan.text import PIPELINE_TEXT_LENGTH
from tools.tiny_wan.train import (
    Denoiser,
    evaluation_captions,
    flow_pair,
    mse_by_latent_frame,
    predict_velocity,
    saved_latent_statistics,
)


def colour_by_frame(captions: list[str], videos: np.ndarray) -> list[float]:
    """Per frame index, the share of ``videos`` ``(N, F, H, W, 3)`` whose object in that frame alone
    has its caption's (starting) colour; a frame without a visible object counts as wrong."""
    hits = np.zeros(videos.shape[1])
    for caption, frames in zip(captions, videos, strict=True):
        colour = parse_caption(caption).colour
        for index in range(frames.shape[0]):
            reading = read_video(frames[index : index + 1])
            hits[index] += reading is not None and nearest_colour(reading.first_hue) == colour
    return (hits / len(captions)).tolist()


def spatial_std_by_latent_frame(latents: torch.Tensor) -> list[float]:
    """Per latent frame of ``(N, C, F, H, W)`` latents, the std across space, averaged over videos and channels."""
    return latents.float().std(dim=(3, 4)).mean(dim=(0, 1)).tolist()


@torch.no_grad()
def relative_error_by_frame(
    pipe: WanPipeline, x0: torch.Tensor, prompts: list[str], sigma: float, seed: int
) -> list[float]:
    """Per latent frame, the squared error of the clean latents implied by the transformer's velocity
    at noise level ``sigma`` (``noisy - sigma * velocity``), over the frame's spatial variance."""
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    sigmas = torch.full((x0.shape[0],), sigma)
    noisy, target = flow_pair(x0, noise, sigmas)
    velocity = predict_velocity(pipe, noisy, sigmas, prompts, PIPELINE_TEXT_LENGTH, x0.device)
    error = (sigma**2) * mse_by_latent_frame(velocity, target)
    variance = x0.float().var(dim=(3, 4)).mean(dim=(0, 1))
    return (error / variance).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a saved tiny WanPipeline")
    parser.add_argument("--captions", type=int, default=16, help="random grammar captions")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.3, 0.6, 0.85])
    parser.add_argument("--out", type=Path, required=True, help="JSON record to write")
    args = parser.parse_args()

    cpu = torch.device("cpu")
    pipe = WanPipeline.from_pretrained(args.model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    captions = evaluation_captions(args.captions, args.seed)
    call = FULL.quick_call()
    generator = torch.Generator().manual_seed(args.seed)
    videos = pipe(captions, generator=generator, output_type="np", **call).frames
    colour = colour_by_frame(captions, videos)

    denoiser = Denoiser(pipe, *saved_latent_statistics(pipe, cpu))
    seeds = list(range(args.seed, args.seed + len(captions)))
    size = call["num_frames"], call["height"], call["width"]
    rendered = render_batch([parse_caption(c) for c in captions], seeds, *size, cpu)
    x0 = denoiser.latents(rendered, cpu)
    spread = spatial_std_by_latent_frame(x0)
    relative = {
        str(sigma): [round(e, 4) for e in relative_error_by_frame(pipe, x0, captions, sigma, args.seed + i)]
        for i, sigma in enumerate(args.sigmas)
    }
    record = {
        "model": str(args.model),
        "call": call,
        "captions": len(captions),
        "environment": environment(cpu),
        "colour_by_frame": [round(c, 4) for c in colour],
        "latent_spatial_std_by_frame": [round(s, 4) for s in spread],
        "suggested_first_frame_weight": round((float(np.mean(spread[1:])) / spread[0]) ** 2, 2),
        "relative_error_by_frame": relative,
    }
    print(json.dumps(record), flush=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
