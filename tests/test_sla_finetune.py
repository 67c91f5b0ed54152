"""finetune-sla on the tiny random-weight Wan pipeline (CPU): the projections learn (the student gets
closer to the dense teacher), the weights folder loads with apply(weights=...), resume continues the
step count and equals an uninterrupted run, LoRA adapters load and leave with remove(), the cosine
schedule sets each step's rate and the moving average is what the folder holds."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import fields

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import tiny_wan_pipeline

import dit_accel
from dit_accel import finetune_sla as finetune_sla_module
from dit_accel.finetune_sla import (
    CHECKPOINT_PREFIX,
    POOL_FILE,
    TeacherPool,
    TrainingBatch,
    _batch,
    _guidance_scale,
    _velocity,
    finetune_sla,
)
from dit_accel.sla_weights import INFO_FILE, LORA_FILE, PROJECTIONS_FILE, TRANSFORMER_FILE

CALL = {"height": 96, "width": 128, "num_frames": 9, "num_inference_steps": 2, "guidance_scale": 5.0}
# 144 video tokens in 16-token blocks: 9 key blocks, 2 critical, 1 negligible, 6 marginal.
OPTIONS = {"k_high": 0.2, "k_low": 0.2, "block_size": 16}


def prompt_embeddings():
    """Two prompts' embeddings and their negatives, (2, 7, 8) each."""
    return torch.randn(2, 2, 7, 8, generator=torch.Generator().manual_seed(5))


def finetune(out, steps, **kwargs):
    embeds, negative = prompt_embeddings()
    kwargs = {"lr": 1e-2, "save_every": 2, "pool_size": 2, "call": CALL, **kwargs}
    return finetune_sla(tiny_wan_pipeline(), out, sla_options=OPTIONS, steps=steps, prompt_embeds=embeds,
                        negative_prompt_embeds=negative, progress=False, **kwargs)  # fmt: skip


def velocity(pipe, batch, sla=True, weights=None):
    """The guided velocity the sampler would step with on ``batch``: with ``sla`` (and its ``weights``) or dense."""
    with torch.no_grad():
        if not sla:
            return _velocity(pipe.transformer, batch, CALL["guidance_scale"])
        with dit_accel.apply(pipe, "sla", **OPTIONS, weights=weights):
            return _velocity(pipe.transformer, batch, CALL["guidance_scale"])


def training_inputs(out, steps):
    """The samples the first ``steps`` training steps drew (the random-weight model gives nothing to
    generalise from: the test is that fitting them works)."""
    pool = TeacherPool(**torch.load(out / POOL_FILE, weights_only=True))
    parts = [_batch(pool, step, 0, 1, torch.device("cpu"), torch.float32) for step in range(steps)]
    return TrainingBatch(*(torch.cat([getattr(part, field.name) for part in parts]) for field in fields(TrainingBatch)))


def test_projections_learn_load_and_resume_exactly(tmp_path):
    first = finetune(tmp_path / "resumed", steps=3)
    assert first.step == 3 and len(first.losses) == 3
    with pytest.raises(ValueError, match="holds checkpoints"):
        finetune(tmp_path / "resumed", steps=6)
    resumed = finetune(tmp_path / "resumed", steps=6, resume=True)
    assert resumed.step == 6 and len(resumed.losses) == 3
    log = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 7))
    finetune(tmp_path / "straight", steps=6)
    a, b = load_file(tmp_path / "resumed" / PROJECTIONS_FILE), load_file(tmp_path / "straight" / PROJECTIONS_FILE)
    assert a.keys() == b.keys() and len(a) == 2
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
        assert a[key].abs().max() > 1e-3  # trained away from zero

    pipe, inputs = tiny_wan_pipeline(), training_inputs(tmp_path / "straight", 6)
    dense = velocity(pipe, inputs, sla=False)
    untrained = velocity(pipe, inputs)
    trained = velocity(pipe, inputs, weights=tmp_path / "straight")
    error_before = float((untrained - dense).pow(2).mean())
    error_after = float((trained - dense).pow(2).mean())
    assert error_after < 0.98 * error_before, (error_before, error_after)  # deterministic: 0.936 measured
    torch.testing.assert_close(velocity(tiny_wan_pipeline(), inputs, weights=tmp_path / "straight"), trained,
                               rtol=0, atol=0)  # fmt: skip
    assert torch.equal(velocity(pipe, inputs, sla=False), dense)  # remove() left the pipeline as it was


