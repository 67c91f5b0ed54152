"""IR-Diffusion: regions, placements, the op on constructed q/k/v, and runs on the tiny random FluxPipeline."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from test_aligned_gen import GRID, PROMPTS, TEXT, attached_call, generate, is_stock, op_of, pipe  # noqa: F401  (pipe: fixture)
from tiny_models import flux_image_ids

import dit_accel
from dit_accel import TopKConfig
from dit_accel.context import AttentionContext
from dit_accel.editing import IRDiffusionAttention, IRDiffusionConfig, ir_batch
from dit_accel.editing.regions import token_mask
from dit_accel.editing.reposition import place
from dit_accel.editing.rope import rotate
from dit_accel.methods.topk import TopKAttention
from dit_accel.registry import build_config

LEFT, RIGHT = (0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)  # top-left and bottom-right quarters
REGIONS = {"reference_regions": [LEFT, RIGHT], "target_regions": [[RIGHT, LEFT]]}  # subjects swap places


# ----------------------------------------------------------------------------------------- options


def test_registered_and_inner_options_split():
    config = build_config("ir_diffusion", attention="topk", density=0.25, dense_steps=1, **REGIONS)
    assert isinstance(config, IRDiffusionConfig) and isinstance(config.attention, TopKConfig)
    assert (config.attention.density, config.dense_steps) == (0.25, 1)
    assert "ir_diffusion" in dit_accel.list_methods(kind="edit")


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"target_regions": [[LEFT]]}, ValueError, "reference_regions must list one region"),
        ({"reference_regions": [LEFT]}, ValueError, "target_regions must list"),
        ({**REGIONS, "target_regions": [[LEFT]]}, ValueError, r"target_regions\[0\] must hold one region per subject"),
        ({**REGIONS, "target_regions": [LEFT]}, ValueError, r"target_regions\[0\] must hold one region per subject"),
        ({**REGIONS, "reference_regions": [(0.5, 0, 0.2, 1), RIGHT]}, ValueError, r"reference_regions\[0\]: a box"),
        ({**REGIONS, "reference_regions": ["left", RIGHT]}, TypeError, r"reference_regions\[0\] must be a box"),
        ({**REGIONS, "reference_regions": [np.zeros((4, 4), bool), RIGHT]}, ValueError, "the mask is empty"),
        ({**REGIONS, "reposition": "warp"}, ValueError, "reposition must be one of 'rope', 'crop', 'off'"),
        ({**REGIONS, "reference_scale": 0.0}, ValueError, "reference_scale must be in"),
        ({**REGIONS, "isolation": 1}, TypeError, "isolation must be a bool"),
        ({**REGIONS, "sparsity": 0.1}, TypeError, r"ir_diffusion: .*reference_regions.*dense: dense_steps"),
    ],
)
def test_bad_options_are_named(options, error, match):
    with pytest.raises(error, match=match):
        build_config("ir_diffusion", **options)


# ----------------------------------------------------------------------------- regions, placements


def test_box_and_mask_cover_the_expected_tokens():
    box = token_mask((0.25, 0.0, 0.5, 0.5), 4, 8)
    assert box.nonzero().tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]
    tiny = token_mask((0.51, 0.51, 0.52, 0.52), 4, 4)  # no token centre inside: the token under its centre
    assert tiny.nonzero().tolist() == [[2, 2]]
    pixels = torch.zeros(32, 32, dtype=torch.bool)
    pixels[8:16, 0:12] = True  # rows 1 (all), cols 0 (all) and 1 (half) of a 4x4 grid of 8-px cells
    assert token_mask(pixels, 4, 4).nonzero().tolist() == [[1, 0], [1, 1]]


def test_rope_placement_moves_the_mask_onto_the_target_box():
    reference, target = token_mask(LEFT, 8, 8), token_mask((0.5, 0.25, 1.0, 0.75), 8, 8)
    placed = place("rope", reference, target)
    assert torch.equal(placed.source, reference.flatten().nonzero().squeeze(1))
    assert placed.shift.unique(dim=0).tolist() == [[2.0, 4.0]]
    moved = torch.zeros(8, 8, dtype=torch.bool)
    dest = torch.stack([placed.source // 8, placed.source % 8], 1) + placed.shift.long()
    moved[dest[:, 0], dest[:, 1]] = True
    assert torch.equal(moved, target)


def test_crop_placement_resizes_the_box_and_keeps_masked_tokens_only():
    reference = torch.zeros(8, 8, dtype=torch.bool)
    reference[0:2, 0:2] = True
    reference[0, 0] = False  # an L-shaped subject
    target = token_mask((0.0, 0.5, 0.5, 1.0), 8, 8)  # a 4x4 box: each source token covers 2x2 cells
    placed = place("crop", reference, target)
    assert set(placed.source.tolist()) == {1, 8, 9}
    dest = torch.stack([placed.source // 8, placed.source % 8], 1) + placed.shift.long()
    assert len(dest) == 12 and (dest[:, 0] >= 4).all() and (dest[:, 1] < 4).all()
    assert [4, 0] not in dest.tolist()  # the cell the missing corner maps to stays empty


# ----------------------------------------------------------------------------------- op, directly


def op_call(pipe, seed: int = 0, groups: int = 1, **options):  # noqa: F811
    """An attached op, random RoPE'd q/k/v of a [5 text, 8x8 image] call of [ref 0, ref 1, target] per group."""
    op = IRDiffusionAttention(IRDiffusionConfig(**{**REGIONS, **options}))
    return attached_call(op, pipe, 3 * groups, groups, seed, img_ids=flux_image_ids(8, 8))


