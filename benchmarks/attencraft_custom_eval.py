"""AttenCraft customisation on the shipped tiny FLUX (issue 22, part 4): does a LoRA trained on one
two-concept image make one-concept prompts show their concept more often?

1. The training image, as a user brings one: ``PROMPT`` drawn by the data generator (``--image render``,
   the default: real shapes, which the tiny model itself rarely draws), its concept masks found by
   AttenCraft from the model's attention on it (``train_attencraft`` with no masks given). Or
   (``--image generated``) the model's own generation of ``PROMPT``: the first seed from 0 whose image
   the reader finds both objects in (by colour), masks from that generation's attention
   (``concept_masks``: ``A^2 · c``, margin 0.1, floor 0.7, steps 10-19).
2. ``train_attencraft`` on it: the concepts are the existing colour-shape words ("red star", "blue
   ring": no new placeholder tokens, as the tiny model's tokenizer is a closed word list), LoRA rank 8
   on the attention and MLP projections, 1,500 steps at lr 1e-3. Union sampling's one-concept steps
   are prompted "a <concept> on a <pattern> <background> background" (the grammar's form of
   Break-A-Scene's "a photo of [v]"):
   each step draws one of every pattern on every grey but the new context's (``--templates varied``,
   the default) or takes the training image's background (``--templates same``); ``--no-subset``
   prompts every step with the whole prompt.
3. For each concept, the one-concept prompt on the training image's background (``same context``) and
   on a background no training prompt named,
   "a <concept> on a plain black background" (``new context``), at ``--seeds`` seeds (100...), with and
   without the adapter (loaded through the normal ``FluxPipeline.load_lora_weights``). Scored by the
   reader: ``colour`` = an object of the concept's colour is found; ``concept`` = and its shape is the
   concept's.

    python benchmarks/attencraft_custom_eval.py [--image render|generated] [--steps N] [--lr LR]
        [--rank R] [--templates same|varied] [--no-subset] [--seeds N] [--device cpu|cuda] [--out FILE]
    # ~12 minutes on 2 CPU cores (20 seeds); on the H200 ~4 minutes (50 seeds)

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
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import FluxPipeline

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # after PYTHONPATH: on the GPU machine the mapped package comes first

from dit_accel.editing.attencraft_masks import concept_masks  # noqa: E402
from dit_accel.editing.attencraft_train import AttenCraftTrainConfig, train_attencraft  # noqa: E402
from dit_accel.tiny_model import TINY_FLUX_DIR  # noqa: E402
from tools.tiny_common.drawing import GREYS, PATTERNS  # noqa: E402
from tools.tiny_flux.data import parse_caption, render_image  # noqa: E402
from tools.tiny_flux.reader import read_image  # noqa: E402

PROMPT = "a red star left of a blue ring on a striped gray background"
CONCEPTS = ["red star", "blue ring"]
SEEDS = 20  # default seeds per prompt
CONFIG = AttenCraftTrainConfig(steps=1500, lr=1e-3, rank=8, attention_weight=0.1, mask_every=20, sampling="uniform")
NEW_CONTEXT = "plain black"
OUT = ROOT / "benchmarks" / "results" / "editors" / "attencraft_custom.json"


def shows(pipe: FluxPipeline, prompt: str, thing: Any, call: dict, seeds: int) -> dict[str, float]:
    """Share of seeds whose image has an object of ``thing``'s colour (and of its colour and shape)."""
    colour, shape = thing.colour, thing.shape
    colour_hits = concept_hits = 0
    for seed in range(100, 100 + seeds):
        image = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **call).images[0]
        found = [f for f in read_image(image) if f.colour == colour]
        colour_hits += bool(found)
        concept_hits += any(f.shape == shape for f in found)
    return {"colour": colour_hits / seeds, "concept": concept_hits / seeds}


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
    parser.add_argument("--lr", type=float, default=CONFIG.lr, help="LoRA learning rate")
    parser.add_argument("--rank", type=int, default=CONFIG.rank, help="LoRA rank")
    parser.add_argument("--templates", choices=["same", "varied"], default="varied", help="one-concept step prompts")
    parser.add_argument("--no-subset", action="store_true", help="prompt every step with the whole prompt")
    parser.add_argument("--seeds", type=int, default=SEEDS, help="seeds per one-concept prompt")
    parser.add_argument("--device", default="cpu", help="where the pipeline runs (fp32 either way)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    caption = parse_caption(PROMPT)
    same = f"{caption.pattern} {caption.background}"
    varied = [f"{p} {g}" for p in PATTERNS for g in GREYS if f"{p} {g}" != NEW_CONTEXT]
    backgrounds = [same] if args.templates == "same" else varied
    templates = None if args.no_subset else tuple(f"a {{}} on a {words} background" for words in backgrounds)
    config = dataclasses.replace(CONFIG, steps=args.steps, lr=args.lr, rank=args.rank, subset_template=templates)
    torch.set_num_threads(min(2, torch.get_num_threads()))  # OMP_NUM_THREADS=1 for side-by-side runs
    started = time.monotonic()
    pipe = FluxPipeline.from_pretrained(str(TINY_FLUX_DIR), torch_dtype=torch.float32).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    call = json.loads((TINY_FLUX_DIR / "generation_defaults.json").read_text())
    image, masks, seed = training_image(pipe, args.image, call)
    contexts = {"same context": same, "new context": NEW_CONTEXT}
    prompts = {name: {c: f"a {c} on a {words} background" for c in CONCEPTS} for name, words in contexts.items()}
    things = dict(zip(CONCEPTS, caption.things, strict=True))

    def score() -> dict[str, dict[str, dict[str, float]]]:
        return {name: {c: shows(pipe, p, things[c], call, args.seeds) for c, p in by_concept.items()}
                for name, by_concept in prompts.items()}  # fmt: skip

    untrained = score()
    with tempfile.TemporaryDirectory() as folder:
        result = train_attencraft(pipe, image, PROMPT, CONCEPTS, folder, masks, config, call["max_sequence_length"])
        pipe.load_lora_weights(folder)
        trained = score()
        pipe.unload_lora_weights()
    mean = {name: {context: {k: float(np.mean([r[context][c][k] for c in CONCEPTS])) for k in ("colour", "concept")}
                   for context in contexts}
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
        "seeds": list(range(100, 100 + args.seeds)),
        "device": str(pipe.device),
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
