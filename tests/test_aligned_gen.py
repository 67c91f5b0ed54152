"""AlignedGen on a tiny random-weight FluxPipeline built offline (tiny CLIP/T5 text encoders included)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.models.transformers.transformer_flux import FluxPosEmbed
from tiny_models import flux_image_ids, tiny_flux, tiny_wan
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast, T5Config, T5EncoderModel

import dit_accel
from dit_accel import TopKConfig
from dit_accel.aligned_report import GRID_NAME, JSON_NAME, register, run_report
from dit_accel.context import AttentionContext, LayerBinding
from dit_accel.editing import AlignedGenAttention, AlignedGenConfig, aligned_batch
from dit_accel.editing.adain import adain, channel_stats
from dit_accel.editing.rope import column_offset, rotate, shift_table, unrotate
from dit_accel.editing.style_reference import StyleCaptureHook, StyleLatents, sigma_at
from dit_accel.forward_info import ForwardInfo
from dit_accel.layout import TokenLayout
from dit_accel.registry import build_config
from dit_accel.steps import StepTracker

SIZE = 32  # pixels; the tiny VAE halves it and FLUX packs 2x2: an 8x8 token grid
GRID = (1, 8, 8)
STEPS = 3
WORDS = ["a", "cat", "dog", "house", "tree", "boat", "in", "the", "style", "of", "watercolor", "painting", ","]
PROMPTS = ["a cat, watercolor painting", "a dog, watercolor painting", "a boat, watercolor painting"]


def word_tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    vocab = {word: i for i, word in enumerate(["<pad>", "</s>", "<unk>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=max_length
    )


@pytest.fixture(scope="module")
def pipe() -> FluxPipeline:
    torch.manual_seed(0)
    vocab = len(WORDS) + 3
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=2,  # packed 2x2: the 8 input channels of tiny_flux
        norm_num_groups=8,
        sample_size=SIZE,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    clip_config = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=8,  # tiny_flux's pooled_projection_dim and joint_attention_dim
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
    )
    t5_config = T5Config(vocab_size=vocab, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    pipeline = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae.eval(),
        text_encoder=CLIPTextModel(clip_config).eval(),
        tokenizer=word_tokenizer(16),
        text_encoder_2=T5EncoderModel(t5_config).eval(),
        tokenizer_2=word_tokenizer(512),
        transformer=tiny_flux(),
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generate(pipe: FluxPipeline, prompts: list[str] = PROMPTS, size: int = SIZE, **kwargs) -> torch.Tensor:
    """Images ``(N, 3, H, W)`` in [0, 1]; image i always uses seed i."""
    return pipe(
        prompt=prompts,
        height=size,
        width=size,
        num_inference_steps=STEPS,
        max_sequence_length=8,
        generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))],
        output_type="pt",
        **kwargs,
    ).images


def is_stock(pipe: FluxPipeline) -> bool:
    blocks = [*pipe.transformer.transformer_blocks, *pipe.transformer.single_transformer_blocks]
    return all(type(block.attn.processor).__name__ == "FluxAttnProcessor" for block in blocks)


def op_of(pipe: FluxPipeline):
    return pipe.transformer.single_transformer_blocks[0].attn.processor.binding.op


def style_image(seed: int, size: int = SIZE) -> PIL.Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


# ----------------------------------------------------------------------------------------- options


def test_registered_and_inner_options_split():
    assert "aligned_gen" in dit_accel.list_methods()
    config = build_config("aligned_gen", attention="topk", density=0.25, dense_steps=2, style_lambda=1.3)
    assert isinstance(config, AlignedGenConfig)
    assert isinstance(config.attention, TopKConfig)
    assert (config.attention.density, config.attention.dense_steps, config.style_lambda) == (0.25, 2, 1.3)
    # the common options belong to the acceleration and are mirrored for the step tracker
    assert config.dense_steps == 2
    assert config.block_size == config.attention.block_size == (128, 64)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"density": 0.1}, ValueError, r"density must be 1.0 for dense"),
        ({"sparsity": 0.1}, TypeError, r"aligned_gen: attention, blocks.*dense: dense_steps"),
        ({"attention": "topk", "sparsity": 0.1}, TypeError, r"topk: .*density"),
        ({"attention": "aligned_gen"}, ValueError, r"attention must be one of \[.*'dense'.*'topk'.*got 'aligned_gen'"),
        ({"attention": "nope"}, ValueError, "attention must be one of"),
        ({"lambda_schedule": "cosine"}, ValueError, r"lambda_schedule must be one of \('fixed', 'decreasing'\)"),
        ({"style_lambda": -0.5}, ValueError, "style_lambda must be in"),
        ({"lambda_schedule": "decreasing", "style_lambda": 0.8}, ValueError, "style_lambda must be >= 1.0"),
        ({"steps": (3, 1)}, ValueError, r"steps=\(start, end\) needs 0 <= start <= end"),
        ({"blocks": (1.0, 2)}, TypeError, "blocks must be a"),
        ({"blocks": (0, None)}, TypeError, "blocks must be a"),
        ({"reference_image": "style.png"}, TypeError, "reference_image must be a PIL.Image or a torch.Tensor"),
        ({"attention": TopKConfig(dense_steps=1), "dense_steps": 2}, TypeError, "attention config instance"),
    ],
)
def test_bad_options_are_named(options, error, match):
    with pytest.raises(error, match=match):
        build_config("aligned_gen", **options)


def test_common_option_on_both_configs_is_refused():
    with pytest.raises(ValueError, match=r"\['dense_steps'\] set on both"):
        AlignedGenConfig(attention=TopKConfig(dense_steps=1), dense_steps=2)


def test_lambda_schedules():
    fixed = AlignedGenConfig(style_lambda=1.2, steps=(1, 3))
    assert [fixed.lambda_at(s, 5) for s in range(5)] == [0.0, 1.2, 1.2, 0.0, 0.0]
    falling = AlignedGenConfig(style_lambda=1.5, lambda_schedule="decreasing", steps=(2, 7))
    values = [falling.lambda_at(s, None) for s in range(2, 7)]
    assert values[0] == 1.5 and values[-1] == 1.0
    assert all(a > b for a, b in itertools.pairwise(values))
    assert falling.lambda_at(1, None) == falling.lambda_at(7, None) == 0.0
    open_end = AlignedGenConfig(style_lambda=1.5, lambda_schedule="decreasing")
    assert open_end.lambda_at(9, 10) == 1.0
    with pytest.raises(ValueError, match="needs the number of steps"):
        open_end.lambda_at(3, None)


# ------------------------------------------------------------------------------- ShiftPE and AdaIN


def test_shift_pe_positions_do_not_overlap_targets():
    ids = flux_image_ids(5, 7)
    shifted = ids + column_offset((1, 5, 7), 3)
    target_positions = {tuple(p) for p in ids[:, 1:].tolist()}
    reference_positions = {tuple(p) for p in shifted[:, 1:].tolist()}
    assert not target_positions & reference_positions
    assert torch.equal(shifted[:, 1], ids[:, 1])
    assert shifted[:, 2].min() == ids[:, 2].max() + 1  # placed right next to the target


def test_shift_pe_rotation_equals_the_shifted_table():
    pos_embed = FluxPosEmbed(theta=10000, axes_dim=[4, 6, 6])
    ids, grid = flux_image_ids(5, 7), (1, 5, 7)
    raw = torch.randn(2, 35, 2, 16, generator=torch.Generator().manual_seed(0))
    rotated = rotate(raw, pos_embed(ids))
    expected = rotate(raw, pos_embed(ids + column_offset(grid, 3)))
    shifted = rotate(rotated, shift_table(pos_embed, grid, torch.device("cpu")))
    assert (shifted - expected).abs().max() < 1e-5
    assert (shifted - rotated).abs().max() > 0.1
    assert (unrotate(rotated, pos_embed(ids)) - raw).abs().max() < 1e-5


def test_adain_matches_reference_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 2, 8, generator=g) * 3 + 1
    reference = torch.randn(3, 40, 2, 8, generator=g) * 0.5 - 2
    target = channel_stats(reference)
    out = channel_stats(adain(x, target))
    torch.testing.assert_close(out.mean, target.mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std, target.std, atol=0, rtol=1e-4)


# ----------------------------------------------------------------------------------- op, directly

TEXT = 5


def op_call(pipe, batch: int, groups: int = 1, seed: int = 0, **options):
    """An attached aligned_gen op, random RoPE'd q/k/v of a [5 text, 8x8 image] call and its context."""
    return attached_call(AlignedGenAttention(AlignedGenConfig(blocks=(0, 3), **options)), pipe, batch, groups, seed)


