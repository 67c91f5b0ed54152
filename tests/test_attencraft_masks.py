"""Attention-map capture (any method, output unchanged, raster order restored) and AttenCraft's masks."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from tiny_models import flux_inputs, tiny_flux
from transformers import AutoTokenizer

import dit_accel
from dit_accel.editing.attencraft_masks import (
    BACKGROUND,
    assign,
    mask_overlay,
    masks_from_maps,
    phrase_positions,
    refine,
    threshold_masks,
)
from dit_accel.editing.attention_maps import AttentionMapCapture, AttentionMaps, capture_attention_maps
from dit_accel.tiny_model import TINY_FLUX_DIR

HEIGHT, WIDTH = 8, 8
TEXT = 6


def _run(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).sample


def _explicit_maps(model: torch.nn.Module, inputs: dict, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Text and image softmaxes of one layer's image queries, from q/k recorded by the ``record`` method."""
    with dit_accel.apply(model, "record", layers=layer) as handle:
        _run(model, inputs)
    call = handle.config.store.calls[0]
    q, k = call.q.double(), call.k.double()
    logits = torch.einsum("bqhd,bkhd->bhqk", q[:, TEXT:], k) / q.shape[-1] ** 0.5
    text = torch.softmax(logits[..., :TEXT], dim=-1).mean(1)
    image = torch.softmax(logits[..., TEXT:], dim=-1).mean(1)
    return text.transpose(1, 2).reshape(1, TEXT, HEIGHT, WIDTH), image


