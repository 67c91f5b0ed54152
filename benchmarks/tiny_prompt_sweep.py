"""How well the tiny model's videos show their prompts, across guidance scales and step counts.

    PYTHONPATH=. python benchmarks/tiny_prompt_sweep.py --model assets/tiny-wan-t2v --guidance 3 5 8 --steps 12 24 \\
        --captions 16 --out benchmarks/results/tiny-model/tiny_prompt_sweep_run5_cpu.json

Generates at the quick size (``FULL.quick_call()``, 17x128x128, the size of the trained-model test)
from random grammar captions and scores them with ``data.check_video`` (the training script's own
``evaluate``): colour and motion accuracy per (guidance, steps). It tells whether a weak result is
the weights or the sampling settings, before the next training run is planned.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import torch
from diffusers import WanPipeline

from dit_accel.bench import environment
from tools.tiny_wan.build import FULL
from tools.tiny_wan.train import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a saved tiny WanPipeline")
    parser.add_argument("--guidance", type=float, nargs="+", default=[5.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[FULL.quick[3]])
    parser.add_argument("--captions", type=int, default=16, help="random grammar captions per setting")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True, help="JSON record to write")
    args = parser.parse_args()

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    pipe = WanPipeline.from_pretrained(args.model, dtype=dtype).to(args.device)
    rows = []
    for guidance, steps in itertools.product(args.guidance, args.steps):
        started = time.monotonic()
        call = {**FULL.quick_call(), "num_inference_steps": steps, "guidance_scale": guidance}
        row = evaluate(pipe, call, args.captions, until=math.inf)
        row["seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    record = {"model": str(args.model), "environment": environment(torch.device(args.device)), "results": rows}
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
