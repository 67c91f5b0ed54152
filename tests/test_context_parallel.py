"""Every method under Diffusers' context parallelism (Ulysses) equals its single-process result.

One 2-process gloo run (CPU) checks all methods on tiny Wan and FLUX transformers; the refusals
(ring attention, HunyuanVideo) need no second process: they are raised before any collective.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from diffusers import ContextParallelConfig
from diffusers.models._modeling_parallel import ParallelConfig
from tiny_models import flux_image_ids, flux_inputs, hunyuan_inputs, tiny_flux, tiny_hunyuan, tiny_wan, wan_inputs

import dit_accel
from dit_accel.api import STATE_ATTRIBUTE
from dit_accel.context_parallel import span_major_order
from dit_accel.pipelines import find_adapter

WORLD = 2
METHODS = ("dense", "topk", "pisa", "rectified", "psa", "svg_ear", "sla", "flashblock")
FAMILIES = {
    "wan": (tiny_wan, lambda: wan_inputs(frames=3, height=16, width=16)),  # 192 tokens, 96 a rank
    "flux": (tiny_flux, lambda: flux_inputs(height=16, width=16)),  # 6 text + 256 image tokens
}
CALLS = 2  # the second call warm-starts per-layer state (k-means centroids)


def _options(method: str) -> dict:
    return {} if method == "dense" else {"block_size": 16, "density": 0.5, "dense_steps": 0, "dense_layers": 0}


def _outputs(model: torch.nn.Module, inputs: dict) -> list[torch.Tensor]:
    return [model(**inputs, return_dict=False)[0] for _ in range(CALLS)]


def _relative_error(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    return max(float((g - e).abs().max() / e.abs().max()) for g, e in zip(got, expected, strict=True))


def _enable(model: torch.nn.Module) -> None:
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD))


@torch.no_grad()
def _random_projections(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(3)
    for module in find_adapter(model).attention_modules(model):
        weight = getattr(module, STATE_ATTRIBUTE).weight
        weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)


def _check_family(family: str) -> dict[str, float]:
    """Relative errors of the parallel run against the single-process one, per method and check."""
    make_model, make_inputs = FAMILIES[family]
    inputs = make_inputs()
    single, parallel = make_model(), make_model()
    _enable(parallel)
    dense = _outputs(single, inputs)
    results = {}
    for method in METHODS:
        with torch.no_grad(), dit_accel.apply(single, method, **_options(method)) as handle:
            expected = _outputs(single, inputs)
            assert not handle.dense_fallbacks, (family, method, handle.dense_fallbacks)
        with torch.no_grad(), dit_accel.apply(parallel, method, **_options(method)):
            got = _outputs(parallel, inputs)
        results[f"{family}/{method}"] = _relative_error(got, expected)
        results[f"{family}/{method} vs dense"] = _relative_error(expected, dense)
    # dit_accel.apply() before enable_parallelism(): our step hook then sees the split inputs. SLA's
    # per-layer projections (zero when untrained) get the same random weights in both models.
    late = make_model()
    with torch.no_grad(), dit_accel.apply(single, "sla", **_options("sla")):
        _random_projections(single)
        expected = _outputs(single, inputs)
    handle = dit_accel.apply(late, "sla", **_options("sla"))
    _random_projections(late)
    _enable(late)
    with torch.no_grad():
        results[f"{family}/sla applied first"] = _relative_error(_outputs(late, inputs), expected)
        handle.remove()
        # remove() hands enable_parallelism's config back to the stock processors: stock CP is exact again.
        results[f"{family}/stock after remove"] = _relative_error(_outputs(late, inputs), dense)
    modules = find_adapter(late).attention_modules(late)
    results[f"{family}/leftover state"] = float(sum(hasattr(m, STATE_ATTRIBUTE) for m in modules))
    return results


def _kontext_steps() -> list[dict]:
    """FLUX Kontext calls: a 16x16 target image then a fixed 4x4 context image (first id 1), the external keys."""
    steps = []
    context = torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(7))
    context_ids = flux_image_ids(4, 4)
    context_ids[:, 0] = 1
    for timestep in (1.0, 0.95, 0.9, 0.85):
        inputs = flux_inputs(height=16, width=16, timestep=timestep)
        inputs["hidden_states"] = torch.cat([inputs["hidden_states"] * timestep, context], dim=1)
        inputs["img_ids"] = torch.cat([inputs["img_ids"], context_ids])
        steps.append(inputs)
    return steps


def _check_flashblock_cache() -> dict[str, float]:
    """FlashBlock's per-head calibration and cache of the external part: each rank holds its heads' share."""
    options = {**_options("topk"), "inner": "topk", "refresh_every": 10, "calibration_steps": 1}
    single, parallel = tiny_flux(), tiny_flux()
    _enable(parallel)
    outputs, stats = [], []
    for model in (single, parallel):
        with torch.no_grad(), dit_accel.apply(model, "flashblock", **options) as handle:
            outputs.append([model(**inputs, return_dict=False)[0] for inputs in _kontext_steps()])
            stats.append(handle.method.stats)
    return {
        "flashblock cache": _relative_error(outputs[1], outputs[0]),
        **{
            f"flashblock {name} {run}": float(stats[i][name])
            for i, run in enumerate(("single", "parallel"))
            for name in ("external_reused", "heads_recomputed")
        },
    }


def _check_bench_e2e() -> dict[str, float]:
    """``bench e2e`` with ``gpus=2`` (what ``--gpus 2`` runs on each torchrun process): same errors as one process."""
    from dit_accel.bench import bench_e2e

    runs = [bench_e2e("wan-1.3b", 0.25, (1, 16, 5, 16, 16), ["eager:dense", "eager:topk"], torch.device("cpu"),
                      gpus=gpus) for gpus in (1, WORLD)]  # fmt: skip
    return {
        "e2e topk error": abs(runs[1][1]["rel_l1_vs_dense"] - runs[0][1]["rel_l1_vs_dense"]),
        "e2e topk error single": runs[0][1]["rel_l1_vs_dense"],
        "e2e gpus": float(runs[1][1]["gpus"]),
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # Diffusers picks the rank's device as rank % device_count(), which is 0 on a CPU-only machine.
    torch.accelerator.device_count = lambda: 1
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {}
        for family in FAMILIES:
            results.update(_check_family(family))
        results.update(_check_flashblock_cache())
        results.update(_check_bench_e2e())
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def parallel_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, float]]:
    out_dir = tmp_path_factory.mktemp("cp")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(port, str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", METHODS)
def test_ulysses_equals_single_process(parallel_results, family: str, method: str) -> None:
    for results in parallel_results:
        assert results[f"{family}/{method}"] < 1e-5
        if method != "dense":  # the method ran, not a dense fallback (flashblock: no external keys here)
            assert method == "flashblock" or results[f"{family}/{method} vs dense"] > 1e-4


@pytest.mark.parametrize("family", list(FAMILIES))
def test_apply_before_enable_parallelism_and_remove(parallel_results, family: str) -> None:
    for results in parallel_results:
        assert results[f"{family}/sla applied first"] < 1e-5
        assert results[f"{family}/stock after remove"] < 1e-5
        assert results[f"{family}/leftover state"] == 0


def test_flashblock_cache_is_per_rank_heads(parallel_results) -> None:
    for results in parallel_results:
        assert results["flashblock cache"] < 1e-5
        assert results["flashblock external_reused parallel"] == results["flashblock external_reused single"] > 0
    # each rank calibrates and recomputes its own heads: together, the single process's heads
    recomputed = sum(results["flashblock heads_recomputed parallel"] for results in parallel_results)
    assert recomputed == parallel_results[0]["flashblock heads_recomputed single"]


def test_bench_e2e_on_two_ranks_matches_one(parallel_results) -> None:
    for results in parallel_results:
        assert results["e2e gpus"] == WORLD and results["e2e topk error single"] > 1e-4
        assert results["e2e topk error"] < 1e-6


def test_span_major_order_groups_each_span_across_ranks() -> None:
    # rank 0 holds [t0 t1 i0 i1 i2], rank 1 [t2 t3 i3 i4 i5]: gathered rank-major, wanted [t0..t3 i0..i5]
    order = span_major_order((2, 3), 2, torch.device("cpu"))
    assert order.tolist() == [0, 1, 5, 6, 2, 3, 4, 7, 8, 9]
    assert span_major_order((0, 4), 2, torch.device("cpu")) is None


def _fake_parallel(model: torch.nn.Module, config: ContextParallelConfig) -> None:
    """What enable_parallelism() sets on the processors; the refusals come before any collective."""
    for module in find_adapter(model).attention_modules(model):
        module.processor._parallel_config = ParallelConfig(context_parallel_config=config)


def test_ring_attention_is_refused_by_name() -> None:
    model = tiny_wan()
    with dit_accel.apply(model, "topk", density=0.5, block_size=16):
        _fake_parallel(model, ContextParallelConfig(ring_degree=2))
        with pytest.raises(ValueError, match=r"'topk' does not support ring attention.*ulysses_degree=N"):
            model(**wan_inputs(frames=1, height=16, width=16))


def test_hunyuan_video_is_refused() -> None:
    model = tiny_hunyuan()
    with dit_accel.apply(model, "topk", density=0.5, block_size=16):
        _fake_parallel(model, ContextParallelConfig(ulysses_degree=2))
        inputs = {k: v[:1] for k, v in hunyuan_inputs().items()}
        with pytest.raises(ValueError, match="HunyuanVideoTransformer3DModel has no context-parallel plan"):
            model(**inputs)
