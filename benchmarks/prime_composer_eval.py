"""PrimeComposer on the shipped tiny FLUX (CPU), scored by the reader, against the paste and prompt-only baselines.

Command (24 cases, two worker processes, about 20 min on a loaded 2-core CPU)::

    PYTHONPATH=. python benchmarks/prime_composer_eval.py --cases 24 --workers 2

Ablation (the attention edits off: inversion and blending only), written as ``prime_composer_edits_off.*``::

    PYTHONPATH=. python benchmarks/prime_composer_eval.py --cases 8 --tag edits_off \
        -o steer_until=0.0 -o text_constraint=False

Cases are rendered with ``tools/tiny_flux/data.py`` (``render_image``; ground-truth masks), not
generated: case i draws a background with one object (colour A) on a grey patterned ground, and a
big object of another colour B on its own ground (its mask from the renderer). A 40x40 px box, on
the token grid and clear of the background object, is the target; the prompt is the grammar caption
of the composed scene ("a B shape <relation> a A shape on a <pattern> <grey> background"), the
object's words "B shape". Methods, all 128x128, 20 steps:

* ``prime_composer``: ``compose()`` with its defaults (ODE inversion, τ_a = 1.0, τ_b = 0.8, dense
  attention, no guidance: see ``compose``);
* ``paste``: the object's crop (mask bounding box) stretched into the box, rectangle and all;
* ``masked_paste``: the masked object pasted (the correlation branch's input);
* ``prompt_only``: the plain pipeline on the prompt, the model's own call (true CFG 4), seed i.

Scores per image: ``iou``: the reader's masks of colour B (union) vs the placed object mask;
``in_box``: share of those pixels inside the box; ``psnr_outside``: PSNR outside the box vs the
background; ``seam``: mean absolute step across the box's border (pixel just outside vs just inside,
RGB 0-255), compared with the background's own step there. Also ``round_trip_psnr``: the composite's
ODE inversion regenerated without edits, decoded, vs the pasted image (inversion fidelity).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from dit_accel.compare import parse_option

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "editors"
SIZE = 128
BOX = 40
GREYS = ("white", "gray", "black")
_PIPE: Any = None
_OPTIONS: dict[str, Any] = {}
_STEM = "prime_composer"


def make_case(index: int) -> dict[str, Any]:
    """Background, object, mask, box and prompt of case ``index`` (rendered, deterministic)."""
    from tools.tiny_common.drawing import COLOURS, PATTERNS, SHAPES
    from tools.tiny_flux.data import Caption, Thing, render_image

    rng = np.random.default_rng(1000 + index)
    colour_a, colour_b = (str(c) for c in rng.choice(list(COLOURS), 2, replace=False))
    shape_a, shape_b = str(rng.choice(SHAPES)), str(rng.choice(SHAPES))
    pattern, ground = str(rng.choice(PATTERNS)), str(rng.choice(GREYS))
    background_caption = Caption((Thing(colour_a, shape_a),), (), pattern, ground)
    background, background_masks = render_image(background_caption, 2000 + index, SIZE, SIZE)
    object_caption = Caption((Thing(colour_b, shape_b, "big"),), (), str(rng.choice(PATTERNS)), str(rng.choice(GREYS)))
    object_image, object_masks = render_image(object_caption, 3000 + index, SIZE, SIZE)
    taken = background_masks[0]
    ys, xs = np.nonzero(taken)
    centre = np.array([xs.mean(), ys.mean()])
    corners = [(x, y) for x in range(0, SIZE - BOX + 1, 8) for y in range(0, SIZE - BOX + 1, 8)]
    free = [(x, y) for x, y in corners if not taken[max(0, y - 4) : y + BOX + 4, max(0, x - 4) : x + BOX + 4].any()]
    x0, y0 = free[int(rng.integers(len(free)))]
    dx, dy = x0 + BOX / 2 - centre[0], y0 + BOX / 2 - centre[1]
    relation = ("right of" if dx > 0 else "left of") if abs(dx) >= abs(dy) else ("below" if dy > 0 else "above")
    scene = Caption((Thing(colour_b, shape_b), Thing(colour_a, shape_a)), (relation,), pattern, ground)
    return {
        "index": index,
        "background": background,
        "object": object_image,
        "mask": object_masks[0],
        "box": (int(x0), int(y0), int(x0) + BOX, int(y0) + BOX),
        "prompt": scene.text,
        "object_text": f"{colour_b} {shape_b}",
        "colour": str(colour_b),
    }


def rectangle_paste(case: dict[str, Any]) -> np.ndarray:
    """The object's mask-bounding-box crop stretched into the box, its own background included."""
    ys, xs = np.nonzero(case["mask"])
    crop = PIL.Image.fromarray(case["object"]).crop((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    x0, y0, x1, y1 = case["box"]
    out = PIL.Image.fromarray(case["background"]).copy()
    out.paste(crop.resize((x1 - x0, y1 - y0), PIL.Image.BILINEAR), (x0, y0))
    return np.asarray(out)


def seam(image: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Mean absolute RGB step across the box's border (outside pixel vs inside pixel), sides inside the image."""
    x0, y0, x1, y1 = box
    img = image.astype(np.float64)
    steps = []
    if y0 > 0:
        steps.append(np.abs(img[y0 - 1, x0:x1] - img[y0, x0:x1]))
    if y1 < SIZE:
        steps.append(np.abs(img[y1, x0:x1] - img[y1 - 1, x0:x1]))
    if x0 > 0:
        steps.append(np.abs(img[y0:y1, x0 - 1] - img[y0:y1, x0]))
    if x1 < SIZE:
        steps.append(np.abs(img[y0:y1, x1] - img[y0:y1, x1 - 1]))
    return float(np.concatenate(steps).mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB, capped at 100 (identical pixels, as the paste baselines outside the box)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse < 255.0**2 * 1e-10 else float(10 * np.log10(255.0**2 / mse))


def score(image: np.ndarray, case: dict[str, Any], placed: np.ndarray, box_mask: np.ndarray) -> dict[str, float]:
    from tools.tiny_flux.reader import mask_iou, read_image

    found = [f.mask for f in read_image(image) if f.colour == case["colour"]]
    union = np.any(found, axis=0) if found else np.zeros_like(placed)
    return {
        "iou": mask_iou(union, placed),
        "in_box": float((union & box_mask).sum() / union.sum()) if union.any() else 0.0,
        "psnr_outside": psnr(image[~box_mask], case["background"][~box_mask]),
        "seam": seam(image, case["box"]),
    }


def decode(pipe: Any, latents: torch.Tensor) -> np.ndarray:
    """Packed latents -> (H, W, 3) uint8, as the pipeline decodes."""
    vae = pipe.vae
    unpacked = pipe._unpack_latents(latents, SIZE, SIZE, pipe.vae_scale_factor)
    pixels = vae.decode(unpacked / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
    return np.asarray(pipe.image_processor.postprocess(pixels.detach(), output_type="pil")[0])


def _init(options: dict[str, Any], stem: str) -> None:
    global _PIPE, _OPTIONS, _STEM
    _OPTIONS, _STEM = options, stem
    from diffusers import FluxPipeline

    from dit_accel.tiny_model import TINY_FLUX_DIR

    torch.set_num_threads(1)
    _PIPE = FluxPipeline.from_pretrained(str(TINY_FLUX_DIR), dtype=torch.float32)
    _PIPE.set_progress_bar_config(disable=True)


@torch.no_grad()
def run_case(index: int) -> dict[str, Any]:
    from dit_accel.editing import compose
    from dit_accel.editing.flow_inversion import PromptInputs, Velocity, regenerate
    from dit_accel.tiny_model import TINY_FLUX_DIR

    pipe, case = _PIPE, make_case(index)
    defaults = json.loads((TINY_FLUX_DIR / "generation_defaults.json").read_text())
    start = time.perf_counter()
    result = compose(pipe, case["background"], case["object"], case["mask"], case["box"], case["prompt"],
                     object_text=case["object_text"], max_sequence_length=defaults["max_sequence_length"],
                     options=_OPTIONS)  # fmt: skip
    seconds = time.perf_counter() - start
    placed, box_mask = result.placement.object_mask, result.placement.box_mask
    prompt_only = pipe(case["prompt"], generator=torch.Generator().manual_seed(index), **defaults).images[0]
    velocity = Velocity(pipe, PromptInputs.encode(pipe, case["prompt"], defaults["max_sequence_length"]), (16, 16))
    round_trip = decode(pipe, regenerate(result.plan.composite[0], result.plan.sigmas, velocity))
    images = {
        "prime_composer": np.asarray(result.image),
        "paste": rectangle_paste(case),
        "masked_paste": np.asarray(result.placement.pasted),
        "prompt_only": np.asarray(prompt_only),
    }
    name = OUT / f"{_STEM}_cases" / f"case_{index:02d}.png"
    name.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.concatenate([case["background"], case["object"], *images.values()], axis=1)).save(name)
    return {
        "index": index,
        "prompt": case["prompt"],
        "object_text": case["object_text"],
        "box": case["box"],
        "seconds": seconds,
        "background_seam": seam(case["background"], case["box"]),
        "round_trip_psnr": psnr(round_trip, images["masked_paste"]),
        **{method: score(image, case, placed, box_mask) for method, image in images.items()},
    }


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    methods = ("prime_composer", "paste", "masked_paste", "prompt_only")
    mean = {m: {k: float(np.mean([c[m][k] for c in cases])) for k in cases[0][m]} for m in methods}
    prime, prompt_only = mean["prime_composer"], mean["prompt_only"]
    background_seam = float(np.mean([c["background_seam"] for c in cases]))
    return {
        "cases": len(cases),
        "mean": mean,
        "background_seam": background_seam,
        "round_trip_psnr": float(np.mean([c["round_trip_psnr"] for c in cases])),
        "cases_iou_at_least_0.6": int(sum(c["prime_composer"]["iou"] >= 0.6 for c in cases)),
        "median_iou": float(np.median([c["prime_composer"]["iou"] for c in cases])),
        "min_psnr_outside": float(min(c["prime_composer"]["psnr_outside"] for c in cases)),
        "seconds_per_composite": float(np.mean([c["seconds"] for c in cases])),
        "targets": {
            "iou >= 0.6": prime["iou"] >= 0.6,
            "psnr_outside >= 25": prime["psnr_outside"] >= 25.0,
            "iou better than prompt_only": prime["iou"] > prompt_only["iou"],
            "psnr better than prompt_only": prime["psnr_outside"] > prompt_only["psnr_outside"],
            "seam below paste's": prime["seam"] < mean["paste"]["seam"],
        },
    }


def write_markdown(summary: dict[str, Any], stem: str, command: str) -> None:
    rows = ["| method | IoU (reader vs placed mask) | in box | PSNR outside box (dB) | seam |", "|---|---|---|---|---|"]
    for method, m in summary["mean"].items():
        rows.append(f"| {method} | {m['iou']:.3f} | {m['in_box']:.3f} | {m['psnr_outside']:.2f} | {m['seam']:.2f} |")
    targets = "\n".join(f"* {name}: {'met' if ok else 'NOT met'}" for name, ok in summary["targets"].items())
    (OUT / f"{stem}.md").write_text(
        f"# PrimeComposer on the tiny FLUX ({summary['cases']} rendered cases, 128x128, 20 steps, CPU)\n\n"
        f"`{command}`\n\n" + "\n".join(rows) + "\n\n"
        f"Background's own step across the box border: {summary['background_seam']:.2f} (seam column: mean |RGB "
        f"step| across the border, 0-255). Inversion round trip (composite, unguided ODE, no edits): "
        f"{summary['round_trip_psnr']:.2f} dB. {summary['seconds_per_composite']:.0f} s per composite.\n\n"
        f"PrimeComposer per case: IoU >= 0.6 in {summary['cases_iou_at_least_0.6']} of {summary['cases']} "
        f"(median {summary['median_iou']:.3f}); lowest PSNR outside the box {summary['min_psnr_outside']:.2f} dB. "
        "Its seam includes the object's own edge where the stretched object touches the box border "
        "(the masked paste's seam shows how much of that there is).\n\n"
        f"{ablation_line(stem)}Targets (issue 23):\n{targets}\n\nPer case: `{stem}.json`; strips (background, object, "
        f"PrimeComposer, paste, masked paste, prompt-only): `{stem}_cases/`.\n"
    )


def ablation_line(stem: str) -> str:
    """The edits-off run against this run on the same cases (if both are saved), as a sentence."""
    off_path = OUT / "prime_composer_edits_off.json"
    if stem != "prime_composer" or not off_path.is_file() or not (OUT / f"{stem}.json").is_file():
        return ""
    off = json.loads(off_path.read_text())["cases"]
    on = [c for c in json.loads((OUT / f"{stem}.json").read_text())["cases"] if c["index"] < len(off)]

    def mean(cases: list[dict[str, Any]], key: str) -> float:
        return float(np.mean([c["prime_composer"][key] for c in cases]))

    return (
        f"Ablation, attention edits off (steering and text constraint; inversion and blending kept), same first "
        f"{len(off)} cases: IoU {mean(off, 'iou'):.3f} vs {mean(on, 'iou'):.3f} with them, PSNR outside "
        f"{mean(off, 'psnr_outside'):.2f} vs {mean(on, 'psnr_outside'):.2f} dB, seam {mean(off, 'seam'):.2f} vs "
        f"{mean(on, 'seam'):.2f} (`prime_composer_edits_off.md`).\n\n"
    )


def rewrite(stem: str) -> None:
    """Recompute the summary and table of a saved run from its cases (no generation)."""
    record = json.loads((OUT / f"{stem}.json").read_text())
    record["summary"] = summarise(record["cases"])
    (OUT / f"{stem}.json").write_text(json.dumps(record, indent=1))
    command = (OUT / f"{stem}.md").read_text().split("`")[1]
    write_markdown(record["summary"], stem, command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tag", help="results as prime_composer_<tag>.json/.md (for runs with options)")
    parser.add_argument("-o", "--option", action="append", default=[], type=parse_option, metavar="KEY=VALUE")
    args = parser.parse_args()
    options = dict(args.option)
    stem = "prime_composer" + (f"_{args.tag}" if args.tag else "")
    with multiprocessing.get_context("spawn").Pool(args.workers, initializer=_init, initargs=(options, stem)) as pool:
        cases = sorted(pool.map(run_case, range(args.cases), chunksize=1), key=lambda c: c["index"])
    summary = summarise(cases)
    OUT.mkdir(parents=True, exist_ok=True)
    record = {"summary": summary, "options": {k: repr(v) for k, v in options.items()}, "cases": cases}
    (OUT / f"{stem}.json").write_text(json.dumps(record, indent=1))
    extra = "".join(f" -o {k}={v}" for k, v in options.items()) + (f" --tag {args.tag}" if args.tag else "")
    command = (
        f"PYTHONPATH=. python benchmarks/prime_composer_eval.py --cases {args.cases} --workers {args.workers}{extra}"
    )
    write_markdown(summary, stem, command)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
