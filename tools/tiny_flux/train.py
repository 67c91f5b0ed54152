"""Train the tiny FLUX text-to-image model from scratch on procedural images, inside a time budget.

    python -m tools.tiny_flux.train --out DIR --minutes 8.5 --compile                 # one GPU
    python -m tools.tiny_flux.train --resume DIR --out DIR2 --minutes 8.5 --lr 2e-4   # continue a run
    python -m tools.tiny_flux.train --out /tmp/toy --minutes 0.4 --device cpu --tiny  # CPU smoke run

Stage 1 trains the VAE to reconstruct native-size images (L1 + a light L2 on the latents, on the
posterior mean: a deterministic autoencoder, as for the tiny Wan model). The latents' mean and std
are then measured on native images and written into the VAE config as ``shift_factor`` and
``scaling_factor``, where ``FluxPipeline`` reads them; the reconstruction PSNR is logged. Stage 2
trains the transformer and both text encoders with the rectified-flow objective on the normalised,
packed latents of freshly rendered images, with noise levels shifted as the sampler shifts them at
that size, 10% empty captions for classifier-free guidance, and an EMA of the weights. The text is
encoded as ``FluxPipeline.encode_prompt`` encodes it at the model's ``max_sequence_length`` (tested
equal), so training sees exactly the embeddings sampling does; nothing in a step waits for the GPU
but the log lines, so the host queues the next step while the device runs this one.

Captions and layouts are drawn on the host by data-loader workers (``--workers``); the images are
rendered on the training device from the workers' numbers. Time is measured from process start; the
budget is split VAE 20%, transformer the rest, less a reserve for saving and a short evaluation.
After each quarter of stage 2 the EMA weights are saved, so a run cut short still leaves a model.
The saved pipeline is bf16, in shards under 16 MB, beside ``generation_defaults.json`` (native call
arguments: size, steps, true CFG with an empty negative prompt, ``max_sequence_length``) and
``train_record.json`` (recipe, losses, throughput, VAE PSNR, caption adherence of the evaluation).
"""

from __future__ import annotations

import argparse
import copy
import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, FluxPipeline
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero, AdaLayerNormZeroSingle

from tools.tiny_common.distributed import Ranks
from tools.tiny_common.drawing import host_to_device
from tools.tiny_common.training import (
    Progress,
    Schedule,
    autocast,
    configure_device,
    flow_pair,
    learning_rate,
    load_matching,
    make_optimizer,
    optimizer_step,
    process_age_seconds,
    psnr_db,
    read_record,
    sample_sigmas,
    save_pipeline,
    storage_copy,
    update_ema,
    write_record,
)

from .build import FULL, TOY, TinyFluxSpec, assemble_pipeline, build_pipeline
from .data import SceneRows, draw_rows, make_scene, sample_caption, scene_rows
from .evaluate import evaluate

LATENT_WEIGHT = 1e-4  # light L2 on the VAE's latents, keeping their scale in check
CAPTION_DROPOUT = 0.1
TOKENIZERS = ("tokenizer", "tokenizer_2")
ONE_PROCESS = Ranks()


@dataclass(frozen=True)
class Plan:
    """Everything about a run that depends on its scale (full model on a GPU, or toy on a CPU)."""

    spec: TinyFluxSpec
    vae_batch: int
    vae_lr: float
    batch: int
    lr: float
    warmup_steps: int
    stats_batches: int
    eval_prompts: int
    workers: int  # data-loader processes drawing captions and layouts
    vae_share: float = 0.2
    reserve_seconds: float = 40.0


FULL_PLAN = Plan(
    spec=FULL,
    vae_batch=64,
    vae_lr=6e-4,
    batch=256,
    lr=5e-4,
    warmup_steps=100,
    stats_batches=8,
    eval_prompts=64,
    workers=6,
)
TOY_PLAN = Plan(
    spec=TOY,
    vae_batch=4,
    vae_lr=1e-3,
    batch=8,
    lr=1e-3,
    warmup_steps=5,
    stats_batches=2,
    eval_prompts=2,
    workers=0,
    reserve_seconds=6.0,
)


