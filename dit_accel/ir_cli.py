"""``dit-accel ir-diffusion``: a FLUX batch of subject references and target scenes with IR-Diffusion.

Regions on the command line: a box ``x0,y0,x1,y1`` in fractions of the image, or the path of a mask
image (non-zero pixels are the subject). A target lists one region per subject, joined by ``;``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from dit_accel.aligned_report import image_grid
from dit_accel.compare import add_device_arguments, generation_defaults, load_pipeline, parse_option
from dit_accel.editing.ir_batch import ir_batch

GRID_NAME = "ir_diffusion.png"


def parse_box(text: str) -> tuple[float, ...] | None:
    """``x0,y0,x1,y1`` as four floats, or None when ``text`` is not four numbers."""
    parts = text.split(",")
    try:
        return tuple(float(p) for p in parts) if len(parts) == 4 else None
    except ValueError:
        return None


def parse_region(text: str) -> Any:
    """A box ``x0,y0,x1,y1`` (four numbers) or a mask image path (non-zero = subject)."""
    box = parse_box(text)
    if box is not None:
        return box
    path = Path(text).expanduser()
    if not path.is_file():
        raise ValueError(f"a region is a box x0,y0,x1,y1 (fractions of the image) or a mask image file, got {text!r}")
    return np.asarray(PIL.Image.open(path).convert("L")) > 0


def _command(args: argparse.Namespace) -> int:
    references = [parse_region(r) for r in args.reference_regions]
    targets = [[parse_region(r) for r in regions.split(";")] for regions in args.target_regions]
    pipe = load_pipeline(args.model, args.device, args.dtype)
    call = {**generation_defaults(args.model), "num_inference_steps": args.num_inference_steps}
    call |= {name: value for name, value in (("height", args.height), ("width", args.width)) if value is not None}
    count = len(args.references) + len(args.targets)
    images = ir_batch(
        pipe, args.references, args.targets, references, targets, options=dict(args.option),
        generator=[torch.Generator().manual_seed(args.seed + i) for i in range(count)], output_type="pil", **call,
    )  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        name = f"reference_{i}.png" if i < len(args.references) else f"target_{i - len(args.references)}.png"
        image.save(out / name)
    image_grid([images]).save(out / GRID_NAME)
    print(f"wrote {len(images)} images and {out / GRID_NAME}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ir-diffusion`` to the ``dit-accel`` command line."""
    parser = subparsers.add_parser(
        "ir-diffusion", help="a FLUX batch [subject references..., targets...] with the subjects kept consistent"
    )
    parser.add_argument("--model", required=True, help="FluxPipeline directory or Hub id")
    parser.add_argument("--references", required=True, nargs="+", help="one prompt per subject (shown alone)")
    parser.add_argument(
        "--reference-regions", required=True, nargs="+", help="per reference: box x0,y0,x1,y1 or a mask image"
    )
    parser.add_argument("--targets", required=True, nargs="+", help="prompts of the scenes the subjects appear in")
    parser.add_argument(
        "--target-regions", required=True, nargs="+", help="per target: one region per subject, joined by ';'"
    )
    parser.add_argument("--out", default="ir_diffusion", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    parser.add_argument("--steps", dest="num_inference_steps", type=int, default=20)
    parser.add_argument("--height", type=int, help="image height; default: the model's or the pipeline's")
    parser.add_argument("--width", type=int, help="image width; default: the model's or the pipeline's")
    add_device_arguments(parser)
    parser.add_argument(
        "-o", "--option", action="append", default=[], type=parse_option, metavar="KEY=VALUE",
        help="ir_diffusion option, repeatable: -o reposition=crop -o reference_scale=2 -o attention=topk",
    )  # fmt: skip
    parser.set_defaults(func=_command)
