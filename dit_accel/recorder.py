"""Recorded q/k/v: the store the ``record`` method fills, ``record_qkv`` and ``load_qkv``.

Real q/k/v (after q/k norm and RoPE, the ``(B, S, H, D)`` tensors the attention call receives) are
what sparse kernels must be judged on: random tensors give near-uniform attention. The op copies
them to the CPU for the chosen layers and denoising steps and returns the stock dense result, so
the generation itself is unchanged::

    from dit_accel.recorder import record_qkv, load_qkv
    record_qkv(pipe, "qkv.safetensors", layers=[0, 4], steps=[0, 15], prompt="...", num_inference_steps=30)
    for call in load_qkv("qkv.safetensors"):
        out = my_kernel(call.q, call.k, call.v, call.layout)

The file holds ``{index}.q``, ``{index}.k``, ``{index}.v`` per recorded call, in the dtype the model
ran in, and a JSON metadata entry ``dit_accel`` with, per call, the step, the layer, the call number
within that (step, layer) (Wan runs the conditional and unconditional passes as two calls) and the
:class:`~dit_accel.layout.TokenLayout` (token ranges, latent grid), plus the model class.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dit_accel.layout import TokenLayout

if TYPE_CHECKING:
    from dit_accel.methods.record import RecordConfig

METADATA_KEY = "dit_accel"


@dataclass
class RecordedCall:
    """One recorded attention call."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    step: int
    layer: int
    call: int
    layout: TokenLayout


class QKVStore:
    """Recorded calls in memory until :meth:`save`."""

    def __init__(self) -> None:
        self.calls: list[RecordedCall] = []

    def add(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: int, layer: int, layout: TokenLayout
    ) -> None:
        call = sum(1 for c in self.calls if (c.step, c.layer) == (step, layer))
        q, k, v = (x.detach().to("cpu", copy=True).contiguous() for x in (q, k, v))
        self.calls.append(RecordedCall(q, k, v, step, layer, call, layout))

    def save(self, path: str | Path, **metadata: Any) -> Path:
        """Write every recorded call to a safetensors file; ``metadata`` is stored beside them."""
        if not self.calls:
            raise ValueError("nothing was recorded: check the layers and steps options against the model")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors, entries = {}, []
        for index, c in enumerate(self.calls):
            tensors.update({f"{index}.q": c.q, f"{index}.k": c.k, f"{index}.v": c.v})
            entries.append(
                {"index": index, "step": c.step, "layer": c.layer, "call": c.call, "layout": _layout_dict(c.layout)}
            )
        info = {"format": 1, "layout": "(B, S, H, D), after RoPE", **metadata, "calls": entries}
        save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(info)})
        return path


def _layout_dict(layout: TokenLayout) -> dict[str, Any]:
    fields = {f.name: getattr(layout, f.name) for f in dataclasses.fields(layout)}
    if fields["text_valid"] is not None:
        fields["text_valid"] = fields["text_valid"].tolist()
    return fields


def _layout_from_dict(fields: dict[str, Any]) -> TokenLayout:
    fields = dict(fields)
    for name in ("grid", "appended_grid"):
        if fields.get(name) is not None:
            fields[name] = tuple(fields[name])
    if fields.get("text_valid") is not None:
        fields["text_valid"] = torch.tensor(fields["text_valid"], dtype=torch.int32)
    return TokenLayout(**fields)


