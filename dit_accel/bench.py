"""``dit-accel bench kernel|e2e``: attention speed and error against cuDNN SDPA, in one run.

Kernel benchmarks time any registered method as a whole (routing + exact block-sparse kernel +
tail + exact text rows), its routing alone and its kernel alone, on each backend (FA4 and Triton
when FA4 is installed), on random (never zero) q/k/v at the reference shapes of DESIGN.md, next to
cuDNN, FlashAttention-2 (torch's flash backend) and FA4 dense attention; with ``--recorded`` also
its error on real recorded q/k/v. The e2e benchmark times a full random-weight
Wan2.1-1.3B-size transformer forward, eager and with regional ``torch.compile``. Results go to
``benchmarks/results/kernel|e2e/`` as JSON records plus a markdown table. Timings are medians after
warm-up (``triton.testing.do_bench`` on CUDA).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dit_accel import multi_gpu
from dit_accel.config import MethodConfig
from dit_accel.context import AttentionContext, LayerBinding
from dit_accel.layout import TokenLayout
from dit_accel.steps import StepTracker

RESULTS_DIR = Path("benchmarks/results")


@dataclass(frozen=True)
class BenchShape:
    """One attention call of a reference model: heads, latent token grid and text tokens."""

    name: str
    heads: int
    grid: tuple[int, int, int]
    text_len: int = 0
    text_first: bool = False
    head_dim: int = 128
    batch: int = 1

    @property
    def video_len(self) -> int:
        return math.prod(self.grid)

    @property
    def seq_len(self) -> int:
        return self.video_len + self.text_len

    def layout(self) -> TokenLayout:
        video_start = self.text_len if self.text_first else 0
        text_start = 0 if self.text_first else self.video_len
        return TokenLayout(
            seq_len=self.seq_len,
            video_start=video_start,
            video_len=self.video_len,
            grid=self.grid,
            text_start=text_start,
            text_len=self.text_len,
        )

    def dims(self) -> list[int]:
        return [self.batch, self.heads, self.seq_len, self.head_dim]


SHAPES = {
    s.name: s
    for s in (
        BenchShape("wan-1.3b-480p", heads=12, grid=(21, 30, 52)),
        BenchShape("wan-14b-720p", heads=40, grid=(21, 45, 80)),
        BenchShape("hunyuan-720p", heads=24, grid=(33, 45, 80), text_len=256),
        BenchShape("flux-1024", heads=24, grid=(1, 64, 64), text_len=512, text_first=True),
        BenchShape("tiny-cpu", heads=2, grid=(3, 12, 16), text_len=8, head_dim=64),
    )
}


def median_ms(fn: Callable[[], Any], device: torch.device, warmup_ms: float = 200, rep_ms: float = 1000) -> float:
    """Median milliseconds of ``fn`` after warm-up (CUDA events via Triton; wall clock on CPU)."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    return median_ms_fixed(fn, device, warmup=1, reps=3)


def median_ms_fixed(fn: Callable[[], Any], device: torch.device, warmup: int = 3, reps: int = 10) -> float:
    """Median wall-clock milliseconds of ``reps`` calls after ``warmup``: a fixed count, so that every rank
    of a multi-GPU run calls ``fn`` equally often and its collectives pair up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def graph_ms(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Median milliseconds of ``fn`` replayed from a CUDA graph: GPU time without Python launch cost."""
    if device.type != "cuda":
        return None
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return median_ms(graph.replay, device)


def eager_and_graph_ms(fn: Callable[[], Any], device: torch.device, graph: bool = True) -> dict[str, Any]:
    """``ms_eager`` (median), and ``ms``: the CUDA-graph GPU time when ``graph`` and the capture works,
    else the eager figure (with ``graph_error`` naming what the capture refused)."""
    record: dict[str, Any] = {"ms_eager": median_ms(fn, device)}
    record["ms"] = record["ms_eager"]
    if graph:
        try:
            record["ms"] = graph_ms(fn, device) or record["ms_eager"]
        except Exception as error:  # an op that cannot be captured: the eager figure stands
            record["graph_error"] = f"{type(error).__name__}: {str(error)[:160]}"
    return record