def attached_call(op, pipe, batch: int, groups: int, seed: int, img_ids: torch.Tensor | None = None):
    """``op`` attached to ``pipe``'s transformer, random RoPE'd q/k/v of ``batch`` [5 text, 8x8 image]
    sequences (``groups`` CFG groups) and the context of the call; ``img_ids`` go to the forward's info."""
    op.attach(pipe, [pipe.transformer])
    pos_embed = pipe.transformer.pos_embed
    tracker = StepTracker(op.config)
    tracker.info = ForwardInfo(pos_embed=pos_embed, grid=GRID, img_ids=img_ids)
    binding = LayerBinding(op=op, tracker=tracker, layer_index=1, num_layers=3, dense_layer=False)
    seq = TEXT + 64
    layout = TokenLayout(seq_len=seq, video_start=TEXT, video_len=64, grid=GRID, text_len=TEXT, cfg_groups=groups)
    table = pos_embed(torch.cat([torch.zeros(TEXT, 3), flux_image_ids(8, 8)]))
    ctx = AttentionContext(layout=layout, binding=binding, rotary_emb=table)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, seq, 2, 16, generator=g) for _ in range(3))
    return op, rotate(q, table), rotate(k, table), v, ctx


def test_reference_rows_are_exact_and_ignore_targets(pipe):
    op, q, k, v, ctx = op_call(pipe, batch=3)
    out = op(q, k, v, ctx)
    assert torch.equal(out[:1], ctx.dense(q[:1], k[:1], v[:1]))
    assert not torch.allclose(out[1:], ctx.dense(q[1:], k[1:], v[1:]), atol=1e-3)
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[1:] += 1.0
    assert torch.equal(op(q2, k2, v2, ctx)[:1], out[:1])