def image_rows(box) -> torch.Tensor:
    return TEXT + token_mask(box, 8, 8).flatten().nonzero().squeeze(1)


def test_references_text_and_background_rows_are_the_inner_output(pipe):  # noqa: F811
    op, q, k, v, ctx = op_call(pipe, target_regions=[[(0.0, 0.0, 0.25, 0.25), (0.75, 0.75, 1.0, 1.0)]])
    out, dense = op(q, k, v, ctx), ctx.dense(q, k, v)
    edited = torch.cat([image_rows((0.0, 0.0, 0.25, 0.25)), image_rows((0.75, 0.75, 1.0, 1.0))])
    kept = torch.ones(q.shape[1], dtype=torch.bool)
    kept[edited] = False
    assert torch.equal(out[:2], dense[:2])
    assert torch.equal(out[2, kept], dense[2, kept])
    assert (out[2, edited] - dense[2, edited]).abs().amin(dim=(1, 2)).min() > 0  # every subject row edited


def test_isolation_hides_the_other_subjects_keys(pipe):  # noqa: F811
    rows_0, rows_1 = image_rows(RIGHT), image_rows(LEFT)  # subject 0 sits in the target's right, 1 in its left
    for isolation in (True, False):
        op, q, k, v, ctx = op_call(pipe, isolation=isolation, reposition="off")
        out = op(q, k, v, ctx)
        k2, v2 = k.clone(), v.clone()
        k2[2, rows_1] += 1.0
        v2[2, rows_1] += 1.0
        moved = op(q, k2, v2, ctx)
        changed = (moved[2, rows_0] - out[2, rows_0]).abs().max()
        assert (changed == 0) if isolation else (changed > 1e-3)
        background = torch.ones(q.shape[1], dtype=torch.bool)
        background[torch.cat([rows_0, rows_1])] = False
        k3 = k.clone()
        k3[2, background] *= 2.0
        assert (op(q, k3, v, ctx)[2, rows_0] - out[2, rows_0]).abs().max() > 1e-3  # background keys still seen