def dense_backends(device: torch.device) -> dict[str, list]:
    """SDPA backends to compare against: cuDNN and FlashAttention-2 on CUDA, math on CPU."""
    from torch.nn.attention import SDPBackend

    if device.type == "cuda":
        return {"cudnn": [SDPBackend.CUDNN_ATTENTION], "flash": [SDPBackend.FLASH_ATTENTION]}
    return {"cudnn": [SDPBackend.MATH]}


def sdpa_bshd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Dense attention on Diffusers-layout tensors, exactly as Diffusers' native backend calls it."""
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def standalone_context(layout: TokenLayout, config: MethodConfig) -> AttentionContext:
    """A context for calling an op outside a model: one layer, past any warm-up."""
    tracker = StepTracker(config)
    tracker.warmup = False
    binding = LayerBinding(op=None, tracker=tracker, layer_index=0, num_layers=1, dense_layer=False)
    return AttentionContext(layout=layout, binding=binding)


def random_qkv(shape: BenchShape, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Random normal q/k/v in Diffusers' ``(B, S, H, D)`` layout (never zeros)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    size = (shape.batch, shape.seq_len, shape.heads, shape.head_dim)
    return tuple(torch.randn(size, generator=gen, device=device, dtype=dtype) for _ in range(3))


def rel_l1(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).abs().sum() / ref.float().abs().sum())


