"""Adapters reproduce stock attention exactly (dense, topk at density 1) and route sparsely otherwise."""

from __future__ import annotations

import pytest
import torch
from tiny_models import (
    flux_image_ids,
    flux_inputs,
    hunyuan_inputs,
    run,
    skyreels_df_inputs,
    tiny_flux,
    tiny_hunyuan,
    tiny_skyreels,
    tiny_wan,
    wan_inputs,
)

import dit_accel
from dit_accel.forward_info import ForwardInfo
from dit_accel.pipelines import find_adapter


def test_dense_is_bit_identical(family):
    _, model, inputs = family
    reference = run(model, inputs)
    with dit_accel.apply(model, "dense"):
        out = run(model, inputs)
    assert torch.equal(out, reference)


@pytest.mark.parametrize(("make_model", "make_inputs"), [(tiny_wan, wan_inputs), (tiny_flux, flux_inputs)])
def test_dense_is_bit_identical_with_fused_projections(make_model, make_inputs):
    model, inputs = make_model(), make_inputs()
    model.fuse_qkv_projections()
    reference = run(model, inputs)
    with dit_accel.apply(model, "dense"):
        out = run(model, inputs)
    assert torch.equal(out, reference)


# density 1.0 is answered by dense attention without routing; 0.999 keeps every block of these
# small models (ceil(0.999 * n) = n) through the whole block-sparse path.
ALL_BLOCKS = 0.999


def test_topk_every_block_matches_dense(family):
    _, model, inputs = family
    reference = run(model, inputs)
    with dit_accel.apply(model, "topk", density=ALL_BLOCKS, block_size=16):
        out = run(model, inputs)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


def test_topk_density_one_is_the_dense_call(family):
    """Density 1.0 computes every block: the exact dense call, bit for bit, with no routing."""
    _, model, inputs = family
    reference = run(model, inputs)
    with dit_accel.apply(model, "topk", density=1.0, block_size=16):
        out = run(model, inputs)
    assert torch.equal(out, reference)


def test_topk_low_density_differs_but_is_finite(family):
    _, model, inputs = family
    reference = run(model, inputs)
    with dit_accel.apply(model, "topk", density=0.25, block_size=16):
        out = run(model, inputs)
    assert torch.isfinite(out).all()
    assert (out - reference).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("make_model", "make_inputs"),
    [
        (tiny_wan, lambda: wan_inputs(batch=3, frames=5, height=14, width=26)),
        (tiny_hunyuan, lambda: hunyuan_inputs(batch=3, frames=2, height=22, width=10)),
        (tiny_flux, lambda: flux_inputs(batch=2, height=13, width=7)),
    ],
)
def test_odd_lengths_and_batches_full_density(make_model, make_inputs):
    """Token counts that are not multiples of the blocks or tiles, with batch > 1."""
    model, inputs = make_model(), make_inputs()
    reference = run(model, inputs)
    with dit_accel.apply(model, "topk", density=ALL_BLOCKS, block_size=(32, 16)):
        out = run(model, inputs)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


def test_batched_equals_unbatched():
    """Routing is per sample: a batch gives each sample what it gets alone (CFG batched or not)."""
    model = tiny_wan()
    batch = wan_inputs(batch=2)
    with dit_accel.apply(model, "topk", density=0.3, block_size=16):
        together = run(model, batch)
        alone = [run(model, {k: v[i : i + 1] for k, v in batch.items()}) for i in range(2)]
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-5)


def test_hunyuan_text_padding_is_masked_in_sparse_path():
    """Padded text keys must be ignored by video queries exactly as the stock mask does."""
    model = tiny_hunyuan()
    inputs = hunyuan_inputs(batch=2, padded_from=3)
    reference = run(model, inputs)
    with dit_accel.apply(model, "topk", density=ALL_BLOCKS, block_size=16):
        out = run(model, inputs)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    inputs["encoder_hidden_states"][-1, 3:] += 10.0  # only padded text changes
    with dit_accel.apply(model, "topk", density=0.3, block_size=16):
        first = run(model, hunyuan_inputs(batch=2, padded_from=3))
        second = run(model, inputs)
    torch.testing.assert_close(first[-1], second[-1], rtol=1e-5, atol=1e-5)


def test_flux_layout_reaches_the_op():
    model, inputs = tiny_flux(), flux_inputs(height=9, width=11)
    seen = []

    def spy(q, k, v, ctx):
        seen.append(ctx.layout)
        return ctx.dense(q, k, v)

    with dit_accel.apply(model, "dense") as handle:
        for module in [b.attn for b in model.transformer_blocks] + [b.attn for b in model.single_transformer_blocks]:
            module.processor.binding.op = spy
        run(model, inputs)
        assert handle.tracker.info.grid == (1, 9, 11)
    assert len(seen) == 3
    for layout in seen:
        assert (layout.text_start, layout.text_len, layout.video_start, layout.video_len) == (0, 6, 6, 99)
        assert layout.grid == (1, 9, 11)


def test_flux_irregular_ids_fall_back_to_sequence_order():
    model, inputs = tiny_flux(), flux_inputs(height=4, width=5)
    inputs["img_ids"] = inputs["img_ids"][torch.randperm(20)]
    with dit_accel.apply(model, "topk", density=ALL_BLOCKS, block_size=16) as handle:
        out = run(model, inputs)
        assert handle.tracker.info.grid is None
    torch.testing.assert_close(out, run(model, inputs), rtol=1e-5, atol=1e-5)