@pytest.mark.parametrize("method, options", [("dense", {}), ("topk", {"density": 0.5, "block_size": 16})])
def test_capture_leaves_output_and_restores_raster_order(method, options):
    model, inputs = tiny_flux(), flux_inputs(height=HEIGHT, width=WIDTH)
    with dit_accel.apply(model, method, **options) as handle:
        plain = _run(model, inputs)
        handle.reset()
        with capture_attention_maps(model, blocks=(0, 1)) as capture:
            captured = _run(model, inputs)
        handle.reset()
        again = _run(model, inputs)
        reordered = handle.tracker.info.token_tile is not None
    assert reordered == (method == "topk")
    assert torch.equal(plain, captured) and torch.equal(plain, again)
    maps = capture.result()
    text, image = _explicit_maps(model, inputs, layer=0)
    assert maps.calls == 1 and maps.grid == (HEIGHT, WIDTH)
    torch.testing.assert_close(maps.text.double(), text, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(maps.affinity.double(), image, atol=1e-5, rtol=1e-4)


def test_capture_without_a_method_applies_and_removes_dense():
    model, inputs = tiny_flux(), flux_inputs(height=HEIGHT, width=WIDTH)
    stock = _run(model, inputs)
    with capture_attention_maps(model, affinity=False) as capture:
        assert torch.equal(_run(model, inputs), stock)
    blocks = [*model.transformer_blocks, *model.single_transformer_blocks]
    assert all(type(block.attn.processor).__name__ == "FluxAttnProcessor" for block in blocks)
    maps = capture.result()
    assert maps.affinity is None and maps.calls == 3  # every block of one forward
    torch.testing.assert_close(maps.text.sum(dim=1), torch.ones(1, HEIGHT, WIDTH))


def test_forward_steps_and_blocks_select_calls():
    model, inputs = tiny_flux(), flux_inputs(height=HEIGHT, width=WIDTH)
    with capture_attention_maps(model, blocks=(1, 3), steps=(1, None), forwards=(1,), affinity=False) as capture:
        for timestep in (0.9, 0.9, 0.5, 0.5, 0.5):  # step 0 (two forwards), step 1 (three forwards)
            _run(model, {**inputs, "timestep": torch.full((1,), timestep)})
    assert capture.result().calls == 2  # blocks 1 and 2 of step 1's second forward only
    with pytest.raises(RuntimeError, match="no attention call was captured"):
        AttentionMapCapture(steps=(3, None)).result()
    with pytest.raises(ValueError, match="forwards"):
        AttentionMapCapture(forwards=[0])
    with (
        pytest.raises(ValueError, match="no method or options"),
        dit_accel.apply(model, "dense"),
        capture_attention_maps(model, method="topk"),
    ):
        pass


# --------------------------------------------------------------------------------------------- masks


def _regions() -> torch.Tensor:
    """Labels of a 8x8 grid: 0 in the top-left 3x3, 1 in the bottom-right 3x3, background elsewhere."""
    labels = torch.full((HEIGHT, WIDTH), BACKGROUND)
    labels[:3, :3] = 0
    labels[5:, 5:] = 1
    return labels


def _constructed_maps(labels: torch.Tensor) -> AttentionMaps:
    """Text maps peaking at one pixel of each region (token 2: region 0, token 4: region 1, token 0:
    background) and an affinity that spreads attention evenly inside each region."""
    flat = labels.flatten()
    text = torch.full((1, TEXT, HEIGHT * WIDTH), 0.01)
    for token, pixel in ((2, 0), (4, 63), (0, 32)):
        text[0, token, pixel] = 1.0
    same = (flat[:, None] == flat[None, :]).float()
    affinity = same / same.sum(dim=1, keepdim=True)
    return AttentionMaps(text=text.reshape(1, TEXT, HEIGHT, WIDTH), affinity=affinity[None], calls=1)


def test_refinement_recovers_regions_from_single_peaks():
    labels = _regions()
    maps = _constructed_maps(labels)
    masks = masks_from_maps(maps, [[2], [4]], background_tokens=[0], power=4, concepts=("a", "b"))
    assert torch.equal(masks.labels, labels)
    assert masks.concepts == ("a", "b") and masks.masks.shape == (2, HEIGHT, WIDTH)
    unrefined = masks_from_maps(maps, [[2], [4]], background_tokens=[0], power=0)
    assert unrefined.masks.sum() == 2  # raw peaks only: refinement is what fills the regions
    upsampled = masks_from_maps(maps, [[2], [4]], background_tokens=[0], size=(32, 32))
    assert upsampled.labels.shape == (32, 32) and upsampled.labels[:8, :8].eq(0).all()


def test_margin_assignment_and_baseline():
    maps = torch.tensor([[1.0, 0.6, 0.2, 0.0], [0.0, 0.55, 0.2, 0.0]])
    background = torch.tensor([0.0, 0.0, 0.25, 1.0])
    assert assign(maps, background, margin=0.1).tolist() == [0, BACKGROUND, BACKGROUND, BACKGROUND]
    assert assign(maps, background, margin=0.0).tolist() == [0, 0, BACKGROUND, BACKGROUND]
    assert assign(maps[:1], None, margin=0.1).tolist() == [0, 0, 0, BACKGROUND]
    assert assign(maps, None, margin=0.0, floor=0.6).tolist() == [0, 0, BACKGROUND, BACKGROUND]
    with pytest.raises(ValueError, match="margin"):
        assign(maps, background, margin=1.5)
    with pytest.raises(ValueError, match="floor"):
        assign(maps, background, floor=2.0)
    with pytest.raises(ValueError, match="power"):
        refine(maps, torch.eye(4), power=-1)
    raw = _constructed_maps(_regions())
    assert threshold_masks(raw, [[2]], (HEIGHT, WIDTH)).sum() == 1


def test_phrase_positions_and_overlay():
    tokenizer = AutoTokenizer.from_pretrained(str(TINY_FLUX_DIR / "tokenizer_2"))
    prompt = "a red star left of a blue ring on a striped gray background"
    assert phrase_positions(tokenizer, prompt, "blue ring", 32) == [6, 7]
    with pytest.raises(ValueError, match="'green ring' is not in the prompt"):
        phrase_positions(tokenizer, prompt, "green ring", 32)
    image = PIL.Image.new("RGB", (4, 2), (100, 100, 100))
    labels = torch.tensor([[0, 1, BACKGROUND, BACKGROUND], [BACKGROUND] * 4])
    pixels = np.asarray(mask_overlay(image, labels, alpha=1.0))
    assert pixels[0, 0].tolist() == [230, 25, 75] and pixels[0, 1].tolist() == [60, 180, 75]
    assert (pixels[1] == 100).all() and (pixels[0, 2:] == 100).all()
    with pytest.raises(ValueError, match="labels are"):
        mask_overlay(image, labels.T, alpha=1.0)
