"""``dit-accel sweep``: several methods against dense on the same prompt/seed pairs, with means.

    dit-accel sweep --variant "topk density=0.125" --variant "pisa density=0.125 order=1" --pairs 8

On the tiny model one pair's PSNR swings by about ±3 dB (small per-call errors become a different
trajectory over 30 steps), so methods are judged by the mean over at least 8 pairs, all on the same
pairs. Dense runs once per pair and is shared by every variant. Each (variant, pair) gets the JSON
record of ``dit-accel compare`` (and, with ``--videos``, its side-by-side video); ``summary.json`` and
``summary.md`` hold each variant's mean, spread and per-pair PSNR / SSIM / speedup, and its mean
PSNR difference from the first variant on the same pairs.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dit_accel.call_sizes import resolve_call
from dit_accel.compare import (
    DTYPES,
    ComparisonResult,
    call_arguments,
    comparison_result,
    finite_or_none,
    generation_defaults,
    is_video_pipeline,
    load_pipeline,
    parse_option,
    run_with_method,
    timed_run,
    write_outputs,
)
from dit_accel.registry import build_config
from dit_accel.tiny_model import TINY_MODEL_DIR

# Prompts in the shipped tiny model's caption language (plain English for any other model too).
DEFAULT_PROMPTS = (
    "a red circle moving right on a striped blue background",
    "a yellow star growing on a plain purple background",
    "a white square moving up on a checkered green background",
    "a blue triangle shrinking on a dotted orange background",
    "an orange ring moving left on a plain gray background",
    "a green diamond turning red on a striped black background",
    "a purple star moving down on a checkered yellow background",
    "a black circle growing on a dotted white background",
)


@dataclass(frozen=True)
class Variant:
    """A method and its options, as given on the command line (``"pisa density=0.125 order=1"``)."""

    label: str
    method: str
    options: dict[str, Any]

    @classmethod
    def parse(cls, text: str) -> Variant:
        words = shlex.split(text)
        if not words:
            raise ValueError("a variant is a method name followed by KEY=VALUE options, got an empty string")
        options = dict(parse_option(word) for word in words[1:])
        build_config(words[0], **options)  # a bad method or option fails before any run
        return cls(label=" ".join(words), method=words[0], options=options)


def pairs(prompts: list[str], count: int, first_seed: int) -> list[tuple[str, int]]:
    """``count`` (prompt, seed) pairs: the prompts in turn, seeds counting up from ``first_seed``."""
    if count < 1:
        raise ValueError(f"pairs must be >= 1, got {count}")
    if not prompts:
        raise ValueError("no prompts given")
    return [(prompts[i % len(prompts)], first_seed + i) for i in range(count)]


def sweep(
    pipe: Any,
    variants: list[Variant],
    prompt_seed_pairs: list[tuple[str, int]],
    call_options: dict[str, Any],
    out_dir: Path,
    warmup_runs: int = 0,
    videos: bool = False,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Run dense and every variant on each pair; write the records and the summary; return the summary.

    ``warmup_runs`` untimed runs precede the first pair's timed runs only (compilation, autotuning).
    """
    if not variants:
        raise ValueError("give at least one variant")
    configs = {v.label: build_config(v.method, **v.options) for v in variants}  # bad options fail before any run
    device = torch.device(pipe._execution_device)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[ComparisonResult]] = {v.label: [] for v in variants}
    failed: dict[str, str] = {}
    for index, (prompt, seed) in enumerate(prompt_seed_pairs):
        call = call_arguments(pipe, prompt, **call_options)
        warmup = warmup_runs if index == 0 else 0
        for _ in range(warmup):
            timed_run(pipe, call, seed, "warm-up dense", device)
        dense_run = timed_run(pipe, call, seed, "dense", device)
        for variant in variants:
            if variant.label in failed:
                continue
            try:
                method_run = run_with_method(pipe, configs[variant.label], call, seed, device, warmup)
            except Exception as error:  # one broken variant must not cost the others' runs
                if variant is variants[0]:
                    raise  # the baseline of every paired difference
                failed[variant.label] = f"{type(error).__name__}: {error}"
                print(f"pair {index + 1} seed {seed}  {variant.label}: FAILED, dropped ({failed[variant.label]})")
                continue
            result = comparison_result(pipe, call, seed, dense_run, method_run, model_name)
            pair_dir = out_dir / _slug(variant.label)
            write_outputs(result, pair_dir, "gif", media=videos)
            results[variant.label].append(result)
            print(f"pair {index + 1}/{len(prompt_seed_pairs)} seed {seed}  {variant.label:40s} "
                  f"PSNR {result.psnr:6.2f} dB  SSIM {result.ssim:.4f}  {result.speedup:.2f}x", flush=True)  # fmt: skip
        summary = summarize({label: runs for label, runs in results.items() if label not in failed})
        summary["failed"] = failed  # after every pair: an interrupted sweep keeps what it measured
        (out_dir / "summary.json").write_text(json.dumps(finite_or_none(summary), indent=2) + "\n")
        (out_dir / "summary.md").write_text(summary_table(summary))
    return summary


