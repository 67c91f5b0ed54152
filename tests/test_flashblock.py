"""FlashBlock: external keys' attention cached across steps, merged exactly by LSE (tiny SkyReels-V2 and Kontext)."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import flux_image_ids, flux_inputs, run, skyreels_df_inputs, tiny_flux, tiny_skyreels

import dit_accel
from dit_accel.bench import standalone_context
from dit_accel.forward_info import ForwardInfo
from dit_accel.kernels import reference
from dit_accel.kernels.flashblock_drift import head_drift
from dit_accel.kernels.flashblock_ranges import part_rectangles, rectangles_attention
from dit_accel.layout import TokenLayout
from dit_accel.methods.flashblock import FlashBlockConfig
from dit_accel.registry import method_for

ALL_BLOCKS = 0.999  # every block of these small models through the block-sparse path


def masked_attention(q, k, v, allowed):
    """Float64 ``(out, lse)`` of ``(B, H, S, D)`` inputs where ``allowed`` ``(S, N)`` says which keys a row sees."""
    logits = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).masked_fill(~allowed, -math.inf)
    lse = torch.logsumexp(logits, dim=-1)
    probs = torch.exp(logits - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    return probs @ v, lse


def causal_mask(length: int, block: int) -> torch.Tensor:
    rows = torch.arange(length) // block
    return rows[None, :] <= rows[:, None]


@pytest.mark.parametrize(("rows", "keys", "block"), [(70, (0, 30), 16), (70, (30, 70), 16), (53, (0, 53), 0),
                                                     (45, (20, 31), 9), (45, (0, 45), 45)])  # fmt: skip
def test_rectangles_cover_exactly_the_visible_keys(rows, keys, block):
    covered = torch.zeros(rows, rows, dtype=torch.int32)
    for rect in part_rectangles(rows, keys, block):
        covered[rect.rows[0] : rect.rows[1], rect.keys[0] : rect.keys[1]] += 1
    expected = causal_mask(rows, block) if block else torch.ones(rows, rows, dtype=torch.bool)
    in_range = torch.zeros(rows, dtype=torch.bool)
    in_range[keys[0] : keys[1]] = True
    assert torch.equal(covered, (expected & in_range[None, :]).int())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_external_and_internal_parts_merge_to_masked_attention(dtype):
    """Odd sizes, B=2, H=3, D=24: the two parts' rectangles merged by LSE are block-causal attention."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 77, 24, generator=gen, dtype=dtype) for _ in range(3))
    scale = 24**-0.5
    external = rectangles_attention(q, k, v, part_rectangles(77, (0, 33), 11), scale, None)
    internal = rectangles_attention(q, k, v, part_rectangles(77, (33, 77), 11), scale, None)
    assert torch.isneginf(internal[1][:, :, :33]).all()  # rows before the internal range see none of it
    out, lse = reference.merge_attention_reference(*internal, *external)
    expected, expected_lse = masked_attention(q.double(), k.double(), v.double(), causal_mask(77, 11))
    tolerance = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=tolerance)
    torch.testing.assert_close(lse.double(), expected_lse, rtol=0, atol=tolerance)


def test_head_drift_measures_each_head_and_skips_empty_rows():
    gen = torch.Generator().manual_seed(1)
    out = torch.randn(1, 3, 20, 8, generator=gen)
    lse = torch.randn(1, 3, 20, generator=gen)
    moved = out.clone()
    moved[:, 1] = -moved[:, 1]
    moved_lse = lse.clone()
    moved_lse[:, 2] += 0.5
    moved_lse[:, 0, :5] = -math.inf  # rows without keys: ignored
    cosine, change = head_drift(out, lse, moved, moved_lse)
    torch.testing.assert_close(cosine, torch.tensor([1.0, -1.0, 1.0]))
    torch.testing.assert_close(change, torch.tensor([0.0, 0.0, 0.5]))


