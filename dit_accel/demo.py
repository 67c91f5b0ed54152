"""What the web demo does, without the page: the models it was started with, comparisons of any
accelerate method with dense attention (videos, metrics, block map), style-aligned batches, and the
``dit-accel demo`` command that starts the page (:mod:`dit_accel.demo_app`, which needs Gradio).

Kept free of Gradio so it is tested like the rest of the package and usable from notebooks. A demo
server opens only the models it was started with: the page offers them in a list, and every request
naming another one is refused.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from dit_accel.block_map import BlockMap, BlockMapRequest
from dit_accel.call_sizes import resolve_call, size_rules
from dit_accel.compare import (
    DTYPES,
    ComparisonResult,
    StepCallback,
    compare,
    generation_defaults,
    load_pipeline,
    parse_option,
    step_hook,
    write_video,
)
from dit_accel.compare import is_video_pipeline as is_video
from dit_accel.editing import aligned_batch
from dit_accel.image_upload import open_upload_image
from dit_accel.option_specs import OptionSpec, option_specs
from dit_accel.pipelines import ADAPTERS, find_adapter
from dit_accel.registry import build_config, get_method, list_methods
from dit_accel.result_notes import result_notes
from dit_accel.style_metrics import offline_style_metrics
from dit_accel.tiny_model import TINY_MODEL_DIR

NEEDS_FLUX = "the style-aligned batch needs a FLUX.1 model"
NO_FLUX_MODEL = (
    f"{NEEDS_FLUX}, and this demo serves none: start it without `--model` (the shipped tiny FLUX, offline), "
    "or add one with `--model black-forest-labs/FLUX.1-dev` (a large download, and a GPU to run in minutes) "
    "or `--model` a local FLUX folder"
)
OUT_OF_MEMORY = (
    "out of GPU memory for this request (the server freed what it could and keeps serving); "
    "try fewer frames, a smaller size, or a smaller model"
)
# Runs whose output files are kept on disk (the page shows the latest; Gradio caches what it served).
KEPT_RUNS = 8
# The block map picture is drawn about this many pixels wide, one square per (query block, key block).
MAP_PIXELS = 256


def shipped_models() -> list[str]:
    """The small models of the checkout's ``assets/`` (each folder with a ``model_index.json``), the tiny
    Wan model first: the ones the demo serves offline, whatever ships there."""
    found = sorted(str(index.parent) for index in TINY_MODEL_DIR.parent.glob("*/model_index.json"))
    return list(dict.fromkeys([str(TINY_MODEL_DIR), *found]))


def acceleration_methods() -> list[str]:
    """The methods the Accelerate tab offers: every ``accelerate`` method in the registry."""
    return list_methods(kind="accelerate")


def model_family(model: str) -> str | None:
    """The adapter family (``"wan"``, ``"flux"``, ...) of a model folder or a hub id already in the local
    cache, read from its ``model_index.json`` without loading it; None when that file is not at hand."""
    from huggingface_hub import try_to_load_from_cache

    index = Path(model).expanduser() / "model_index.json"
    if not index.is_file():
        try:
            cached = try_to_load_from_cache(model, "model_index.json")
        except ValueError:  # not a valid hub id either
            return None
        if not isinstance(cached, str):
            return None
        index = Path(cached)
    try:
        transformer = json.loads(index.read_text()).get("transformer", [None, None])[1]
    except (OSError, ValueError, AttributeError, IndexError, TypeError):
        return None
    return next((adapter.family for adapter in ADAPTERS if transformer in adapter.model_class_names), None)


class DemoSession:
    """The models a demo serves, their pipelines (loaded on first use, one at a time) and its output files."""

    def __init__(self, models: Sequence[str] | None = None, device: str = "auto", dtype: str = "auto") -> None:
        self.models = list(dict.fromkeys(shipped_models() if models is None else models))
        self.device, self.dtype = device, dtype
        self._added: dict[str, Any] = {}
        self._loaded: dict[str, Any] = {}
        self._out_root = Path(tempfile.mkdtemp(prefix="dit-accel-demo-"))
        self._runs = 0

    @property
    def on_cpu(self) -> bool:
        """Whether pipelines run on the CPU (which picks the small default size)."""
        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        return torch.device(device).type == "cpu"

    def add(self, name: str, pipe: Any) -> None:
        """Serve an already built pipeline under ``name`` (kept in memory, never reloaded)."""
        pipe.set_progress_bar_config(disable=True)
        self._added[name] = pipe
        self.models = list(dict.fromkeys([*self.models, name]))

    def check(self, model: str | None) -> str:
        """``model`` if the demo serves it, else a ``ValueError`` listing the ones it does."""
        if model not in self.models:
            raise ValueError(f"model {model!r} is not one this demo serves; choose one of {', '.join(self.models)}")
        return model

    def check_chosen(self, model: str | None) -> str:
        """:meth:`check` for an image tab's menu, whose empty choice means no FLUX model was loaded."""
        if not model:
            raise ValueError(NO_FLUX_MODEL)
        return self.check(model)

    def flux_pipeline(self, model: str, needs: str) -> Any:
        """:meth:`pipeline` of a FLUX model; ``needs`` ends the error for a model of another family."""
        pipe = self.pipeline(model)
        if self.family(model) != "flux":
            raise ValueError(f"{model} is a {self.family(model)} model; {needs}")
        return pipe

    def pipeline(self, model: str) -> Any:
        """The pipeline of ``model``, loaded once; the previously loaded one is dropped only once this one
        has loaded, so a broken model leaves the working one in place."""
        model = self.check(model)
        if model in self._added:
            return self._added[model]
        if model not in self._loaded:
            pipe = load_pipeline(model, self.device, self.dtype)
            pipe.set_progress_bar_config(disable=True)
            self._loaded = {model: pipe}  # one loaded model kept at a time
        return self._loaded[model]

    def family(self, model: str) -> str | None:
        """The model's adapter family, from its pipeline when in memory, else from its files (None: unknown)."""
        pipe = self._added.get(model) or self._loaded.get(model)
        if pipe is not None:
            adapter = find_adapter(pipe.transformer)
            return adapter.family if adapter is not None else None
        return model_family(model)

    def label(self, model: str) -> str:
        """How the page names a model: shipped ones by their folder's name, others as given."""
        return f"{Path(model).name} (shipped, offline)" if model in shipped_models() else model

    def style_models(self) -> list[str]:
        """The models the style tab offers: FLUX ones, and those whose family is not known before loading."""
        return [model for model in self.models if self.family(model) in ("flux", None)]

    def option_specs(self, method: str, model: str | None) -> list[OptionSpec]:
        """The option widgets of ``method``, showing its defaults for the family of ``model``."""
        family = self.family(model) if model in self.models else None
        return option_specs(get_method(method).config_class, family)

    def output_dir(self) -> Path:
        """A fresh folder for one run's files; the oldest beyond :data:`KEPT_RUNS` are deleted."""
        self._runs += 1
        stale = self._out_root / f"run-{self._runs - KEPT_RUNS}"
        shutil.rmtree(stale, ignore_errors=True)
        folder = self._out_root / f"run-{self._runs}"
        folder.mkdir()
        return folder