def summarize(results: dict[str, list[ComparisonResult]]) -> dict[str, Any]:
    """Per variant: mean / std / min / max PSNR, mean SSIM and speedups, per-pair values, and the mean
    per-pair PSNR difference from the first variant (paired, so the pair-to-pair spread cancels)."""
    labels = list(results)
    baseline = [r.psnr for r in results[labels[0]]]
    first = results[labels[0]][0]
    summary: dict[str, Any] = {
        "model": first.model, "pipeline": first.pipeline, "device": first.device, "dtype": first.dtype,
        "call": first.call, "pairs": [{"prompt": r.prompt, "seed": r.seed} for r in results[labels[0]]],
        "baseline": labels[0], "variants": {},
    }  # fmt: skip
    for label, runs in results.items():
        psnr = [r.psnr for r in runs]
        finite = [p for p in psnr if math.isfinite(p)]
        summary["variants"][label] = {
            "method": runs[0].method,
            "options": runs[0].options,
            # identical frames have an infinite PSNR: the mean is then infinite (null in JSON)
            "psnr_mean": statistics.fmean(psnr),
            "psnr_std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
            "psnr_min": min(psnr),
            "psnr_max": max(psnr),
            "psnr_vs_baseline": statistics.fmean(p - b for p, b in zip(psnr, baseline, strict=True)),
            "ssim_mean": statistics.fmean(r.ssim for r in runs),
            "speedup_mean": statistics.fmean(r.speedup for r in runs),
            "transformer_speedup_mean": statistics.fmean(r.transformer_speedup for r in runs),
            "psnr": psnr,
            "ssim": [r.ssim for r in runs],
            "dense_fallbacks": runs[0].dense_fallbacks,
        }
    return summary


def summary_table(summary: dict[str, Any]) -> str:
    """The summary as a markdown table, one row per variant."""
    lines = [
        f"{len(summary['pairs'])} prompt/seed pairs, {summary['pipeline']} on {summary['device']} "
        f"({summary['dtype']}), call {summary['call']}; Δ = mean paired PSNR difference from "
        f"`{summary['baseline']}`.",
        "",
        "| variant | PSNR mean (dB) | std | min | max | Δ PSNR | SSIM | speedup | transformer speedup |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, v in summary["variants"].items():
        lines.append(
            f"| `{label}` | {v['psnr_mean']:.2f} | {v['psnr_std']:.2f} | {v['psnr_min']:.2f} | {v['psnr_max']:.2f} "
            f"| {v['psnr_vs_baseline']:+.2f} | {v['ssim_mean']:.4f} | {v['speedup_mean']:.2f}x "
            f"| {v['transformer_speedup_mean']:.2f}x |"
        )
    failed = summary.get("failed", {})
    lines += [f"\nFailed, dropped from the sweep: `{label}`: {error}" for label, error in failed.items()]
    return "\n".join(lines) + "\n"


def _slug(label: str) -> str:
    """A folder name for a variant label."""
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in label).strip("_")


def _run(args: argparse.Namespace) -> int:
    variants = [Variant.parse(text) for text in args.variant]
    prompts = Path(args.prompts).read_text().splitlines() if args.prompts else list(DEFAULT_PROMPTS)
    prompt_seed_pairs = pairs([p for p in prompts if p.strip()], args.pairs, args.first_seed)
    pipe = load_pipeline(args.model, args.device, args.dtype)
    on_cpu = torch.device(pipe._execution_device).type == "cpu"
    given = {name: getattr(args, name) for name in ("num_inference_steps", "height", "width", "num_frames")}
    given, note = resolve_call(given | {"guidance_scale": None}, generation_defaults(args.model), on_cpu,
                               is_video_pipeline(pipe))  # fmt: skip
    if note:
        print(note)
    warmup = args.warmup if args.warmup is not None else int(not on_cpu)
    summary = sweep(pipe, variants, prompt_seed_pairs, given, args.out, warmup, args.videos, args.model)
    print(summary_table(summary) + f"wrote {args.out / 'summary.json'} and {args.out / 'summary.md'}")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``sweep`` sub-command to the ``dit-accel`` parser."""
    parser = subparsers.add_parser(
        "sweep", help="several methods vs dense over many prompt/seed pairs: mean PSNR, SSIM, speedup",
        description=__doc__.split("\n\n")[0],
    )  # fmt: skip
    parser.add_argument("--model", default=str(TINY_MODEL_DIR), help="local folder or hub id (default: tiny model)")
    parser.add_argument("--variant", action="append", required=True, metavar='"METHOD KEY=VALUE ..."',
                        help="a method and its options; repeat it (the first is the baseline of Δ PSNR)")  # fmt: skip
    parser.add_argument("--pairs", type=int, default=8, help="prompt/seed pairs (default 8)")
    parser.add_argument("--prompts", default=None, help="text file, one prompt a line (default: 8 built-in)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--steps", dest="num_inference_steps", type=int, default=None, metavar="N")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--frames", dest="num_frames", type=int, default=None, metavar="N")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES))
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs before the first pair (GPU: 1)")
    parser.add_argument("--videos", action="store_true", help="also write each pair's side-by-side video")
    parser.add_argument("--out", type=Path, default=Path("out/sweep"))
    parser.set_defaults(func=_run)
