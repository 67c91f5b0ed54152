"""``dit-accel bench kernel|e2e``: attention speed and error against cuDNN SDPA, in one run.

Kernel benchmarks time the whole ``topk`` op (routing + block-sparse kernel + exact text rows), the
routing alone and the kernel alone, on random (never zero) q/k/v at the reference shapes of
DESIGN.md, next to cuDNN and FlashAttention-2 (torch's flash backend) dense attention. The e2e
benchmark times a full random-weight Wan2.1-1.3B-size transformer forward, eager and with
regional ``torch.compile``. Results go to ``benchmarks/results/kernel|e2e/`` as JSON records plus a markdown
table. Timings are medians after warm-up (``triton.testing.do_bench`` on CUDA).
"""

from __future__ import annotations

import argparse
import dataclasses
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

from dit_accel.config import MethodConfig
from dit_accel.context import AttentionContext, LayerBinding
from dit_accel.layout import TokenLayout
from dit_accel.methods.sparse_common import RoutedAttention, route_video_attention
from dit_accel.methods.topk import TopKAttention, TopKConfig
from dit_accel.steps import StepTracker
from dit_accel.tiling import default_tile

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
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
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


class TopKRun:
    """The ``topk`` op split into routing and kernel, so each can be timed on its own.

    With ``pretiled`` the tokens are taken as already in tile order, as they are inside a model
    (the adapters reorder them once per forward); otherwise each call gathers K/V itself.
    """

    def __init__(self, shape: BenchShape, config: TopKConfig, q, k, v, pretiled: bool = True) -> None:
        self.shape, self.config, self.q, self.k, self.v = shape, config, q, k, v
        tile = config.tile or default_tile(shape.grid, config.block_q)
        layout = dataclasses.replace(shape.layout(), token_tile=tile if pretiled else None)
        self.ctx = standalone_context(layout, config)
        self.op = TopKAttention(config)

    def full(self) -> torch.Tensor:
        return self.op(self.q, self.k, self.v, self.ctx)

    def routing(self) -> RoutedAttention:
        cfg = self.config
        return route_video_attention(
            self.q, self.k, self.v, self.ctx, block_q=cfg.block_q, block_k=cfg.block_k, select=self.op.select,
            tile=cfg.tile,
        )  # fmt: skip

    def computed_flops(self, counts: torch.Tensor) -> float:
        """Matmul FLOPs of the blocks actually computed (video rows) plus the dense text rows."""
        shape, cfg = self.shape, self.config
        pairs = (
            float(counts.sum()) * cfg.block_q * cfg.block_k
            + shape.video_len * shape.text_len * shape.batch * shape.heads
        )
        pairs += shape.text_len * shape.seq_len * shape.batch * shape.heads
        return 4.0 * shape.head_dim * pairs


