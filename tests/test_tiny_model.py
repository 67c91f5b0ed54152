"""The tiny Wan model: its size budget, the training script end to end (toy scale), and the trained
weights in ``assets/tiny-wan-t2v``: do its videos show their prompts?"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from safetensors import safe_open
from tiny_oracle import oracle_pipeline
from transformers import UMT5EncoderModel

from dit_accel.tiny_model import GENERATION_DEFAULTS_FILE, TINY_MODEL_DIR
from tools.tiny_wan.build import FULL, TOY, TinyWanSpec, build_pipeline
from tools.tiny_wan.data import check_video, parse_caption, render_batch
from tools.tiny_wan.text import encode_prompts
from tools.tiny_wan.train import (
    FULL_PLAN,
    TIMESTEP_SCALE,
    TOY_PLAN,
    Denoiser,
    compile_for_training,
    flow_loss,
    flow_pair,
    frame_weighted_mse,
    load_for_resume,
    parse_args,
    plan_from_args,
    velocity_loss,
)
from tools.tiny_wan.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]  # the checkout's root, where tools/ is importable
MiB = 2**20
# The shipped model must stay small: its parts in bf16, each file under the 16 MB hub-free limit.
MAX_TOTAL_BYTES, MAX_FILE_BYTES = 40 * MiB, 16 * MiB
# "Most samples": at CPU-test size and step count, at least these fractions must show the prompt.
MIN_COLOUR_ACCURACY, MIN_MOTION_ACCURACY = 0.75, 0.6
PROMPTS = [
    "a red circle moving right on a plain gray background",
    "a blue square moving left on a striped white background",
    "a yellow star moving up on a checkered purple background",
    "a green triangle moving down on a dotted black background",
    "a cyan ring moving left on a plain red background",
    "an orange diamond moving right on a striped blue background",
    "a pink circle growing on a plain green background",
    "a purple square shrinking on a checkered gray background",
]


def assert_shippable(directory: Path) -> None:
    """Sizes within budget; weights bf16/fp16 except those the model classes keep in fp32 (time embedding, norms)."""
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_TOTAL_BYTES
    assert all(p.stat().st_size < MAX_FILE_BYTES for p in files)
    keep_fp32 = {*WanTransformer3DModel._keep_in_fp32_modules, *UMT5EncoderModel._keep_in_fp32_modules}
    for path in sorted(directory.rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                dtype = f.get_slice(name).get_dtype()
                assert dtype in ("BF16", "F16") or keep_fp32.intersection(name.split(".")), (path, name, dtype)


def test_full_size_meets_the_budget() -> None:
    """Native size gives enough tokens for block sparsity; the weights fit in 40 MB as bf16."""
    assert FULL.video_tokens(FULL.num_frames, FULL.height, FULL.width) >= 4096
    pipe = build_pipeline(FULL)
    params = sum(p.numel() for m in pipe.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters())
    assert 2 * params <= MAX_TOTAL_BYTES
    assert pipe.transformer.config.attention_head_dim in (64, 128)


@pytest.mark.parametrize("spec", [FULL, TOY], ids=["full", "toy"])
def test_token_count_matches_the_models(spec: TinyWanSpec) -> None:
    """The spec's compression factors are the VAE's and the pipeline's: count tokens after a real encode."""
    pipe = build_pipeline(spec)
    num_frames, height, width = 5, 2 * spec.spatial_factor, 4 * spec.spatial_factor
    factors = (pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal)
    assert factors == (spec.spatial_factor, spec.temporal_factor)
    with torch.no_grad():
        z = pipe.vae.encode(torch.zeros(1, 3, num_frames, height, width)).latent_dist.mode()
    patches = [n // p for n, p in zip(z.shape[2:], pipe.transformer.config.patch_size, strict=True)]
    assert patches[0] * patches[1] * patches[2] == spec.video_tokens(num_frames, height, width) > 0


def test_spec_rejects_mismatched_vae_stages() -> None:
    with pytest.raises(ValueError, match="one entry per down-sampling stage"):
        TinyWanSpec(**{**TOY.__dict__, "vae_temporal_downsample": (True, True)})


def test_training_embeddings_match_the_pipeline() -> None:
    pipe = build_pipeline(TOY)
    prompts = [PROMPTS[0], ""]
    expected, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=300)
    torch.testing.assert_close(encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts, pad_to=300), expected)