# --------------------------------------------------------------------------------------------------
# Data: captions and layouts on the host, pixels on the device.


class RandomScenes(torch.utils.data.IterableDataset):
    """Endless batches of random captions (texts) and the :class:`SceneRows` of their images; each
    data-loader worker draws from its own seed."""

    def __init__(self, batch: int, height: int, width: int, seed: int) -> None:
        super().__init__()
        self.batch, self.height, self.width, self.seed = batch, height, width, seed

    def __iter__(self) -> Iterator[tuple[list[str], SceneRows]]:
        worker = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, 0 if worker is None else worker.id + 1])
        while True:
            captions = [sample_caption(rng) for _ in range(self.batch)]
            seeds = rng.integers(0, 2**31 - 1, size=self.batch)
            scenes = [make_scene(c, int(s), self.width / self.height) for c, s in zip(captions, seeds, strict=True)]
            yield [c.text for c in captions], scene_rows(scenes, self.height, self.width)


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def image_stream(
    batch: int, spec: TinyFluxSpec, seed: int, workers: int, device: torch.device
) -> Iterator[tuple[list[str], torch.Tensor]]:
    """Endless ``(captions, images)`` batches at the native size, images ``(B, 3, H, W)`` in [-1, 1]
    rendered on ``device``."""
    loader = torch.utils.data.DataLoader(
        RandomScenes(batch, spec.height, spec.width, seed),
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_one_thread,
        prefetch_factor=4 if workers else None,
    )
    for texts, rows in loader:
        images, _ = draw_rows(rows, spec.height, spec.width, device)
        yield texts, images.permute(0, 3, 1, 2).mul(2.0).sub(1.0)


# --------------------------------------------------------------------------------------------------
# Stage 1: the VAE.


def train_vae(
    vae: AutoencoderKL, plan: Plan, until: float, stream: Iterator[Any], device: torch.device, log_every: int
) -> dict[str, Any]:
    """Train the VAE on ``stream``'s images until ``until``."""
    vae.train()
    optimizer = make_optimizer(vae.parameters(), plan.vae_lr)
    progress = Progress("vae", log_every, until, ONE_PROCESS)
    start, step, lr = time.monotonic(), 0, plan.vae_lr
    while (now := time.monotonic()) < until or step == 0:  # at least one step, however slow the machine
        _, x = next(stream)
        with autocast(device):
            latents = vae.encode(x).latent_dist.mode()
            reconstruction = vae.decode(latents).sample
        loss = (reconstruction.float() - x).abs().mean() + LATENT_WEIGHT * latents.float().pow(2).mean()
        lr = learning_rate(plan.vae_lr, step, plan.warmup_steps, (now - start) / (until - start))
        optimizer_step(optimizer, loss, lr, ONE_PROCESS)
        step += 1
        progress.log(step, loss, lr, x.shape[0])
    vae.eval().requires_grad_(False)
    return progress.summary(step, lr)


@torch.no_grad()
def measure_vae(vae: AutoencoderKL, plan: Plan, stream: Iterator[Any], device: torch.device) -> dict[str, float]:
    """Mean and std of all latent values of ``stats_batches`` batches, and the reconstruction PSNR
    (dB, per image, averaged) of the first."""
    values, psnr = [], 0.0
    for index in range(plan.stats_batches):
        _, x = next(stream)
        with autocast(device):
            z = vae.encode(x).latent_dist.mode()
            if index == 0:
                error = (vae.decode(z).sample.float().clamp(-1, 1) - x).pow(2).flatten(1).mean(dim=1)
                psnr = float(psnr_db(error).mean())
        values.append(z.float().flatten())
    stacked = torch.cat(values)
    return {"mean": float(stacked.mean()), "std": float(stacked.std()), "psnr": psnr}


# --------------------------------------------------------------------------------------------------
# Stage 2: transformer and text encoders.