def free_gpu_memory() -> None:
    """Release what an out-of-memory request left behind, so the next request starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def parse_options(text: str) -> dict[str, Any]:
    """``"density=0.1, tile=(2, 8, 8)"`` -> ``{"density": 0.1, "tile": (2, 8, 8)}``.

    Options are separated by newlines or by commas that start a new ``key=``.
    """
    pieces = re.split(r"\n|,\s*(?=[A-Za-z_]\w*\s*=)", text or "")
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


def _steps_of(pipe: Any, call: dict[str, Any]) -> int:
    """The denoising steps of a call: its own, else the pipeline's default."""
    default = inspect.signature(pipe.__call__).parameters["num_inference_steps"].default
    return call.get("num_inference_steps") or default


def block_map_request(pipe: Any, call: dict[str, Any], layer: str | int | None, step: str | int | None):
    """Which call's block map to keep: ``layer`` and ``step`` as given (0-based), empty meaning the middle
    attention layer and the last step (past any dense warm-up layers and steps); checked against the model."""
    layers = len(find_adapter(pipe.transformer).attention_modules(pipe.transformer))
    steps = _steps_of(pipe, call)
    layer, step = optional_int("block map layer", layer), optional_int("block map step", step)
    layer = layers // 2 if layer is None else layer
    step = steps - 1 if step is None else step
    if not 0 <= layer < layers:
        raise ValueError(f"block map layer must be in [0, {layers - 1}] for this model, got {layer}")
    if not 0 <= step < steps:
        raise ValueError(f"block map step must be in [0, {steps - 1}] for {steps} steps, got {step}")
    return BlockMapRequest(layer, step)