def test_training_loss_is_zero_for_the_exact_velocity() -> None:
    """The training loss gives the transformer the noisy latents and the timestep of its target's noise
    level: a transformer that returns ``noise - x0`` from them scores zero, and an error on the first
    of two latent frames costs its weighted share (1/2 plainly, 3/4 with that frame weighted 3)."""
    torch.manual_seed(0)
    x0 = torch.randn(2, TOY.z_dim, 2, 8, 8)
    noise, sigma, cpu = torch.randn_like(x0), torch.tensor([0.3, 0.8]), torch.device("cpu")
    assert float(velocity_loss(oracle_pipeline(x0, 0.0), x0, noise, sigma, PROMPTS[:2], 30, cpu)) < 1e-8
    off = oracle_pipeline(x0, 1.0)
    assert float(velocity_loss(off, x0, noise, sigma, PROMPTS[:2], 30, cpu)) == pytest.approx(0.5, rel=1e-4)
    assert float(velocity_loss(off, x0, noise, sigma, PROMPTS[:2], 30, cpu, 3.0)) == pytest.approx(0.75, rel=1e-4)
    # flow_loss draws its own noise and levels, and takes the weight from the plan
    denoiser = Denoiser(off, torch.zeros(TOY.z_dim), torch.ones(TOY.z_dim))
    plan = replace(TOY_PLAN, first_frame_weight=3.0)
    assert float(flow_loss(denoiser, plan, x0, PROMPTS[:2], 30, cpu)) == pytest.approx(0.75, rel=1e-3)


def test_first_frame_weight_scales_only_the_first_latent_frame() -> None:
    torch.manual_seed(1)
    prediction, target = torch.randn(2, 3, 5, 4, 6), torch.randn(2, 3, 5, 4, 6)
    plain = torch.nn.functional.mse_loss(prediction, target)
    torch.testing.assert_close(frame_weighted_mse(prediction, target, 1.0), plain)
    per_frame = (prediction - target).square().mean(dim=(0, 1, 3, 4))
    expected = (4.0 * per_frame[0] + per_frame[1:].sum()) / (4.0 + 4)
    torch.testing.assert_close(frame_weighted_mse(prediction, target, 4.0), expected)
    # an error in frame 0 alone counts W times as much as the same error in frame 1
    first, second = target.clone(), target.clone()
    first[:, :, 0] += 1.0
    second[:, :, 1] += 1.0
    ratio = frame_weighted_mse(first, target, 3.0) / frame_weighted_mse(second, target, 3.0)
    assert float(ratio) == pytest.approx(3.0)


def test_training_options_replace_the_plans_defaults(tmp_path: Path) -> None:
    given = ["--vae-share", "0.2", "--echo", "3", "--lr", "2e-4", "--first-frame-weight", "4"]
    plan = plan_from_args(parse_args(["--out", str(tmp_path), "--minutes", "1", "--tiny", *given]))
    assert plan == replace(TOY_PLAN, vae_share=0.2, echo=3, lr=2e-4, first_frame_weight=4.0)
    assert plan_from_args(parse_args(["--out", str(tmp_path), "--minutes", "1"])) == FULL_PLAN


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--minutes", "0"], "--minutes must be > 0"),
        (["--minutes", "1", "--vae-share", "1"], "--vae-share must be in"),
        (["--minutes", "1", "--echo", "0"], "--echo must be >= 1"),
        (["--minutes", "1", "--first-frame-weight", "0"], "--first-frame-weight must be > 0"),
        (["--minutes", "1", "--lr", "0"], "--lr must be > 0"),
        (["--minutes", "1", "--log-every", "0"], "--log-every must be >= 1"),
    ],
)
def test_training_script_rejects_bad_options(
    option: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path), *option])
    assert message in capsys.readouterr().err


