"""``dit-accel bench kernel`` on the CPU: every non-editing method gets records with speedups and errors."""

from __future__ import annotations

import pytest
import torch

import dit_accel
from dit_accel import bench
from dit_accel.bench import SHAPES, bench_kernel
from dit_accel.recorder import QKVStore
from dit_accel.registry import get_method

CPU = torch.device("cpu")
TIMED_METHODS = [m for m in dit_accel.list_methods() if get_method(m).kind != "edit"]


def method_rows(records: list[dict], method: str) -> list[dict]:
    return [r for r in records if r["method"] == method and r.get("options") is not None]


@pytest.mark.parametrize("method", TIMED_METHODS)
def test_every_method_gets_a_record_against_the_dense_baseline(method):
    options = {"block_size": 64} if "block_size" in get_method(method).config_class.option_names() else {}
    records = bench_kernel(["tiny-cpu"], [0.5], torch.float32, CPU, method=method, options=options)
    baseline = [r for r in records if r["method"] == "dense" and r.get("options") is None]
    assert [r["backend"] for r in baseline] == ["cudnn"] and baseline[0]["rel_l1_vs_dense"] == 0.0
    (row,) = method_rows(records, method)
    assert row["ms"] > 0 and row["speedup_vs_cudnn"] > 0 and row["shape"] == SHAPES["tiny-cpu"].dims()
    if method == "topk":
        assert row["backend"] == "reference" and row["kept_fraction"] == pytest.approx(0.5, abs=0.1)
    if "kept_fraction" in row:  # block-sparse: split into routing and kernel, and not dense
        assert 0.0 < row["kept_fraction"] < 1.0 and row["ms_routing"] > 0 and row["ms_attention"] > 0
        assert 1e-3 < row["rel_l1_vs_dense"] < 2.0
    else:  # dense, record, and flashblock without external keys compute exact attention
        assert row["rel_l1_vs_dense"] < 1e-5


def test_recorded_calls_give_the_error_on_real_inputs(tmp_path):
    """Error vs dense on recorded q/k/v: 0 at density 1, larger at lower density."""
    shape = SHAPES["tiny-cpu"]
    gen = torch.Generator().manual_seed(0)
    store = QKVStore()
    q, k, v = (torch.randn(1, shape.seq_len, shape.heads, shape.head_dim, generator=gen) for _ in range(3))
    store.add(q, k, v, step=0, layer=0, layout=shape.layout())
    path = store.save(tmp_path / "qkv.safetensors")
    errors = {}
    for density in (1.0, 0.25):
        records = bench_kernel(["tiny-cpu"], [density], torch.float32, CPU, options={"block_size": 64}, recorded=path)
        (row,) = method_rows(records, "topk")
        assert row["recorded_calls"] == 1 and row["recorded_file"] == "qkv.safetensors"
        errors[density] = row["recorded_rel_l1_mean"]
    assert errors[1.0] < 1e-5 < errors[0.25]


def test_editors_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="'aligned_gen' is an editor"):
        bench_kernel(["tiny-cpu"], [0.5], torch.float32, CPU, method="aligned_gen")


@pytest.mark.parametrize(
    ("model", "latent"),
    [("wan-1.3b", (1, 16, 5, 16, 16)), ("hunyuan-video", (1, 16, 5, 16, 16)), ("flux-dev", (1, 16, 32, 32))],
)
def test_e2e_times_each_family_dense_and_topk(model, latent):
    """Every family's forward (shrunk on the CPU), dense then topk: speedup, error and memory fields."""
    from dit_accel.bench import bench_e2e

    records = bench_e2e(model, 0.25, latent, ["eager:dense", "eager:topk"], CPU)
    dense, topk = records
    assert (dense["model"], dense["method"], topk["method"], topk["backend"]) == (model, "dense", "topk", "reference")
    assert dense["speedup_vs_eager_dense"] == 1.0 and topk["speedup_vs_eager_dense"] > 0
    assert dense["rel_l1_vs_dense"] == 0.0 and 1e-4 < topk["rel_l1_vs_dense"] < 1.0
    assert topk["shape"] == list(latent) and "peak_memory_gb" in topk


def test_e2e_refuses_a_latent_of_the_wrong_rank():
    from dit_accel.bench import bench_e2e

    with pytest.raises(ValueError, match="flux-dev takes a latent of B C H W"):
        bench_e2e("flux-dev", 0.25, (1, 16, 5, 16, 16), ["eager:dense"], CPU)
    with pytest.raises(ValueError, match=r"model must be one of wan-1\.3b, hunyuan-video, flux-dev"):
        bench_e2e("sd3", 0.25, None, ["eager:dense"], CPU)


