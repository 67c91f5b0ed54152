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

from dit_accel.call_sizes import resolve_call, size_rules
from dit_accel.compare import (
    ComparisonResult,
    StepCallback,
    compare,
    generation_defaults,
    load_pipeline,
    parse_option,
)
from dit_accel.compare import is_video_pipeline as is_video
from dit_accel.editing import aligned_batch
from dit_accel.registry import build_config, list_methods
from dit_accel.result_notes import result_notes

NO_FLUX_MODEL = (
    "give a FLUX.1 pipeline: a local folder, or a hub id such as black-forest-labs/FLUX.1-dev (a large download, "
    "and a GPU to run in minutes); no small FLUX model that works offline ships yet"
)


# Methods that change what is generated or only record it: not compared for speed.
NOT_COMPARED = ("aligned_gen", "record")


def acceleration_methods() -> list[str]:
    """The methods the compare tab offers: dense and every acceleration method."""
    return [name for name in list_methods() if name not in NOT_COMPARED]


class DemoSession:
    """Pipelines cached by model id, so switching methods does not reload weights."""

    def __init__(self, device: str = "auto", dtype: str = "auto") -> None:
        self.device, self.dtype = device, dtype
        self._pipes: dict[str, Any] = {}

    @property
    def on_cpu(self) -> bool:
        """Whether pipelines run on the CPU (which picks the small default size)."""
        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        return torch.device(device).type == "cpu"

    def pipeline(self, model: str) -> Any:
        """The pipeline of ``model``, loaded once; the previous one is dropped only once this one has
        loaded, so a mistyped or broken model leaves the working one in place."""
        if model not in self._pipes:
            pipe = load_pipeline(model, self.device, self.dtype)
            pipe.set_progress_bar_config(disable=True)
            self._pipes = {model: pipe}  # one model kept at a time
        return self._pipes[model]


def parse_options(text: str) -> dict[str, Any]:
    """``"density=0.1, tile=(2, 8, 8)"`` -> ``{"density": 0.1, "tile": (2, 8, 8)}``.

    Options are separated by newlines or by commas that start a new ``key=``.
    """
    pieces = re.split(r"\n|,\s*(?=[A-Za-z_]\w*\s*=)", text)
    pieces = [piece.strip().rstrip(",").strip() for piece in pieces]
    return dict(parse_option(piece) for piece in pieces if piece)


def optional_int(name: str, value: str | float | None) -> int | None:
    """A size field of the page: empty means the default (None), else a whole number."""
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, or empty for the default; got {text!r}") from None
    if not number.is_integer():
        raise ValueError(f"{name} must be a whole number, or empty for the default; got {text!r}")
    return int(number)


def comparison_summary(result: ComparisonResult, size_note: str | None = None) -> str:
    """A short markdown report of one comparison, with its notes (dense fallbacks, slower than dense)."""
    notes = ([size_note] if size_note else []) + result_notes(result)
    return (
        f"**{result.method}** vs dense on `{result.pipeline}` ({result.device}, {result.dtype})\n\n"
        f"| | dense | {result.method} |\n|---|---|---|\n"
        f"| whole run | {result.dense_seconds:.2f} s | {result.method_seconds:.2f} s ({result.speedup:.2f}x) |\n"
        f"| transformer | {result.dense_transformer_seconds:.2f} s | {result.method_transformer_seconds:.2f} s "
        f"({result.transformer_speedup:.2f}x) |\n\n"
        f"PSNR **{result.psnr:.2f} dB**, SSIM **{result.ssim:.4f}** (mean over "
        f"{len(result.psnr_per_frame)} frame(s); min PSNR {min(result.psnr_per_frame):.2f} dB)"
        + "".join(f"\n\n**Note:** {note}" for note in notes)
    )


def run_comparison(
    session: DemoSession,
    model: str,
    method: str,
    options_text: str,
    prompt: str,
    seed: int,
    steps: str | int | None = None,
    frames: str | int | None = None,
    height: str | int | None = None,
    width: str | int | None = None,
    on_step: StepCallback | None = None,
) -> tuple[str, str]:
    """Dense vs ``method`` on one prompt; returns (path of the side-by-side file, markdown summary).

    Empty sizes and steps take the defaults (on a CPU: a small size, said in the summary). Every
    input is checked before the model is loaded or run, with a ``ValueError`` saying what is allowed.
    """
    if method not in acceleration_methods():
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(acceleration_methods())}")
    options = parse_options(options_text)
    build_config(method, **options)  # a bad option fails before the model loads
    given = {
        "num_inference_steps": optional_int("steps", steps),
        "num_frames": optional_int("frames", frames),
        "height": optional_int("height", height),
        "width": optional_int("width", width),
    }
    if not model.strip():
        raise ValueError("give a model: a local folder or a hub id")
    pipe = session.pipeline(model.strip())
    call, size_note = resolve_call(given, generation_defaults(model.strip()), session.on_cpu, is_video(pipe))
    out_dir = Path(tempfile.mkdtemp(prefix="dit-accel-demo-"))
    result = compare(
        pipe, method, options, prompt=prompt, seed=int(seed), out_dir=out_dir, model_name=model, on_step=on_step,
        **call,
    )  # fmt: skip
    return str(result.outputs["video"]), comparison_summary(result, size_note)


def run_style_batch(
    session: DemoSession,
    model: str,
    style: str,
    subjects_text: str,
    options_text: str,
    seed: int,
    steps: str | int | None = None,
    size: str | int | None = None,
) -> list[Image.Image]:
    """A style-aligned FLUX batch: one image per subject line, all in ``style`` (image 0 the reference)."""
    if not model.strip():
        raise ValueError(NO_FLUX_MODEL)
    subjects = [line.strip() for line in subjects_text.splitlines() if line.strip()]
    if len(subjects) < 2:
        raise ValueError("give at least two subjects, one per line (the first image is the style reference)")
    options = parse_options(options_text)
    steps, size = optional_int("steps", steps), optional_int("size", size)
    pipe = session.pipeline(model.strip())
    call: dict[str, Any] = {"num_inference_steps": steps} if steps else {}
    if size:
        size_rules(pipe).check(size, size, None)
        call |= {"height": size, "width": size}
    generator = torch.Generator().manual_seed(int(seed))
    images = aligned_batch(pipe, style, subjects, options=options, generator=generator, **call)
    return [image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image)) for image in images]