def test_forward_level_token_reorder_equals_per_layer_gather(family, monkeypatch):
    """Tokens permuted once per forward give what the per-layer gather path gives; hooks go on remove."""
    _, model, inputs = family
    adapter = find_adapter(model)
    with dit_accel.apply(model, "topk", density=0.3, block_size=16) as handle:
        reordered = run(model, inputs)
        assert handle.tracker.info.token_tile is not None
    monkeypatch.setattr(type(adapter), "can_reorder", lambda self, model, arguments: False)
    with dit_accel.apply(model, "topk", density=0.3, block_size=16) as handle:
        gathered = run(model, inputs)
        assert handle.tracker.info.token_tile is None
    torch.testing.assert_close(reordered, gathered, rtol=1e-5, atol=1e-5)
    hooked = [m for m in model.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooked == []


def test_token_reorder_refuses_a_mismatched_order():
    """A permutation that does not fit the tensor is an error, never a silent skip."""
    from dit_accel.config import MethodConfig
    from dit_accel.pipelines.base import reorder_argument
    from dit_accel.steps import StepTracker

    tracker = StepTracker(MethodConfig())
    hook = reorder_argument(tracker, dim=1)
    x = torch.randn(1, 5, 3)
    assert hook(None, (x,))[0] is x  # no reorder for this call: untouched
    tracker.info = ForwardInfo(token_order=torch.tensor([2, 0, 1, 3, 4]))
    assert torch.equal(hook(None, (x,))[0], x[:, [2, 0, 1, 3, 4]])
    tracker.info = ForwardInfo(token_order=torch.arange(4))
    with pytest.raises(RuntimeError, match="5 tokens on dim 1, but the call has 4"):
        hook(None, (x,))


def test_topk_top_p_matches_its_float64_definition(family):
    """top_p selection (the one-read routing kernel on block-ordered tokens) through every adapter."""
    _, model, inputs = family
    checked = []
    with dit_accel.apply(model, "topk", top_p=0.5, block_size=16) as handle:
        method = handle.method
        for module in model.modules():
            binding = getattr(getattr(module, "processor", None), "binding", None)
            if binding is not None:

                def spy(q, k, v, ctx, method=method):
                    out = method(q, k, v, ctx)
                    checked.append(float((out.double() - method.reference(q, k, v, ctx)).abs().max()))
                    return out

                binding.op = spy
        run(model, inputs)
    assert checked and max(checked) < 1e-5


def test_skyreels_diffusion_forcing_dense_is_bit_identical_and_declares_its_prefix():
    """Per-frame timesteps and the block-causal frame mask: dense is the stock call; the layout carries both."""
    model = tiny_skyreels(frames_per_block=2)
    inputs = skyreels_df_inputs([0.0, 0.0, 400.0, 400.0, 999.0, 999.0], height=10, width=12)
    reference = run(model, inputs)
    seen = []

    def spy(q, k, v, ctx):
        seen.append((ctx.layout, ctx.attention_mask))
        return ctx.dense(q, k, v)

    with dit_accel.apply(model, "dense") as handle:
        assert torch.equal(run(model, inputs), reference)
        for block in model.blocks:
            block.attn1.processor.binding.op = spy
        run(model, inputs)
        assert handle.tracker.info.frame_timesteps == (0.0, 0.0, 400.0, 400.0, 999.0, 999.0)
    frame = 5 * 6
    for layout, mask in seen:
        assert layout.external_keys == (0, 2 * frame) and layout.causal_block == 2 * frame
        rows = torch.arange(layout.seq_len) // layout.causal_block
        assert torch.equal(mask[0, 0], rows[None, :] <= rows[:, None])


def test_skyreels_block_sparse_methods_run_dense_under_the_frame_mask():
    model = tiny_skyreels(frames_per_block=2)
    inputs = skyreels_df_inputs([0.0, 0.0, 400.0, 400.0], height=10, width=12)
    reference = run(model, inputs)
    with dit_accel.apply(model, "topk", density=0.3, block_size=16) as handle:
        out = run(model, inputs)
    assert torch.equal(out, reference)
    assert handle.dense_fallbacks == {"the attention mask is not a text key-padding mask": len(model.blocks)}


def test_skyreels_fused_projections_are_bit_identical():
    model, inputs = tiny_skyreels(), skyreels_df_inputs([0.0, 500.0, 500.0])
    model.fuse_qkv_projections()
    reference = run(model, inputs)
    with dit_accel.apply(model, "dense"):
        assert torch.equal(run(model, inputs), reference)


def test_flux_kontext_context_image_is_external():
    """FLUX Kontext appends the context image's tokens with a first id of 1: they are the call's external keys."""
    model, inputs = tiny_flux(), flux_inputs(height=4, width=5)
    context = flux_image_ids(3, 4)
    context[:, 0] = 1
    inputs["img_ids"] = torch.cat([inputs["img_ids"], context])
    inputs["hidden_states"] = torch.cat([inputs["hidden_states"], torch.randn(1, 12, 8)], dim=1)
    seen = []

    def spy(q, k, v, ctx):
        seen.append(ctx.layout)
        return ctx.dense(q, k, v)

    with dit_accel.apply(model, "dense"):
        for module in [b.attn for b in model.transformer_blocks] + [b.attn for b in model.single_transformer_blocks]:
            module.processor.binding.op = spy
        run(model, inputs)
    assert [layout.external_keys for layout in seen] == [(6 + 20, 12)] * 3