def drifting_calls(steps: int, gen: torch.Generator):
    """q/k/v of a 90-token call whose first 40 keys are fixed context; head 1's queries move 100x faster."""
    q0, k0, v0 = (torch.randn(1, 90, 2, 16, generator=gen) for _ in range(3))
    dq, dk = torch.randn(1, 90, 2, 16, generator=gen), torch.randn(1, 90, 2, 16, generator=gen)
    speed = torch.tensor([0.002, 0.2])[None, None, :, None]
    for step in range(steps):
        k = k0 + step * speed * dk
        k[:, :40] = k0[:, :40]
        yield q0 + step * speed * dq, k, v0


def test_calibration_recomputes_moving_heads_and_reuses_the_rest():
    config = FlashBlockConfig(refresh_every=100, calibration_steps=2)
    method = method_for(config)
    layout = TokenLayout(seq_len=90, video_start=0, video_len=90, external_len=40)
    ctx = standalone_context(layout, config)
    refreshed = None
    for step, (q, k, v) in enumerate(drifting_calls(7, torch.Generator().manual_seed(2))):
        method.prepare(ForwardInfo(timestep=1000.0 - step))
        out = method(q, k, v, ctx)
        torch.testing.assert_close(out.double(), method.reference(q, k, v, ctx), rtol=1e-5, atol=1e-5)
        exact = ctx.dense(q, k, v)
        if step >= 3:  # calibrated: head 1 recomputed (exact), head 0 reused (close, not exact)
            torch.testing.assert_close(out[:, :, 1], exact[:, :, 1], rtol=1e-5, atol=1e-5)
            error = (out[:, :, 0] - exact[:, :, 0]).norm() / exact[:, :, 0].norm()
            whole_output_cached = (refreshed[:, :, 0] - exact[:, :, 0]).norm() / exact[:, :, 0].norm()
            assert 0 < error < 0.5 * whole_output_cached
        else:
            torch.testing.assert_close(out, exact, rtol=1e-5, atol=1e-5)
            refreshed = exact
    cache = ctx.state["flashblock"].caches[0]
    assert cache.dynamic.tolist() == [False, True]
    passes = (cache.min_cosine >= config.min_cosine) & (cache.max_lse_change <= config.max_lse_change)
    assert passes.tolist() == [True, False]
    assert method.stats == {"external_computed": 3, "external_reused": 4, "heads_recomputed": 4}


def df_steps(count: int, clean_from: int | None = None):
    """(frame timesteps, inputs) of a diffusion-forcing schedule: 2 clean frames, the others denoised step by step;
    from step ``clean_from`` on, frames 2-3 are clean too (a finished block)."""
    base = skyreels_df_inputs([0.0] * 6, height=10, width=12)
    noise = torch.randn(base["hidden_states"].shape, generator=torch.Generator().manual_seed(5))
    for step in range(count):
        t = 900.0 - 60.0 * step
        clean = 4 if clean_from is not None and step >= clean_from else 2
        timesteps = [0.0] * clean + [t] * (6 - clean)
        inputs = skyreels_df_inputs(timesteps, height=10, width=12)
        inputs["hidden_states"] = base["hidden_states"].clone()
        inputs["hidden_states"][:, :, clean:] += (t / 1000.0) * noise[:, :, clean:]
        yield timesteps, inputs


@pytest.mark.parametrize("frames_per_block", [2, 1])
@pytest.mark.parametrize("options", [{}, {"inner": "topk", "density": ALL_BLOCKS, "block_size": 16}])
def test_refresh_every_step_equals_the_uncached_model(frames_per_block, options):
    model = tiny_skyreels(frames_per_block=frames_per_block)
    steps = list(df_steps(3))
    expected = [run(model, inputs) for _, inputs in steps]
    with dit_accel.apply(model, "flashblock", refresh_every=1, **options) as handle:
        for (_, inputs), reference_out in zip(steps, expected, strict=True):
            torch.testing.assert_close(run(model, inputs), reference_out, rtol=1e-5, atol=1e-5)
        assert handle.method.stats == {"external_computed": 3 * len(model.blocks)}
        assert handle.dense_fallbacks == {}


