"""``dit-accel attencraft-train``: learn the concepts of one generated image as LoRA adapters (AttenCraft).

The image is generated from ``--prompt`` (seed ``--seed``) and its concept masks found from the same
generation's attention (as ``attencraft-masks`` does); then ``train_attencraft`` trains the adapters.
Load them into the normal pipeline with ``FluxPipeline.load_lora_weights(OUT)``.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from dit_accel.compare import add_device_arguments, generation_defaults, load_pipeline, parse_option
from dit_accel.editing.attencraft_masks import concept_masks
from dit_accel.editing.attencraft_train import AttenCraftTrainConfig, train_attencraft


def _command(args: argparse.Namespace) -> int:
    options = dict(args.option)
    known = {f.name for f in fields(AttenCraftTrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; allowed: {', '.join(sorted(known))}")
    config = AttenCraftTrainConfig(steps=args.train_steps, **options)
    pipe = load_pipeline(args.model, args.device, args.dtype)
    pipe.set_progress_bar_config(disable=True)
    call: dict[str, Any] = {**generation_defaults(args.model), "num_inference_steps": args.num_inference_steps}
    steps = call["num_inference_steps"]
    masks = concept_masks(
        pipe, args.prompt, args.concepts, background=None, power=config.power, margin=config.margin,
        floor=config.floor, steps=(steps // 2, None), seed=args.seed, **call,
    )  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    masks.image.save(out / "training_image.png")
    masks.overlay().save(out / "training_masks.png")
    length = int(call.get("max_sequence_length", 512))
    result = train_attencraft(pipe, masks.image, args.prompt, args.concepts, out, masks, config, length)
    last = result.losses[-1]
    print(f"wrote {out} (adapter, training_image.png, training_masks.png); last step: total {last['total']:.4g}, "
          f"diffusion {last['diffusion']:.4g}, attention {last['attention']:.4g}")  # fmt: skip
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``attencraft-train`` to the ``dit-accel`` command line."""
    parser = subparsers.add_parser("attencraft-train", help="AttenCraft: LoRA adapters for the concepts of one image")
    parser.add_argument("--model", required=True, help="FluxPipeline directory or Hub id")
    parser.add_argument("--prompt", required=True, help="the training image's prompt")
    parser.add_argument("--concepts", required=True, nargs="+", help="phrases of the prompt to learn")
    parser.add_argument("--out", default="attencraft_lora", help="output directory (the adapter)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training image")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument(
        "-o", "--option", action="append", default=[], type=parse_option, metavar="KEY=VALUE",
        help="training option, repeatable: -o lr=1e-4 -o rank=8 -o sampling=reweighted -o attention_weight=0.1 "
        "-o \"subset_template=['a {} on a plain gray background', 'a {} on a dotted black background']\" "
        "(one-concept step prompts; default 'a photo of {}')",
    )  # fmt: skip
    parser.add_argument("--num-inference-steps", type=int, default=20, help="steps of the training image")
    add_device_arguments(parser)
    parser.set_defaults(func=_command)
