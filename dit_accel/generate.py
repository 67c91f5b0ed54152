"""``dit-accel generate``: one video (or image) with a method, on one GPU or on N (``--gpus N``).

With ``--gpus N`` the command relaunches itself through torchrun, one process a GPU; every
transformer of the pipeline runs under Diffusers' Ulysses context parallelism
(``ContextParallelConfig(ulysses_degree=N)``) with the method inside it, and rank 0 writes the file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dit_accel import multi_gpu
from dit_accel.api import apply
from dit_accel.compare import (
    add_generation_arguments,
    call_arguments,
    call_options,
    frames_of,
    load_pipeline,
    pipeline_transformers,
    write_video,
)
from dit_accel.registry import build_config


def generate(pipe: Any, method: str, options: dict[str, Any], call: dict[str, Any], seed: int) -> np.ndarray:
    """``(F, H, W, 3)`` uint8 frames of ``pipe(**call)`` with ``method`` installed (same seed on every rank)."""
    with apply(pipe, method, **options):
        output = pipe(**call, generator=torch.Generator("cpu").manual_seed(seed))
    return frames_of(output)


def _run(args: argparse.Namespace) -> int:
    status = multi_gpu.relaunch(args.gpus, args.argv)
    if status is not None:
        return status
    build_config(args.method, **dict(args.option))  # a bad method or option fails before the model loads
    device = str(multi_gpu.setup(args.gpus)) if args.gpus > 1 else args.device
    try:
        pipe = load_pipeline(args.model, device, args.dtype)
        if args.gpus > 1:
            for transformer in pipeline_transformers(pipe):
                multi_gpu.parallelize(transformer, args.gpus)
        call = call_arguments(pipe, args.prompt, pipeline_kwargs=dict(args.call), **call_options(args, pipe))
        frames = generate(pipe, args.method, dict(args.option), call, args.seed)
        if multi_gpu.is_main():
            args.out.parent.mkdir(parents=True, exist_ok=True)
            path = args.out.with_suffix(".png") if frames.shape[0] == 1 else args.out
            print(f"{args.method}: {frames.shape[0]} frame(s) of {frames.shape[1]}x{frames.shape[2]}, wrote "
                  f"{write_video(frames, path)}")  # fmt: skip
    finally:
        multi_gpu.finish()
    return 0


def register(subparsers: Any) -> None:
    """Add the ``generate`` sub-command to the ``dit-accel`` parser."""
    parser = subparsers.add_parser("generate", help=__doc__.split("\n")[0], description=__doc__)
    add_generation_arguments(parser)
    parser.add_argument("--gpus", type=int, default=1,
                        help="GPUs of this host: > 1 relaunches through torchrun under Diffusers' Ulysses context "
                        "parallelism (ulysses_degree=N)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("out/generate/video.gif"),
                        help="file to write: .gif, .mp4 or .webm (an image: .png beside it)")  # fmt: skip
    parser.set_defaults(func=_run)