def test_reposition_shows_each_subject_its_own_reference_inside_its_mask(pipe):  # noqa: F811
    op, q, k, v, ctx = op_call(pipe, reposition="rope")
    out = op(q, k, v, ctx)
    rows_0, rows_1 = image_rows(RIGHT), image_rows(LEFT)
    inside_0, outside_0 = image_rows(LEFT), image_rows(RIGHT)  # reference 0's mask, and a region outside it
    for sample, rows, subject_rows, other_rows in ((0, inside_0, rows_0, rows_1), (0, outside_0, None, None)):
        v2 = v.clone()
        v2[sample, rows] += 1.0
        moved = op(q, k, v2, ctx)
        if subject_rows is None:  # reference 0's tokens outside its mask: never shown to the target
            assert torch.equal(moved[2], out[2])
        else:
            assert (moved[2, subject_rows] - out[2, subject_rows]).abs().max() > 1e-3
            assert torch.equal(moved[2, other_rows], out[2, other_rows])  # subject 1 does not see reference 0


def test_rope_reposition_keys_sit_at_the_target_positions(pipe, monkeypatch):  # noqa: F811
    calls = []
    original = AttentionContext.dense
    monkeypatch.setattr(AttentionContext, "dense", lambda self, *a, **kw: calls.append(a) or original(self, *a, **kw))
    op, q, k, v, ctx = op_call(pipe, reposition="rope", reference_scale=1.5)
    raw_k = torch.randn(3, TEXT + 64, 2, 16, generator=torch.Generator().manual_seed(3))
    k = rotate(raw_k, ctx.rotary_emb)
    calls.clear()
    op(q, k, v, ctx)
    _, keys, _, mask = calls[-1]
    appended = keys[0, TEXT + 64 :]
    source = token_mask(LEFT, 8, 8).flatten().nonzero().squeeze(1)
    ids = flux_image_ids(8, 8)[source] + torch.tensor([0.0, 4.0, 4.0])  # top-left quarter -> bottom-right
    expected = 1.5 * rotate(raw_k[:1, TEXT + source], pipe.transformer.pos_embed(ids))[0]
    torch.testing.assert_close(appended[: source.numel()], expected, atol=1e-5, rtol=1e-5)
    assert mask.shape[-1] == TEXT + 64 + 2 * source.numel()


def test_wrong_batch_is_refused(pipe):  # noqa: F811
    op, q, k, v, ctx = op_call(pipe)
    with pytest.raises(ValueError, match=r"2 reference\(s\) \+ 1 target\(s\) = 3 images per CFG group, got 2"):
        op(q[:2], k[:2], v[:2], ctx)


# ---------------------------------------------------------------------------------- pipeline runs

PIPE_REGIONS = {"reference_regions": [(0.0, 0.0, 0.5, 0.5)], "target_regions": [[RIGHT], [LEFT]]}


def test_switched_off_is_stock_and_references_stay_exact(pipe):  # noqa: F811
    stock = generate(pipe)
    with dit_accel.apply(pipe, "ir_diffusion", isolation=False, reposition="off", **PIPE_REGIONS):
        assert torch.equal(generate(pipe), stock)
    with dit_accel.apply(pipe, "ir_diffusion", reposition="crop", **PIPE_REGIONS):
        edited = generate(pipe)
    assert torch.equal(edited[0], stock[0])
    assert all((edited[i] - stock[i]).abs().max() > 1e-4 for i in (1, 2))
    assert is_stock(pipe)


def test_composes_with_topk_through_its_kernel_path(pipe, monkeypatch):  # noqa: F811
    sparse = {"density": 0.5, "block_size": 16}
    with dit_accel.apply(pipe, "topk", **sparse):
        topk_only = generate(pipe)
    selected = []
    original = TopKAttention.select
    monkeypatch.setattr(
        TopKAttention, "select", lambda self, r, c: selected.append(c.layer_index) or original(self, r, c)
    )
    with dit_accel.apply(pipe, "ir_diffusion", attention="topk", **sparse, **PIPE_REGIONS) as handle:
        assert isinstance(op_of(pipe).inner, TopKAttention)
        edited = generate(pipe)
    assert selected and not handle.dense_fallbacks
    with dit_accel.apply(pipe, "ir_diffusion", **PIPE_REGIONS):
        edited_dense = generate(pipe)
    # the reference ran through topk, unedited (in raster order, not topk's tile order: rounding differs)
    reference_gap = (edited[0] - topk_only[0]).abs().max()
    assert reference_gap < 1e-4
    assert (edited[1:] - topk_only[1:]).abs().max() > 100 * max(reference_gap, 1e-6)
    assert (edited - edited_dense).abs().max() > 1e-4  # the block-sparse path really ran