def test_lora_adapters_save_load_and_leave_with_remove(tmp_path):
    result = finetune(tmp_path / "lora", steps=2, train="lora", lora_rank=4, lr=5e-2)
    assert (result.out_dir / LORA_FILE).is_file()
    pipe = tiny_wan_pipeline()
    inputs = training_inputs(result.out_dir, 2)
    dense = velocity(pipe, inputs, sla=False)
    with dit_accel.apply(pipe, "sla", **OPTIONS, weights=result.out_dir):
        assert any("lora_A" in name for name, _ in pipe.transformer.named_parameters())
        with torch.no_grad():
            with_lora = _velocity(pipe.transformer, inputs, CALL["guidance_scale"])
    assert not any("lora" in name for name, _ in pipe.transformer.named_parameters())
    assert torch.equal(velocity(pipe, inputs, sla=False), dense)
    assert torch.equal(velocity(tiny_wan_pipeline(), inputs, weights=result.out_dir), with_lora)
    projections_only = tmp_path / "projections_only"
    projections_only.mkdir()
    shutil.copy(result.out_dir / PROJECTIONS_FILE, projections_only)
    assert (velocity(pipe, inputs, weights=projections_only) - with_lora).abs().max() > 1e-6  # the adapters count


def test_all_weights_load_with_apply_and_the_pipeline_keeps_its_own(tmp_path):
    pipe = tiny_wan_pipeline()
    before = {key: value.clone() for key, value in pipe.transformer.state_dict().items()}
    gen = torch.Generator().manual_seed(5)
    embeds, negative = torch.randn(2, 1, 7, 8, generator=gen)
    finetune_sla(pipe, tmp_path, sla_options=OPTIONS, train="all", steps=1, lr=1e-3, pool_size=1, prompt_embeds=embeds,
                 negative_prompt_embeds=negative, call=CALL, progress=False)  # fmt: skip
    after = pipe.transformer.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert (tmp_path / TRANSFORMER_FILE).is_file()
    inputs = training_inputs(tmp_path, 1)
    dense = velocity(pipe, inputs, sla=False)
    trained = velocity(pipe, inputs, weights=tmp_path)
    projections_only = tmp_path / "projections_only"
    projections_only.mkdir()
    shutil.copy(tmp_path / PROJECTIONS_FILE, projections_only)
    assert (velocity(pipe, inputs, weights=projections_only) - trained).abs().max() > 1e-6
    assert torch.equal(velocity(pipe, inputs, sla=False), dense)  # remove() put the weights back


def test_weights_errors_name_the_problem(tmp_path):
    pipe = tiny_wan_pipeline()
    with pytest.raises(FileNotFoundError, match=PROJECTIONS_FILE):
        dit_accel.apply(pipe, "sla", **OPTIONS, weights=tmp_path)
    with pytest.raises(ValueError, match="train must be one of projections, lora, all"):
        finetune_sla(pipe, tmp_path, train="everything")


def test_the_pool_keeps_the_latents_of_every_sampling_step(tmp_path):
    finetune(tmp_path / "noised", steps=1)
    assert TeacherPool(**torch.load(tmp_path / "noised" / POOL_FILE, weights_only=True)).states is None  # not needed
    finetune(tmp_path, steps=1, states="trajectory", pool_size=3)
    pool = TeacherPool(**torch.load(tmp_path / POOL_FILE, weights_only=True))
    steps = CALL["num_inference_steps"]
    assert pool.states.shape == (3, steps, *pool.latents.shape[1:]) and pool.states.dtype == torch.bfloat16
    embeds, negative = prompt_embeddings()
    after_step = []  # the generation of pool item 1 again, its latents after each step taken by a callback

    def keep(pipe, index, timestep, tensors):
        after_step.append(tensors["latents"].clone())
        return {}

    tiny_wan_pipeline()(prompt_embeds=embeds[1:2], negative_prompt_embeds=negative[1:2], output_type="latent",
                        generator=torch.Generator().manual_seed(1), callback_on_step_end=keep, **CALL)  # fmt: skip
    assert len(after_step) == steps
    for step in range(1, steps):  # state j is what step j - 1 left
        torch.testing.assert_close(pool.states[1, step], after_step[step - 1][0].bfloat16(), rtol=0, atol=0)
    torch.testing.assert_close(pool.latents[1], after_step[-1][0], rtol=1e-6, atol=1e-6)
    assert (pool.states[1, 0].float() - pool.states[1, 1].float()).abs().max() > 1e-2