def test_training_objective_matches_the_sampler() -> None:
    """A transformer that predicts the training target for one known video exactly must make the
    pipeline (scheduler, timesteps, latent normalisation, VAE) produce that video's reconstruction."""
    pipe = build_pipeline(TOY)
    pipe.set_progress_bar_config(disable=True)
    videos = render_batch([parse_caption(PROMPTS[0])], [0], 9, 64, 64, torch.device("cpu"))
    with torch.no_grad():
        z = pipe.vae.encode(videos).latent_dist.mode()
        expected = (pipe.vae.decode(z).sample[0].permute(1, 2, 3, 0) + 1) / 2
    mean, std = z.mean(dim=(0, 2, 3, 4)), z.std(dim=(0, 2, 3, 4))
    pipe.vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    x0 = Denoiser(pipe, mean, std).latents(videos, torch.device("cpu"))

    def oracle(hidden_states: torch.Tensor, timestep: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor]:
        sigma = timestep.float() / TIMESTEP_SCALE
        s = sigma.view(-1, 1, 1, 1, 1)
        noise = (hidden_states - (1 - s) * x0) / s  # the noise that puts hidden_states on x0's path
        return (flow_pair(x0, noise, sigma)[1],)

    pipe.transformer.forward = oracle
    call = {"prompt": PROMPTS[0], "num_frames": 9, "height": 64, "width": 64, "num_inference_steps": 6}
    latents = pipe(**call, guidance_scale=1.0, output_type="latent").frames
    torch.testing.assert_close(latents, x0, atol=2e-2, rtol=0)
    frames = pipe(**call, guidance_scale=1.0, output_type="pt").frames[0]
    torch.testing.assert_close(frames.permute(0, 2, 3, 1), expected.clamp(0, 1), atol=2e-2, rtol=0)


def train_toy(out: Path, *extra: str) -> None:
    started = time.monotonic()
    args = ["--out", str(out), "--minutes", "0.3", "--device", "cpu", "--tiny", "--log-every", "2", *extra]
    assert train_main(args) == 0
    assert time.monotonic() - started < 0.3 * 60 + 15  # the budget holds, give or take one step on a busy CPU


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "toy"
    train_toy(out)
    return out


def test_toy_training_writes_a_loadable_pipeline(toy_model: Path) -> None:
    assert_shippable(toy_model)
    record = json.loads((toy_model / "train_record.json").read_text())
    for stage in ("vae", "transformer"):
        assert record[stage]["steps"] > 0 and 0 < record[stage]["final_loss"] < 10
    assert len(record["vae"]["reconstruction_psnr_by_frame"]) == TOY.num_frames
    assert json.loads((toy_model / GENERATION_DEFAULTS_FILE).read_text()) == TOY.call_defaults()

    pipe = WanPipeline.from_pretrained(toy_model, dtype=torch.float32)
    std = pipe.vae.config.latents_std
    assert len(std) == TOY.z_dim and std != [1.0] * TOY.z_dim
    frames = pipe(PROMPTS[0], num_inference_steps=2, height=32, width=32, num_frames=5, output_type="np").frames
    assert frames.shape == (1, 5, 32, 32, 3)


def load_tensors(directory: Path, component: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted((directory / component).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})  # noqa: SIM118
    return tensors


def test_resumed_training_keeps_the_latent_space(toy_model: Path, tmp_path: Path) -> None:
    """Resuming trains the decoder and the transformer on; the encoder and latent statistics, which
    define what the transformer learned to generate, stay exactly as saved."""
    out = tmp_path / "resumed"
    train_toy(out, "--resume", str(toy_model), "--seed", "1")
    before, after = load_tensors(toy_model, "vae"), load_tensors(out, "vae")
    assert before.keys() == after.keys()
    frozen = {name for name in before if name.startswith(("encoder.", "quant_conv."))}
    assert frozen and all(torch.equal(before[name], after[name]) for name in frozen)
    # Few toy steps move some decoder weights by less than a bf16 step, so not every one changes.
    assert any(not torch.equal(before[name], after[name]) for name in before.keys() - frozen)
    old, new = (json.loads((d / "vae" / "config.json").read_text()) for d in (toy_model, out))
    assert (old["latents_mean"], old["latents_std"]) == (new["latents_mean"], new["latents_std"])
    transformer_before, transformer_after = load_tensors(toy_model, "transformer"), load_tensors(out, "transformer")
    assert any(not torch.equal(transformer_before[k], transformer_after[k]) for k in transformer_before)
    record = json.loads((out / "train_record.json").read_text())
    assert record["resumed_from"]["transformer"]["steps"] > 0