def test_targets_share_reference_image_tokens_not_text(pipe):
    op, q, k, v, ctx = op_call(pipe, batch=2)
    out = op(q, k, v, ctx)
    k_text, v_text = k.clone(), v.clone()
    k_text[0, :TEXT] += 1.0
    v_text[0, :TEXT] += 1.0
    moved_text = op(q, k_text, v_text, ctx)
    assert torch.equal(moved_text[1], out[1])
    assert not torch.equal(moved_text[0], out[0])
    v_image = v.clone()
    v_image[0, TEXT:] += 1.0
    assert (op(q, k, v_image, ctx)[1] - out[1]).abs().max() > 1e-2


def test_cfg_groups_share_within_their_group_only(pipe):
    op, q, k, v, ctx = op_call(pipe, batch=4, groups=2)  # [ref 0, target 0, ref 1, target 1]
    out = op(q, k, v, ctx)
    for ref in (0, 2):
        assert torch.equal(out[ref : ref + 1], ctx.dense(q[ref : ref + 1], k[ref : ref + 1], v[ref : ref + 1]))
    v2 = v.clone()
    v2[0, TEXT:] += 1.0
    moved = op(q, k, v2, ctx)
    assert torch.equal(moved[3], out[3])
    assert not torch.equal(moved[1], out[1])