def test_training_steps_use_the_guided_velocity(tmp_path, monkeypatch):
    scales = []

    def spy(model, batch, guidance_scale):
        scales.append(guidance_scale)
        return _velocity(model, batch, guidance_scale)

    monkeypatch.setattr(finetune_sla_module, "_velocity", spy)
    finetune(tmp_path, steps=2)
    assert scales == [CALL["guidance_scale"]] * 4  # teacher and student, each step
    scales.clear()
    finetune(tmp_path / "unguided", steps=1, call={**CALL, "guidance_scale": 1.0})
    assert scales == [1.0, 1.0]


def test_the_loss_is_on_the_velocity_the_sampler_steps_with():
    pipe = tiny_wan_pipeline()
    gen = torch.Generator().manual_seed(11)
    batch = TrainingBatch(torch.randn(2, 4, 3, 12, 16, generator=gen), torch.tensor([900.0, 300.0]),
                          *torch.randn(2, 2, 7, 8, generator=gen))  # fmt: skip
    model = pipe.transformer
    with torch.no_grad():
        guided = _velocity(model, batch, 5.0)
        conditional_only = _velocity(model, batch, 1.0)
        c, u = (model(hidden_states=batch.latents, timestep=batch.timesteps, encoder_hidden_states=embeds,
                      return_dict=False)[0] for embeds in (batch.conditional, batch.unconditional))  # fmt: skip
    torch.testing.assert_close(guided, u + 5.0 * (c - u))
    torch.testing.assert_close(conditional_only, c)
    assert _guidance_scale(pipe, {}) == 5.0  # WanPipeline's default
    assert _guidance_scale(pipe, {"guidance_scale": 1.5}) == 1.5


def test_noised_states_and_a_pool_without_paths(tmp_path):
    finetune(tmp_path, steps=1, states="trajectory", pool_size=3)
    pool = torch.load(tmp_path / POOL_FILE, weights_only=True)
    paths = TeacherPool(**pool)
    pool.pop("states")
    torch.save(pool, tmp_path / POOL_FILE)  # as an older version wrote it
    with pytest.raises(ValueError, match="no sampling-path states"):
        finetune(tmp_path, steps=2, resume=True, states="trajectory")
    with pytest.raises(ValueError, match="resume with the same states, or"):
        finetune(tmp_path, steps=2, resume=True)  # the checkpoint was trained on paths
    with pytest.raises(ValueError, match="resume with the same guidance_scale, or"):
        finetune(tmp_path / "bad", steps=1, resume=False)  # (a fresh folder trains; then a guidance change is refused)
        finetune(tmp_path / "bad", steps=2, resume=True, call={**CALL, "guidance_scale": 2.0})
    noised = TeacherPool(**torch.load(tmp_path / POOL_FILE, weights_only=True))
    for step in range(3):
        batch = _batch(noised, step, 0, 2, torch.device("cpu"), torch.float32)
        on_path = _batch(paths, step, 0, 2, torch.device("cpu"), torch.float32, states="trajectory")
        gen = torch.Generator().manual_seed(step)  # _batch's draws at seed 0
        pick = torch.randint(0, 3, (2,), generator=gen)
        when = torch.randint(0, CALL["num_inference_steps"], (2,), generator=gen)
        torch.testing.assert_close(on_path.latents, paths.states[pick, when].float(), rtol=0, atol=0)
        torch.testing.assert_close(batch.timesteps, on_path.timesteps)  # the same draw of samples and steps ...
        assert (batch.latents - on_path.latents).abs().max() > 0.1  # ... but fresh noise instead of the path
    with pytest.raises(ValueError, match="states must be one of noised, trajectory"):
        finetune(tmp_path / "wrong", steps=1, states="replayed")
    trajectory = finetune(tmp_path / "paths", steps=2, states="trajectory")
    assert json.loads((trajectory.out_dir / INFO_FILE).read_text())["states"] == "trajectory"