def test_resume_refuses_a_model_of_another_size(toy_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differs from this script's model"):
        train_main(["--out", str(tmp_path / "x"), "--minutes", "1", "--device", "cpu", "--resume", str(toy_model)])
    with pytest.raises(ValueError, match=r"no model_index\.json"):
        train_main(["--out", str(tmp_path / "x"), "--minutes", "1", "--device", "cpu", "--resume", str(tmp_path)])


# Every saved tiny pipeline in assets/: the shipped model, and any intermediate weights kept there to resume from.
SAVED_MODELS = sorted(p for p in TINY_MODEL_DIR.parent.glob(f"{TINY_MODEL_DIR.name}*") if p.is_dir())


@pytest.mark.parametrize("directory", SAVED_MODELS, ids=[d.name for d in SAVED_MODELS])
def test_saved_weights_are_shippable_and_resumable(directory: Path) -> None:
    """Within the size budget, of the full model's sizes, with the record of the run that made them."""
    assert_shippable(directory)
    pipe = load_for_resume(directory, FULL)
    assert pipe.vae.config.latents_mean is not None and len(pipe.vae.config.latents_std) == FULL.z_dim
    record = json.loads((directory / "train_record.json").read_text())
    assert record["spec"] == json.loads(json.dumps(FULL.__dict__))
    assert json.loads((directory / GENERATION_DEFAULTS_FILE).read_text()) == FULL.call_defaults()


def test_trained_model_shows_its_prompts() -> None:
    assert_shippable(TINY_MODEL_DIR)
    pipe = WanPipeline.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    call = FULL.quick_call()
    videos = pipe(PROMPTS, **call, generator=generator, output_type="np").frames
    checks = [check_video(p, v) for p, v in zip(PROMPTS, videos, strict=True)]
    colour = sum(c["colour"] for c in checks) / len(checks)
    motion = sum(c["motion"] for c in checks) / len(checks)
    print(f"tiny model at {call}: colour {colour:.2f}, motion {motion:.2f}")
    assert colour >= MIN_COLOUR_ACCURACY, checks
    assert motion >= MIN_MOTION_ACCURACY, checks


def test_compiled_training_step_matches_eager() -> None:
    """``--compile``: the blocks really compile (no silent eager fallback) and give eager's loss and gradients."""
    torch.manual_seed(0)
    eager_model = build_pipeline(TOY).transformer
    compiled_model = copy.deepcopy(eager_model)
    compile_for_training(compiled_model)
    latents = torch.randn(2, TOY.z_dim, 3, 8, 8)
    timestep = torch.tensor([300.0, 800.0])
    text = torch.randn(2, 7, TOY.text_dim)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    losses = []
    for model in (eager_model, compiled_model):
        loss = model(latents, timestep, text, return_dict=False)[0].square().mean()
        loss.backward()
        losses.append(loss.detach())
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    for (name, p_eager), p_compiled in zip(eager_model.named_parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_compiled_training_serves_new_shapes_without_recompiling() -> None:
    """Training pads prompts to a new length at every step and alternates two video sizes: after the
    first few, no shape may cost another compilation (static graphs would hit the recompile limit)."""
    torch.manual_seed(1)
    model = build_pipeline(TOY).transformer
    compile_for_training(model)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    sizes = [(2, 3, 8, 8), (1, 5, 8, 12)]  # (batch, latent frames, height, width)
    graphs = []
    for step, text_length in enumerate([24, 31, 40, 57, 64, 77, 90, 101, 128, 150]):
        batch, frames, height, width = sizes[step % 2]
        latents = torch.randn(batch, TOY.z_dim, frames, height, width)
        text = torch.randn(batch, text_length, TOY.text_dim)
        model(latents, torch.full((batch,), 500.0), text, return_dict=False)[0].square().mean().backward()
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[0] >= 1  # it compiles at all
    assert graphs[-1] == graphs[3] <= 4, graphs


def test_data_parallel_training_keeps_the_ranks_identical(tmp_path: Path) -> None:
    """Two processes under torchrun (gloo on CPUs): each trains on its own videos, gradients are
    averaged, and both end with the same weights; rank 0 alone saves."""
    out = tmp_path / "ddp"
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    # The budget counts from process start: on a busy 2-core machine two ranks' imports alone took ~35 s.
    command += ["-m", "tools.tiny_wan.train", "--out", str(out), "--minutes", "1.0", "--device", "cpu", "--tiny"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "train_record.json").read_text())
    assert record["processes"] == 2 and record["ranks_in_sync"] is True
    assert record["transformer"]["steps"] > 0
    assert WanPipeline.from_pretrained(out, dtype=torch.float32).transformer is not None
