"""Compile Triton kernels for Hopper (sm90a) on any machine, without a GPU.

The CPU tests run the kernels under ``TRITON_INTERPRET=1``, which accepts code the GPU compiler
rejects (a reassigned ``tl.constexpr``, a plain global read in a kernel) and says nothing about
registers. This compiles each listed kernel ahead of time with the installed Triton and its bundled
``ptxas``, as a launch at the Wan-1.3B shape would (pointers and strides 16-divisible), and reports
the registers per thread, the bytes spilled and the shared memory. Exit status 1 if any fails.

    python -m tools.hopper_compile                    # every kernel below
    python -m tools.hopper_compile pyramid_attention  # some of them
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class KernelSpec:
    """One kernel launch to compile: ``module:function``, argument types that differ from the rule
    (capitalised names are bf16 pointers except :data:`SIZES`, the rest i32), constexpr values,
    launch settings, and the size arguments a real launch passes as multiples of 16 (Triton
    specialises on that, e.g. D = 128: it decides whether a loop's loads are pipelined)."""

    target: str
    constexprs: dict[str, Any]
    types: dict[str, str] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 2
    divisible: tuple[str, ...] = ()


PYRAMID_POINTERS = {"Lse": "*fp32", "QRows": "*i32", "Idx": "*i32", "LevelCnt": "*i32", "EValid": "*i32",
                    "qk_scale": "fp32"}  # fmt: skip
LEVEL_LIST_TYPES = {"Importance": "*fp32", "Indices": "*i32", "LevelCounts": "*i32", "Bounds": "*fp64"}
NORM_ROTARY_TYPES = {"Cos": "*fp32", "Sin": "*fp32", "eps": "fp32"}
# Capitalised scalar arguments (sizes), i32 like the lower-case ones.
SIZES = {"H", "D", "S", "NK", "NQ", "NC", "Sq", "Sk", "Se", "HIDDEN", "HEAD_D"}
KERNELS: dict[str, KernelSpec] = {
    "pyramid_attention": KernelSpec(
        "dit_accel.kernels.pyramid_attention:_pyramid_attn_fwd",
        {"HEAD_DIM": 128, "BLOCK_M": 128, "BLOCK_K": 64, "TILE": 32, "BLOCK_D": 128, "HAS_QROWS": True,
         "HAS_EXTRA": True, "HAS_EVALID": True, "USE_TMA": True, "NK_P2": 512, "DOT_PRECISION": "tf32"},
        PYRAMID_POINTERS, num_stages=3,
    ),
    "pyramid": KernelSpec(
        "dit_accel.kernels.pyramid:_pyramid_fwd",
        {"BLOCK_K": 64, "BLOCK_D": 128, "WITH_SIM": True, "PRECISION": "tf32"},
        {"Sim": "*fp32"},
    ),
    "pyramid_block128": KernelSpec(
        "dit_accel.kernels.pyramid:_pyramid_fwd",
        {"BLOCK_K": 128, "BLOCK_D": 128, "WITH_SIM": True, "PRECISION": "tf32"},
        {"Sim": "*fp32"}, num_warps=8,
    ),
    "pyramid_block8": KernelSpec(
        "dit_accel.kernels.pyramid:_pyramid_fwd",
        {"BLOCK_K": 8, "BLOCK_D": 64, "WITH_SIM": False, "PRECISION": "ieee"},
        {"K": "*fp32", "V": "*fp32", "PK": "*fp32", "PV": "*fp32", "Sim": "*fp32"},
    ),
    "level_lists_thresholds": KernelSpec(
        "dit_accel.kernels.pyramid_select:_level_lists", {"NK_P2": 512, "THRESHOLDS": True}, LEVEL_LIST_TYPES
    ),
    "level_lists_quotas": KernelSpec(
        "dit_accel.kernels.pyramid_select:_level_lists", {"NK_P2": 2048, "THRESHOLDS": False}, LEVEL_LIST_TYPES,
        num_warps=8,
    ),
    "norm_rotary": KernelSpec(
        "dit_accel.kernels.norm_rotary:_norm_rotary", {"BLOCK_S": 1, "BLOCK_H": 2048, "HAS_WEIGHT": True},
        NORM_ROTARY_TYPES,
    ),
    "norm_rotary_14b": KernelSpec(  # Wan-14B's 5120 channels, at the 8 warps the launcher picks there
        "dit_accel.kernels.norm_rotary:_norm_rotary", {"BLOCK_S": 1, "BLOCK_H": 8192, "HAS_WEIGHT": True},
        NORM_ROTARY_TYPES, num_warps=8,
    ),
    "permute_rows": KernelSpec(
        "dit_accel.kernels.row_permute:_permute_rows", {"BLOCK_S": 32, "BLOCK_D": 128, "INVERSE": False},
        {"Order": "*i64"},
    ),
    "uncovered_counts": KernelSpec(
        "dit_accel.kernels.cluster_coverage:_uncovered_counts", {"NK_P2": 512, "BLOCK_C": 128},
        {"Selected": "*i8", "Ends": "*i32", "Counts": "*i32", "Out": "*i32"},
    ),
    "kmeans_assign": KernelSpec(
        "dit_accel.kernels.kmeans_assign:_kmeans_assign",
        {"BLOCK_S": 256, "BLOCK_C": 64, "BLOCK_D": 128, "PRECISION": "tf32"},
        {"HalfNorm": "*fp32", "Labels": "*i32", "Counts": "*i32"}, num_warps=8,
    ),
    "cluster_sums": KernelSpec(
        "dit_accel.kernels.cluster_sums:_cluster_sums",
        {"BLOCK_C": 16, "BLOCK_S": 64, "BLOCK_D": 128, "HAS_V": True, "PRECISION": "tf32"},
        {"Order": "*i64", "Offsets": "*i32", "Sums": "*fp32", "VSums": "*fp32"},
    ),
    "centroid_attention": KernelSpec(
        "dit_accel.kernels.centroid_attention:_centroid_attention",
        {"BLOCK_M": 128, "BLOCK_C": 32, "BLOCK_D": 128, "DOT_PRECISION": "tf32"},
        {"LogW": "*fp32", "Lse": "*fp32", "qk_scale": "fp32"},
    ),
    "pool_qk_token_rows": KernelSpec(  # Wan-1.3B's 12 heads x 128 (padded to 16), 128-row blocks, 2 rows a load
        "dit_accel.kernels.routing:_pool_qk_token_rows",
        {"BLOCK_Q": 128, "BLOCK_K": 128, "ROWS": 2, "HEADS_P2": 16, "HEAD_DIM": 128, "STAGES": 0},
        {"QMean": "*fp32", "KMean": "*fp32"}, num_warps=8,
    ),
    "pool_qk_token_rows_loop": KernelSpec(  # the default launch: a loop pipelined over 4 loads, 4 warps
        "dit_accel.kernels.routing:_pool_qk_token_rows",
        {"BLOCK_Q": 128, "BLOCK_K": 128, "ROWS": 2, "HEADS_P2": 16, "HEAD_DIM": 128, "STAGES": 4},
        {"QMean": "*fp32", "KMean": "*fp32"}, num_warps=4, divisible=("D",),
    ),
    "block_scores": KernelSpec(  # 64x64 score tiles of fp32 means, D = 128 in two tf32x3 dot steps
        "dit_accel.kernels.block_scores:_block_scores",
        {"TILE": 64, "D_STEPS": 2, "D_CHUNK": 64, "PRECISION": "tf32x3"},
        {"QMean": "*fp32", "KMean": "*fp32", "Scores": "*fp32", "scale": "fp32"}, divisible=("D",),
    ),
    "select_blocks_row": KernelSpec(  # one 256-wide row a warp, top-k
        "dit_accel.kernels.block_selection:_select_blocks",
        {"ROWS": 1, "NK_P2": 256, "TOP_P": False, "HAS_LOGCOUNT": True},
        {"Scores": "*fp32", "LogCount": "*fp32", "Indices": "*i32", "Counts": "*i32", "R": "i32", "top_p": "fp32"},
        num_warps=1,
    ),
    "score_select_top_p": KernelSpec(  # the fused kernel's 512-wide launch
        "dit_accel.kernels.routing:_score_select",
        {"BLOCK_K": 64, "ROWS": 16, "NK_P2": 512, "D_CHUNK": 16, "HEAD_DIM": 128, "TOP_P": True},
        {"QMean": "*fp32", "KMean": "*fp32", "Indices": "*i32", "Counts": "*i32", "scale": "fp32", "top_p": "fp32"},
        num_warps=16,
    ),
    "pisa_block_stats": KernelSpec(  # the default StatsConfig: H on 16-bit operands, one 128-key sub-tile a block
        "dit_accel.kernels.pisa_stats:_pisa_block_stats",
        {"HEAD_DIM": 128, "BLOCK_K": 128, "SUB_K": 128, "WITH_H": True, "WITH_NORMS": False, "INPUT_DOT": True},
        {"KMean": "*fp32", "VMean": "*fp32", "HPart": "*fp32", "HNorm": "*fp32"}, divisible=("key_len",),
    ),
    "pisa_tail_merge": KernelSpec(  # the default TailConfig, first order, merged, 2 pseudo-tokens a key block
        "dit_accel.kernels.pisa_tail:_pisa_tail_fwd",
        {"HEAD_DIM": 128, "BLOCK_M": 64, "BLOCK_N": 64, "TILES_PER_QBLOCK": 2, "TOKENS_PER_BLOCK": 2,
         "HAS_QROWS": False, "FIRST_ORDER": True, "MERGE": True, "PREFETCH_EXACT": True},
        {"LogCounts": "*fp32", "QRows": "*i32", "Chosen": "*i8", "Lse": "*fp32", "ExactLse": "*fp32",
         "Sq_total": "i32", "qk_scale": "fp32", "scale": "fp32"},
    ),
    "block_map": KernelSpec(  # a 512-block row (128x64 blocks at the Wan-1.3B shape)
        "dit_accel.kernels.block_map:_block_map",
        {"NK_P2": 512, "SLOTS": 16}, {"Indices": "*i32", "Counts": "*i32", "Map": "*i8"},
    ),
}  # fmt: skip


def signature(fn, spec: KernelSpec) -> dict[str, str]:
    return {
        name: "constexpr" if name in spec.constexprs
        else spec.types.get(name, "*bf16" if name[0].isupper() and name not in SIZES else "i32")
        for name in fn.arg_names
    }  # fmt: skip


def compile_for_hopper(spec: KernelSpec) -> dict[str, int]:
    """Compile one kernel for sm90a; registers, spilled bytes and shared memory of the result."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name = spec.target.split(":")
    fn = getattr(importlib.import_module(module), name)
    types = signature(fn, spec)
    index = {name: (i,) for i, name in enumerate(fn.arg_names)}
    aligned = [n for n, t in types.items() if t.startswith("*") or n.startswith("stride_") or n in spec.divisible]
    source = ASTSource(fn, types, constexprs={index[n]: v for n, v in spec.constexprs.items()},
                       attrs={index[n]: [["tt.divisibility", 16]] for n in aligned})  # fmt: skip
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    ptxas = next(p for p in (tools / "ptxas-blackwell", tools / "ptxas") if p.exists())
    with tempfile.TemporaryDirectory() as folder:
        ptx = Path(folder) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        log = subprocess.run([str(ptxas), "-v", "--gpu-name", "sm_90a", str(ptx), "-o", str(ptx.with_suffix(".o"))],
                             capture_output=True, text=True, check=True).stderr  # fmt: skip
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return {
        "registers": int(registers.group(1)) if registers else 0,
        "spill_bytes": int(spills.group(1)) if spills else 0,
        "shared_bytes": int(compiled.metadata.shared),
    }


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the interpreter replaces the kernels this compiles")
    names = (argv if argv is not None else sys.argv[1:]) or list(KERNELS)
    failed = 0
    for name in names:
        try:
            report = compile_for_hopper(KERNELS[name])
            print(f"{name}: {report['registers']} registers, {report['spill_bytes']} bytes spilled, "
                  f"{report['shared_bytes']} bytes shared", flush=True)  # fmt: skip
        except Exception as error:  # every failure is reported, then the next kernel
            failed += 1
            print(f"{name}: FAILED {type(error).__name__}: {str(error).strip().splitlines()[-1]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