def bench_kernel(
    shape_names: list[str],
    densities: list[float],
    block_size: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
    pretiled: bool = True,
) -> list[dict[str, Any]]:
    """Dense baselines and ``topk`` at each density for each shape; one record per measurement."""
    env = environment(device)
    records: list[dict[str, Any]] = []
    with torch.no_grad():
        for name in shape_names:
            shape = SHAPES[name]
            q, k, v = random_qkv(shape, dtype, device)
            dense_flops = 4.0 * shape.batch * shape.heads * shape.seq_len**2 * shape.head_dim
            base = {"kind": "kernel", "shape_name": name, "shape": shape.dims(), "dtype": str(dtype).split(".")[-1]}
            reference = None
            cudnn_ms = None
            for backend_name, backends in dense_backends(device).items():
                from torch.nn.attention import sdpa_kernel

                with sdpa_kernel(backends):
                    ms = median_ms(lambda q=q, k=k, v=v: sdpa_bshd(q, k, v), device)
                    ms_graph = graph_ms(lambda q=q, k=k, v=v: sdpa_bshd(q, k, v), device)
                    out = sdpa_bshd(q, k, v)
                if reference is None:
                    reference, cudnn_ms, cudnn_graph_ms = out, ms, ms_graph
                records.append(
                    base | env | {"method": backend_name, "density": 1.0, "ms": ms, "ms_graph": ms_graph,
                                  "tflops": dense_flops / ms / 1e9,
                                  "speedup_vs_cudnn": cudnn_ms / ms, "rel_l1_vs_dense": rel_l1(out, reference)}
                )  # fmt: skip
                print(f"{name:15s} {backend_name:6s} {ms:8.3f} ms  {dense_flops / ms / 1e9:6.1f} TFLOP/s", flush=True)
            from torch.nn.attention import sdpa_kernel

            for density in densities:
                config = TopKConfig(density=density, block_size=block_size)
                run = TopKRun(shape, config, q, k, v, pretiled=pretiled)
                with sdpa_kernel(dense_backends(device)["cudnn"]):
                    ms = median_ms(run.full, device)
                    ms_graph = graph_ms(run.full, device)
                    out = run.full()
                    routed = run.routing()
                    routing_ms = median_ms(run.routing, device)
                    attention_ms = median_ms(routed.attend, device)
                flops = run.computed_flops(routed.counts)
                nk = math.ceil(shape.video_len / config.block_k)
                records.append(
                    base | env | {
                        "method": "topk", "density": density, "block_size": list(block_size),
                        "token_order": "forward" if pretiled else "layer",
                        "kept_fraction": float(routed.counts.float().mean()) / nk, "ms": ms, "ms_graph": ms_graph,
                        "speedup_vs_cudnn_graph": cudnn_graph_ms / ms_graph if ms_graph else None,
                        "ms_routing": routing_ms, "ms_attention": attention_ms,
                        "tflops": flops / ms / 1e9, "tflops_attention": flops / attention_ms / 1e9,
                        "speedup_vs_cudnn": cudnn_ms / ms, "rel_l1_vs_dense": rel_l1(out, reference),
                    }
                )  # fmt: skip
                print(
                    f"{name:15s} topk {density:5.3f} {ms:8.3f} ms (graph {ms_graph or 0:.3f}, routing {routing_ms:.3f},"
                    f" kernel {attention_ms:.3f})"
                    f"  x{cudnn_ms / ms:5.2f} vs cuDNN  rel-L1 {records[-1]['rel_l1_vs_dense']:.4f}",
                    flush=True,
                )
            del q, k, v, reference
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return records


WAN_1_3B_CONFIG = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
}


E2E_VARIANTS = ("eager:dense", "eager:topk", "regional:dense", "regional:topk", "full:dense", "full:topk")