def truncate_video(layout: TokenLayout, max_tokens: int) -> tuple[torch.Tensor, TokenLayout]:
    """Keep the first ``max_tokens`` video tokens (whole frames when the tokens form a grid) and every
    other token; returns the kept query indices and the layout of what is kept.

    A prefix of whole latent frames is itself a valid, smaller video, so attention over the kept
    tokens is a realistic problem of that size. Appended key-only tokens are all kept.
    """
    kept = min(layout.video_len, max_tokens)
    grid = layout.grid
    if grid is not None:
        frames = max(1, kept // (grid[1] * grid[2]))
        grid = (frames, grid[1], grid[2])
        kept = frames * grid[1] * grid[2]
    dropped = layout.video_len - kept
    index = torch.cat([torch.arange(0, layout.video_start + kept), torch.arange(layout.video_end, layout.seq_len)])
    text_start = (
        layout.text_start - dropped if layout.text_start >= layout.video_end and layout.text_len else layout.text_start
    )
    return index, dataclasses.replace(
        layout, seq_len=layout.seq_len - dropped, video_len=kept, grid=grid, text_start=text_start
    )


def record_qkv(
    pipe: Any,
    path: str | Path,
    layers: int | Sequence[int] | None = None,
    steps: int | Sequence[int] | None = None,
    max_tokens: int | None = None,
    **call_kwargs: Any,
) -> Path:
    """Run ``pipe(**call_kwargs)`` once with ``record`` installed and write what it saw to ``path``."""
    from dit_accel.api import apply
    from dit_accel.methods.record import RecordConfig

    config = RecordConfig(layers=layers, steps=steps, max_tokens=max_tokens)
    with apply(pipe, config) as handle:
        pipe(**call_kwargs)
        models = [type(m).__name__ for m in handle.transformers]
    if unrecorded := _requested_but_unrecorded(config):
        raise ValueError(
            f"requested but never recorded: {'; '.join(unrecorded)}. Check them against num_inference_steps "
            "and the model's layers"
        )
    return config.store.save(path, model_class=models[0], models=models, pipeline_class=type(pipe).__name__)


def _requested_but_unrecorded(config: RecordConfig) -> list[str]:
    """The requested steps and layers the run never reached: a file missing them would skew any statistic."""
    problems = []
    for name, attribute, requested in (("steps", "step", config.steps), ("layers", "layer", config.layers)):
        seen = {getattr(c, attribute) for c in config.store.calls}
        if requested is not None and (missing := sorted(set(requested) - seen)):
            problems.append(f"{name} {missing} (recorded: {sorted(seen)})")
    return problems


def load_qkv(path: str | Path) -> tuple[list[RecordedCall], dict[str, Any]]:
    """The recorded calls of a file written by :func:`record_qkv`, and its metadata."""
    with safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()[METADATA_KEY])
        calls = [
            RecordedCall(
                q=f.get_tensor(f"{e['index']}.q"),
                k=f.get_tensor(f"{e['index']}.k"),
                v=f.get_tensor(f"{e['index']}.v"),
                step=e["step"],
                layer=e["layer"],
                call=e["call"],
                layout=_layout_from_dict(e["layout"]),
            )
            for e in info["calls"]
        ]
    return calls, info


def default_steps(num_steps: int) -> list[int]:
    """The steps recorded when none are named: first, middle and last."""
    return sorted({0, num_steps // 2, num_steps - 1})


def _run_record(args: Any) -> int:
    from dit_accel.compare import generation_defaults, load_pipeline

    pipe = load_pipeline(args.model, args.device, args.dtype)
    pipe.set_progress_bar_config(disable=True)
    call = generation_defaults(args.model)
    for name, value in (("num_frames", args.frames), ("height", args.height), ("width", args.width)):
        if value is not None:
            call[name] = value
    steps = args.num_inference_steps or call.pop("num_inference_steps", 30)
    call.pop("num_inference_steps", None)
    at_steps = args.steps if args.steps is not None else default_steps(steps)
    path = record_qkv(
        pipe, args.out, layers=args.layers, steps=at_steps, max_tokens=args.max_tokens, prompt=args.prompt,
        num_inference_steps=steps, generator=torch.Generator().manual_seed(args.seed), **call,
    )  # fmt: skip
    calls, _ = load_qkv(path)
    print(f"wrote {path}: {len(calls)} attention calls (steps {at_steps} of {steps})")
    return 0


def register(subparsers: Any) -> None:
    """``dit-accel record``: q/k/v of chosen layers and steps of one generation, for kernel error checks."""
    from dit_accel.tiny_model import TINY_MODEL_DIR

    parser = subparsers.add_parser("record", help="record q/k/v (after RoPE) of chosen layers and steps")
    parser.add_argument("--model", default=str(TINY_MODEL_DIR), help="pipeline folder or hub id (default: tiny Wan)")
    parser.add_argument("--out", required=True, help="safetensors file to write")
    parser.add_argument("--prompt", default="a red circle moving right on a striped blue background")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="attention layers (default: all)")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="steps (default: first, middle, last)")
    parser.add_argument("--num-inference-steps", type=int, default=None, help="default: the model's, else 30")
    parser.add_argument("--frames", type=int, default=None, help="default: the model's native size")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=None, help="keep at most this many video tokens a call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.set_defaults(func=_run_record)
