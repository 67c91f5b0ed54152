"""AttenCraft customisation on the shipped tiny FLUX (issue 22, part 4): does a LoRA trained on one
two-concept image make one-concept prompts show their concept more often?

1. The training image: ``PROMPT`` generated at the model's defaults; the first seed from 0 whose image
   the reader finds both objects in (by colour). Its concept masks come from the same generation's
   attention (``concept_masks``: ``A^2 · c``, margin 0.1, floor 0.7, steps 10-19).
2. ``train_attencraft`` on it: the concepts are the existing colour-shape words ("red star", "blue
   ring": no new placeholder tokens, as the tiny model's tokenizer is a closed word list).
3. For each concept, the prompt "a <concept> on a <pattern> <background> background" (the training
   image's background) at ``SEEDS`` seeds (100...), with and without the adapter (loaded through the
   normal ``FluxPipeline.load_lora_weights``). Scored by the reader: ``colour`` = an object of the
   concept's colour is found; ``concept`` = and its shape is the concept's.

    python benchmarks/attencraft_custom_eval.py  # ~10 min on 2 busy CPU cores

Writes ``benchmarks/results/editors/attencraft_custom.json``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import FluxPipeline

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dit_accel.editing.attencraft_masks import concept_masks  # noqa: E402
from dit_accel.editing.attencraft_train import AttenCraftTrainConfig, train_attencraft  # noqa: E402
from dit_accel.tiny_model import TINY_FLUX_DIR  # noqa: E402
from tools.tiny_flux.data import parse_caption  # noqa: E402
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


def main() -> None:
    torch.set_num_threads(2)
    started = time.monotonic()
    pipe = FluxPipeline.from_pretrained(str(TINY_FLUX_DIR), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    call = json.loads((TINY_FLUX_DIR / "generation_defaults.json").read_text())
    caption = parse_caption(PROMPT)
    for seed in range(50):
        masks = concept_masks(pipe, PROMPT, CONCEPTS, background=None, power=CONFIG.power, floor=CONFIG.floor,
                              steps=(10, None), seed=seed, **call)  # fmt: skip
        colours = {f.colour for f in read_image(np.asarray(masks.image))}
        if all(t.colour in colours for t in caption.things):
            break
    prompts = {c: f"a {c} on a {caption.pattern} {caption.background} background" for c in CONCEPTS}
    things = dict(zip(CONCEPTS, caption.things, strict=True))
    untrained = {c: shows(pipe, p, things[c].colour, things[c].shape, call) for c, p in prompts.items()}
    with tempfile.TemporaryDirectory() as folder:
        result = train_attencraft(
            pipe, masks.image, PROMPT, CONCEPTS, folder, masks, CONFIG, call["max_sequence_length"]
        )
        pipe.load_lora_weights(folder)
        trained = {c: shows(pipe, p, things[c].colour, things[c].shape, call) for c, p in prompts.items()}
        pipe.unload_lora_weights()
    mean = {name: {k: float(np.mean([r[c][k] for c in CONCEPTS])) for k in ("colour", "concept")}
            for name, r in (("untrained", untrained), ("trained", trained))}  # fmt: skip
    report = {
        "command": "python benchmarks/attencraft_custom_eval.py",
        "model": "assets/tiny-flux",
        "training_prompt": PROMPT,
        "training_seed": seed,
        "concepts": CONCEPTS,
        "placeholders": "existing colour-shape words (the tiny tokenizer is a closed word list)",
        "mask_areas": [float(m.float().mean()) for m in masks.masks],
        "config": {k: v for k, v in CONFIG.__dict__.items()},
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
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"untrained": untrained, "trained": trained, "mean": mean}, indent=1))


if __name__ == "__main__":
    main()