def test_inner_op_gets_adain_targets_and_shifted_scaled_reference(pipe):
    op, q, k, v, ctx = op_call(pipe, batch=3, style_lambda=1.25)
    calls = []
    inner = op.inner
    op.inner = lambda q_, k_, v_, c: calls.append((q_, k_, v_, c)) or inner(q_, k_, v_, c)
    op(q, k, v, ctx)
    (_, ref_k, _, ref_ctx), (tq, tk, tv, tctx) = calls
    assert ref_k.shape[1] == ref_ctx.layout.seq_len and ref_ctx.layout.appended_len == 0
    assert tctx.layout.appended_len == 64 and tctx.layout.appended_grid == GRID
    image, table = slice(TEXT, TEXT + 64), (ctx.rotary_emb[0][TEXT:], ctx.rotary_emb[1][TEXT:])
    shifted = rotate(k[:1, image], shift_table(pipe.transformer.pos_embed, GRID, torch.device("cpu")))
    torch.testing.assert_close(tk[:, TEXT + 64 :], (1.25 * shifted).expand(2, -1, -1, -1))
    assert torch.equal(tv[:, TEXT + 64 :], v[:1, image].expand(2, -1, -1, -1))
    assert torch.equal(tq[:, :TEXT], q[1:, :TEXT])  # text tokens untouched
    for got, ref in ((tq, q), (tk, k)):
        reference = channel_stats(unrotate(ref[:1, image], table))
        aligned = channel_stats(unrotate(got[:, image], table))
        torch.testing.assert_close(aligned.mean, reference.mean.expand_as(aligned.mean), atol=1e-4, rtol=0)
        torch.testing.assert_close(aligned.std, reference.std.expand_as(aligned.std), atol=0, rtol=1e-3)
        original = channel_stats(unrotate(ref[1:, image], table))
        assert (original.mean - reference.mean).abs().max() > 0.1  # AdaIN had something to do


# ---------------------------------------------------------------------------------- pipeline runs


def test_reference_image_is_bit_exact_and_targets_change(pipe):
    stock = generate(pipe)
    with dit_accel.apply(pipe, "aligned_gen"):
        aligned = generate(pipe)
    assert torch.equal(aligned[0], stock[0])
    assert all((aligned[i] - stock[i]).abs().max() > 1e-4 for i in (1, 2))
    assert is_stock(pipe)


@pytest.mark.parametrize("options", [{"style_lambda": 0.0}, {"blocks": (1, 1)}, {"steps": (0, 0)}])
def test_dense_sharing_disabled_is_stock_flux(pipe, options):
    stock = generate(pipe)
    with dit_accel.apply(pipe, "aligned_gen", **options):
        assert torch.equal(generate(pipe), stock)


@pytest.mark.parametrize(
    ("options", "layers", "steps"),
    [
        ({}, {1, 2}, {0, 1, 2}),
        ({"blocks": (0, 2), "steps": (1, None)}, {0, 1}, {1, 2}),
        ({"steps": (0, 1)}, {1, 2}, {0}),
    ],
)
def test_blocks_and_steps_select_where_sharing_happens(pipe, options, layers, steps, monkeypatch):
    shared = set()
    with dit_accel.apply(pipe, "aligned_gen", **options):
        inner_class = type(op_of(pipe).inner)
        inner_call = inner_class.__call__

        def record(self, q, k, v, ctx):
            if ctx.layout.appended_len:
                shared.add((ctx.step_index, ctx.layer_index))
            return inner_call(self, q, k, v, ctx)

        monkeypatch.setattr(inner_class, "__call__", record)
        generate(pipe)
    assert shared == {(step, layer) for step in steps for layer in layers}


def test_decreasing_schedule_runs_and_differs_from_fixed(pipe):
    outputs = []
    for schedule in ("fixed", "decreasing"):
        with dit_accel.apply(pipe, "aligned_gen", style_lambda=2.0, lambda_schedule=schedule, steps=(0, STEPS)):
            outputs.append(generate(pipe))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert not torch.equal(outputs[0][1:], outputs[1][1:])


def test_composes_with_topk(pipe):
    sparse = {"density": 0.5, "block_size": 16}
    with dit_accel.apply(pipe, "topk", **sparse):
        topk_only = generate(pipe)
    with dit_accel.apply(pipe, "aligned_gen", attention="topk", blocks=(0, 3), **sparse):
        aligned_topk = generate(pipe)
    with dit_accel.apply(pipe, "aligned_gen", blocks=(0, 3)):
        aligned_dense = generate(pipe)
    assert torch.equal(aligned_topk[0], topk_only[0])  # the reference ran through topk, unshared
    assert (aligned_topk[1:] - topk_only[1:]).abs().max() > 1e-4  # targets shared
    assert (aligned_topk[1:] - aligned_dense[1:]).abs().max() > 1e-4  # block-sparse path really ran
    assert (aligned_topk - aligned_dense).abs().mean() < 0.05


