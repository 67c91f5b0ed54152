"""AttenCraft customisation on the shipped tiny FLUX (issue 22, part 4): does a LoRA trained on one
two-concept image make one-concept prompts show their concept more often?

1. The training image, as a user brings one: ``PROMPT`` drawn by the data generator (``--image render``,
   the default: real shapes, which the tiny model itself rarely draws), its concept masks found by
   AttenCraft from the model's attention on it (``train_attencraft`` with no masks given). Or
   (``--image generated``) the model's own generation of ``PROMPT``: the first seed from 0 whose image
   the reader finds both objects in (by colour), masks from that generation's attention
   (``concept_masks``: ``A^2 · c``, margin 0.1, floor 0.7, steps 10-19).
2. ``train_attencraft`` on it: the concepts are the existing colour-shape words ("red star", "blue
   ring": no new placeholder tokens, as the tiny model's tokenizer is a closed word list).
3. For each concept, the prompt "a <concept> on a <pattern> <background> background" (the training
   image's background) at ``SEEDS`` seeds (100...), with and without the adapter (loaded through the
   normal ``FluxPipeline.load_lora_weights``). Scored by the reader: ``colour`` = an object of the
   concept's colour is found; ``concept`` = and its shape is the concept's.

    python benchmarks/attencraft_custom_eval.py [--image render|generated] [--steps N] [--out FILE]
    # a few minutes on 2 CPU cores

Writes ``benchmarks/results/editors/attencraft_custom.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import FluxPipeline

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dit_accel.editing.attencraft_masks import concept_masks  # noqa: E402
from dit_accel.editing.attencraft_train import AttenCraftTrainConfig, train_attencraft  # noqa: E402
from dit_accel.tiny_model import TINY_FLUX_DIR  # noqa: E402
from tools.tiny_flux.data import parse_caption, render_image  # noqa: E402
from tools.tiny_flux.reader import read_image  # noqa: E402

PROMPT = "a red star left of a blue ring on a striped gray background"
CONCEPTS = ["red star", "blue ring"]
SEEDS = 20
CONFIG = AttenCraftTrainConfig(steps=100, lr=1e-3, rank=8, attention_weight=0.1, mask_every=20, sampling="uniform")
OUT = ROOT / "benchmarks" / "results" / "editors" / "attencraft_custom.json"


def shows(pipe: FluxPipeline, prompt: str, colour: str, shape: str, call: dict) -> dict[str, float]:
    """Share of seeds whose image has an object of ``colour`` (and of ``colour`` and ``shape``)."""
    colour_hits = concept_hits = 0
    for seed in range(100, 100 + SEEDS):
        image = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **call).images[0]
        found = [f for f in read_image(image) if f.colour == colour]
        colour_hits += bool(found)
        concept_hits += any(f.shape == shape for f in found)
    return {"colour": colour_hits / SEEDS, "concept": concept_hits / SEEDS}


def training_image(pipe: FluxPipeline, kind: str, call: dict) -> tuple[PIL.Image.Image, object, int]:
    """``(image, masks or None, seed)``: the data generator's drawing of PROMPT (masks left to training's
    AttenCraft pass), or the model's first generation of it where the reader finds both colours."""
    caption = parse_caption(PROMPT)
    if kind == "render":
        pixels, _ = render_image(caption, 0, call["height"], call["width"])
        return PIL.Image.fromarray(pixels), None, 0
    for seed in range(50):
        masks = concept_masks(pipe, PROMPT, CONCEPTS, background=None, power=CONFIG.power, floor=CONFIG.floor,
                              steps=(10, None), seed=seed, **call)  # fmt: skip
        colours = {f.colour for f in read_image(np.asarray(masks.image))}
        if all(t.colour in colours for t in caption.things):
            break
    return masks.image, masks, seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", choices=["render", "generated"], default="render", help="the training image")
    parser.add_argument("--steps", type=int, default=CONFIG.steps, help="LoRA training steps")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    config = dataclasses.replace(CONFIG, steps=args.steps)
    torch.set_num_threads(2)
    started = time.monotonic()
    pipe = FluxPipeline.from_pretrained(str(TINY_FLUX_DIR), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    call = json.loads((TINY_FLUX_DIR / "generation_defaults.json").read_text())
    caption = parse_caption(PROMPT)
    image, masks, seed = training_image(pipe, args.image, call)
    prompts = {c: f"a {c} on a {caption.pattern} {caption.background} background" for c in CONCEPTS}
    things = dict(zip(CONCEPTS, caption.things, strict=True))
    untrained = {c: shows(pipe, p, things[c].colour, things[c].shape, call) for c, p in prompts.items()}
    with tempfile.TemporaryDirectory() as folder:
        result = train_attencraft(pipe, image, PROMPT, CONCEPTS, folder, masks, config, call["max_sequence_length"])
        pipe.load_lora_weights(folder)
        trained = {c: shows(pipe, p, things[c].colour, things[c].shape, call) for c, p in prompts.items()}
        pipe.unload_lora_weights()
    mean = {name: {k: float(np.mean([r[c][k] for c in CONCEPTS])) for k in ("colour", "concept")}
            for name, r in (("untrained", untrained), ("trained", trained))}  # fmt: skip
    report = {
        "command": " ".join(["python benchmarks/attencraft_custom_eval.py", *sys.argv[1:]]),
        "model": "assets/tiny-flux",
        "training_prompt": PROMPT,
        "training_image": args.image,
        "training_seed": seed,
        "concepts": CONCEPTS,
        "placeholders": "existing colour-shape words (the tiny tokenizer is a closed word list)",
        "final_mask_areas": [float((result.labels == i).float().mean()) for i in range(len(CONCEPTS))],
        "config": dataclasses.asdict(config),
        "eval_prompts": prompts,
        "seeds": list(range(100, 100 + SEEDS)),
        "untrained": untrained,
        "trained": trained,
        "mean": mean,
        "target": {"trained_concept_shown": 0.8},
        "first_losses": result.losses[:3],
        "last_losses": result.losses[-3:],
        "mask_updates": result.mask_updates,
        "seconds": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"untrained": untrained, "trained": trained, "mean": mean}, indent=1))


if __name__ == "__main__":
    main()
