"""``dit-accel attencraft-masks``: one FLUX generation and AttenCraft's training-free masks of its concepts.

Writes ``image.png``, ``overlay.png`` (each concept's mask tinted), ``mask_<k>.png`` per concept and
``masks.json`` (concepts, settings, mask areas).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from dit_accel.compare import add_device_arguments, generation_defaults, load_pipeline, parse_option
from dit_accel.editing.attencraft_masks import concept_masks


def parse_background(text: str) -> str | int | None:
    """``none``, a text position (an int) or a phrase of the prompt."""
    if text.lower() == "none":
        return None
    return int(text) if text.isdigit() else text


def _span(text: str) -> tuple[int, int | None]:
    start, _, end = text.partition(":")
    return int(start), int(end) if end else None


def _command(args: argparse.Namespace) -> int:
    pipe = load_pipeline(args.model, args.device, args.dtype)
    pipe.set_progress_bar_config(disable=True)
    call: dict[str, Any] = {**generation_defaults(args.model), "num_inference_steps": args.num_inference_steps}
    call |= {name: value for name, value in (("height", args.height), ("width", args.width)) if value is not None}
    blocks = None if args.blocks is None else _span(args.blocks)
    masks = concept_masks(
        pipe, args.prompt, args.concepts, background=args.background, power=args.power, margin=args.margin,
        floor=args.floor, blocks=blocks, steps=_span(args.steps), seed=args.seed, method=args.method,
        method_options=dict(args.option), **call,
    )  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    masks.image.save(out / "image.png")
    masks.overlay().save(out / "overlay.png")
    for k, mask in enumerate(masks.masks):
        PIL.Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(out / f"mask_{k}.png")
    summary = {
        "prompt": args.prompt,
        "concepts": list(masks.concepts),
        "area": [float(m.float().mean()) for m in masks.masks],
        "settings": {"background": args.background, "power": args.power, "margin": args.margin, "floor": args.floor,
                     "blocks": args.blocks, "steps": args.steps, "method": args.method, "seed": args.seed},
    }  # fmt: skip
    (out / "masks.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out / 'overlay.png'} and {len(masks.concepts)} masks: " + ", ".join(
        f"{c} {a:.1%}" for c, a in zip(masks.concepts, summary["area"], strict=True)))  # fmt: skip
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``attencraft-masks`` to the ``dit-accel`` command line."""
    parser = subparsers.add_parser(
        "attencraft-masks", help="AttenCraft's concept masks of one FLUX generation (attention maps, no training)"
    )
    parser.add_argument("--model", required=True, help="FluxPipeline directory or Hub id")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--concepts", required=True, nargs="+", help="phrases of the prompt, one mask each")
    parser.add_argument("--out", default="attencraft_masks", help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--background", type=parse_background, default=None,
        help="the background's map: none (default; the floor decides), a text position, or a phrase of the prompt",
    )  # fmt: skip
    parser.add_argument("--power", type=int, default=2, help="refinement A^power . c (default 2)")
    parser.add_argument("--margin", type=float, default=0.1, help="a concept must beat the others by this")
    parser.add_argument("--floor", type=float, default=0.7, help="least normalised map value of a concept pixel")
    parser.add_argument("--blocks", help="attention blocks START:END (default all)")
    parser.add_argument("--steps", default="10:", help="denoising steps START:END (default 10: to the last)")
    parser.add_argument("--method", default="dense", help="the attention method the generation runs with")
    parser.add_argument(
        "-o", "--option", action="append", default=[], type=parse_option, metavar="KEY=VALUE",
        help="option of --method, repeatable: -o density=0.25",
    )  # fmt: skip
    parser.add_argument("--num-inference-steps", type=int, default=20)
    parser.add_argument("--height", type=int, help="image height; default: the model's or the pipeline's")
    parser.add_argument("--width", type=int, help="image width; default: the model's or the pipeline's")
    add_device_arguments(parser)
    parser.set_defaults(func=_command)