def test_batch_of_one_is_refused(pipe):
    with dit_accel.apply(pipe, "aligned_gen"):
        with pytest.raises(ValueError, match="at least 2 images"):
            generate(pipe, PROMPTS[:1])
        inputs = {
            "hidden_states": torch.randn(1, 64, 8),
            "encoder_hidden_states": torch.randn(1, 4, 8),
            "pooled_projections": torch.randn(1, 8),
            "timestep": torch.ones(1),
            "img_ids": flux_image_ids(8, 8),
            "txt_ids": torch.zeros(4, 3),
        }
        with pytest.raises(ValueError, match="at least 2 images"):
            pipe.transformer(**inputs)


def test_blocks_out_of_range_is_refused_and_cleaned_up(pipe):
    with pytest.raises(ValueError, match=r"blocks=\(0, 4\) is out of range.*blocks 0\.\.2"):
        dit_accel.apply(pipe, "aligned_gen", blocks=(0, 4))
    assert is_stock(pipe)


def test_non_flux_model_is_refused():
    model = tiny_wan()
    with pytest.raises(TypeError, match="FluxTransformer2DModel only, got WanTransformer3DModel"):
        dit_accel.apply(model, "aligned_gen")
    assert model._diffusers_hook.get_hook("dit_accel_steps") is None


# ------------------------------------------------------------------------------ external reference


def test_sigma_and_noising_follow_the_scheduler():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(5)
    for t, sigma in zip(scheduler.timesteps, scheduler.sigmas, strict=False):
        assert sigma_at(scheduler, float(t) / 1000) == pytest.approx(float(sigma))
    g = torch.Generator().manual_seed(0)
    style = StyleLatents(torch.randn(1, 4, 2, generator=g), torch.randn(1, 4, 2, generator=g), (1, 2, 2), 16)
    like = torch.zeros(1, dtype=torch.float64)
    assert torch.equal(style.noised(0.0, like), style.latents.double())
    assert torch.equal(style.noised(1.0, like), style.noise.double())
    torch.testing.assert_close(style.noised(0.25, like), (0.75 * style.latents + 0.25 * style.noise).double())


def test_external_reference_runs_once_per_step_and_frees_its_cache(pipe, monkeypatch):
    captures = []
    original = StyleCaptureHook._capture
    monkeypatch.setattr(StyleCaptureHook, "_capture", lambda self, a, t: captures.append(t) or original(self, a, t))
    stock = generate(pipe, PROMPTS[:2])
    true_cfg = {"negative_prompt": ["a house"] * 2, "true_cfg_scale": 2.0}
    outputs = []
    for seed in (1, 2):
        with dit_accel.apply(pipe, "aligned_gen", reference_image=style_image(seed)) as handle:
            store = op_of(pipe).store
            outputs.append(generate(pipe, PROMPTS[:2]))
            assert store.features == {} and store.timestep is None  # freed after the call
            generate(pipe, PROMPTS[:1], **true_cfg)  # a batch of one is fine with an external reference
            assert store.features == {}
        assert not handle.active
    assert len(captures) == 2 * 2 * STEPS  # 2 handles x 2 calls: once per step, even with true CFG's 2 calls
    assert all((out - stock).abs().amax(dim=(1, 2, 3)).min() > 1e-4 for out in outputs)  # every image a target
    assert (outputs[0] - outputs[1]).abs().max() > 1e-4  # the style image matters
    assert pipe.transformer._diffusers_hook.get_hook("dit_accel_aligned_gen_reference") is None


def test_external_reference_tensor_equals_pil(pipe):
    image = style_image(3)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    outputs = []
    for reference in (image, tensor):
        with dit_accel.apply(pipe, "aligned_gen", reference_image=reference):
            outputs.append(generate(pipe, PROMPTS[:2]))
    torch.testing.assert_close(outputs[0], outputs[1])


def test_external_reference_size_errors(pipe):
    with pytest.raises(ValueError, match=r"reference_image is 30x30 px; .*multiples of 4"):
        dit_accel.apply(pipe, "aligned_gen", reference_image=style_image(0, size=30))
    assert is_stock(pipe)
    with pytest.raises(ValueError, match=r"needs a FluxPipeline"):
        dit_accel.apply(pipe.transformer, "aligned_gen", reference_image=style_image(0))
    mismatch = r"32x32 px \(8x8 tokens\) but the pipeline generates 48x48 px"
    with (
        dit_accel.apply(pipe, "aligned_gen", reference_image=style_image(0)),
        pytest.raises(ValueError, match=mismatch),
    ):
        generate(pipe, PROMPTS[:2], size=48)