def spy_calls(model, method, checked: list) -> None:
    """Replace each layer's op by one that also checks the call against the method's float64 reference."""
    for block in model.blocks:
        binding = block.attn1.processor.binding

        def spy(q, k, v, ctx):
            out = method(q, k, v, ctx)
            expected = method.reference(q, k, v, ctx)
            checked.append(float((out.double() - expected).abs().max() / expected.abs().max()))
            return out

        binding.op = spy


@pytest.mark.parametrize("options", [{}, {"inner": "topk", "density": 0.5, "block_size": 16}])
def test_reuse_steps_match_their_definition_and_stay_close(options):
    """Calibrated reuse: each call equals merge(cached external, internal) in float64; the model stays near stock."""
    model = tiny_skyreels(frames_per_block=2)
    steps = list(df_steps(6, clean_from=4))
    exact = [run(model, inputs) for _, inputs in steps]
    checked: list[float] = []
    with dit_accel.apply(model, "flashblock", refresh_every=3, **options) as handle:
        spy_calls(model, handle.method, checked)
        errors = []
        for step, ((_, inputs), reference_out) in enumerate(zip(steps, exact, strict=True)):
            before = handle.method.stats["external_computed"]
            out = run(model, inputs)
            errors.append(float((out - reference_out).norm() / reference_out.norm()))
            if step == 4:  # the external keys grew: every layer refreshes
                assert handle.method.stats["external_computed"] - before == len(model.blocks)
        stats = handle.method.stats
    assert max(checked) < 1e-5
    assert stats["external_reused"] > 0 and stats["external_computed"] + stats["external_reused"] == 12
    if options:  # the inner method's sparsity dominates
        assert max(errors) < 2e-2, errors
    else:  # calibration steps and the refresh at step 4 are exact; reuse steps are close, not exact
        assert max(errors[:3] + errors[4:5]) < 1e-5 and 1e-5 < min(errors[3], errors[5]) < 5e-3, errors


def test_cache_is_bounded_freed_on_a_new_run_and_on_remove():
    model = tiny_skyreels(frames_per_block=2)
    steps = list(df_steps(4))
    one_layer = 180 * 2 * 16 * 4 + 180 * 2 * 4  # fp32 output and LSE of 180 queries, 2 heads, D=16
    with dit_accel.apply(model, "flashblock", max_cache_mb=1.5 * one_layer / 2**20) as handle:
        for _, inputs in steps:
            run(model, inputs)
        method = handle.method
        assert method.cache_bytes == one_layer and method.stats["uncached"] == 4
        states = [block.attn1.processor.binding.state for block in model.blocks]
        assert states[0]["flashblock"].caches[0].comparisons == 2
        run(model, steps[0][1])  # the timesteps rise: a new run starts with an empty cache and calibration
        assert method.cache_bytes == one_layer and states[0]["flashblock"].caches[0].comparisons == 0
    assert method.cache_bytes == 0 and not any("flashblock" in state for state in states)


def tiny_df_pipeline():
    from diffusers import AutoencoderKLWan, SkyReelsV2DiffusionForcingPipeline, UniPCMultistepScheduler

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                           latents_std=[1.0] * 4).eval()  # fmt: skip
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0)
    return SkyReelsV2DiffusionForcingPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler,
                                              transformer=tiny_skyreels(num_layers=1))  # fmt: skip


def test_diffusion_forcing_pipeline_frees_the_cache_after_the_call():
    pipe = tiny_df_pipeline()
    g = torch.Generator().manual_seed(3)
    call = dict(prompt=None, prompt_embeds=torch.randn(1, 7, 8, generator=g), height=64, width=80, num_frames=21,
                num_inference_steps=4, guidance_scale=1.0, ar_step=2, causal_block_size=2,
                output_type="latent")  # fmt: skip
    expected = pipe(**call, generator=torch.Generator().manual_seed(0)).frames
    held = []
    with dit_accel.apply(pipe, "flashblock", refresh_every=2, calibration_steps=1) as handle:
        out = pipe(**call, generator=torch.Generator().manual_seed(0),
                   callback_on_step_end=lambda *_: held.append(handle.method.cache_bytes) or {}).frames  # fmt: skip
        assert max(held) > 0 and handle.method.cache_bytes == 0
        assert handle.method.stats["external_reused"] > 0
    assert "maybe_free_model_hooks" not in vars(pipe)
    assert float((out - expected).norm() / expected.norm()) < 2e-2


