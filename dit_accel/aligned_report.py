"""``dit-accel aligned-report``: one batch generated without and with AlignedGen, compared.

Same prompts (``"{subject}, {style}"``) and the same per-image seeds for both runs. Writes
``aligned_report.png`` (top row: without AlignedGen, bottom row: with) and ``aligned_report.json``
with the style metrics of :mod:`dit_accel.style_metrics` for each run, and, when image 0 is the
reference, how far image 0 moved (it must not: ``reference_max_abs_diff`` is 0 with exact attention).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from dit_accel.compare import add_device_arguments, load_pipeline, parse_option
from dit_accel.editing.aligned_batch import PROMPT_TEMPLATE, aligned_batch
from dit_accel.style_metrics import ClipScorer, offline_style_metrics, to_rgb_uint8

GRID_NAME = "aligned_report.png"
JSON_NAME = "aligned_report.json"


def image_grid(rows: Sequence[Sequence[PIL.Image.Image]]) -> PIL.Image.Image:
    """Images pasted row by row on one canvas (all of one size)."""
    width, height = rows[0][0].size
    canvas = PIL.Image.new("RGB", (width * max(len(row) for row in rows), height * len(rows)))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            canvas.paste(image, (c * width, r * height))
    return canvas


def batch_metrics(images: Sequence[PIL.Image.Image], prompts: Sequence[str], clip: ClipScorer | None) -> dict:
    """The offline style metrics of one batch, plus the CLIP ones when a scorer is given."""
    metrics: dict[str, Any] = offline_style_metrics(images)
    if clip is not None:
        metrics |= clip.scores(images, prompts)
    return metrics


def run_report(
    pipe: Any,
    style: str,
    subjects: Sequence[str],
    out_dir: str | Path,
    *,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    reference_image: PIL.Image.Image | torch.Tensor | None = None,
    clip: ClipScorer | None = None,
    **pipe_kwargs: Any,
) -> dict[str, Any]:
    """Generate the batch without and with AlignedGen, write the grid and the JSON, return the report."""
    prompts = [PROMPT_TEMPLATE.format(subject=subject, style=style) for subject in subjects]

    def generators() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(seed + i) for i in range(len(subjects))]

    baseline = pipe(prompt=prompts, generator=generators(), output_type="pil", **pipe_kwargs).images
    aligned = aligned_batch(
        pipe,
        style,
        subjects,
        reference_image=reference_image,
        options=options,
        generator=generators(),
        output_type="pil",
        **pipe_kwargs,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image_grid([baseline, aligned]).save(out / GRID_NAME)
    report: dict[str, Any] = {
        "style": style,
        "subjects": list(subjects),
        "prompts": prompts,
        "seed": seed,
        "options": {key: repr(value) for key, value in (options or {}).items()},
        "external_reference": reference_image is not None,
        "metrics": {
            "baseline": batch_metrics(baseline, prompts, clip),
            "aligned": batch_metrics(aligned, prompts, clip),
        },
        "grid": GRID_NAME,
    }
    if reference_image is None:
        moved = np.abs(to_rgb_uint8(baseline[0]).astype(int) - to_rgb_uint8(aligned[0]).astype(int))
        report["reference_max_abs_diff"] = int(moved.max())
    (out / JSON_NAME).write_text(json.dumps(report, indent=2))
    return report


def _command(args: argparse.Namespace) -> int:
    pipe = load_pipeline(args.model, args.device, args.dtype)
    reference = PIL.Image.open(args.reference_image).convert("RGB") if args.reference_image else None
    clip = ClipScorer.load(args.clip_model, device=pipe.device) if args.clip_model else None
    report = run_report(
        pipe,
        args.style,
        args.subjects,
        args.out,
        seed=args.seed,
        options=dict(args.option),
        reference_image=reference,
        clip=clip,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        height=args.height,
        width=args.width,
    )
    for run, metrics in report["metrics"].items():
        print(f"{run:9s} " + "  ".join(f"{name}={value:.4f}" for name, value in metrics.items()))
    if clip is None:
        print("CLIP metrics skipped: pass --clip-model DIR (a local CLIP model) to add them")
    print(f"wrote {Path(args.out) / GRID_NAME} and {Path(args.out) / JSON_NAME}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``aligned-report`` to the ``dit-accel`` command line."""
    parser = subparsers.add_parser(
        "aligned-report", help="generate a FLUX batch with and without AlignedGen and compare style consistency"
    )
    parser.add_argument("--model", required=True, help="FluxPipeline directory or Hub id")
    parser.add_argument("--style", required=True, help='shared style phrase, e.g. "in the style of a watercolor"')
    parser.add_argument(
        "--subjects", required=True, nargs="+", help="one subject per image; the first is the reference"
    )
    parser.add_argument("--out", default="aligned_report", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i in both runs")
    parser.add_argument("--steps", dest="num_inference_steps", type=int, default=30)
    parser.add_argument("--guidance-scale", type=float, default=3.5)
    parser.add_argument("--height", type=int, help="image height; default: the pipeline's")
    parser.add_argument("--width", type=int, help="image width; default: the pipeline's")
    add_device_arguments(parser)
    parser.add_argument("--reference-image", help="external style image (generated size) instead of image 0")
    parser.add_argument("--clip-model", help="local CLIP model directory for the CLIP metrics (nothing is downloaded)")
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        type=parse_option,
        metavar="KEY=VALUE",
        help="aligned_gen option, repeatable: -o style_lambda=1.2 -o attention=topk -o density=0.1",
    )
    parser.set_defaults(func=_command)
