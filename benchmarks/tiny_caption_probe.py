"""Does the tiny model use its caption's motion and colour words? The flow loss of rendered videos
under the true caption against the same caption with the motion word (or the colour) swapped.

    PYTHONPATH=. python benchmarks/tiny_caption_probe.py --model assets/tiny-wan-t2v --out probe.json

A model that uses a word predicts worse when the word is wrong: the swapped caption's loss is
higher, most of all at high noise, where the video itself no longer shows the answer. Every variant
sees the same videos, noise and noise levels, so the gaps are the words' alone. Motion swaps go to
the opposite (left/right, up/down, growing/shrinking); colour swaps to the hue farthest away that
is not the background's. Videos at the quick size (17x128x128), prompts padded as the pipeline pads.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers import WanPipeline

from dit_accel.bench import environment
from tools.tiny_wan.build import FULL
from tools.tiny_wan.data import COLOURS, Caption, hue_distance, render_batch, sample_caption
from tools.tiny_wan.text import PIPELINE_TEXT_LENGTH
from tools.tiny_wan.train import Denoiser, saved_latent_statistics, velocity_loss

OPPOSITE_MOTION = {
    "left": "right",
    "right": "left",
    "up": "down",
    "down": "up",
    "growing": "shrinking",
    "shrinking": "growing",
}


def motion_swapped(caption: Caption) -> Caption:
    return replace(caption, motion=OPPOSITE_MOTION[caption.motion])


def colour_swapped(caption: Caption) -> Caption:
    others = [c for c in COLOURS if c != caption.background]
    return replace(caption, colour=max(others, key=lambda c: hue_distance(COLOURS[c], COLOURS[caption.colour])))


def probe_captions(count: int, rng: np.random.Generator) -> list[Caption]:
    """``count`` random captions whose motion has an opposite (no colour turns)."""
    captions: list[Caption] = []
    while len(captions) < count:
        caption = sample_caption(rng)
        if caption.motion in OPPOSITE_MOTION:
            captions.append(caption)
    return captions


@torch.no_grad()
def caption_losses(
    denoiser: Denoiser, x0: torch.Tensor, variants: dict[str, list[Caption]], sigma: float, seed: int
) -> dict[str, float]:
    """Mean flow loss of ``x0`` at noise level ``sigma`` under each variant's captions, one shared noise."""
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    sigmas = torch.full((x0.shape[0],), sigma)
    prompts = {name: [c.text for c in captions] for name, captions in variants.items()}
    return {
        name: float(velocity_loss(denoiser.pipe, x0, noise, sigmas, texts, PIPELINE_TEXT_LENGTH, x0.device))
        for name, texts in prompts.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a saved tiny WanPipeline")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 0.7, 0.85, 0.93, 0.97, 0.99])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="JSON record to write")
    args = parser.parse_args()

    pipe = WanPipeline.from_pretrained(args.model, dtype=torch.float32)
    cpu = torch.device("cpu")
    denoiser = Denoiser(pipe, *saved_latent_statistics(pipe, cpu))
    rng = np.random.default_rng(args.seed)
    captions = probe_captions(args.videos, rng)
    frames, height, width, _ = FULL.quick
    seeds = rng.integers(0, 2**31 - 1, size=len(captions)).tolist()
    x0 = denoiser.latents(render_batch(captions, seeds, frames, height, width, cpu), cpu)
    variants = {
        "true": captions,
        "motion_swapped": [motion_swapped(c) for c in captions],
        "colour_swapped": [colour_swapped(c) for c in captions],
    }
    rows = []
    for index, sigma in enumerate(args.sigmas):
        losses = caption_losses(denoiser, x0, variants, sigma, args.seed + index)
        gaps = {f"{name}_gap": losses[name] / losses["true"] - 1.0 for name in variants if name != "true"}
        rows.append({"sigma": sigma, **losses, **gaps})
        print(json.dumps(rows[-1]), flush=True)
    record = {
        "model": str(args.model),
        "videos": len(captions),
        "size": FULL.quick[:3],
        "environment": environment(cpu),
        "results": rows,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
