"""What the web demo (``app.py``) does, without the UI: load a pipeline once, run comparisons and
style-aligned batches, and turn the results into files and a summary the page can show.

Kept free of Gradio so it is tested like the rest of the package and usable from notebooks.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dit_accel.compare import ComparisonResult, compare, generation_defaults, load_pipeline, parse_option
from dit_accel.compare import is_video_pipeline as is_video
from dit_accel.editing import aligned_batch


class DemoSession:
    """Pipelines cached by model id, so switching methods does not reload weights."""

    def __init__(self, device: str = "auto", dtype: str = "auto") -> None:
        self.device, self.dtype = device, dtype
        self._pipes: dict[str, Any] = {}

    def pipeline(self, model: str) -> Any:
        if model not in self._pipes:
            self._pipes.clear()  # one model in memory at a time
            self._pipes[model] = load_pipeline(model, self.device, self.dtype)
            self._pipes[model].set_progress_bar_config(disable=True)
        return self._pipes[model]


def parse_options(text: str) -> dict[str, Any]:
    """``"density=0.1, tile=(2, 8, 8)"`` -> ``{"density": 0.1, "tile": (2, 8, 8)}``.

    Options are separated by newlines or by commas that start a new ``key=``.
    """
    pieces = re.split(r"\n|,\s*(?=[A-Za-z_]\w*\s*=)", text)
    pieces = [piece.strip().rstrip(",").strip() for piece in pieces]
    return dict(parse_option(piece) for piece in pieces if piece)


def comparison_summary(result: ComparisonResult) -> str:
    """A short markdown report of one comparison."""
    return (
        f"**{result.method}** vs dense on `{result.pipeline}` ({result.device}, {result.dtype})\n\n"
        f"| | dense | {result.method} |\n|---|---|---|\n"
        f"| whole run | {result.dense_seconds:.2f} s | {result.method_seconds:.2f} s ({result.speedup:.2f}x) |\n"
        f"| transformer | {result.dense_transformer_seconds:.2f} s | {result.method_transformer_seconds:.2f} s "
        f"({result.transformer_speedup:.2f}x) |\n\n"
        f"PSNR **{result.psnr:.2f} dB**, SSIM **{result.ssim:.4f}** (mean over "
        f"{len(result.psnr_per_frame)} frame(s); min PSNR {min(result.psnr_per_frame):.2f} dB)"
    )


def run_comparison(
    session: DemoSession,
    model: str,
    method: str,
    options_text: str,
    prompt: str,
    seed: int,
    steps: int | None = None,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
) -> tuple[str, str]:
    """Dense vs ``method`` on one prompt; returns (path of the side-by-side file, markdown summary)."""
    pipe = session.pipeline(model)
    defaults = generation_defaults(model)
    call = {
        "num_inference_steps": steps or defaults.get("num_inference_steps"),
        "height": height or defaults.get("height"),
        "width": width or defaults.get("width"),
        "num_frames": (frames or defaults.get("num_frames")) if is_video(pipe) else None,
        "guidance_scale": defaults.get("guidance_scale"),
    }
    out_dir = Path(tempfile.mkdtemp(prefix="dit-accel-demo-"))
    result = compare(
        pipe, method, parse_options(options_text), prompt=prompt, seed=int(seed), out_dir=out_dir, model_name=model,
        **call,
    )  # fmt: skip
    return str(result.outputs["video"]), comparison_summary(result)


def run_style_batch(
    session: DemoSession,
    model: str,
    style: str,
    subjects_text: str,
    options_text: str,
    seed: int,
    steps: int | None = None,
    size: int | None = None,
) -> list[Image.Image]:
    """A style-aligned FLUX batch: one image per subject line, all in ``style`` (image 0 the reference)."""
    subjects = [line.strip() for line in subjects_text.splitlines() if line.strip()]
    if len(subjects) < 2:
        raise ValueError("give at least two subjects, one per line (the first image is the style reference)")
    pipe = session.pipeline(model)
    call: dict[str, Any] = {"num_inference_steps": steps} if steps else {}
    if size:
        call |= {"height": int(size), "width": int(size)}
    generator = torch.Generator().manual_seed(int(seed))
    images = aligned_batch(pipe, style, subjects, options=parse_options(options_text), generator=generator, **call)
    return [image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image)) for image in images]