def logged(out, field):
    return [json.loads(line)[field] for line in (out / "log.jsonl").read_text().splitlines()]


def test_the_cosine_schedule_sets_each_steps_rate_and_resume_keeps_it(tmp_path):
    def cosine(steps):
        return [1e-2 * 0.5 * (1 + math.cos(math.pi * step / steps)) for step in range(steps)]

    straight, cut = tmp_path / "straight", tmp_path / "cut"
    finetune(straight, steps=5, lr_schedule="cosine", save_every=2)
    assert logged(straight, "lr") == pytest.approx(cosine(5), rel=1e-12)
    shutil.copytree(straight, cut)
    shutil.rmtree(cut / f"{CHECKPOINT_PREFIX}0000005")  # as if stopped after step 4
    finetune(cut, steps=5, lr_schedule="cosine", save_every=2, resume=True)
    assert logged(cut, "lr")[5:] == pytest.approx(cosine(5)[4:], rel=1e-12)  # step 5 of the same decay
    for key, value in load_file(cut / PROJECTIONS_FILE).items():
        torch.testing.assert_close(value, load_file(straight / PROJECTIONS_FILE)[key], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="resume with the same cosine_steps, or"):
        finetune(cut, steps=8, lr_schedule="cosine", resume=True)  # a longer decay would raise the rate again
    finetune(tmp_path / "constant", steps=3)
    assert logged(tmp_path / "constant", "lr") == [1e-2] * 3
    state_file = next((tmp_path / "constant").glob(CHECKPOINT_PREFIX + "*3/state.json"))
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({k: v for k, v in state.items() if k not in ("lr_schedule", "ema_decay")}))
    assert finetune(tmp_path / "constant", steps=4, resume=True).step == 4  # written before the fields existed
    with pytest.raises(ValueError, match="resume with the same lr_schedule, cosine_steps, or"):
        finetune(tmp_path / "constant", steps=4, resume=True, lr_schedule="cosine")
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine"):
        finetune(tmp_path / "wrong", steps=1, lr_schedule="linear")


def test_the_folder_holds_the_moving_average_and_resume_continues_it(tmp_path):
    decay = 0.1  # below the warm-up's 2/11 at the second step: that step averages with 0.1
    straight = tmp_path / "straight"
    finetune(straight, steps=2, save_every=1, ema_decay=decay)
    checkpoints = sorted(straight.glob(CHECKPOINT_PREFIX + "*"))
    first, second = (load_file(folder / "trainable.safetensors") for folder in checkpoints)
    average = load_file(straight / PROJECTIONS_FILE)
    projections = {f"transformer.{name}": name for name in first}  # only the projections train here
    assert projections.keys() == average.keys() and len(average) == 2
    for key, name in projections.items():
        expected = decay * first[name] + (1 - decay) * second[name]  # the first step's weights, then one update
        torch.testing.assert_close(average[key], expected, rtol=0, atol=1e-6)
        assert (average[key] - second[name]).abs().max() > 1e-4  # not the last step's weights
    info = json.loads((straight / INFO_FILE).read_text())
    assert info["ema_decay"] == decay and info["ema_last_decay"] == decay

    resumed = tmp_path / "resumed"
    finetune(resumed, steps=1, ema_decay=decay)
    finetune(resumed, steps=2, ema_decay=decay, resume=True)
    for key, value in load_file(resumed / PROJECTIONS_FILE).items():
        torch.testing.assert_close(value, average[key], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="resume with the same ema_decay, or"):
        finetune(resumed, steps=3, resume=True)
    with pytest.raises(ValueError, match=r"ema_decay must be in \(0, 1\)"):
        finetune(tmp_path / "wrong", steps=1, ema_decay=1.0)