def test_external_reference_composes_with_topk(pipe):
    sparse = {"density": 0.5, "block_size": 16}
    with dit_accel.apply(pipe, "topk", **sparse):
        topk_only = generate(pipe, PROMPTS[:2])
    outputs = {}
    for attention in ("dense", "topk"):
        options = {"attention": attention, **(sparse if attention == "topk" else {})}
        with dit_accel.apply(pipe, "aligned_gen", reference_image=style_image(1), blocks=(0, 3), **options):
            outputs[attention] = generate(pipe, PROMPTS[:2])
            assert op_of(pipe).store.features == {}
    assert (outputs["topk"] - topk_only).abs().amax(dim=(1, 2, 3)).min() > 1e-4
    assert 1e-4 < (outputs["topk"] - outputs["dense"]).abs().max() < 0.1


# ------------------------------------------------------------------------------- convenience, report


def test_aligned_batch_builds_prompts_and_removes_itself(pipe):
    subjects = ["a cat", "a dog"]
    with dit_accel.apply(pipe, "aligned_gen", style_lambda=1.3):
        expected = generate(pipe, ["a cat, in the style of watercolor", "a dog, in the style of watercolor"])
    images = aligned_batch(
        pipe,
        "in the style of watercolor",
        subjects,
        options={"style_lambda": 1.3},
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        max_sequence_length=8,
        generator=[torch.Generator().manual_seed(i) for i in range(2)],
        output_type="pt",
    )
    assert torch.equal(images, expected)
    assert is_stock(pipe)
    with pytest.raises(ValueError, match="at least 2 entries"):
        aligned_batch(pipe, "watercolor", ["a cat"])
    with pytest.raises(TypeError, match="do not pass prompt"):
        aligned_batch(pipe, "watercolor", subjects, prompt=["x", "y"])


def test_report_compares_runs_with_same_seeds(pipe, tmp_path):
    subjects = ["a cat", "a dog", "a tree"]
    report = run_report(
        pipe,
        "watercolor painting",
        subjects,
        tmp_path,
        options={"blocks": (0, 3)},
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        max_sequence_length=8,
    )
    written = json.loads((tmp_path / JSON_NAME).read_text())
    assert written == report
    assert report["reference_max_abs_diff"] == 0
    assert report["prompts"][2] == "a tree, watercolor painting"
    for run in ("baseline", "aligned"):
        assert set(report["metrics"][run]) == {"gram_distance", "color_histogram_distance"}
        assert 0.0 < report["metrics"][run]["gram_distance"] < 1.0
    assert report["metrics"]["baseline"] != report["metrics"]["aligned"]
    grid = PIL.Image.open(tmp_path / GRID_NAME)
    assert grid.size == (3 * SIZE, 2 * SIZE)
    assert np.array_equal(np.asarray(grid)[:SIZE, :SIZE], np.asarray(grid)[SIZE:, :SIZE])  # reference column
    assert not np.array_equal(np.asarray(grid)[:SIZE, SIZE:], np.asarray(grid)[SIZE:, SIZE:])


def test_report_command_line(pipe, tmp_path, capsys):
    import argparse

    pipe.save_pretrained(tmp_path / "model")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            *("aligned-report", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out")),
            *("--style", "watercolor", "--subjects", "a cat", "a dog"),
            *("--steps", "2", "--height", "32", "--width", "32", "--device", "cpu"),
            *("-o", "style_lambda=1.3", "-o", "attention=topk", "-o", "density=0.5", "-o", "block_size=16"),
        ]
    )
    assert dict(args.option) == {"style_lambda": 1.3, "attention": "topk", "density": 0.5, "block_size": 16}
    assert args.func(args) == 0
    report = json.loads((tmp_path / "out" / JSON_NAME).read_text())
    assert report["subjects"] == ["a cat", "a dog"]
    assert report["options"]["attention"] == "'topk'"
    assert "CLIP metrics skipped" in capsys.readouterr().out