def test_record_command_feeds_bench_kernel(tmp_path):
    """``dit-accel record`` on the shipped tiny model, then its calls as bench kernel's real inputs."""
    from dit_accel.cli import main
    from dit_accel.recorder import load_qkv

    path = tmp_path / "qkv.safetensors"
    size = ["--frames", "5", "--height", "64", "--width", "64", "--num-inference-steps", "2", "--layers", "1"]
    assert main(["record", "--out", str(path), *size]) == 0
    calls, info = load_qkv(path)
    assert [(c.step, c.layer) for c in calls] == [(0, 1), (0, 1), (1, 1), (1, 1)]  # conditional + unconditional
    assert info["model_class"] == "WanTransformer3DModel" and calls[0].layout.grid == (2, 8, 8)
    records = bench_kernel(["tiny-cpu"], [0.25], torch.float32, CPU, options={"block_size": 32}, recorded=path)
    (row,) = method_rows(records, "topk")
    assert row["recorded_calls"] == 4 and 0.0 < row["recorded_rel_l1_mean"] <= row["recorded_rel_l1_max"] < 1.0


def test_e2e_runs_dense_on_every_engine_a_user_could_pick(monkeypatch):
    from dit_accel import bench

    assert bench.e2e_runs("dense", 0.1, CPU) == [("cudnn", None)]
    no_warmup = {"dense_steps": 0, "dense_layers": 0}
    assert bench.e2e_runs("topk", 0.1, CPU) == [("reference", {"density": 0.1, **no_warmup, "backend": "reference"})]
    assert bench.e2e_runs("topk", 0.1, CPU, {"top_p": 0.9, "density": None})[0][1]["top_p"] == 0.9
    monkeypatch.setattr(bench, "fa4_dense_available", lambda device: True)
    gpu = torch.device("cuda")
    assert bench.e2e_runs("dense", 0.1, gpu) == [
        ("cudnn", None), ("cudnn_processor", {"backend": "cudnn"}), ("fa4", {"backend": "fa4"})
    ]  # fmt: skip
    assert [backend for backend, _ in bench.e2e_runs("topk", 0.1, gpu)] == ["fa4", "triton"]


def test_e2e_variants_name_a_mode_and_an_accelerate_method():
    from dit_accel.bench import check_e2e_variants

    check_e2e_variants(["eager:dense", "regional:topk"])
    with pytest.raises(ValueError, match="start with 'eager:dense'"):
        check_e2e_variants(["eager:topk"])
    with pytest.raises(ValueError, match="mode must be one of eager, regional, full"):
        check_e2e_variants(["eager:dense", "jit:topk"])
    with pytest.raises(ValueError, match="accelerate methods"):
        check_e2e_variants(["eager:dense", "eager:record"])
    with pytest.raises(ValueError, match="unknown method"):
        check_e2e_variants(["eager:dense", "eager:nope"])


def test_densities_take_numbers_or_the_method_default():
    import argparse

    from dit_accel.bench import density_argument, method_options

    assert [density_argument(t) for t in ("0.25", "default")] == [0.25, None]
    with pytest.raises(argparse.ArgumentTypeError, match="'default'"):
        density_argument("half")
    assert method_options("topk", [0.25, None], {"top_p": None}) == [{"top_p": None, "density": 0.25}, {"top_p": None}]
    assert method_options("dense", [0.25], {}) == [{}]


def test_eager_and_graph_ms_keeps_the_eager_figure_when_capture_fails(monkeypatch):
    calls, cpu = [], torch.device("cpu")
    assert bench.eager_and_graph_ms(lambda: calls.append(1), cpu, graph=False).keys() == {"ms", "ms_eager"}

    def refuse(fn, device):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(bench, "graph_ms", refuse)
    record = bench.eager_and_graph_ms(lambda: calls.append(1), cpu)
    assert record["ms"] == record["ms_eager"] > 0
    assert record["graph_error"].startswith("RuntimeError: operation not permitted")
    monkeypatch.setattr(bench, "graph_ms", lambda fn, device: 0.25)
    assert bench.eager_and_graph_ms(lambda: calls.append(1), cpu)["ms"] == 0.25