@dataclass
class DemoComparison:
    """One comparison as the page shows it: the result, its summary, both runs as WebM files a browser
    plays, and which call's block map was asked for (``result.block_map`` holds it when the method drew one)."""

    result: ComparisonResult
    summary: str
    dense_video: str
    method_video: str
    map_request: BlockMapRequest


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
    map_layer: str | int | None = None,
    map_step: str | int | None = None,
    on_step: StepCallback | None = None,
) -> DemoComparison:
    """Dense vs ``method`` on one prompt, keeping the block map of ``map_layer`` at ``map_step``.

    Empty sizes and steps take the defaults (on a CPU: a small size, said in the summary). Every input
    is checked before the model runs, with a ``ValueError`` saying what is allowed.
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
    pipe = session.pipeline(model)
    call, size_note = resolve_call(given, generation_defaults(model), session.on_cpu, is_video(pipe))
    request = block_map_request(pipe, call, map_layer, map_step)
    out_dir = session.output_dir()
    result = compare(
        pipe, method, options, prompt=prompt, seed=int(seed), out_dir=out_dir, video_format="webm",
        model_name=model, on_step=on_step, block_map=request, **call,
    )  # fmt: skip
    return DemoComparison(
        result,
        comparison_summary(result, size_note),
        str(write_video(result.dense, out_dir / "dense.webm")),
        str(write_video(result.accelerated, out_dir / f"{method}.webm")),
        request,
    )


def block_map_view(
    block_map: BlockMap | None, head: int | float | None, request: BlockMapRequest
) -> tuple[np.ndarray | None, str]:
    """The picture of one head of a captured block map with its legend, and a caption; without a map,
    None and why there is none (the method ran dense at that layer and step, or draws no map)."""
    if block_map is None:
        return None, (
            f"No block map of layer {request.layer} at step {request.step}: the method ran dense there (dense "
            "warm-up layers or steps, too few tokens) or draws none."
        )
    head = 0 if head is None else int(head)
    grid = block_map.picture(head=head, cell=max(2, MAP_PIXELS // max(block_map.codes.shape[-2:])))
    fractions = block_map.fractions(head=head)
    legend = [f"{name} {fractions[name]:.0%}" for name in block_map.legend_colours()]
    caption = (
        f"Block map of layer {block_map.layer}, step {block_map.step}, head {head} "
        f"(rows: query blocks, columns: key blocks): {', '.join(legend)}"
    )
    return _with_legend(grid, block_map.legend_colours(), legend), caption


def _with_legend(grid: np.ndarray, colours: dict[str, tuple[int, int, int]], texts: list[str]) -> np.ndarray:
    """The map on a white canvas with a grey frame, and one swatch and text per class below it."""
    row = 22
    width = max(grid.shape[1] + 2, 220)
    canvas = np.full((grid.shape[0] + 2 + row * len(texts) + 6, width, 3), 255, dtype=np.uint8)
    canvas[: grid.shape[0] + 2, : grid.shape[1] + 2] = 160
    canvas[1 : grid.shape[0] + 1, 1 : grid.shape[1] + 1] = grid
    for i, (colour, text) in enumerate(zip(colours.values(), texts, strict=True)):
        top = grid.shape[0] + 8 + i * row
        cv2.rectangle(canvas, (4, top), (18, top + 14), (160, 160, 160), 1)
        canvas[top + 1 : top + 14, 5:18] = colour
        cv2.putText(canvas, text, (26, top + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def _square(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """``image`` cropped to its centre square and resized to ``size`` (the reference must match the batch)."""
    return PIL.ImageOps.fit(image, (size, size), PIL.Image.Resampling.LANCZOS)


def flux_image_call(
    session: DemoSession,
    model: str,
    steps: str | int | None,
    size: str | int | None,
    needs: str,
    label: str,
    on_step: StepCallback | None,
) -> tuple[Any, dict[str, Any]]:
    """The FLUX pipeline of ``model`` and the keyword arguments of a square-image call: the model's own
    native call where it ships one (the tiny FLUX: 128 px, true CFG), ``steps`` and ``size`` where the page
    gives them, and the progress hook; ``needs`` ends the error for a model of another family."""
    steps, size = optional_int("steps", steps), optional_int("size", size)
    pipe = session.flux_pipeline(model, needs)
    call: dict[str, Any] = dict(generation_defaults(model))
    size = size or call.get("height") or pipe.default_sample_size * pipe.vae_scale_factor
    size_rules(pipe).check(size, size, None)
    call |= {"height": size, "width": size}
    if steps:
        call["num_inference_steps"] = steps
    if on_step is not None:
        call |= step_hook(pipe, label, on_step)
    return pipe, call


def run_style_batch(
    session: DemoSession,
    model: str | None,
    style: str,
    subjects_text: str,
    method: str,
    options_text: str,
    style_image: str | None,
    seed: int,
    steps: str | int | None = None,
    size: str | int | None = None,
    on_step: StepCallback | None = None,
) -> tuple[list[PIL.Image.Image], str]:
    """A style-aligned FLUX batch, one image per subject line in ``style`` (image 0 the reference, or
    the uploaded ``style_image``), its attention through ``method``; the images and a markdown report
    of their style consistency."""
    session.check_chosen(model)
    subjects = [line.strip() for line in (subjects_text or "").splitlines() if line.strip()]
    if len(subjects) < (1 if style_image else 2):
        raise ValueError("give at least two subjects, one per line (the first image is the style reference)")
    options = {"attention": method, **parse_options(options_text)}
    build_config("aligned_gen", **options)  # a bad option fails before the model loads
    reference = open_upload_image(style_image, "style image") if style_image else None
    pipe, call = flux_image_call(session, model, steps, size, NEEDS_FLUX, "style batch", on_step)
    size = call["height"]
    generators = [torch.Generator().manual_seed(int(seed) + i) for i in range(len(subjects))]
    images = aligned_batch(
        pipe, style, subjects, options=options, generator=generators, output_type="pil",
        reference_image=None if reference is None else _square(reference, size), **call,
    )  # fmt: skip
    metrics = offline_style_metrics(images)
    report = (
        f"Style consistency of the {len(images)} images (lower is more consistent): Gram distance "
        f"**{metrics['gram_distance']:.4f}**, colour-histogram distance **{metrics['color_histogram_distance']:.4f}**"
    )
    return list(images), report


def _launch(args: argparse.Namespace) -> int:
    try:
        from dit_accel.demo_app import build_app, launch
    except ImportError as error:
        raise SystemExit(f"dit-accel demo needs Gradio: pip install 'dit-accel[demo]' ({error})") from None
    session = DemoSession([*shipped_models(), *args.model], args.device, args.dtype)
    launch(build_app(session), args.host, args.port, args.share)
    return 0


def register(subparsers: Any) -> None:
    """Add the ``demo`` sub-command to the ``dit-accel`` parser."""
    parser = subparsers.add_parser(
        "demo",
        help="the web demo: dense vs any method with videos and metrics, style-aligned batches",
        description="Start the web demo on the shipped tiny Wan model (offline) and the models given with --model.",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="MODEL",
        help="a hub id or local folder of a Wan, HunyuanVideo or FLUX pipeline to offer besides the tiny model "
        "(repeatable); the page offers only these",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES), help="auto: bf16 on GPUs, fp32 on CPUs")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also create a public Gradio link")
    parser.set_defaults(func=_launch)
