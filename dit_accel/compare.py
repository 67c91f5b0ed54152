"""``dit-accel compare``: one prompt, seed and scheduler, run dense and with a method, side by side.

    dit-accel compare --method topk -o density=0.25
    dit-accel compare --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --method topk -o density=0.125 \\
        --prompt "a cat surfing" --height 480 --width 832 --frames 81 --steps 50

The dense run uses the pipeline's stock attention; the method run installs the method with
:func:`dit_accel.apply` and removes it afterwards. Both start from the same CPU generator seed, so
their initial noise is identical and every difference comes from the attention. Reported: PSNR and
SSIM per frame and their means (on the 8-bit outputs), wall-clock time of each whole run and of its
transformer calls (CUDA-synchronised on GPUs), and their ratios. Written: a side-by-side GIF or MP4
(a PNG for image pipelines such as FLUX) and a JSON record of all of it.

Without ``--model`` the tiny Wan model trained for this project (``assets/tiny-wan-t2v``) is used. A
model folder may hold ``generation_defaults.json`` (size, steps, guidance) that fills options not
given on the command line; on a CPU a small size and step count replace its size (about a minute on
2 cores, see :mod:`dit_accel.call_sizes`), and the command says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import diffusers
import numpy as np
import torch
from PIL import Image

import dit_accel
from dit_accel.api import apply
from dit_accel.bench import environment
from dit_accel.block_map import BlockMap, BlockMapRequest
from dit_accel.call_sizes import resolve_call, size_rules
from dit_accel.metrics import video_psnr, video_ssim
from dit_accel.option_specs import parse_value
from dit_accel.pipelines import find_adapter
from dit_accel.registry import build_config
from dit_accel.result_notes import result_notes
from dit_accel.tiny_model import GENERATION_DEFAULTS_FILE, TINY_MODEL_DIR

DEFAULT_PROMPT = "a red circle moving right on a striped blue background"
VIDEO_FORMATS = ("gif", "mp4", "webm")
# OpenCV codec of each video container: webm (VP9) is the one browsers play that OpenCV's wheels write.
FOURCC = {".mp4": "mp4v", ".webm": "VP90"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Called after each denoising step of a run with (run label, step, steps of the run); may raise to stop.
StepCallback = Callable[[str, int, int], None]


@dataclass
class ComparisonResult:
    """A dense run and a method run of the same call, their frames, timings and differences."""

    model: str
    pipeline: str
    method: str
    options: dict[str, Any]
    prompt: str
    seed: int
    call: dict[str, Any]
    device: str
    dtype: str
    dense_seconds: float
    method_seconds: float
    dense_transformer_seconds: float
    method_transformer_seconds: float
    psnr_per_frame: list[float]
    ssim_per_frame: list[float]
    dense: np.ndarray = field(repr=False)
    accelerated: np.ndarray = field(repr=False)
    dense_fallbacks: dict[str, int] = field(default_factory=dict)  # reason -> attention calls that ran dense
    outputs: dict[str, str] = field(default_factory=dict)
    block_map: BlockMap | None = field(default=None, repr=False)  # the captured one, when asked for

    @property
    def psnr(self) -> float:
        return float(np.mean(self.psnr_per_frame))

    @property
    def ssim(self) -> float:
        return float(np.mean(self.ssim_per_frame))

    @property
    def speedup(self) -> float:
        return self.dense_seconds / self.method_seconds

    @property
    def transformer_speedup(self) -> float:
        return self.dense_transformer_seconds / self.method_transformer_seconds

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record; an infinite PSNR (identical frames) is written as null."""
        record = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("dense", "accelerated", "block_map")
        }
        if self.block_map is not None:
            record["block_map"] = {
                "layer": self.block_map.layer,
                "step": self.block_map.step,
                "fractions": self.block_map.fractions(),
            }
        record.update(
            psnr=self.psnr, ssim=self.ssim, speedup=self.speedup, transformer_speedup=self.transformer_speedup
        )
        record["notes"] = result_notes(self)
        record["frames"] = int(self.dense.shape[0])
        record["versions"] = _versions()
        record["environment"] = environment(torch.device(self.device))  # names the GPU the timings came from
        return finite_or_none(record)


def finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def _versions() -> dict[str, str]:
    return {"dit_accel": dit_accel.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__}


def is_video_pipeline(pipe: Any) -> bool:
    """Video pipelines (Wan, HunyuanVideo) take ``num_frames``; image pipelines (FLUX) do not."""
    return "num_frames" in inspect.signature(pipe.__call__).parameters