def test_ir_batch_is_apply_plus_pipe(pipe):  # noqa: F811
    options = {"reposition": "crop", "reference_scale": 1.2}
    with dit_accel.apply(pipe, "ir_diffusion", **options, **PIPE_REGIONS):
        expected = generate(pipe)
    images = ir_batch(
        pipe, PROMPTS[:1], PROMPTS[1:], PIPE_REGIONS["reference_regions"], PIPE_REGIONS["target_regions"],
        options=options, height=32, width=32, num_inference_steps=3, max_sequence_length=8,
        generator=[torch.Generator().manual_seed(i) for i in range(3)], output_type="pt",
    )  # fmt: skip
    assert torch.equal(images, expected)
    assert is_stock(pipe)
    with pytest.raises(ValueError, match="one region per reference"):
        ir_batch(pipe, PROMPTS[:1], PROMPTS[1:], [LEFT, RIGHT], [[LEFT]] * 2)


def test_command_line_writes_the_batch(pipe, tmp_path):  # noqa: F811
    from dit_accel.cli import main
    from dit_accel.ir_cli import parse_region

    pipe.save_pretrained(tmp_path / "model")
    mask = np.zeros((32, 32), np.uint8)
    mask[:16, :16] = 255
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    assert torch.equal(torch.as_tensor(parse_region(str(tmp_path / "mask.png"))), torch.as_tensor(mask > 0))
    status = main(
        [
            *("ir-diffusion", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out")),
            *("--references", "a cat", "--reference-regions", str(tmp_path / "mask.png")),
            *("--targets", "a dog", "a boat", "--target-regions", "0.5,0.5,1,1", "0,0,0.5,0.5"),
            *("--steps", "2", "--height", "32", "--width", "32", "--device", "cpu", "-o", "reposition=crop"),
        ]
    )
    assert status == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ir_diffusion.png", "reference_0.png", "target_0.png", "target_1.png",
    ]  # fmt: skip
    assert main(["ir-diffusion", "--model", str(tmp_path / "model"), "--references", "a cat",
                 "--reference-regions", "left", "--targets", "a dog", "--target-regions", "0,0,1,1"]) == 2  # fmt: skip
    with pytest.raises(ValueError, match="a region is a box x0,y0,x1,y1"):
        parse_region("0.1,0.2")


def test_reference_region_from_attention_is_attencrafts_mask(pipe):  # noqa: F811
    from dit_accel.editing.attencraft_masks import concept_masks
    from dit_accel.editing.ir_batch import ATTENTION_MASK_SETTING

    call = {"height": 32, "width": 32, "num_inference_steps": 2, "max_sequence_length": 8}
    mask = concept_masks(pipe, PROMPTS[0], ["cat"], seed=5, **ATTENTION_MASK_SETTING, **call).masks[0]
    assert mask.any() and not mask.all()
    targets = [[RIGHT], [LEFT]]
    by_phrase = ir_batch(pipe, PROMPTS[:1], PROMPTS[1:], ["cat"], targets, seed=5, output_type="pt", **call)
    by_mask = ir_batch(pipe, PROMPTS[:1], PROMPTS[1:], [mask], targets, seed=5, output_type="pt", **call)
    assert torch.equal(by_phrase, by_mask)
    with pytest.raises(ValueError, match="need seed"):
        ir_batch(pipe, PROMPTS[:1], PROMPTS[1:], ["cat"], targets, **call)