@dataclass
class Denoiser:
    """The trained parts of stage 2, their EMA copies, and the frozen VAE (its config holds the
    latent shift and scale)."""

    pipe: FluxPipeline
    spec: TinyFluxSpec
    ema: list[torch.nn.Module] = field(init=False)

    def __post_init__(self) -> None:
        self.ema = [copy.deepcopy(m).requires_grad_(False) for m in self.trained]

    @property
    def trained(self) -> list[torch.nn.Module]:
        return [self.pipe.transformer, self.pipe.text_encoder, self.pipe.text_encoder_2]

    @torch.no_grad()
    def latents(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Packed ``(B, tokens, 4 * latent channels)`` normalised latents of images in [-1, 1]: the
        inverse of what ``FluxPipeline`` does before decoding."""
        config = self.pipe.vae.config
        with autocast(device):
            z = self.pipe.vae.encode(images).latent_dist.mode().float()
        z = (z - config.shift_factor) * config.scaling_factor
        return FluxPipeline._pack_latents(z, *z.shape)


@functools.cache
def position_ids(text_length: int, rows: int, columns: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """FLUX's text ids (all zero) and image ids (row, column) for a token grid, made once per size:
    built on the host and copied, they would cost a synchronisation at every step."""
    image_ids = FluxPipeline._prepare_latent_image_ids(1, rows, columns, "cpu", torch.float32).to(device)
    return torch.zeros(text_length, 3, device=device), image_ids


def encode_text(pipe: FluxPipeline, prompts: list[str], spec: TinyFluxSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 token embeddings and CLIP's pooled embedding of ``prompts``, as ``FluxPipeline.encode_prompt``
    makes them at ``max_sequence_length=spec.text_length`` (tested), with the token ids copied
    without waiting for the device. One tokenizer serves both encoders, at one length."""
    ids = pipe.tokenizer(
        prompts, padding="max_length", max_length=spec.text_length, truncation=True, return_tensors="pt"
    ).input_ids
    ids = host_to_device(ids, pipe.transformer.device)
    pooled = pipe.text_encoder(ids, output_hidden_states=False).pooler_output
    return pipe.text_encoder_2(ids, output_hidden_states=False)[0], pooled


def predict_velocity(
    pipe: FluxPipeline, noisy: torch.Tensor, sigma: torch.Tensor, prompts: list[str], spec: TinyFluxSpec
) -> torch.Tensor:
    """The transformer's velocity (fp32) for packed ``noisy`` latents of native-size images at noise
    levels ``sigma``, under ``prompts``; inputs and timestep exactly as the sampler passes them."""
    grid = spec.height // spec.spatial_factor // 2, spec.width // spec.spatial_factor // 2
    text_ids, image_ids = position_ids(spec.text_length, *grid, noisy.device)
    with autocast(noisy.device):
        text, pooled = encode_text(pipe, prompts, spec)
        velocity = pipe.transformer(
            hidden_states=noisy,
            timestep=sigma,  # FluxPipeline passes timestep / 1000 = sigma; the model scales it back
            guidance=None,
            pooled_projections=pooled,
            encoder_hidden_states=text,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
    return velocity.float()


def flow_loss(denoiser: Denoiser, x0: torch.Tensor, prompts: list[str], shift: float) -> torch.Tensor:
    """Rectified-flow loss of packed latents ``x0``: predict ``noise - x0`` from ``(1 - s) x0 + s noise``
    at logit-normal noise levels ``s`` shifted by ``shift``."""
    sigma = sample_sigmas(x0.shape[0], shift, x0.device)
    noisy, target = flow_pair(x0, torch.randn_like(x0), sigma)
    return (predict_velocity(denoiser.pipe, noisy, sigma, prompts, denoiser.spec) - target).square().mean()


def train_denoiser(
    denoiser: Denoiser,
    plan: Plan,
    schedule: Schedule,
    stream: Iterator[Any],
    rng: np.random.Generator,
    device: torch.device,
    log_every: int,
    checkpoint: Any,
) -> dict[str, Any]:
    """Stage 2 until ``schedule.train_end``, calling ``checkpoint(summary)`` at each of its checkpoints."""
    for model in denoiser.trained:
        model.train().requires_grad_(True)
    optimizer = make_optimizer([p for m in denoiser.trained for p in m.parameters()], plan.lr)
    progress = Progress("transformer", log_every, schedule.train_end, ONE_PROCESS)
    shift = plan.spec.time_shift(plan.spec.height, plan.spec.width)
    start, step, lr = time.monotonic(), 0, plan.lr
    pending = list(schedule.checkpoints)
    while (now := time.monotonic()) < schedule.train_end or step == 0:
        texts, images = next(stream)
        prompts = ["" if rng.random() < CAPTION_DROPOUT else text for text in texts]
        loss = flow_loss(denoiser, denoiser.latents(images, device), prompts, shift)
        lr = learning_rate(plan.lr, step, plan.warmup_steps, (now - start) / (schedule.train_end - start))
        optimizer_step(optimizer, loss, lr, ONE_PROCESS)
        update_ema(denoiser.ema, denoiser.trained, step)
        step += 1
        progress.log(step, loss, lr, images.shape[0])
        if pending and time.monotonic() >= pending[0]:
            pending.pop(0)
            checkpoint(progress.summary(step, lr))
    return progress.summary(step, lr)


def zero_init_modulation(transformer: torch.nn.Module) -> None:
    """adaLN-zero (DiT): every block's modulation and the output layer start at zero, so each block
    starts as the identity and the model's first prediction is zero; training from scratch converges
    faster than from Diffusers' default initialisation."""
    modulated = (AdaLayerNormZero, AdaLayerNormZeroSingle, AdaLayerNormContinuous)
    layers = [m.linear for m in transformer.modules() if isinstance(m, modulated)]
    for layer in [*layers, transformer.proj_out]:
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)


def compile_for_training(transformer: torch.nn.Module) -> None:
    """Compile the transformer's blocks (Diffusers' regional compilation: one graph per block type);
    shapes are static (one image size, one text length, one batch size). A block whose compilation
    fails runs eagerly rather than ending the run."""
    torch._dynamo.config.suppress_errors = True
    transformer.compile_repeated_blocks(dynamic=False)


# --------------------------------------------------------------------------------------------------
# Saving and the run.


def export_pipeline(denoiser: Denoiser, dtype: torch.dtype = torch.bfloat16) -> FluxPipeline:
    """The pipeline to ship: EMA transformer and text encoders, trained VAE, in ``dtype``."""
    transformer, clip, t5 = (storage_copy(m, dtype) for m in denoiser.ema)
    return assemble_pipeline(transformer, storage_copy(denoiser.pipe.vae, dtype), clip, t5, denoiser.spec)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.tiny_flux.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the pipeline to (replaced)")
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock budget of the whole run")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help=f"torch device (default {default_device})")
    parser.add_argument("--tiny", action="store_true", help="toy-sized model and data, for a CPU smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=None, help="log every N steps (default 50, toy 2)")
    parser.add_argument("--vae-share", type=float, default=None, help="fraction of the training time for the VAE")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate of stage 2 (default 5e-4)")
    parser.add_argument("--batch", type=int, default=None, help="images per stage-2 step (default 256)")
    parser.add_argument("--workers", type=int, default=None, help="data-loader processes (default 6, toy 0)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks in stage 2")
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="continue from a pipeline this script saved: the VAE and its latent statistics stay as saved (no "
        "stage 1), the transformer and text encoders train on, their EMA starting from the saved weights",
    )
    args = parser.parse_args(argv)
    checks = [
        (args.minutes > 0, f"--minutes must be > 0, got {args.minutes}"),
        (args.log_every is None or args.log_every >= 1, f"--log-every must be >= 1, got {args.log_every}"),
        (args.vae_share is None or 0.0 < args.vae_share < 1.0, f"--vae-share must be in (0, 1), got {args.vae_share}"),
        (args.lr is None or args.lr > 0, f"--lr must be > 0, got {args.lr}"),
        (args.batch is None or args.batch >= 1, f"--batch must be >= 1, got {args.batch}"),
        (args.workers is None or args.workers >= 0, f"--workers must be >= 0, got {args.workers}"),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    return args


def plan_from_args(args: argparse.Namespace) -> Plan:
    """The toy or full plan, with the options given on the command line in place of its defaults."""
    plan = TOY_PLAN if args.tiny else FULL_PLAN
    given = {name: getattr(args, name) for name in ("vae_share", "lr", "batch", "workers")}
    return replace(plan, **{k: v for k, v in given.items() if v is not None})


def autoencoder_stage(
    pipe: FluxPipeline, plan: Plan, until: float, seed: int, device: torch.device, log_every: int
) -> dict[str, Any]:
    """Stage 1: train the VAE until ``until``, then write its latents' mean and std into its config as
    ``shift_factor`` and 1 / ``scaling_factor``; the record of the stage."""
    stream = image_stream(plan.vae_batch, plan.spec, seed, plan.workers, device)
    record = train_vae(pipe.vae, plan, until, stream, device, log_every)
    measured = measure_vae(pipe.vae, plan, stream, device)
    pipe.vae.register_to_config(shift_factor=measured["mean"], scaling_factor=1.0 / measured["std"])
    print(f"VAE reconstruction of native images: {measured['psnr']:.2f} dB PSNR; latents {measured}", flush=True)
    return {
        **record,
        "reconstruction_psnr": measured["psnr"],
        "latent_mean": measured["mean"],
        "latent_std": measured["std"],
    }


def main(argv: Sequence[str] | None = None, spent: float = 0.0) -> int:
    """Train, save and evaluate; ``spent`` seconds of the budget are already used (process start-up)."""
    args = parse_args(argv)
    plan = plan_from_args(args)
    log_every = args.log_every or (2 if args.tiny else 50)
    device = configure_device(args.device)
    vae_share = 0.0 if args.resume else plan.vae_share  # a resumed run keeps the VAE and its latent space
    schedule = Schedule.from_budget(args.minutes, vae_share, plan.reserve_seconds, spent)
    record: dict[str, Any] = {
        "spec": asdict(plan.spec),
        "plan": {k: v for k, v in asdict(plan).items() if k != "spec"},
        "args": {k: str(v) for k, v in vars(args).items()},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    torch.manual_seed(args.seed)
    if args.resume is None:
        pipe = build_pipeline(plan.spec, seed=args.seed)
        zero_init_modulation(pipe.transformer)
    else:
        ignored = {"shift_factor", "scaling_factor"}  # measured after stage 1, not part of the size
        pipe = load_matching(FluxPipeline, args.resume, build_pipeline(plan.spec), ignored)
        record["resumed_from"] = read_record(args.resume)
    pipe.to(device)
    print(f"training on {record['device']} for {args.minutes} min; writing {args.out}", flush=True)
    if args.resume is None:
        record["vae"] = autoencoder_stage(pipe, plan, schedule.vae_end, args.seed, device, log_every)
    pipe.vae.eval().requires_grad_(False)

    denoiser = Denoiser(pipe, plan.spec)
    if args.compile:
        compile_for_training(pipe.transformer)
    call = plan.spec.call_defaults()

    def checkpoint(summary: dict[str, Any]) -> None:
        save_pipeline(export_pipeline(denoiser), call, args.out, {**record, "transformer": summary}, TOKENIZERS)

    stream = image_stream(plan.batch, plan.spec, args.seed + 1, plan.workers, device)
    rng = np.random.default_rng([args.seed, 2])
    record["transformer"] = train_denoiser(denoiser, plan, schedule, stream, rng, device, log_every, checkpoint)
    save_pipeline(export_pipeline(denoiser), call, args.out, record, TOKENIZERS)
    # Evaluate the saved bf16 weights on GPUs; on CPUs, where bf16 is slow, their fp32 originals.
    final = export_pipeline(denoiser, torch.bfloat16 if device.type == "cuda" else torch.float32).to(device)
    evaluation = evaluate(final, call, plan.eval_prompts, until=schedule.end - 3.0)
    record["evaluation"] = {k: v for k, v in evaluation.items() if k != "prompts"}
    print(f"evaluation: {record['evaluation']}", flush=True)
    write_record(args.out, {**record, "evaluation": evaluation})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(spent=process_age_seconds()))
