"""``dit-accel compose``: put an object into a background image with PrimeComposer (FLUX).

The object's mask is an image of the object image's size (non-zero pixels are the object); the box
is ``x0,y0,x1,y1`` in pixels of the background. Writes ``composite.png`` and the paste baseline
``pasted.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dit_accel.compare import add_device_arguments, generation_defaults, load_pipeline, parse_option
from dit_accel.editing.compose import compose
from dit_accel.editing.prime_inputs import as_mask
from dit_accel.image_upload import open_upload_image


def parse_pixel_box(text: str) -> tuple[int, int, int, int]:
    """``x0,y0,x1,y1`` as four ints (pixels)."""
    parts = text.split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"box must be four integers x0,y0,x1,y1 (pixels), got {text!r}")
    return values


def inversion_call(defaults: dict) -> dict:
    """The model's call defaults compose can use: no size (the background's) and no guidance (unguided inversion)."""
    return {name: defaults[name] for name in ("num_inference_steps", "max_sequence_length") if name in defaults}


def _command(args: argparse.Namespace) -> int:
    background = open_upload_image(args.background, "background")
    object_image = open_upload_image(args.object, "object image")
    mask = as_mask(open_upload_image(args.mask, "object mask"))
    pipe = load_pipeline(args.model, args.device, args.dtype)
    call = inversion_call(generation_defaults(args.model)) | {"num_inference_steps": args.num_inference_steps}
    result = compose(
        pipe, background, object_image, mask, args.box, args.prompt, object_text=args.object_text,
        blend_until=args.blend_until, inversion=args.inversion, seed=args.seed, options=dict(args.option), **call,
    )  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.image.save(out / "composite.png")
    result.placement.pasted.save(out / "pasted.png")
    print(f"wrote {out / 'composite.png'} and {out / 'pasted.png'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``compose`` to the ``dit-accel`` command line."""
    parser = subparsers.add_parser("compose", help="put an object into a background image (PrimeComposer, FLUX)")
    parser.add_argument("--model", required=True, help="FluxPipeline directory or Hub id")
    parser.add_argument("--background", required=True, help="background image (the output has its size)")
    parser.add_argument("--object", required=True, help="image of the object")
    parser.add_argument("--mask", required=True, help="mask of the object (object image's size; non-zero = object)")
    parser.add_argument("--box", required=True, type=parse_pixel_box, help="where the object goes: x0,y0,x1,y1 px")
    parser.add_argument("--prompt", required=True, help="the scene with the object")
    parser.add_argument("--object-text", help="the prompt's words for the object (kept inside the box)")
    parser.add_argument("--blend-until", type=float, default=0.8, help="τ_b: fraction of steps with the background")
    parser.add_argument("--inversion", default="ode", choices=("ode", "noise"))
    parser.add_argument("--out", default="compose", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise inversion")
    parser.add_argument("--steps", dest="num_inference_steps", type=int, default=20)
    add_device_arguments(parser)
    parser.add_argument(
        "-o", "--option", action="append", default=[], type=parse_option, metavar="KEY=VALUE",
        help="prime_composer option, repeatable: -o steer_until=0.5 -o attention=topk -o density=0.3",
    )  # fmt: skip
    parser.set_defaults(func=_command)