def bench_e2e(
    density: float, latent: tuple[int, ...], num_layers: int, variants: list[str], device: torch.device
) -> list[dict[str, Any]]:
    """Wan2.1-1.3B-size transformer forward: dense cuDNN vs ``topk``, eager and compiled.

    ``variants`` are ``mode:method`` with mode ``eager``, ``regional`` (Diffusers'
    ``compile_repeated_blocks``: each block compiled once, fullgraph) or ``full``
    (``torch.compile`` of the whole transformer). The first variant must be ``eager:dense``, the
    baseline of every speedup.
    """
    if not variants or variants[0] != "eager:dense":
        raise ValueError(f"variants must start with 'eager:dense', got {variants}")
    from diffusers import WanTransformer3DModel
    from torch.nn.attention import sdpa_kernel

    import dit_accel

    env = environment(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = WAN_1_3B_CONFIG | {"num_layers": num_layers}
    if device.type != "cuda":
        config |= {"num_attention_heads": 2, "attention_head_dim": 64, "ffn_dim": 256, "text_dim": 64}
    with torch.device(device):
        model = WanTransformer3DModel(**config).to(dtype).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(latent, generator=gen, device=device, dtype=dtype),
        "timestep": torch.tensor([500.0], device=device),
        "encoder_hidden_states": torch.randn((1, 512, config["text_dim"]), generator=gen, device=device, dtype=dtype),
    }

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
    outputs: dict[str, torch.Tensor] = {}
    eager_dense_ms = None
    with torch.no_grad(), sdpa_kernel(dense_backends(device)["cudnn"]):
        for variant in variants:
            mode, method = variant.split(":")
            compiled = mode != "eager"
            module = runner(mode)

            def forward(module=module):
                return module(**inputs, return_dict=False)[0]

            handle = dit_accel.apply(model, "topk", density=density) if method == "topk" else None
            start = time.perf_counter()
            forward()  # compile / autotune / warm caches
            first_call_s = time.perf_counter() - start
            ms = median_ms(forward, device, warmup_ms=500, rep_ms=3000)
            outputs[method] = forward()
            if handle is not None:
                handle.remove()
            if eager_dense_ms is None:
                eager_dense_ms = ms
            record = env | {
                "kind": "e2e", "shape": list(latent), "method": method, "density": density if method == "topk" else 1.0,
                "compiled": compiled, "compile_mode": mode, "ms": ms, "speedup_vs_cudnn": eager_dense_ms / ms,
                "num_layers": num_layers,
                "first_call_s": first_call_s,
                "rel_l1_vs_dense": rel_l1(outputs[method], outputs["dense"]) if "dense" in outputs else 0.0,
            }  # fmt: skip
            records.append(record)
            print(
                f"e2e {mode:8s} {method:5s} {ms:9.2f} ms  "
                f"x{record['speedup_vs_cudnn']:.2f} vs eager dense (first call {first_call_s:.1f} s)",
                flush=True,
            )
    return records


def write_results(records: list[dict[str, Any]], out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write ``stem.json`` (the records) and ``stem.md`` (a table) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(records, indent=1))
    columns = ["kind", "shape_name", "shape", "method", "density", "compiled", "ms", "ms_graph", "ms_routing",
               "ms_attention", "tflops", "speedup_vs_cudnn", "speedup_vs_cudnn_graph", "rel_l1_vs_dense"]  # fmt: skip
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
    device = _device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    records = bench_kernel(
        args.shapes, args.densities, tuple(args.block_size), dtype, device, pretiled=not args.per_layer_gather
    )
    paths = write_results(records, Path(args.out), args.name)
    print("wrote", *paths)
    return 0


def _run_e2e(args: argparse.Namespace) -> int:
    device = _device(args.device)
    records = bench_e2e(args.density, tuple(args.latent), args.num_layers, args.variants, device)
    paths = write_results(records, Path(args.out), args.name)
    print("wrote", *paths)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmark attention kernels and full transformer forwards")
    kinds = bench.add_subparsers(dest="bench_kind", required=True)

    kernel = kinds.add_parser("kernel", help="topk (routing + kernel) vs cuDNN / flash SDPA")
    kernel.add_argument("--shapes", nargs="+", default=["wan-1.3b-480p", "wan-14b-720p"], choices=sorted(SHAPES))
    kernel.add_argument("--densities", nargs="+", type=float, default=[1.0, 0.25, 0.1, 0.05])
    kernel.add_argument("--block-size", nargs=2, type=int, default=[128, 64], metavar=("Q", "K"))
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

    e2e = kinds.add_parser("e2e", help="Wan2.1-1.3B-size transformer forward, dense vs topk, eager and compiled")
    e2e.add_argument("--density", type=float, default=0.1)
    e2e.add_argument("--latent", nargs=5, type=int, default=[1, 16, 21, 60, 104], metavar=("B", "C", "F", "H", "W"))
    e2e.add_argument("--num-layers", type=int, default=30)
    e2e.add_argument(
        "--variants",
        nargs="+",
        default=["eager:dense", "eager:topk", "regional:dense", "regional:topk"],
        choices=E2E_VARIANTS,
        help="mode:method runs, in order; the first must be eager:dense (the baseline)",
    )
    e2e.add_argument("--device", default="auto")
    e2e.add_argument("--out", default=str(RESULTS_DIR / "e2e"))
    e2e.add_argument("--name", default="e2e_h200")
    e2e.set_defaults(func=_run_e2e)
