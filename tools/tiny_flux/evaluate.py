"""Caption adherence of a text-to-image pipeline on held-out grammar captions, scored by the reader.

Captions are drawn from their own seed (the training draws from others); images are generated in
batches, each with its own generator seeded by the prompt's index, so a result is reproducible
prompt by prompt. Scores are the shares of images for which :func:`tools.tiny_flux.reader.check_image`
agrees, overall and by the number of objects a caption names.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

from .data import MAX_OBJECTS, parse_caption, render_image, sample_caption
from .reader import check_image

SCORES = ("found", "shape", "size", "relation", "count", "adherence", "exact")
EVAL_SEED = 1234


def evaluation_captions(count: int, seed: int = EVAL_SEED) -> list[str]:
    rng = np.random.default_rng([seed, 7])
    return [sample_caption(rng).text for _ in range(count)]


@torch.no_grad()
def generate(
    pipe: DiffusionPipeline, prompts: list[str], call: dict[str, Any], first_seed: int = 0, batch: int = 16
) -> np.ndarray:
    """``(N, H, W, 3)`` float images in [0, 1]; prompt ``i`` uses a generator seeded ``first_seed + i``."""
    pipe.set_progress_bar_config(disable=True)
    images = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        generators = [torch.Generator("cpu").manual_seed(first_seed + start + i) for i in range(len(chunk))]
        images.append(pipe(chunk, generator=generators, output_type="np", **call).images)
    return np.concatenate(images)


def summarise(prompts: list[str], checks: list[dict[str, Any]]) -> dict[str, Any]:
    """Share of agreeing images per score, overall and by object count."""
    counts = [len(parse_caption(p).things) for p in prompts]
    summary: dict[str, Any] = {"images": len(checks)}
    summary.update({key: float(np.mean([c[key] for c in checks])) if checks else None for key in SCORES})
    summary["by_objects"] = {}
    for n in range(1, MAX_OBJECTS + 1):
        chosen = [c for c, k in zip(checks, counts, strict=True) if k == n]
        if chosen:
            summary["by_objects"][str(n)] = {
                "images": len(chosen),
                **{key: float(np.mean([c[key] for c in chosen])) for key in SCORES},
            }
    return summary


def evaluate(
    pipe: DiffusionPipeline,
    call: dict[str, Any],
    count: int,
    until: float = float("inf"),
    seed: int = EVAL_SEED,
    batch: int = 16,
) -> dict[str, Any]:
    """Scores of ``count`` held-out captions generated with ``call``; after the first batch, stops early
    rather than overrun ``until`` (a ``time.monotonic()`` value). ``prompts`` lists each caption's checks."""
    prompts = evaluation_captions(count, seed)
    checks, last = [], 0.0
    for start in range(0, count, batch):
        started = time.monotonic()
        if checks and started + last >= until:  # the next batch would not end in time (the first always runs)
            break
        chunk = prompts[start : start + batch]
        images = generate(pipe, chunk, call, first_seed=start, batch=batch)
        checks += [check_image(p, image) for p, image in zip(chunk, images, strict=True)]
        last = time.monotonic() - started
    done = prompts[: len(checks)]
    return {
        **summarise(done, checks),
        "call": call,
        "seed": seed,
        "prompts": [{"prompt": p, **c} for p, c in zip(done, checks, strict=True)],
    }


def evaluate_renders(count: int, seed: int = EVAL_SEED) -> dict[str, Any]:
    """The reader's ceiling: the same scores on the data generator's own renders of the held-out captions
    (what a perfect model would get; anything below 1.0 is the reader's error, not the model's)."""
    prompts = evaluation_captions(count, seed)
    images = [render_image(p, seed * 1000 + i)[0].astype(np.float32) / 255.0 for i, p in enumerate(prompts)]
    return summarise(prompts, [check_image(p, image) for p, image in zip(prompts, images, strict=True)])