def environment(device: torch.device) -> dict[str, str]:
    info = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "none"
    info["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor()})"
    return info


def fa4_dense_available(device: torch.device) -> bool:
    """Whether FlashAttention-4 dense serves bf16 on this device (the strongest dense baseline)."""
    if device.type != "cuda":
        return False
    from dit_accel.kernels.fa4 import fa4_rejects

    return fa4_rejects(torch.empty(1, 1, 128, 128, device=device, dtype=torch.bfloat16), 128, 128) is None


def kernel_backends(device: torch.device) -> list[str]:
    """Backends a method is timed on: both GPU engines when FA4 is present, else the one that runs."""
    if device.type != "cuda":
        return ["reference"]
    return ["fa4", "triton"] if fa4_dense_available(device) else ["triton"]


def dense_runs(device: torch.device) -> dict[str, Callable]:
    """Dense baselines on ``(B, S, H, D)`` tensors: cuDNN SDPA first (the reference), FA2, FA4."""
    from torch.nn.attention import sdpa_kernel

    from dit_accel.kernels.backends import dense_attention

    def sdpa_with(backends: list) -> Callable:
        def run(q, k, v):
            with sdpa_kernel(backends):
                return sdpa_bshd(q, k, v)

        return run

    runs = {name: sdpa_with(backends) for name, backends in dense_backends(device).items()}
    if fa4_dense_available(device):
        runs["fa4"] = lambda q, k, v: dense_attention(q, k, v, "fa4")
    return runs


def method_options(method: str, densities: list[float | None], options: dict[str, Any]) -> list[dict[str, Any]]:
    """One option set per density for methods that take ``density`` (None: the method's default), else
    the options once."""
    from dit_accel.registry import get_method

    names = get_method(method).config_class.option_names()
    if "density" not in names or method == "dense":
        return [dict(options)]
    return [dict(options) if d is None else options | {"density": d} for d in densities]


def density_argument(text: str) -> float | None:
    """A ``--densities`` entry: a number, or ``default`` for the method's own default."""
    if text == "default":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a density is a number or 'default', got {text!r}") from None


def peak_memory_gb(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak GPU memory allocated while ``fn`` runs, in GiB (None on CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


class MethodRun:
    """A method called on one attention input outside a model, split into routing and kernel if it can be.

    With ``pretiled`` the tokens are taken as already in tile order, as they are inside a model (the
    adapters reorder them once per forward); otherwise each call gathers K/V itself.
    """

    def __init__(self, method: str, options: dict[str, Any], layout: TokenLayout, q, k, v,
                 pretiled: bool = True) -> None:  # fmt: skip
        from dit_accel.methods.base import BlockSparseMethod
        from dit_accel.registry import build_config, method_for

        self.config = build_config(method, **options)
        self.method = method_for(self.config)
        self.q, self.k, self.v = q, k, v
        self.sparse = isinstance(self.method, BlockSparseMethod)
        if self.sparse and pretiled and layout.grid is not None:
            layout = dataclasses.replace(layout, token_tile=self.method.tile(layout.grid))
        self.ctx = standalone_context(layout, self.config)

    def full(self) -> torch.Tensor:
        return self.method(self.q, self.k, self.v, self.ctx)

    def route_and_select(self):
        routing = self.method.route(self.q, self.k, self.v, self.ctx)
        return routing, self.method.select(routing, self.ctx)

    def backend(self) -> str:
        """The engine that serves the exact part of this call."""
        from dit_accel.kernels.backends import resolve_backend

        if not self.sparse:
            return getattr(self.config, "backend", "stock")
        cfg = self.config
        return resolve_backend(cfg.backend, self.q.transpose(1, 2), cfg.block_q, cfg.block_k)


def split_timings(run: MethodRun, shape: BenchShape, ms: float, device: torch.device) -> dict[str, float]:
    """Routing (+ selection) and kernel times of a block-sparse method, its kept fraction and TFLOP/s.

    On CUDA the split times are GPU times (replayed from CUDA graphs): routing alone is a few short
    kernels, so timed eagerly it measures Python launch cost, which the full call hides behind the
    attention kernel. The eager figures are kept as ``*_eager``.
    """
    routing, blocks = run.route_and_select()
    attend = functools.partial(run.method.attend, routing, blocks, run.ctx)
    eager = {"ms_routing": median_ms(run.route_and_select, device), "ms_attention": median_ms(attend, device)}
    graphed = {"ms_routing": graph_ms(run.route_and_select, device), "ms_attention": graph_ms(attend, device)}
    return {
        **{name: graphed[name] if graphed[name] is not None else value for name, value in eager.items()},
        **{f"{name}_eager": value for name, value in eager.items()},
        "kept_fraction": blocks.density(),
        "tflops": computed_flops(shape, blocks) / ms / 1e9,
    }


def computed_flops(shape: BenchShape, blocks) -> float:
    """Matmul FLOPs of the blocks actually computed (video rows) plus the text rows and columns."""
    pairs = float(blocks.counts.sum()) * blocks.block_q * blocks.block_k
    pairs += shape.video_len * shape.text_len * shape.batch * shape.heads
    pairs += shape.text_len * shape.seq_len * shape.batch * shape.heads
    return 4.0 * shape.head_dim * pairs


def recorded_errors(method: str, options: dict[str, Any], path: Path, device: torch.device) -> dict[str, float]:
    """Mean / max relative L1 error vs fp32 dense over the recorded calls of ``path`` (``dit-accel record``)."""
    from dit_accel.recorder import load_qkv

    calls, _ = load_qkv(path)
    errors = []
    with torch.no_grad():
        for call in calls:
            q, k, v = (x.to(device=device, dtype=torch.float32) for x in (call.q, call.k, call.v))
            run = MethodRun(method, options, call.layout, q, k, v, pretiled=False)
            errors.append(rel_l1(run.full(), sdpa_bshd(q, k, v)))
    return {"recorded_rel_l1_mean": statistics.fmean(errors), "recorded_rel_l1_max": max(errors),
            "recorded_calls": len(errors), "recorded_file": path.name}  # fmt: skip


def bench_kernel(
    shape_names: list[str],
    densities: list[float],
    dtype: torch.dtype,
    device: torch.device,
    method: str = "topk",
    options: dict[str, Any] | None = None,
    pretiled: bool = True,
    recorded: Path | None = None,
) -> list[dict[str, Any]]:
    """Dense baselines, then ``method`` at each density on each backend, for each shape; one record each.

    Every record carries the speedup against cuDNN SDPA and against FA4 dense (where installed),
    measured in the same run, the relative L1 error against dense on the same random q/k/v, and
    (with ``recorded``) the error on real recorded q/k/v.
    """
    from dit_accel.registry import get_method

    if get_method(method).kind == "edit":
        raise ValueError(
            f"bench kernel times one attention call of an accelerate or wrap method; {method!r} is an editor "
            "that needs its model (time the method it runs through instead)"
        )
    env = environment(device)
    records: list[dict[str, Any]] = []
    option_sets = method_options(method, densities, options or {})
    with torch.no_grad():
        for name in shape_names:
            shape = SHAPES[name]
            q, k, v = random_qkv(shape, dtype, device)
            dense_flops = 4.0 * shape.batch * shape.heads * shape.seq_len**2 * shape.head_dim
            base = {"kind": "kernel", "shape_name": name, "shape": shape.dims(), "dtype": str(dtype).split(".")[-1]}
            reference, baselines = None, {}
            for dense_name, run_dense in dense_runs(device).items():
                ms = median_ms(lambda q=q, k=k, v=v, f=run_dense: f(q, k, v), device)
                out = run_dense(q, k, v)
                reference = out if reference is None else reference
                baselines[dense_name] = ms
                records.append(base | env | {
                    "method": "dense", "backend": dense_name, "density": 1.0, "ms": ms,
                    "tflops": dense_flops / ms / 1e9, "rel_l1_vs_dense": rel_l1(out, reference),
                })  # fmt: skip
                print(
                    f"{name:15s} dense {dense_name:6s} {ms:8.3f} ms  {dense_flops / ms / 1e9:6.1f} TFLOP/s", flush=True
                )
            for opts in option_sets:
                backends = kernel_backends(device) if run_on_backends(method) else [None]
                errors = recorded_errors(method, opts, recorded, device) if recorded is not None else {}
                for backend in backends:
                    run_opts = opts if backend is None else opts | {"backend": backend}
                    run = MethodRun(method, run_opts, shape.layout(), q, k, v, pretiled=pretiled)
                    ms = median_ms(run.full, device)
                    out = run.full()
                    record = base | env | errors | {
                        "method": method, "options": _jsonable(run_opts), "backend": run.backend(),
                        "density": getattr(run.method.config, "density", 1.0),
                        "token_order": "forward" if pretiled else "layer",
                        "ms": ms, "ms_graph": graph_ms(run.full, device),
                        "peak_memory_gb": peak_memory_gb(run.full, device),
                        "rel_l1_vs_dense": rel_l1(out, reference),
                    } | {f"speedup_vs_{b}": b_ms / ms for b, b_ms in baselines.items()}  # fmt: skip
                    if run.sparse:
                        record |= split_timings(run, shape, ms, device)
                    records.append(record)
                    print(
                        f"{name:15s} {method} {_jsonable(opts)} [{record['backend']}] {ms:8.3f} ms "
                        f"(routing {record.get('ms_routing', 0):.3f}, kernel {record.get('ms_attention', 0):.3f}) "
                        f"x{record['speedup_vs_cudnn']:5.2f} vs cuDNN  rel-L1 {record['rel_l1_vs_dense']:.4f}",
                        flush=True,
                    )
            del q, k, v, reference
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return records


def run_on_backends(method: str) -> bool:
    """Whether a method takes the block-sparse ``backend`` option (every ``accelerate`` method but dense)."""
    from dit_accel.registry import get_method

    return method != "dense" and "backend" in get_method(method).config_class.option_names()


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


E2E_MODES = ("eager", "regional", "full")


def check_e2e_variants(variants: list[str]) -> None:
    """Variants are ``mode:method`` (mode one of :data:`E2E_MODES`, an accelerate method), ``eager:dense`` first."""
    from dit_accel.registry import get_method

    if not variants or variants[0] != "eager:dense":
        raise ValueError(f"variants must start with 'eager:dense', got {variants}")
    for variant in variants:
        mode, _, method = variant.partition(":")
        if mode not in E2E_MODES:
            raise ValueError(f"variant {variant!r}: mode must be one of {', '.join(E2E_MODES)}")
        if get_method(method).kind != "accelerate":
            raise ValueError(f"variant {variant!r}: bench e2e times accelerate methods, not a {method!r}")


def bench_e2e(
    model_name: str,
    density: float,
    latent: tuple[int, ...] | None,
    variants: list[str],
    device: torch.device,
    overrides: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    gpus: int = 1,
) -> list[dict[str, Any]]:
    """A full-size random-weight transformer forward: dense (cuDNN) vs methods, eager and compiled.

    ``model_name`` is one of :data:`dit_accel.e2e_models.E2E_MODELS` (Wan2.1-1.3B, HunyuanVideo,
    FLUX.1-dev); ``overrides`` change its config (``num_layers``...). ``variants`` are
    ``mode:method`` with mode ``eager``, ``regional`` (Diffusers' ``compile_repeated_blocks``: each
    block compiled once, fullgraph) or ``full`` (``torch.compile`` of the whole transformer); the
    first must be ``eager:dense``, the baseline of every speedup. Methods run on every backend, with
    ``options`` (besides ``density``) and no dense warm-up (one forward is timed, not a schedule).
    With ``gpus > 1`` (one torchrun process a GPU, :mod:`dit_accel.multi_gpu`) the transformer runs
    under Diffusers' Ulysses context parallelism, timed over a fixed count of calls.
    """
    check_e2e_variants(variants)
    from torch.nn.attention import sdpa_kernel

    import dit_accel
    from dit_accel.e2e_models import E2E_MODELS

    if model_name not in E2E_MODELS:
        raise ValueError(f"model must be one of {', '.join(E2E_MODELS)}, got {model_name!r}")
    spec = E2E_MODELS[model_name]
    latent = tuple(latent or spec.default_latent)
    if len(latent) != len(spec.default_latent):
        raise ValueError(f"{model_name} takes a latent of {spec.latent_help}, got {latent}")
    env = environment(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)  # the same random weights on every rank
    model = spec.build(device, dtype, overrides or {})
    if gpus > 1:
        multi_gpu.parallelize(model, gpus)
    inputs = spec.make_inputs(dict(model.config), latent, device, dtype)

    runners = {"eager": model}

    def runner(mode: str) -> torch.nn.Module:
        if mode not in runners:
            if mode == "regional":
                model.compile_repeated_blocks(fullgraph=True)
                runners["regional"] = model
            else:
                runners["full"] = torch.compile(model)
        return runners[mode]

    records: list[dict[str, Any]] = []
    reference = None  # the first run's output: eager dense on cuDNN
    eager_dense: dict[str, float] = {}  # dense engine -> eager ms, the baselines
    with torch.no_grad(), sdpa_kernel(dense_backends(device)["cudnn"]):
        for variant in variants:
            mode, method = variant.split(":")
            module = runner(mode)

            def forward(module=module):
                return module(**inputs, return_dict=False)[0]

            for backend, run_options in e2e_runs(method, density, device, options):
                handle = dit_accel.apply(model, method, **run_options) if run_options is not None else None
                start = time.perf_counter()
                forward()  # compile / autotune / warm caches
                first_call_s = time.perf_counter() - start
                ms = (
                    median_ms(forward, device, warmup_ms=500, rep_ms=3000)
                    if gpus == 1
                    else median_ms_fixed(forward, device)
                )
                memory = peak_memory_gb(forward, device)
                out = forward()
                reference = out if reference is None else reference
                if handle is not None:
                    handle.remove()
                if mode == "eager" and method == "dense":
                    eager_dense[backend] = ms
                record = env | {
                    "kind": "e2e", "model": model_name, "shape": list(latent), "method": method, "backend": backend,
                    "options": _jsonable(run_options or {}), "density": (run_options or {}).get("density", 1.0),
                    "compiled": mode != "eager", "compile_mode": mode, "gpus": gpus,
                    "ms": ms, "config_overrides": overrides or {}, "first_call_s": first_call_s,
                    "peak_memory_gb": memory,
                    "rel_l1_vs_dense": rel_l1(out, reference), "speedup_vs_eager_dense": eager_dense["cudnn"] / ms,
                }  # fmt: skip
                if "fa4" in eager_dense:
                    record["speedup_vs_eager_fa4_dense"] = eager_dense["fa4"] / ms
                records.append(record)
                if multi_gpu.is_main():
                    print(
                        f"e2e {mode:8s} {method:5s} [{backend}] {ms:9.2f} ms  x{record['speedup_vs_eager_dense']:.2f} "
                        f"vs eager dense (first call {first_call_s:.1f} s, peak {memory or 0:.1f} GiB, {gpus} GPUs)",
                        flush=True,
                    )
    return records


def e2e_runs(
    method: str, density: float, device: torch.device, options: dict[str, Any] | None = None
) -> list[tuple[str, dict[str, Any] | None]]:
    """``(engine, apply options)`` runs of one e2e variant; options None keeps the stock processors.

    Dense runs on the stock processors (cuDNN); on CUDA also through dit-accel's processor with
    ``dense`` on cuDNN (``cudnn_processor``: what the processor's own work, e.g. the fused q/k norm
    + rotary, saves without any sparsity; ``backend="stock"`` would keep the stock ops, bit for bit)
    and, where installed, through ``dense`` on FA4 (the dense baseline a user can pick); other methods
    on every backend, without dense warm-up.
    """
    from dit_accel.registry import get_method

    if method == "dense":
        processor = [("cudnn_processor", {"backend": "cudnn"})] if device.type == "cuda" else []
        return [("cudnn", None)] + processor + ([("fa4", {"backend": "fa4"})] if fa4_dense_available(device) else [])
    takes_density = "density" in get_method(method).config_class.option_names()
    base = {"density": density} if takes_density else {}
    base |= {"dense_steps": 0, "dense_layers": 0} | (options or {})
    return [(backend, base | {"backend": backend}) for backend in kernel_backends(device)]


def write_results(records: list[dict[str, Any]], out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write ``stem.json`` (the records) and ``stem.md`` (a table) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(records, indent=1))
    columns = ["kind", "shape_name", "shape", "method", "backend", "density", "compile_mode", "ms", "ms_graph",
               "ms_routing", "ms_attention", "tflops", "speedup_vs_cudnn", "speedup_vs_fa4", "speedup_vs_eager_dense",
               "speedup_vs_eager_fa4_dense", "rel_l1_vs_dense", "recorded_rel_l1_mean", "peak_memory_gb"]  # fmt: skip
    columns = [c for c in columns if any(c in r for r in records)]
    lines = [f"GPU: {records[0]['gpu']} · torch {records[0]['torch']} · triton {records[0]['triton']}", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in records:
        cells = []
        for column in columns:
            value = record.get(column, "")
            cells.append(f"{value:.3f}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _run_kernel(args: argparse.Namespace) -> int:
    from dit_accel.compare import parse_option

    device = _device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    options = dict(parse_option(text) for text in args.option)
    records = bench_kernel(
        args.shapes, args.densities, dtype, device, method=args.method, options=options,
        pretiled=not args.per_layer_gather, recorded=Path(args.recorded) if args.recorded else None,
    )  # fmt: skip
    paths = write_results(records, Path(args.out), args.name)
    print("wrote", *paths)
    return 0


def _run_e2e(args: argparse.Namespace) -> int:
    from dit_accel.compare import parse_option

    status = multi_gpu.relaunch(args.gpus, args.argv)
    if status is not None:
        return status
    device = multi_gpu.setup(args.gpus) if args.gpus > 1 else _device(args.device)
    overrides = dict(parse_option(text) for text in args.config)
    latent = tuple(args.latent) if args.latent else None
    try:
        records = bench_e2e(args.model, args.density, latent, args.variants, device, overrides,
                            dict(parse_option(text) for text in args.option), args.gpus)  # fmt: skip
        if multi_gpu.is_main():
            print("wrote", *write_results(records, Path(args.out), args.name))
    finally:
        multi_gpu.finish()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmark attention kernels and full transformer forwards")
    kinds = bench.add_subparsers(dest="bench_kind", required=True)

    kernel = kinds.add_parser("kernel", help="a method (routing + kernel) vs cuDNN / FA2 / FA4 dense")
    kernel.add_argument("--method", default="topk", help="any registered method (dit-accel list)")
    kernel.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method option, repeatable (block_size=128,64; top_p=0.9)",
    )
    kernel.add_argument(
        "--recorded", default=None, help="q/k/v recorded by `dit-accel record`: also report the error vs dense on them"
    )
    kernel.add_argument("--shapes", nargs="+", default=["wan-1.3b-480p", "wan-14b-720p"], choices=sorted(SHAPES))
    kernel.add_argument("--densities", nargs="+", type=density_argument, default=[1.0, 0.25, 0.1, 0.05],
                        help="numbers, or 'default' for the method's own (e.g. PSA's quotas)")  # fmt: skip
    kernel.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    kernel.add_argument(
        "--per-layer-gather",
        action="store_true",
        help="time the path for tokens in raster order (K/V gathered per call) instead of the tile order "
        "that the adapters set up once per forward",
    )
    kernel.add_argument("--device", default="auto")
    kernel.add_argument("--out", default=str(RESULTS_DIR / "kernel"))
    kernel.add_argument("--name", default="kernel_h200")
    kernel.set_defaults(func=_run_kernel)

    e2e = kinds.add_parser("e2e", help="full-size transformer forward, dense vs methods, eager and compiled")
    e2e.add_argument("--model", default="wan-1.3b", choices=["wan-1.3b", "hunyuan-video", "flux-dev"])
    e2e.add_argument("--density", type=float, default=0.1)
    e2e.add_argument(
        "--latent",
        nargs="+",
        type=int,
        default=None,
        help="latent shape: B C F H W for Wan/HunyuanVideo (default 480p 81f / 720p 129f), "
        "B C H W for FLUX (default 1024 px)",
    )
    e2e.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the model config, repeatable (num_layers=10)",
    )
    e2e.add_argument(
        "--variants",
        nargs="+",
        default=["eager:dense", "eager:topk", "regional:dense", "regional:topk"],
        metavar="MODE:METHOD",
        help=f"runs in order, mode one of {', '.join(E2E_MODES)}; the first must be eager:dense (the baseline)",
    )
    e2e.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                     help="an option of the methods run, repeatable (order=1)")  # fmt: skip
    e2e.add_argument("--device", default="auto")
    e2e.add_argument("--gpus", type=int, default=1,
                     help="GPUs of this host: > 1 relaunches through torchrun under Diffusers' Ulysses context "
                     "parallelism (ulysses_degree=N)")  # fmt: skip
    e2e.add_argument("--out", default=str(RESULTS_DIR / "e2e"))
    e2e.add_argument("--name", default="e2e_h200")
    e2e.set_defaults(func=_run_e2e)
