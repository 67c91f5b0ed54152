"""Caption adherence of a trained tiny FLUX model on held-out grammar captions, scored by the reader.

    PYTHONPATH=. python benchmarks/tiny_flux_eval.py --model DIR --count 128 --out eval.json --sheet sheet.png
    (on the GPU machine: `bash benchmarks/tiny_flux_train_job.sh eval DIR`)

Generates ``--count`` captions drawn from their own seed (``tools.tiny_flux.evaluate``) with the
model's ``generation_defaults.json`` (size, steps, true CFG with an empty negative prompt,
``max_sequence_length``), optionally overridden by ``--steps`` / ``--cfg``, and checks every image
with ``tools.tiny_flux.reader.check_image``: shares of images whose objects are all found, have
their shapes, sizes and relations, with nothing else there (``adherence`` = found, shape, relation
and count; ``exact`` adds size), overall and by object count, plus each prompt's reading. The JSON
also holds the environment and seconds per image; ``--sheet`` writes the first 16 images as a 4x4
picture, in the order of the JSON's prompts. ``reader_on_renders`` scores the data generator's own
renders of the same captions: the reader's ceiling.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import FluxPipeline
from PIL import Image

from dit_accel.bench import environment
from dit_accel.tiny_model import GENERATION_DEFAULTS_FILE
from tools.tiny_flux.evaluate import EVAL_SEED, evaluate, evaluate_renders, evaluation_captions, generate


def contact_sheet(images: np.ndarray, columns: int = 4) -> Image.Image:
    """``(N, H, W, 3)`` images in [0, 1] as one picture, ``columns`` wide, row by row."""
    count, height, width, _ = images.shape
    rows = -(-count // columns)
    sheet = np.ones((rows * height, columns * width, 3), np.float32)
    for index, image in enumerate(images):
        top, left = index // columns * height, index % columns * width
        sheet[top : top + height, left : left + width] = image
    return Image.fromarray((sheet * 255).round().astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a saved tiny FluxPipeline")
    parser.add_argument("--count", type=int, default=128, help="held-out captions to generate")
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of the captions")
    parser.add_argument("--batch", type=int, default=32, help="images per pipeline call")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--cfg", type=float, default=None, help="true_cfg_scale (default: the model's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True, help="JSON record to write")
    parser.add_argument("--sheet", type=Path, default=None, help="PNG of the first 16 images (optional)")
    args = parser.parse_args()
    if args.count < 1 or args.batch < 1:
        parser.error(f"--count and --batch must be >= 1, got {args.count} and {args.batch}")

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = FluxPipeline.from_pretrained(args.model, dtype=dtype).to(device)
    call = json.loads((args.model / GENERATION_DEFAULTS_FILE).read_text())
    if args.steps is not None:
        call["num_inference_steps"] = args.steps
    if args.cfg is not None:
        call["true_cfg_scale"] = args.cfg
    started = time.monotonic()
    result = evaluate(pipe, call, args.count, seed=args.seed, batch=args.batch)
    seconds = time.monotonic() - started
    result["reader_on_renders"] = evaluate_renders(args.count, args.seed)  # the ceiling: the reader's own error
    summary = {k: v for k, v in result.items() if k not in ("prompts", "by_objects", "reader_on_renders")}
    print(json.dumps(summary), "\nby objects:", json.dumps(result["by_objects"]), flush=True)
    record = {
        "model": str(args.model),
        "environment": environment(device),
        "seconds_per_image": round(seconds / max(result["images"], 1), 4),
        **result,
    }
    args.out.write_text(json.dumps(record, indent=1, default=str) + "\n")
    if args.sheet is not None:
        prompts = evaluation_captions(min(16, args.count), args.seed)
        contact_sheet(generate(pipe, prompts, call, batch=args.batch)).save(args.sheet)


if __name__ == "__main__":
    main()
