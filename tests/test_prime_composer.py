"""PrimeComposer on the toy random-weight tiny FLUX (64x64 px: an 8x8 token grid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from single_thread import one_thread  # noqa: F401 (autouse fixture)

import dit_accel
from dit_accel.editing import PrimeComposerConfig, compose
from dit_accel.editing.flow_inversion import PromptInputs, Velocity, encode_image, flux_sigmas, invert, regenerate
from dit_accel.editing.prime_correlation import CompositionPlan
from dit_accel.editing.prime_inputs import place_object, text_token_positions, token_mask
from dit_accel.editing.prime_steering import Steering, TextConstraint, edited_logits, edited_qkv
from tools.tiny_flux.build import TOY, build_pipeline
from tools.tiny_flux.data import render_image

SIZE = 64
STEPS = 3
PPT = 8  # pixels per token: the toy VAE's 4x times FLUX's 2x2 packing
PROMPT = "a red star left of a green circle on a striped gray background"
CALL = {"num_inference_steps": STEPS, "max_sequence_length": TOY.text_length}


@pytest.fixture(scope="module")
def pipe():
    pipeline = build_pipeline(TOY)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def scene():
    background, _ = render_image("a green circle on a striped gray background", 1, SIZE, SIZE)
    obj, masks = render_image("a big red star on a dotted blue background", 2, SIZE, SIZE)
    return background, obj, masks[0]


def plan_for(pipe, objects: torch.Tensor, outside: torch.Tensor, text_tokens=(), seed: int = 0) -> CompositionPlan:
    sigmas = flux_sigmas(pipe, STEPS, (SIZE // PPT) ** 2)
    composite = torch.randn(STEPS + 1, 1, (SIZE // PPT) ** 2, 16, generator=torch.Generator().manual_seed(seed))
    embeds = PromptInputs.encode(pipe, PROMPT, TOY.text_length).embeds
    return CompositionPlan(composite, sigmas, objects, outside, tuple(text_tokens), embeds)


def latents_for(seed: int = 5) -> torch.Tensor:
    return torch.randn(1, (SIZE // PPT) ** 2, 16, generator=torch.Generator().manual_seed(seed))


def generate(pipe, **kwargs) -> torch.Tensor:
    return pipe(PROMPT, height=SIZE, width=SIZE, latents=latents_for(), output_type="latent", **CALL, **kwargs).images


def half_grid() -> tuple[torch.Tensor, torch.Tensor]:
    """Object tokens: 2x2 in the top-left of a 4x4 box; outside: everything but the box."""
    grid = torch.zeros(8, 8, dtype=torch.bool)
    box = grid.clone()
    box[:4, :4] = True
    grid[1:3, 1:3] = True
    return grid.flatten(), ~box.flatten()


# ------------------------------------------------------------------------------------ the attention edit


@pytest.mark.parametrize("parts", ["steer", "text", "both"])
def test_edit_as_plain_attention_equals_the_edited_logits(parts):
    gen = torch.Generator().manual_seed(0)
    b, s, h, d = 2, 12, 2, 16
    q, k, v, qc, kc = (torch.randn(b, s, h, d, generator=gen, dtype=torch.float64) for _ in range(5))
    objects = torch.zeros(s, dtype=torch.bool)
    objects[[5, 6, 9]] = True
    steering = Steering(qc, kc, objects) if parts != "text" else None
    rows = torch.zeros(s, dtype=torch.bool)
    rows[3:] = True
    rows[[5, 6]] = False
    columns = torch.zeros(s, dtype=torch.bool)
    columns[[1, 2]] = True
    constraint = TextConstraint(rows, columns) if parts != "steer" else None
    q2, k2, v2 = edited_qkv(q, k, v, steering, constraint)
    assert q2.shape[-1] in (32, 64) and q2.shape[-1] & (q2.shape[-1] - 1) == 0
    out = F.scaled_dot_product_attention(q2.transpose(1, 2), k2.transpose(1, 2), v2.transpose(1, 2))
    weights = edited_logits(q, k, steering, constraint).softmax(-1)
    expected = torch.einsum("bhij,bjhd->bihd", weights, v)
    torch.testing.assert_close(out.transpose(1, 2)[..., :d], expected)
    if constraint is not None:  # constrained rows give the object's text tokens no weight at all
        assert weights[:, :, rows][..., columns].max() == 0.0
        assert weights[:, :, ~rows][..., columns].min() > 0.0
    if steering is not None:
        plain = torch.einsum("bihd,bjhd->bhij", q, k) * d**-0.5
        untouched = ~(objects[:, None] | objects[None, :])
        assert not torch.allclose(weights, plain.softmax(-1))
        torch.testing.assert_close(edited_logits(q, k, steering, None)[:, :, untouched], plain[:, :, untouched])


# ------------------------------------------------------------------------------------------- the method


def test_options_are_validated():
    config = PrimeComposerConfig.from_options(attention="topk", density=0.3, steer_until=0.5)
    assert config.attention.method == "topk" and config.attention.density == 0.3
    with pytest.raises(ValueError, match="steer_until"):
        PrimeComposerConfig(steer_until=1.5)
    with pytest.raises(TypeError, match="plan must be a CompositionPlan"):
        PrimeComposerConfig(plan="x")
    with pytest.raises(ValueError, match="attention must be one of"):
        PrimeComposerConfig(attention="aligned_gen")


def test_apply_without_a_plan_is_refused_and_cleaned_up(pipe):
    with pytest.raises(ValueError, match="needs a composition plan"):
        dit_accel.apply(pipe, "prime_composer")
    blocks = [*pipe.transformer.transformer_blocks, *pipe.transformer.single_transformer_blocks]
    assert all(type(block.attn.processor).__name__ == "FluxAttnProcessor" for block in blocks)


def test_edits_switched_off_is_stock_flux_bit_for_bit(pipe):
    stock = generate(pipe, true_cfg_scale=2.0, negative_prompt="")
    objects, outside = half_grid()
    plan = plan_for(pipe, objects, outside, text_tokens=(1, 2))
    with dit_accel.apply(pipe, "prime_composer", plan=plan, steer_until=0.0, text_constraint=False):
        off = generate(pipe, true_cfg_scale=2.0, negative_prompt="")
    with dit_accel.apply(pipe, "prime_composer", plan=plan, steer_until=0.7):
        on = generate(pipe, true_cfg_scale=2.0, negative_prompt="")
    assert torch.equal(off, stock)
    assert (on - stock).abs().max() > 1e-3


def test_steering_and_text_constraint_go_where_they_belong(pipe, monkeypatch):
    """Steered: the first round(τ_a N) steps, blocks only, cond and uncond calls; text: cond calls only."""
    from dit_accel.editing import prime_composer

    seen = []
    real = prime_composer.edited_qkv

    def spy(q, k, v, steering, constraint):
        seen.append((steering is not None, constraint is not None))
        if steering is not None:  # the branch's q/k are the composite's, not the call's own
            assert not torch.equal(steering.q, q)
        return real(q, k, v, steering, constraint)

    monkeypatch.setattr(prime_composer, "edited_qkv", spy)
    objects, outside = half_grid()
    plan = plan_for(pipe, objects, outside, text_tokens=(1, 2))
    with dit_accel.apply(pipe, "prime_composer", plan=plan, steer_until=0.67, blocks=(0, 1)) as handle:
        generate(pipe, true_cfg_scale=2.0, negative_prompt="")
        assert handle.method.store.qk == {}  # freed at the end of the call
    layers = TOY.num_layers + TOY.num_single_layers
    steered_steps = round(0.67 * STEPS)
    assert seen.count((True, True)) == steered_steps  # cond calls, block 0
    assert seen.count((True, False)) == steered_steps  # uncond calls, block 0
    assert seen.count((False, True)) == STEPS * layers - steered_steps  # cond calls elsewhere
    assert len(seen) == seen.count((True, True)) + seen.count((True, False)) + seen.count((False, True))


def test_composes_with_topk_through_its_kernel_path(pipe, monkeypatch):
    from dit_accel.kernels import backends

    widths = []
    real = backends.sparse_attention

    def spy(q, *args, **kwargs):
        widths.append(q.shape[-1])
        return real(q, *args, **kwargs)

    monkeypatch.setattr(backends, "sparse_attention", spy)
    objects, outside = half_grid()
    plan = plan_for(pipe, objects, outside, text_tokens=(1, 2))
    sparse = {"density": 0.5, "block_size": 16}
    with dit_accel.apply(pipe, "prime_composer", plan=plan, attention="topk", steer_until=1.0, **sparse):
        topk = generate(pipe)
    with dit_accel.apply(pipe, "prime_composer", plan=plan, steer_until=1.0):
        dense = generate(pipe)
    assert 64 in widths  # the edited calls (3 x 16 + 1 wide, padded) ran block-sparse
    assert (topk - dense).abs().max() > 1e-5


# ------------------------------------------------------------------------------------ inputs, inversion


def test_placement_and_token_masks(scene):
    background, obj, mask = scene
    placement = place_object(background, obj, mask, (32, 16, 64, 48), PPT)
    pasted = np.asarray(placement.pasted)
    assert placement.object_mask.any() and not placement.object_mask[:, :32].any()
    assert not placement.object_mask[:16].any() and not placement.object_mask[48:].any()
    assert np.array_equal(pasted[~placement.object_mask], background[~placement.object_mask])
    assert (np.abs(pasted[placement.object_mask].astype(int) - background[placement.object_mask]).sum(-1) > 30).all()
    box = token_mask(placement.box_mask, PPT).view(8, 8)
    assert box[2:6, 4:8].all() and box.sum() == 16


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"box": (40, 0, 72, 32)}, ValueError, "must lie inside the 64x64 background"),
        ({"box": (10, 10, 12, 30)}, ValueError, "smaller than one token"),
        ({"box": (1, 2, 3)}, TypeError, "four ints"),
        ({"object_mask": np.zeros((64, 64), bool)}, ValueError, "object_mask is empty"),
        ({"object_mask": np.ones((64, 64), bool)}, ValueError, "whole object image"),
        ({"object_mask": np.ones((32, 64), bool)}, ValueError, "the mask must match the object image"),
        ({"background": np.zeros((60, 64, 3), np.uint8)}, ValueError, "multiples of 8"),
    ],
)
def test_bad_inputs_are_named(scene, change, error, match):
    background, obj, mask = scene
    inputs = {"background": background, "object_image": obj, "object_mask": mask, "box": (0, 0, 32, 32)} | change
    with pytest.raises(error, match=match):
        place_object(**inputs, pixels_per_token=PPT)


def test_object_text_tokens(pipe):
    assert text_token_positions(pipe.tokenizer_2, PROMPT, "red star", 32) == (1, 2)
    with pytest.raises(ValueError, match="not among the prompt's"):
        text_token_positions(pipe.tokenizer_2, PROMPT, "blue ring", 32)


def test_ode_inversion_round_trip_reproduces_the_image(pipe, scene):
    sigmas = flux_sigmas(pipe, 8, 64)
    velocity = Velocity(pipe, PromptInputs.encode(pipe, PROMPT, TOY.text_length), (8, 8))
    clean = encode_image(pipe, scene[0])
    assert velocity(clean, 0.5).abs().mean() > 0.05 * clean.abs().mean()  # the model moves latents
    errors = [
        float((regenerate(invert(clean, sigmas, velocity, refine=refine)[0], sigmas, velocity) - clean).norm())
        / float(clean.norm())
        for refine in (0, 1, 2)
    ]
    from_noise = regenerate(invert(clean, sigmas, None, "noise")[0], sigmas, velocity)
    assert errors[1] < 0.05 and errors[2] < errors[1] < errors[0]  # fixed-point refinement: exact step inverses
    assert errors[1] < 0.2 * float((from_noise - clean).norm() / clean.norm())
    noised = invert(clean, sigmas, None, "noise")
    assert torch.equal(noised[-1], clean.float())


def test_compose_keeps_the_background_outside_the_box(pipe, scene):
    background, obj, mask = scene
    box = (32, 16, 64, 48)
    result = compose(pipe, background, obj, mask, box, PROMPT, object_text="red star", blend_until=1.0,
                     output_type="latent", **CALL)  # fmt: skip
    outside = result.plan.outside
    clean = encode_image(pipe, background)
    assert torch.allclose(result.image[outside], clean[0, outside], atol=1e-5)
    assert not torch.allclose(result.image[~outside], clean[0, ~outside], atol=1e-2)
    with pytest.raises(TypeError, match="compose sets"):
        compose(pipe, background, obj, mask, box, PROMPT, latents=None, **CALL)