# Arguments compare sets itself, from its own options or to make the two runs comparable.
MANAGED_CALL_ARGUMENTS = (
    "prompt",
    "num_inference_steps",
    "height",
    "width",
    "num_frames",
    "guidance_scale",
    "output_type",
    "generator",
    "return_dict",
)


def check_pipeline_kwargs(pipe: Any, pipeline_kwargs: dict[str, Any]) -> None:
    """Refuse names the pipeline's ``__call__`` does not take, and those compare sets itself."""
    accepted = inspect.signature(pipe.__call__).parameters
    for name in pipeline_kwargs:
        if name in MANAGED_CALL_ARGUMENTS:
            raise ValueError(f"{name} is set by compare itself; use its own option, not pipeline_kwargs")
        if name not in accepted:
            raise ValueError(
                f"{name} is not an argument of {type(pipe).__name__}.__call__; it takes "
                f"{', '.join(n for n in accepted if n not in MANAGED_CALL_ARGUMENTS and n != 'kwargs')}"
            )


def call_arguments(
    pipe: Any,
    prompt: str,
    num_inference_steps: int | None,
    height: int | None,
    width: int | None,
    num_frames: int | None,
    guidance_scale: float | None,
    pipeline_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The pipeline call, without the generator; options left None keep the pipeline's defaults, and
    ``pipeline_kwargs`` passes any other argument of the pipeline (a negative prompt, a prompt template)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be non-empty text, got {prompt!r}")
    check_pipeline_kwargs(pipe, pipeline_kwargs or {})
    if num_frames is not None and not is_video_pipeline(pipe):
        raise ValueError(f"num_frames is only for video pipelines; {type(pipe).__name__} makes images")
    given = {
        "num_inference_steps": num_inference_steps,
        "height": height,
        "width": width,
        "num_frames": num_frames,
        "guidance_scale": guidance_scale,
    }
    for name in ("num_inference_steps", "height", "width", "num_frames"):
        value = given[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    size_rules(pipe).check(height, width, num_frames)
    return {
        "prompt": prompt,
        "output_type": "np",
        **{k: v for k, v in given.items() if v is not None},
        **(pipeline_kwargs or {}),
    }


def pipeline_transformers(pipe: Any) -> list[torch.nn.Module]:
    components = getattr(pipe, "components", {})
    return [m for m in components.values() if isinstance(m, torch.nn.Module) and find_adapter(m) is not None]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def transformer_timer(models: list[torch.nn.Module], device: torch.device) -> Iterator[list[float]]:
    """Accumulate the wall-clock time of the models' forward calls into the yielded one-item list."""
    total, started = [0.0], [0.0]

    def before(*_: Any) -> None:
        _sync(device)
        started[0] = time.perf_counter()

    def after(*_: Any) -> None:
        _sync(device)
        total[0] += time.perf_counter() - started[0]

    handles = [h for m in models for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        yield total
    finally:
        for handle in handles:
            handle.remove()


def frames_of(output: Any) -> np.ndarray:
    """``(F, H, W, 3)`` uint8 frames of the first sample of a pipeline output (an image is one frame)."""
    frames = getattr(output, "frames", None)
    frames = np.asarray(output.images if frames is None else frames)[0]
    if frames.ndim == 3:
        frames = frames[None]
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def step_hook(pipe: Any, label: str, on_step: StepCallback) -> dict[str, Any]:
    """The pipeline-call argument that reports each finished denoising step to ``on_step``."""
    if "callback_on_step_end" not in inspect.signature(pipe.__call__).parameters:
        return {}

    def after_step(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        on_step(label, index + 1, pipe.num_timesteps)
        return tensors

    return {"callback_on_step_end": after_step}


def timed_run(
    pipe: Any,
    call: dict[str, Any],
    seed: int,
    label: str,
    device: torch.device,
    on_step: StepCallback | None = None,
) -> tuple[np.ndarray, float, float]:
    """Run the pipeline once from ``seed``; frames, total seconds, transformer seconds."""
    # Label the pipeline's own progress bar, keeping whatever else was set (e.g. disable=True in a UI).
    pipe.set_progress_bar_config(**{**getattr(pipe, "_progress_bar_config", {}), "desc": label})
    if on_step is not None:
        call = {**call, **step_hook(pipe, label, on_step)}
    generator = torch.Generator("cpu").manual_seed(seed)
    with transformer_timer(pipeline_transformers(pipe), device) as transformer_seconds:
        _sync(device)
        start = time.perf_counter()
        output = pipe(**call, generator=generator)
        _sync(device)
        seconds = time.perf_counter() - start
    return frames_of(output), seconds, transformer_seconds[0]


def compare(
    pipe: Any,
    method: str,
    options: dict[str, Any] | None = None,
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    num_inference_steps: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    guidance_scale: float | None = None,
    pipeline_kwargs: dict[str, Any] | None = None,
    warmup_runs: int = 0,
    out_dir: str | Path | None = None,
    video_format: str = "gif",
    model_name: str | None = None,
    on_step: StepCallback | None = None,
    block_map: BlockMapRequest | None = None,
) -> ComparisonResult:
    """Run ``pipe`` dense and with ``method`` on the same call; measure and optionally write the outputs.

    ``warmup_runs`` untimed runs of each precede the timed ones (compilation, autotuning, cuDNN
    plans). ``pipeline_kwargs`` go to both runs' pipeline calls as they are. With ``out_dir``, a
    side-by-side video (``video_format``: gif, mp4 or webm; PNG for images) and a JSON record are
    written there and listed in ``result.outputs``. ``on_step`` hears of every denoising step
    (progress, and an exception raised there stops the comparison). ``block_map`` (a layer and a
    step) keeps that call's block map of the timed method run in ``result.block_map``.
    """
    if isinstance(warmup_runs, bool) or not isinstance(warmup_runs, int) or warmup_runs < 0:
        raise ValueError(f"warmup_runs must be an int >= 0, got {warmup_runs!r}")
    if video_format not in VIDEO_FORMATS:
        raise ValueError(f"video_format must be one of {', '.join(VIDEO_FORMATS)}, got {video_format!r}")
    config = build_config(method, **(options or {}))  # bad names and options fail before any run
    call = call_arguments(pipe, prompt, num_inference_steps, height, width, num_frames, guidance_scale, pipeline_kwargs)
    device = torch.device(pipe._execution_device)

    for _ in range(warmup_runs):
        timed_run(pipe, call, seed, "warm-up dense", device, on_step)
    dense_run = timed_run(pipe, call, seed, "dense", device, on_step)
    method_run = run_with_method(pipe, config, call, seed, device, warmup_runs, on_step, block_map)
    result = comparison_result(pipe, call, seed, dense_run, method_run, model_name)
    if out_dir is not None:
        write_outputs(result, Path(out_dir), video_format)
    return result


@dataclass
class AcceleratedRun:
    """One pipeline run with a method installed: frames, timings, the resolved config, dense fallbacks."""

    frames: np.ndarray
    seconds: float
    transformer_seconds: float
    config: Any
    dense_fallbacks: dict[str, int]
    block_map: BlockMap | None = None


def run_with_method(
    pipe: Any,
    config: Any,
    call: dict[str, Any],
    seed: int,
    device: torch.device,
    warmup_runs: int = 0,
    on_step: StepCallback | None = None,
    block_map: BlockMapRequest | None = None,
) -> AcceleratedRun:
    """Install ``config`` on ``pipe``, run ``warmup_runs`` untimed calls and one timed call, remove it;
    with ``block_map``, the timed run keeps the block map of that layer and step."""
    with apply(pipe, config) as handle:
        for _ in range(warmup_runs):
            timed_run(pipe, call, seed, f"warm-up {config.method}", device, on_step)
        if block_map is not None:
            handle.capture_block_map(block_map.layer, block_map.step)
        frames, seconds, transformer_seconds = timed_run(pipe, call, seed, config.method, device, on_step)
        # handle.config carries the model family's defaults; fallbacks: calls that ran dense, by reason.
        fallbacks = dict(handle.dense_fallbacks)
        return AcceleratedRun(frames, seconds, transformer_seconds, handle.config, fallbacks, handle.block_map)


def comparison_result(
    pipe: Any,
    call: dict[str, Any],
    seed: int,
    dense_run: tuple[np.ndarray, float, float],
    method_run: AcceleratedRun,
    model_name: str | None = None,
) -> ComparisonResult:
    """The :class:`ComparisonResult` of a dense run (``timed_run``'s tuple) and a method run of one call."""
    dense, dense_s, dense_t = dense_run
    config = method_run.config
    psnr_frames, _ = video_psnr(dense, method_run.frames)
    ssim_frames, _ = video_ssim(dense, method_run.frames)
    return ComparisonResult(
        model=model_name or str(getattr(pipe.config, "_name_or_path", "") or "in-memory pipeline"),
        pipeline=type(pipe).__name__,
        method=config.method,
        options={name: getattr(config, name) for name in config.option_names()},
        prompt=call["prompt"],
        seed=seed,
        call={k: v for k, v in call.items() if k not in ("prompt", "output_type")},
        device=str(pipe._execution_device),
        dtype=str(next(m.dtype for m in pipeline_transformers(pipe))).removeprefix("torch."),
        dense_seconds=dense_s,
        method_seconds=method_run.seconds,
        dense_transformer_seconds=dense_t,
        method_transformer_seconds=method_run.transformer_seconds,
        psnr_per_frame=psnr_frames,
        ssim_per_frame=ssim_frames,
        dense=dense,
        accelerated=method_run.frames,
        dense_fallbacks=method_run.dense_fallbacks,
        block_map=method_run.block_map,
    )


# --------------------------------------------------------------------------------------------------
# Output files.


def _labelled(frames: np.ndarray, label: str) -> np.ndarray:
    """Frames with a black caption bar on top."""
    bar = np.zeros((frames.shape[0], 20, frames.shape[2], 3), dtype=np.uint8)
    for image in bar:
        cv2.putText(image, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([bar, frames], axis=1)


def side_by_side(left: np.ndarray, right: np.ndarray, left_label: str, right_label: str) -> np.ndarray:
    """``(F, H + 20, 2W + 4, 3)`` uint8: labelled ``left`` and ``right`` with a white gap."""
    if left.shape != right.shape:
        raise ValueError(f"left and right must have the same shape, got {left.shape} and {right.shape}")
    gap = np.full((left.shape[0], left.shape[1] + 20, 4, 3), 255, dtype=np.uint8)
    return np.concatenate([_labelled(left, left_label), gap, _labelled(right, right_label)], axis=2)


def write_video(frames: np.ndarray, path: Path, fps: int = 8) -> Path:
    """Write ``(F, H, W, 3)`` uint8 RGB frames as a GIF, an MP4, a WebM or (one frame) a PNG, by ``path``'s suffix."""
    suffix = path.suffix.lower()
    if suffix == ".png":
        Image.fromarray(frames[0]).save(path)
    elif suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    elif suffix in FOURCC:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC[suffix]), fps, frames.shape[2:0:-1])
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write {FOURCC[suffix]} video to {path.name} here; use a .gif path")
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
    else:
        raise ValueError(f"path must end in .png, .gif, .mp4 or .webm, got {path.name!r}")
    return path


def write_outputs(result: ComparisonResult, out_dir: Path, video_format: str = "gif", media: bool = True) -> None:
    """Write the JSON record and (with ``media``) the side-by-side video (PNG for one image) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"compare-{result.method}-seed{result.seed}"
    record_path = out_dir / f"{stem}.json"
    result.outputs = {"record": str(record_path)}
    if media:
        suffix = "png" if result.dense.shape[0] == 1 else video_format
        label = f"{result.method} {result.psnr:.1f} dB {result.speedup:.2f}x"
        video = side_by_side(result.dense, result.accelerated, "dense", label)
        result.outputs["video"] = str(write_video(video, out_dir / f"{stem}.{suffix}"))
    # default=repr: pipeline_kwargs may hold values JSON has no type for (tensors, callables)
    record_path.write_text(json.dumps(result.to_dict(), indent=2, default=repr) + "\n")


# --------------------------------------------------------------------------------------------------
# Command line.


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE a Python literal (``0.25``, ``(2, 8, 8)``, ``[0, 1]``) or else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"options are KEY=VALUE, got {text!r}")
    return key.strip(), parse_value(value)


def generation_defaults(model: str) -> dict[str, Any]:
    """The call defaults stored beside a local model, or nothing."""
    path = Path(model) / GENERATION_DEFAULTS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def load_pipeline(model: str, device: str = "auto", dtype: str = "auto") -> Any:
    """``DiffusionPipeline.from_pretrained`` on ``device`` in ``dtype`` (auto: bf16 on GPUs, fp32 on CPUs)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this torch sees no CUDA GPU; use cpu or auto")
    if dtype == "auto":
        dtype = "bfloat16" if torch.device(device).type == "cuda" else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
    if model == str(TINY_MODEL_DIR) and not TINY_MODEL_DIR.is_dir():
        raise FileNotFoundError(
            f"the tiny model is not in {TINY_MODEL_DIR}: it ships in the repository's assets/ (a git "
            "checkout, not the wheel); pass --model, or train it with "
            f"'python -m tools.tiny_wan.train --out {TINY_MODEL_DIR} --minutes 19'"
        )
    if _names_a_folder(model) and not Path(model).expanduser().is_dir():
        raise FileNotFoundError(f"no model folder at {model}")
    try:
        return diffusers.DiffusionPipeline.from_pretrained(model, dtype=DTYPES[dtype]).to(device)
    except Exception as error:  # a broken folder fails in many ways: missing files, bad JSON, wrong shapes
        raise ValueError(f"could not load a Diffusers pipeline from {model}: {error}") from error


def _names_a_folder(model: str) -> bool:
    """A path rather than a hub id (``org/name``): it exists, starts like a path or has more parts."""
    return Path(model).expanduser().exists() or model.startswith(("/", ".", "~")) or model.count("/") > 1


def call_options(args: argparse.Namespace, pipe: Any) -> dict[str, Any]:
    """Steps, sizes and guidance: the command line's over the model's stored defaults (smaller on a CPU)."""
    on_cpu = torch.device(pipe._execution_device).type == "cpu"
    given = {name: getattr(args, name) for name in ("num_inference_steps", "height", "width", "num_frames")}
    given, note = resolve_call(
        {**given, "guidance_scale": args.guidance_scale},
        generation_defaults(args.model),
        on_cpu,
        is_video_pipeline(pipe),
    )
    if note:
        print(note)
    return given


def _run(args: argparse.Namespace) -> int:
    build_config(args.method, **dict(args.option))  # a bad method or option fails before the model loads
    pipe = load_pipeline(args.model, args.device, args.dtype)
    on_cpu = torch.device(pipe._execution_device).type == "cpu"
    given = call_options(args, pipe)
    warmup = args.warmup if args.warmup is not None else int(not on_cpu)
    result = compare(
        pipe,
        args.method,
        dict(args.option),
        prompt=args.prompt,
        seed=args.seed,
        warmup_runs=warmup,
        out_dir=args.out,
        video_format=args.format,
        model_name=args.model,
        pipeline_kwargs=dict(args.call),
        **given,
    )
    print(
        f"{result.method} vs dense on {result.pipeline} ({result.device}, {result.dtype}), "
        f"{result.dense.shape[0]} frame(s) of {result.dense.shape[1]}x{result.dense.shape[2]}\n"
        f"  PSNR {result.psnr:.2f} dB   SSIM {result.ssim:.4f}\n"
        f"  time {result.dense_seconds:.2f} s -> {result.method_seconds:.2f} s ({result.speedup:.2f}x); "
        f"transformer {result.dense_transformer_seconds:.2f} s -> {result.method_transformer_seconds:.2f} s "
        f"({result.transformer_speedup:.2f}x)\n"
        + "".join(f"  note: {note}\n" for note in result_notes(result))
        + f"  wrote {result.outputs['video']} and {result.outputs['record']}"
    )
    return 0


def register(subparsers: Any) -> None:
    """Add the ``compare`` sub-command to the ``dit-accel`` parser."""
    parser = subparsers.add_parser(
        "compare",
        help="dense vs a method on the same prompt and seed: PSNR, SSIM, speedup, side-by-side video",
        description=__doc__.split("\n\n")[0],
    )
    add_generation_arguments(parser)
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs of each first (default: 1 on GPU)")
    parser.add_argument("--out", type=Path, default=Path("out/compare"), help="folder for the video and JSON")
    parser.add_argument("--format", choices=VIDEO_FORMATS, default="gif")
    parser.set_defaults(func=_run)


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype``, as :func:`load_pipeline` takes them (every model-loading command)."""
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES))


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, method and pipeline-call arguments ``compare`` and ``generate`` share."""
    parser.add_argument("--model", default=str(TINY_MODEL_DIR), help="local folder or hub id (default: tiny model)")
    parser.add_argument("--method", required=True, help="method name (see 'dit-accel list')")
    parser.add_argument(
        "-o", "--option", action="append", type=parse_option, default=[], metavar="KEY=VALUE", help="method option"
    )
    parser.add_argument(
        "--call",
        action="append",
        type=parse_option,
        default=[],
        metavar="NAME=VALUE",
        help="any other argument of the pipeline's call, e.g. negative_prompt='blurry' or max_sequence_length=128",
    )
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", dest="num_inference_steps", type=int, default=None, metavar="N")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--frames", dest="num_frames", type=int, default=None, metavar="N", help="video pipelines only")
    parser.add_argument("--guidance-scale", type=float, default=None, metavar="G")
    add_device_arguments(parser)
