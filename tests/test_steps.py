"""Step awareness and dense warm-up: ops see the right step and layer and fall back when they should."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from tiny_models import run, tiny_wan, tiny_wan_pipeline, wan_inputs, wan_pipeline_call

import dit_accel
from dit_accel.methods.routing import route_video_attention


@dataclass
class Seen:
    layer: int
    step: int
    num_steps: int | None
    warmup: bool
    sparse: bool


def spy_on(handle: dit_accel.AttentionHandle) -> list[Seen]:
    """Wrap every installed op to record what it was told and whether it computed sparsely."""
    seen: list[Seen] = []
    for model in handle.transformers:
        for block in model.blocks:
            binding = block.attn1.processor.binding
            original = binding.op

            def op(q, k, v, ctx, original=original):
                out = original(q, k, v, ctx)
                dense = ctx.dense(q, k, v)
                seen.append(
                    Seen(ctx.layer_index, ctx.step_index, ctx.num_steps, ctx.in_warmup, not torch.equal(out, dense))
                )
                return out

            binding.op = op
    return seen


def test_pipeline_warmup_by_fraction_of_steps_and_layer_count():
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    handle = dit_accel.apply(pipe, "topk", density=0.3, block_size=16, dense_steps=0.5, dense_layers=1)
    seen = spy_on(handle)
    pipe(**wan_pipeline_call(steps=4))
    assert len(seen) == 4 * 2 * 2  # steps x (cond, uncond) x layers
    assert [s.step for s in seen] == [step for step in range(4) for _ in range(4)]
    assert {s.num_steps for s in seen} == {4}
    for s in seen:
        expected_warmup = s.step < 2 or s.layer == 0
        assert s.warmup == expected_warmup
        assert s.sparse == (not expected_warmup)


def test_pipeline_runs_reset_the_step_counter():
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    handle = dit_accel.apply(pipe, "topk", density=0.3, block_size=16, dense_steps=1)
    seen = spy_on(handle)
    pipe(**wan_pipeline_call(steps=3))
    pipe(**wan_pipeline_call(steps=3))
    steps = [s.step for s in seen]
    assert steps[: len(steps) // 2] == steps[len(steps) // 2 :]
    assert sum(s.sparse for s in seen) == 2 * 2 * 2 * 2  # 2 runs x 2 sparse steps x cond/uncond x layers


def test_wan22_two_transformers_share_one_schedule():
    pipe = tiny_wan_pipeline(two_transformers=True)
    pipe.set_progress_bar_config(disable=True)
    handle = dit_accel.apply(pipe, "topk", density=0.3, block_size=16, dense_steps=3)
    assert handle.transformers == [pipe.transformer, pipe.transformer_2]
    seen = spy_on(handle)
    pipe(**wan_pipeline_call(steps=6, two_transformers=True))
    assert sorted({s.step for s in seen}) == list(range(6))
    assert all(s.warmup == (s.step < 3) for s in seen)


def test_full_warmup_equals_dense_pipeline_output():
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(**wan_pipeline_call(steps=3)).frames
    with dit_accel.apply(pipe, "topk", density=0.2, block_size=16, dense_steps=1.0):
        warm = pipe(**wan_pipeline_call(steps=3)).frames
    with dit_accel.apply(pipe, "topk", density=0.2, block_size=16):
        sparse = pipe(**wan_pipeline_call(steps=3)).frames
    # topk keeps tokens in tile order for the whole forward, so the warm-up's dense attention sums
    # in another order than stock: equal to float rounding, not bit for bit.
    torch.testing.assert_close(warm, reference, rtol=1e-5, atol=1e-5)
    assert (sparse - reference).abs().max() > 1e-3


def test_direct_calls_count_distinct_timesteps_and_restart_on_rise():
    model = tiny_wan(num_layers=1)
    handle = dit_accel.apply(model, "topk", density=0.3, block_size=16, dense_steps=2)
    seen = spy_on(handle)
    for t in (900.0, 900.0, 600.0, 600.0, 300.0, 950.0):
        run(model, wan_inputs(timestep=t))
    assert [s.step for s in seen] == [0, 0, 1, 1, 2, 0]
    assert [s.warmup for s in seen] == [True, True, True, True, False, True]


def test_fraction_without_known_step_count_is_a_clear_error():
    model = tiny_wan(num_layers=1)
    with dit_accel.apply(model, "topk", dense_steps=0.5), pytest.raises(ValueError, match="num_inference_steps"):
        run(model, wan_inputs())
    with dit_accel.apply(model, "topk", dense_steps=0.5, num_inference_steps=4, block_size=16) as handle:
        seen = spy_on(handle)
        for t in (900.0, 700.0, 500.0):
            run(model, wan_inputs(timestep=t))
    assert [s.warmup for s in seen] == [True, True, False]


def test_block_sparse_core_rejects_undeclared_appended_keys():
    model = tiny_wan(num_layers=1)
    captured = {}

    def grab(q, k, v, ctx):
        captured.update(q=q, k=k, v=v, ctx=ctx)
        return ctx.dense(q, k, v)

    with dit_accel.apply(model, "dense") as handle:
        handle.transformers[0].blocks[0].attn1.processor.binding.op = grab
        run(model, wan_inputs())
    k = torch.cat([captured["k"], captured["k"][:, :5]], dim=1)
    with pytest.raises(ValueError, match="beyond q but the layout declares 0"):
        route_video_attention(captured["q"], k, k, captured["ctx"], 16, 16, (1, 4, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scheduler_lookup_handles_scaled_and_rounded_timesteps(dtype):
    """FLUX passes t / num_train_timesteps, in the model dtype; Wan passes t itself."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from dit_accel.config import MethodConfig
    from dit_accel.steps import StepTracker

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(28)
    tracker = StepTracker(MethodConfig(dense_steps=0.25), scheduler=scheduler)
    for index, t in enumerate(scheduler.timesteps):
        tracker.observe((t / 1000).to(dtype))
        assert (tracker.step_index, tracker.num_steps) == (index, 28)
        assert tracker.warmup == (index < 7)
        tracker.observe(t.to(dtype))
        assert tracker.step_index == index