def kontext_inputs(timestep: float, context_seed: int = 7):
    """FLUX Kontext: a 4x5 target image followed by a 3x4 context image (first id 1) that stays fixed."""
    inputs = flux_inputs(height=4, width=5, timestep=timestep)
    context_ids = flux_image_ids(3, 4)
    context_ids[:, 0] = 1
    context = torch.randn(1, 12, 8, generator=torch.Generator().manual_seed(context_seed))
    inputs["hidden_states"] = torch.cat([inputs["hidden_states"] * timestep, context], dim=1)
    inputs["img_ids"] = torch.cat([inputs["img_ids"], context_ids])
    return inputs


@pytest.mark.parametrize("options", [{}, {"inner": "topk", "density": ALL_BLOCKS, "block_size": 16}])
def test_kontext_refresh_every_step_equals_stock_and_reuse_stays_close(options):
    model = tiny_flux()
    steps = [kontext_inputs(t) for t in (1.0, 0.95, 0.9, 0.85, 0.8)]
    expected = [run(model, inputs) for inputs in steps]
    with dit_accel.apply(model, "flashblock", refresh_every=1, **options):
        for inputs, reference_out in zip(steps, expected, strict=True):
            torch.testing.assert_close(run(model, inputs), reference_out, rtol=1e-5, atol=1e-5)
    with dit_accel.apply(model, "flashblock", refresh_every=10, calibration_steps=1, **options) as handle:
        errors = [float((run(model, x) - y).norm() / y.norm()) for x, y in zip(steps, expected, strict=True)]
        assert handle.method.stats["external_reused"] > 0
    assert max(errors[:2]) < 1e-5 and 0 < max(errors) < 2e-2, errors


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"refresh_every": 0}, ValueError, "refresh_every must be an int >= 1"),
        ({"calibration_steps": -1}, ValueError, "calibration_steps must be an int >= 0"),
        ({"min_cosine": 1.5}, ValueError, r"min_cosine must be in \[0.0, 1.0\]"),
        ({"max_cache_mb": -1.0}, ValueError, "max_cache_mb must be in"),
        ({"inner": "dense"}, ValueError, "inner must be None or a block-sparse accelerate method"),
        ({"inner": "aligned_gen"}, ValueError, "inner must be None or a block-sparse accelerate method"),
        ({"inner": "no_such"}, ValueError, "unknown method"),
        ({"inner": "rectified"}, ValueError, "overrides combine"),
        ({"inner_options": {"top_p": 0.5}}, ValueError, "given without an inner method"),
        ({"inner": "topk", "inner_options": {"nope": 1}}, TypeError, "unknown option"),
    ],
)
def test_bad_options_are_named(options, error, match):
    with pytest.raises(error, match=match):
        dit_accel.apply(tiny_skyreels(), "flashblock", **options)


def test_inner_gets_the_shared_options():
    config = FlashBlockConfig(inner="topk", density=0.3, block_size=32, inner_options={"min_blocks": 2})
    inner = config.inner_config
    assert (inner.method, inner.density, inner.block_size, inner.min_blocks) == ("topk", 0.3, (32, 32), 2)


def test_aligned_gen_reference_tokens_are_external():
    """AlignedGen's appended reference tokens are the external keys of its targets' calls."""
    model, inputs = tiny_flux(), flux_inputs(batch=2)
    with dit_accel.apply(model, "aligned_gen", blocks=(0, 3)):
        expected = run(model, inputs)
    with dit_accel.apply(model, "aligned_gen", attention="flashblock", blocks=(0, 3), refresh_every=1) as handle:
        torch.testing.assert_close(run(model, inputs), expected, rtol=1e-5, atol=1e-5)
        assert handle.method.inner.stats == {"external_computed": 3}
