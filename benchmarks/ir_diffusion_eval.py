"""IR-Diffusion vs the plain batch on the shipped tiny FLUX: subject consistency and prompt adherence.

Each batch is ``[reference, target 1, ..., target T]``: the reference shows one subject (a coloured
shape) alone on a plain background; each target shows the subject next to another object on a
patterned background (captions of the tiny FLUX's grammar). Both runs use the same prompts and
seeds. Masks come from the plain run, read by the tiny FLUX reader (our segmenter: it plays the
part of GroundingDINO/SAM in the paper): the reference subject's box (padded by one token), and in
each target a box of the same size where the plain target drew the subject (else where the caption's
relation puts it). The reference image is the same in both runs (IR-Diffusion leaves references
unchanged), so its mask holds for both.

Scores, read by ``tools/tiny_flux/reader.py``:

* consistent: the subject's colour is found in every image of the batch, with the reference's shape;
* adherence (rest of the caption): in a target, the other object's colour is found and the relation
  between the subject and it holds (read from their centroids).

Command (CPU, about an hour on 2 shared cores)::

    python benchmarks/ir_diffusion_eval.py --batches 24 --targets 2 --steps 8 --reference-scale 2.0 \
        --out benchmarks/results/editors/ir_diffusion
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import FluxPipeline

from dit_accel.editing import ir_batch
from dit_accel.tiny_model import TINY_FLUX_DIR
from tools.tiny_common.drawing import COLOURS, PATTERNS, SHAPES
from tools.tiny_flux.data import RELATIONS
from tools.tiny_flux.reader import Found, read_image, read_relation

GRID = 16  # tokens per side of the tiny FLUX at 128 px
TOKEN = 1.0 / GRID
RELATION_CENTRES = {"left of": (0.3, 0.5), "right of": (0.7, 0.5), "above": (0.5, 0.3), "below": (0.5, 0.7)}
BACKGROUNDS = ("gray", "black")


def make_batches(count: int, targets: int, seed: int) -> list[dict]:
    """Subject, reference caption and target captions of each batch (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        colour = str(rng.choice(list(COLOURS)))
        shape = str(rng.choice(SHAPES))
        subject = f"a {colour} {shape}"
        captions = []
        for _ in range(targets):
            other = str(rng.choice([c for c in COLOURS if c != colour]))
            relation = str(rng.choice(list(RELATIONS)))
            text = (
                f"{subject} {relation} {'an' if other == 'orange' else 'a'} {other} {rng.choice(SHAPES)} "
                f"on a {rng.choice(PATTERNS)} {rng.choice(BACKGROUNDS)} background"
            )
            captions.append({"text": text, "other": other, "relation": relation})
        reference = f"{subject} on a plain {rng.choice(BACKGROUNDS)} background"
        batches.append({"colour": colour, "shape": shape, "reference": reference, "targets": captions})
    return batches


def find(found: list[Found], colour: str) -> Found | None:
    return next((f for f in found if f.colour == colour), None)


def padded_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The mask's bounding box in fractions, padded by one token and clipped to the image."""
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    x0, x1 = cols.min() / width - TOKEN, (cols.max() + 1) / width + TOKEN
    y0, y1 = rows.min() / height - TOKEN, (rows.max() + 1) / height + TOKEN
    return max(0.0, x0), max(0.0, y0), min(1.0, x1), min(1.0, y1)


def box_at(centre: tuple[float, float], size: tuple[float, float]) -> tuple[float, float, float, float]:
    """A box of ``size`` (w, h) centred on ``centre``, shifted to lie inside the image."""
    w, h = size
    x0 = min(max(centre[0] - w / 2, 0.0), 1.0 - w)
    y0 = min(max(centre[1] - h / 2, 0.0), 1.0 - h)
    return x0, y0, x0 + w, y0 + h


def regions(batch: dict, plain: list[np.ndarray]) -> tuple[list, list[list]]:
    """Reference box from the plain reference, target boxes where the plain targets drew the subject."""
    subject = find(read_image(plain[0]), batch["colour"])
    reference = padded_box(subject.mask) if subject is not None else (0.3, 0.3, 0.7, 0.7)
    size = (reference[2] - reference[0], reference[3] - reference[1])
    targets = []
    for caption, image in zip(batch["targets"], plain[1:], strict=True):
        drawn = find(read_image(image), batch["colour"])
        centre = drawn.centroid if drawn is not None else RELATION_CENTRES[caption["relation"]]
        targets.append([box_at(centre, size)])
    return [reference], targets


def score(batch: dict, images: list[np.ndarray]) -> dict:
    """Consistency of the subject across the batch, adherence of each target to the rest of its caption."""
    reads = [read_image(image) for image in images]
    subjects = [find(found, batch["colour"]) for found in reads]
    shapes = [None if s is None else s.shape for s in subjects]
    adherence = []
    for caption, found, subject in zip(batch["targets"], reads[1:], subjects[1:], strict=True):
        other = find(found, caption["other"])
        related = subject is not None and other is not None and read_relation(subject, other) == caption["relation"]
        adherence.append({"other_found": other is not None, "relation": related, "rest": other is not None and related})
    return {
        "shapes": shapes,
        "colour_consistent": all(s is not None for s in shapes),
        "consistent": shapes[0] is not None and all(s == shapes[0] for s in shapes),
        "adherence": adherence,
    }


def summary(scores: list[dict]) -> dict:
    targets = [a for s in scores for a in s["adherence"]]
    return {
        "consistent": 100.0 * np.mean([s["consistent"] for s in scores]),
        "colour_consistent": 100.0 * np.mean([s["colour_consistent"] for s in scores]),
        "target_shape_matches_reference": 100.0
        * np.mean([sh == s["shapes"][0] and sh is not None for s in scores for sh in s["shapes"][1:]]),
        "adherence_rest": 100.0 * np.mean([a["rest"] for a in targets]),
        "other_found": 100.0 * np.mean([a["other_found"] for a in targets]),
        "relation": 100.0 * np.mean([a["relation"] for a in targets]),
    }


def markdown(result: dict) -> str:
    """A short table of the two runs' summaries."""
    rows = [
        ("fully consistent batches (colour + shape of the subject in every image)", "consistent"),
        ("subject's colour found in every image", "colour_consistent"),
        ("targets whose subject has the reference's shape", "target_shape_matches_reference"),
        ("adherence, rest of the caption (other object found + relation)", "adherence_rest"),
        ("other object found", "other_found"),
        ("relation holds", "relation"),
    ]
    plain, edited = result["plain"], result["ir_diffusion"]
    lines = [
        "# IR-Diffusion on the tiny FLUX (CPU)",
        "",
        f"`{result['command']}`: {len(result['batches'])} batches of 1 reference + "
        f"{len(result['batches'][0]['targets'])} targets, {result['steps']} steps, options {result['options']}.",
        "",
        "| % | plain batch | IR-Diffusion | change |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {label} | {plain[key]:.1f} | {edited[key]:.1f} | {edited[key] - plain[key]:+.1f} |" for label, key in rows
    ]
    same = sum(b["reference_identical"] for b in result["batches"])
    lines += [
        "",
        f"References identical in both runs (IR-Diffusion leaves them as they are): {same}/{len(result['batches'])}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--targets", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reposition", default="rope")
    parser.add_argument("--reference-scale", type=float, default=1.0)
    parser.add_argument("--no-isolation", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/editors/ir_diffusion"))
    parser.add_argument("--table-only", action="store_true", help="rewrite the .md from the .json, generate nothing")
    args = parser.parse_args()
    if args.table_only:
        args.out.with_suffix(".md").write_text(markdown(json.loads(args.out.with_suffix(".json").read_text())))
        return
    torch.set_num_threads(2)
    pipe = FluxPipeline.from_pretrained(str(TINY_FLUX_DIR), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    defaults = json.loads((TINY_FLUX_DIR / "generation_defaults.json").read_text())
    call = {**defaults, "num_inference_steps": args.steps, "output_type": "np"}
    options = {
        "reposition": args.reposition,
        "reference_scale": args.reference_scale,
        "isolation": not args.no_isolation,
    }
    batches = make_batches(args.batches, args.targets, args.seed)
    plain_scores, ir_scores, started = [], [], time.time()
    for index, batch in enumerate(batches):
        prompts = [batch["reference"], *(c["text"] for c in batch["targets"])]

        def seeds(index: int = index, count: int = len(prompts)) -> list[torch.Generator]:
            return [torch.Generator().manual_seed(1000 * index + j) for j in range(count)]

        plain = list(pipe(prompt=prompts, generator=seeds(), **call).images)
        reference_regions, target_regions = regions(batch, plain)
        edited = list(
            ir_batch(
                pipe, prompts[:1], prompts[1:], reference_regions, target_regions,
                options=options, generator=seeds(), **call,
            )
        )  # fmt: skip
        batch["reference_region"], batch["target_regions"] = reference_regions[0], [t[0] for t in target_regions]
        batch["reference_identical"] = bool(np.array_equal(plain[0], edited[0]))
        plain_scores.append(score(batch, plain))
        ir_scores.append(score(batch, edited))
        print(f"batch {index + 1}/{len(batches)} ({time.time() - started:.0f} s): plain {plain_scores[-1]['shapes']} "
              f"ir {ir_scores[-1]['shapes']}", flush=True)  # fmt: skip
    result = {
        "command": " ".join(sys.argv),
        "steps": args.steps,
        "options": options,
        "plain": summary(plain_scores),
        "ir_diffusion": summary(ir_scores),
        "batches": [
            {**b, "plain": p, "ir_diffusion": i} for b, p, i in zip(batches, plain_scores, ir_scores, strict=True)
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(json.dumps({"plain": result["plain"], "ir_diffusion": result["ir_diffusion"]}, indent=1))


if __name__ == "__main__":
    main()
