"""Write ``benchmarks/results/README.md``: the JSON records under ``kernel/``, ``e2e/`` and ``quality/``
as one markdown table per kind of record, generated (never edited by hand).

    python benchmarks/results_table.py [--results benchmarks/results]

Kinds of record, told apart by their keys: timing lists of ``dit-accel bench kernel|e2e`` and the
launch sweeps of ``kernel_sweep.py`` (GPU, shape, method, options, time, speedup, error vs dense),
``gpu_check.py`` runs (checks passed), ``dit-accel compare`` runs (PSNR/SSIM/speedup vs dense, one
row per run and their means per method and density) and ``routing_recall.py`` runs (recall, oracle
and error per density). Any other JSON is listed as not tabulated.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TOPICS = ("kernel", "e2e", "quality")
# Keys of a timing record that say what ran and where; the measured ones start with these prefixes.
IDENTITY_KEYS = frozenset({"kind", "shape_name", "shape", "dtype", "method", "torch", "python", "triton", "gpu"})
MEASURED_PREFIXES = ("ms", "tflops", "speedup", "rel_l1", "first_call", "kept_fraction")
TIMING_COLUMNS = ("GPU", "shape", "method", "options", "ms", "speedup", "rel. L1 vs dense", "record")
COMPARE_GROUP = ("model", "size", "machine", "dtype", "method", "density", "options")
COMPARE_MEASURES = ("PSNR dB", "SSIM", "speedup")
Record = dict[str, Any]
Named = tuple[Any, str]  # a record's parsed JSON and its path under the topic folder


@dataclass
class Table:
    """A titled markdown table."""

    title: str
    columns: tuple[str, ...]
    note: str
    rows: list[tuple[str, ...]]

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""] + ([self.note, ""] if self.note else [])
        lines += ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def number(value: float | None, digits: int, suffix: str = "") -> str:
    """``value`` with ``digits`` decimals and ``suffix``, or an empty cell."""
    return "" if value is None else f"{value:.{digits}f}{suffix}"


def shape_text(shape: Iterable[int], name: str | None = None, dtype: str | None = None) -> str:
    parts = [name, "(" + ", ".join(map(str, shape)) + ")", dtype]
    return " ".join(part for part in parts if part)


def options_text(options: Record) -> str:
    """``key=value`` pairs, density first."""
    ordered = sorted(options.items(), key=lambda item: item[0] != "density")
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in ordered)


def machine(data: Record) -> str:
    """The GPU a record names, else the device it ran on."""
    return data.get("environment", {}).get("gpu") or data.get("gpu") or data.get("device", "")


def call_size(call: Record) -> str:
    size = f"{call['num_frames']}x{call['height']}x{call['width']}"
    return size + (f", {call['num_inference_steps']} steps" if call.get("num_inference_steps") else "")


def timing_row(record: Record, name: str, default_method: str = "") -> tuple[str, ...]:
    """One timing of a bench or sweep record; its options are the keys neither identity nor measured."""
    options = {
        key: value
        for key, value in record.items()
        if key not in IDENTITY_KEYS and not key.startswith(MEASURED_PREFIXES)
    }
    return (
        record.get("gpu", ""),
        shape_text(record["shape"], record.get("shape_name"), record.get("dtype")),
        record.get("method", default_method),
        options_text(options),
        number(record["ms"], 3),
        number(record.get("speedup_vs_cudnn"), 2, "x"),
        number(record.get("rel_l1_vs_dense", record.get("rel_l1_vs_cudnn")), 4),
        name,
    )


def timing_tables(records: list[Named]) -> list[Table]:
    rows = [timing_row(record, name) for data, name in records for record in data]
    note = "Medians; speedup against cuDNN SDPA in the same run (e2e: against the eager dense forward)."
    return [Table("Timings", TIMING_COLUMNS, note, rows)]


def sweep_tables(records: list[Named]) -> list[Table]:
    rows = [
        timing_row({**data["env"], "shape": data["shape"], **record}, name, "block-sparse kernel")
        for data, name in records
        for record in data["records"]
    ]
    note = "The block-sparse kernel alone, per launch configuration; speedup against cuDNN SDPA in the same run."
    return [Table("Kernel launch sweeps", TIMING_COLUMNS, note, rows)]


def check_tables(records: list[Named]) -> list[Table]:
    rows = [
        (data["env"].get("gpu", ""), f"{sum(bool(r['ok']) for r in data['results'])}/{len(data['results'])}", name)
        for data, name in records
    ]
    return [Table("GPU correctness checks", ("GPU", "passed", "record"), "", rows)]


def varying_options(option_sets: list[Record]) -> list[str]:
    """Option names whose value differs between runs, density aside (it has its own column)."""
    keys = sorted(set().union(*option_sets))
    return [key for key in keys if key != "density" and len({json.dumps(o.get(key)) for o in option_sets}) > 1]


def compare_tables(records: list[Named]) -> list[Table]:
    """Means per model, size, machine, method, density and options over the runs (prompts, seeds); each run."""
    varying = varying_options([data["options"] for data, _ in records])
    groups: dict[tuple[str, ...], list[Named]] = {}
    for data, name in sorted(records, key=lambda named: named[1]):
        key = (
            Path(data["model"]).name,
            call_size(data["call"]),
            machine(data),
            data.get("dtype", ""),
            data["method"],
            str(data["options"].get("density", "")),
            options_text({option: data["options"].get(option) for option in varying}),
        )
        groups.setdefault(key, []).append((data, name))
    means, runs = [], []
    for key, members in sorted(groups.items()):
        mean = {m: statistics.fmean(data[m] for data, _ in members) for m in ("psnr", "ssim", "speedup")}
        means.append((*key, str(len(members)), *measures(mean)))
        runs += [(*key, str(data["seed"]), *measures(data), name) for data, name in members]
    note = (
        "PSNR and SSIM of the method's output against the dense run's (same prompt and seed); speedup of the "
        "whole pipeline call. Options: those that differ between runs."
    )
    mean_columns = (*COMPARE_GROUP, "runs", *COMPARE_MEASURES)
    return [
        Table("dit-accel compare: means per method and density", mean_columns, note, means),
        Table("dit-accel compare: runs", (*COMPARE_GROUP, "seed", *COMPARE_MEASURES, "record"), "", runs),
    ]


def measures(values: Record) -> tuple[str, str, str]:
    return number(values["psnr"], 2), number(values["ssim"], 3), number(values["speedup"], 2, "x")


def routing_tables(records: list[Named]) -> list[Table]:
    rows = [
        (
            Path(data["model"]).name,
            call_size(data["call"]),
            machine(data),
            f"{data['block_q']}x{data['block_k']}",
            density,
            *(number(summary[m], 3) for m in ("recall", "oracle", "error")),
            name,
        )
        for data, name in records
        for density, summary in data["summary"].items()
    ]
    columns = ("model", "size", "machine", "block q x k", "density", "recall", "oracle", "error", "record")
    note = (
        "Means over the recorded calls: attention mass the routing keeps, the most any choice of blocks keeps "
        "at that density (oracle), and the relative L1 error of dropping the rest."
    )
    return [Table("Routing recall on recorded attention", columns, note, rows)]


def flashblock_tables(records: list[Named]) -> list[Table]:
    rows = [
        (
            machine(data),
            f"{data['tokens']} tokens, latent {tuple(data['latent'])}, "
            f"{data['frame_timesteps'][0].count(0.0)} clean frames",
            str(data["refresh_every"]),
            name_of_variant,
            number(variant["attention_ms_mean"], 1),
            number(variant["step_ms_mean"], 1),
            number(variant.get("attention_speedup_vs_uncached"), 2, "x"),
            number(max(variant["rel_l1_vs_dense"] or [0.0]), 4),
            name,
        )
        for data, name in records
        for name_of_variant, variant in data["variants"].items()
    ]
    columns = ("GPU", "call", "refresh every", "variant", "attention ms/step", "step ms", "attention vs uncached",
               "max rel. L1 vs dense", "record")  # fmt: skip
    note = (
        "Per denoising step of a random-weight SkyReels-V2-DF-1.3B transformer in diffusion-forcing mode; "
        "uncached: FlashBlock refreshing every step (the block-causal rectangles, no reuse)."
    )
    return [Table("FlashBlock end to end", columns, note, rows)]


def is_dict_with(*keys: str) -> Callable[[Any], bool]:
    return lambda data: isinstance(data, dict) and set(keys) <= data.keys()


def is_timing_list(data: Any) -> bool:
    return isinstance(data, list) and bool(data) and all(is_dict_with("ms", "shape")(record) for record in data)


# Kinds of record, in the order their tables appear: how to recognise one, and its tables from all of them.
KINDS: tuple[tuple[Callable[[Any], bool], Callable[[list[Named]], list[Table]]], ...] = (
    (is_timing_list, timing_tables),
    (is_dict_with("env", "shape", "records"), sweep_tables),
    (is_dict_with("env", "results"), check_tables),
    (is_dict_with("psnr", "ssim", "speedup", "options", "call"), compare_tables),
    (is_dict_with("summary", "block_q", "block_k", "call"), routing_tables),
    (lambda data: is_dict_with("kind", "variants")(data) and data["kind"] == "flashblock_e2e", flashblock_tables),
)


def topic_tables(folder: Path) -> tuple[list[Table], list[str]]:
    """The tables of the JSON records under ``folder``, and the JSON files that fit no kind."""
    found: list[list[Named]] = [[] for _ in KINDS]
    untabulated = []
    for path in sorted(folder.rglob("*.json")):
        data, name = json.loads(path.read_text()), path.relative_to(folder).as_posix()
        kind = next((i for i, (matches, _) in enumerate(KINDS) if matches(data)), None)
        if kind is None:
            untabulated.append(name)
        else:
            found[kind].append((data, name))
    tables = [table for (_, make), records in zip(KINDS, found, strict=True) if records for table in make(records)]
    return tables, untabulated


def render(results: Path) -> str:
    """The whole README: a section per topic folder that exists."""
    parts = [
        "# Benchmark results",
        "",
        "Generated by `python benchmarks/results_table.py` from the JSON records below; do not edit by hand.",
        "Tiny-model training records and probes are in `tiny-model/`, training logs in `logs/` "
        "(read in `assets/README.md`).",
    ]
    for topic in TOPICS:
        folder = results / topic
        if not folder.is_dir():
            continue
        tables, untabulated = topic_tables(folder)
        parts += ["", f"## {topic}/"]
        parts += [section for table in tables for section in ("", table.markdown())]
        if untabulated:
            parts += ["", "Not tabulated: " + ", ".join(f"`{name}`" for name in untabulated) + "."]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder holding kernel/, e2e/, quality/")
    args = parser.parse_args(argv)
    out = args.results / "README.md"
    out.write_text(render(args.results))
    return out


if __name__ == "__main__":
    print(main())
