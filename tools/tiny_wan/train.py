"""Train the tiny Wan text-to-video model from scratch on procedural videos, inside a time budget.

    python -m tools.tiny_wan.train --out assets/tiny-wan-t2v --minutes 19 --compile        # one GPU
    torchrun --standalone --nproc_per_node=4 -m tools.tiny_wan.train --out DIR --minutes 19   # four GPUs
    python -m tools.tiny_wan.train --resume DIR --out DIR2 --minutes 20 --vae-share 0.1      # continue a run
    python -m tools.tiny_wan.train --out /tmp/toy --minutes 0.5 --device cpu --tiny          # CPU smoke run

Stage 1 trains the VAE to reconstruct clips of the native length (L1 + a light L2 on the latents);
when resuming, only its decoder. Its per-channel latent mean and std are then measured on
native-size videos and written into the VAE config, where ``WanPipeline`` reads them; its
reconstruction PSNR on those videos is logged, per frame too. Stage 2 trains the transformer and
the text encoder with the rectified-flow objective on normalised VAE latents of freshly rendered
videos at two sizes (native, and the smaller one CPUs sample at), with 10% empty captions for
classifier-free guidance and an EMA of the weights (``--first-frame-weight`` weights the first latent
frame's share of the loss); each encoded video is trained on about twice,
with fresh noise (data echoing, see ``echo``). Videos are rendered on the training device, so
no data workers are needed; under ``torchrun`` each process renders its own (see ``distributed``).

Time is measured from process start (imports included); the budget is split VAE 30%, transformer
the rest, less a reserve for saving and a short evaluation. After each quarter of stage 2 the EMA
weights are saved, so a run cut short still leaves a model. The saved pipeline is bf16 (the modules the
model classes keep in fp32 stay fp32), in shards under 16 MB, beside ``generation_defaults.json``
(native call arguments) and ``train_record.json`` (recipe, losses, throughput, VAE PSNR, and the
colour/motion accuracy of the evaluation at both sizes).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKLWan, WanPipeline

from tools.tiny_common.distributed import (
    Ranks,
    SharedClock,
    broadcast_,
    broadcast_state,
    close,
    in_sync,
    init_ranks,
)
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

from .build import FULL, TOY, TinyWanSpec, assemble_pipeline, build_pipeline
from .data import check_video, render_batch, sample_caption
from .echo import EchoPool
from .text import CAPTION_TOKENS, PIPELINE_TEXT_LENGTH, encode_prompts

# The VAE is trained as a deterministic autoencoder (the posterior mean, which is what the pipeline
# decodes and image-to-video encodes): sampling its untrained variance buries the signal in noise and
# slows the first minutes badly. A light L2 keeps the latents' scale in check.
LATENT_WEIGHT = 1e-4
CAPTION_DROPOUT = 0.1
TIMESTEP_SCALE = 1000.0  # the schedulers' num_train_timesteps: timestep = 1000 * sigma


@dataclass(frozen=True)
class Bucket:
    """One training video size, its batch size and how often it is drawn."""

    num_frames: int
    height: int
    width: int
    batch: int
    weight: float


@dataclass(frozen=True)
class Plan:
    """Everything about a run that depends on its scale (full model on a GPU, or toy on a CPU)."""

    spec: TinyWanSpec
    vae_frames: int
    vae_crop: int
    vae_render_sizes: tuple[int, ...]
    vae_batch: int
    vae_lr: float
    buckets: tuple[Bucket, ...]
    lr: float
    warmup_steps: int
    stats_batches: int
    eval_prompts: int
    vae_share: float = 0.3
    reserve_seconds: float = 35.0
    echo: int = 1  # stage 2 trains on each encoded sample this many times on average (``echo``)
    first_frame_weight: float = 1.0  # weight of the first latent frame in the flow loss (see ``frame_weighted_mse``)


FULL_PLAN = Plan(
    spec=FULL,
    # Clips as long as the native videos: the causal VAE must see every latent position it will code
    # (trained on 9-frame clips, run 2's VAE fell from 34 dB to 17 dB after the 9th frame).
    vae_frames=33,
    vae_crop=48,
    vae_render_sizes=(96, 128, 192),
    vae_batch=32,
    vae_lr=6e-4,
    # Equal tokens per step (about 83k): native clips, and the quick size that CPUs sample at.
    buckets=(Bucket(33, 192, 192, 16, 0.5), Bucket(17, 128, 128, 64, 0.5)),
    lr=4e-4,
    warmup_steps=100,
    stats_batches=8,
    eval_prompts=32,
    echo=2,
)
TOY_PLAN = Plan(
    spec=TOY,
    vae_frames=9,
    vae_crop=32,
    vae_render_sizes=(32, 48, 64),
    vae_batch=2,
    vae_lr=1e-3,
    buckets=(Bucket(9, 64, 64, 2, 0.5), Bucket(5, 32, 32, 4, 0.5)),
    lr=1e-3,
    warmup_steps=5,
    stats_batches=2,
    eval_prompts=2,
    reserve_seconds=9.0,
    echo=2,
)


def random_videos(rng: np.random.Generator, count: int, num_frames: int, height: int, width: int, device: torch.device):
    """``count`` random captions and their rendered ``(B, 3, F, H, W)`` videos in [-1, 1]."""
    captions = [sample_caption(rng) for _ in range(count)]
    seeds = rng.integers(0, 2**31 - 1, size=count).tolist()
    return captions, render_batch(captions, seeds, num_frames, height, width, device)


# --------------------------------------------------------------------------------------------------
# Stage 1: the VAE.


def vae_batch(plan: Plan, rng: np.random.Generator, device: torch.device) -> torch.Tensor:
    """Clips rendered at a random size and cropped, so the VAE sees objects at every scale."""
    size = int(rng.choice(plan.vae_render_sizes))
    _, videos = random_videos(rng, plan.vae_batch, plan.vae_frames, size, size, device)
    top, left = (int(v) for v in rng.integers(0, size - plan.vae_crop + 1, size=2))
    return videos[..., top : top + plan.vae_crop, left : left + plan.vae_crop]


def train_vae(
    vae: AutoencoderKLWan,
    plan: Plan,
    until: float,
    rng: np.random.Generator,
    device: torch.device,
    log_every: int,
    ranks: Ranks,
    decoder_only: bool = False,
) -> dict[str, Any]:
    """Train the VAE until ``until``; with ``decoder_only`` the encoder is frozen, so the latent space
    (and a transformer trained in it) stays valid while the decoder improves."""
    vae.train()
    frozen = (vae.encoder, vae.quant_conv) if decoder_only else ()
    for module in frozen:
        module.eval().requires_grad_(False)
    optimizer = make_optimizer([p for p in vae.parameters() if p.requires_grad], plan.vae_lr)
    progress = Progress("vae decoder" if decoder_only else "vae", log_every, until, ranks)
    clock = SharedClock(ranks, device)
    start, step, lr = clock.value, 0, plan.vae_lr
    while (now := clock.now(step)) < until or step == 0:  # at least one step, however slow the machine
        x = vae_batch(plan, rng, device)
        with autocast(device):
            with torch.set_grad_enabled(not decoder_only):
                latents = vae.encode(x).latent_dist.mode()
            reconstruction = vae.decode(latents).sample
        loss = (reconstruction.float() - x).abs().mean() + LATENT_WEIGHT * latents.float().pow(2).mean()
        lr = learning_rate(plan.vae_lr, step, plan.warmup_steps, (now - start) / (until - start))
        optimizer_step(optimizer, loss, lr, ranks)
        step += 1
        progress.log(step, loss, lr, x.shape[0])
    vae.eval().requires_grad_(False)
    return progress.summary(step, lr)


@dataclass(frozen=True)
class VaeMeasurement:
    """Per-channel latent mean and std of native-size videos, and how well the VAE reconstructs them:
    PSNR (dB) per video averaged, and per frame over the batch (a causal VAE can fail late frames only)."""

    mean: torch.Tensor
    std: torch.Tensor
    psnr: float
    psnr_by_frame: list[float]


@torch.no_grad()
def measure_vae(vae: AutoencoderKLWan, plan: Plan, rng: np.random.Generator, device: torch.device) -> VaeMeasurement:
    """Latent statistics of ``stats_batches`` batches of native-size videos; reconstruction of the first."""
    native = plan.buckets[0]
    latents: list[torch.Tensor] = []
    for index in range(plan.stats_batches):
        count = max(1, native.batch // 4)
        _, videos = random_videos(rng, count, native.num_frames, native.height, native.width, device)
        with autocast(device):
            z = vae.encode(videos).latent_dist.mode()
            if index == 0:
                error = (vae.decode(z).sample.float().clamp(-1, 1) - videos).pow(2)  # (B, C, F, H, W)
        latents.append(z.float().transpose(0, 1).flatten(1))
    stacked = torch.cat(latents, dim=1)
    return VaeMeasurement(
        mean=stacked.mean(dim=1),
        std=stacked.std(dim=1),
        psnr=float(psnr_db(error.flatten(1).mean(dim=1)).mean()),
        psnr_by_frame=[round(v, 2) for v in psnr_db(error.mean(dim=(0, 1, 3, 4))).tolist()],
    )


# --------------------------------------------------------------------------------------------------
# Stage 2: transformer and text encoder.


@dataclass
class Denoiser:
    """The trained parts of stage 2, their EMA copies, and the frozen VAE with its latent statistics."""

    pipe: WanPipeline
    latents_mean: torch.Tensor
    latents_std: torch.Tensor
    ema: list[torch.nn.Module] = field(init=False)

    def __post_init__(self) -> None:
        self.ema = [copy.deepcopy(m).requires_grad_(False) for m in self.trained]

    @property
    def trained(self) -> list[torch.nn.Module]:
        return [self.pipe.transformer, self.pipe.text_encoder]

    def update_ema(self, step: int) -> None:
        update_ema(self.ema, self.trained, step)

    @torch.no_grad()
    def latents(self, videos: torch.Tensor, device: torch.device) -> torch.Tensor:
        with autocast(device):
            z = self.pipe.vae.encode(videos).latent_dist.mode().float()
        shape = (1, -1, 1, 1, 1)
        return (z - self.latents_mean.view(shape)) / self.latents_std.view(shape)


def denoiser_loss(
    denoiser: Denoiser, plan: Plan, bucket: Bucket, pool: EchoPool, rng: np.random.Generator, device: torch.device
) -> torch.Tensor:
    """Rectified-flow loss on one freshly drawn batch of ``bucket``'s size, topped up from the bucket's
    ``pool`` of recently encoded samples, with caption dropout and a random prompt padding."""
    count = pool.fresh_count(bucket.batch)
    captions, videos = random_videos(rng, count, bucket.num_frames, bucket.height, bucket.width, device)
    x0, texts = pool.batch(denoiser.latents(videos, device), [c.text for c in captions], bucket.batch, rng)
    prompts = ["" if rng.random() < CAPTION_DROPOUT else text for text in texts]
    text_length = int(rng.integers(CAPTION_TOKENS, PIPELINE_TEXT_LENGTH + 1))
    return flow_loss(denoiser, plan, x0, prompts, text_length, device)


def flow_loss(
    denoiser: Denoiser, plan: Plan, x0: torch.Tensor, prompts: list[str], text_length: int, device: torch.device
) -> torch.Tensor:
    """Rectified-flow loss of normalised latents ``x0``: predict ``noise - x0`` from ``(1 - s) x0 + s
    noise``, under ``prompts`` padded to ``text_length`` tokens, at random noise and noise levels."""
    sigma = sample_sigmas(x0.shape[0], plan.spec.flow_shift, device)
    noise = torch.randn_like(x0)
    return velocity_loss(denoiser.pipe, x0, noise, sigma, prompts, text_length, device, plan.first_frame_weight)


def velocity_loss(
    pipe: WanPipeline,
    x0: torch.Tensor,
    noise: torch.Tensor,
    sigma: torch.Tensor,
    prompts: list[str],
    text_length: int,
    device: torch.device,
    first_frame_weight: float = 1.0,
) -> torch.Tensor:
    """Mean squared error of the transformer's velocity for ``x0`` at the given ``noise`` and noise
    levels ``sigma``: :func:`flow_loss` with its draws made by the caller (probes fix them)."""
    noisy, target = flow_pair(x0, noise, sigma)
    prediction = predict_velocity(pipe, noisy, sigma, prompts, text_length, device)
    return frame_weighted_mse(prediction, target, first_frame_weight)


def predict_velocity(
    pipe: WanPipeline,
    noisy: torch.Tensor,
    sigma: torch.Tensor,
    prompts: list[str],
    text_length: int,
    device: torch.device,
) -> torch.Tensor:
    """The transformer's velocity (fp32) for ``noisy`` latents at noise levels ``sigma``, under ``prompts``
    padded to ``text_length`` tokens, timesteps scaled as the pipeline's scheduler scales them."""
    with autocast(device):
        text = encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts, pad_to=text_length)
        return pipe.transformer(noisy, sigma * TIMESTEP_SCALE, text, return_dict=False)[0].float()


def mse_by_latent_frame(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of ``(B, C, F, H, W)`` latents per latent frame: shape ``(F,)``."""
    return (prediction - target).square().mean(dim=(0, 1, 3, 4))


def frame_weighted_mse(prediction: torch.Tensor, target: torch.Tensor, first_frame_weight: float) -> torch.Tensor:
    """Mean squared error of ``(B, C, F, H, W)`` latents with latent frame 0 weighted ``first_frame_weight``
    against 1 for the others (weights normalised to mean 1; weight 1 is the plain mean squared error).

    Why: the causal VAE codes the first video frame alone, and its latent varies about half as much
    across space as the later ones (run 5: std 0.28 against 0.51-0.59, normalised; measured by
    ``benchmarks/tiny_first_frame.py``), so an error of the same size costs the first decoded frame
    about four times as much of its content.
    """
    per_frame = mse_by_latent_frame(prediction, target)
    weights = torch.ones_like(per_frame)
    weights[0] = first_frame_weight
    return (per_frame * weights).sum() / weights.sum()


def train_denoiser(
    denoiser: Denoiser,
    plan: Plan,
    schedule: Schedule,
    rng: np.random.Generator,
    device: torch.device,
    log_every: int,
    checkpoint: Any,
    ranks: Ranks,
    shared_rng: np.random.Generator,
) -> dict[str, Any]:
    """Stage 2 until ``schedule.train_end``; ``rng`` draws this rank's data, ``shared_rng`` (seeded
    alike on all ranks) the video size of each step, so the ranks' steps cost the same."""
    for model in denoiser.trained:
        model.train().requires_grad_(True)
    optimizer = make_optimizer([p for m in denoiser.trained for p in m.parameters()], plan.lr)
    progress = Progress("transformer", log_every, schedule.train_end, ranks)
    weights = np.array([b.weight for b in plan.buckets]) / sum(b.weight for b in plan.buckets)
    pools = [EchoPool(plan.echo) for _ in plan.buckets]
    clock = SharedClock(ranks, device)
    start, step, lr = clock.value, 0, plan.lr
    pending_checkpoints = list(schedule.checkpoints) if ranks.main else []
    while (now := clock.now(step)) < schedule.train_end or step == 0:
        index = int(shared_rng.choice(len(plan.buckets), p=weights))
        bucket = plan.buckets[index]
        loss = denoiser_loss(denoiser, plan, bucket, pools[index], rng, device)
        lr = learning_rate(plan.lr, step, plan.warmup_steps, (now - start) / (schedule.train_end - start))
        optimizer_step(optimizer, loss, lr, ranks)
        denoiser.update_ema(step)
        step += 1
        progress.log(step, loss, lr, bucket.batch)
        if pending_checkpoints and time.monotonic() >= pending_checkpoints[0]:
            pending_checkpoints.pop(0)
            checkpoint(progress.summary(step, lr))
    return progress.summary(step, lr)


def compile_for_training(transformer: torch.nn.Module) -> None:
    """Compile the transformer's blocks one by one (Diffusers' regional compilation, one graph for all
    eight); a block whose compilation fails runs eagerly rather than ending the run.

    Shapes are left to automatic dynamism: training varies the prompt padding at every step and
    switches between two video sizes, so static graphs would recompile for each new shape until
    Dynamo's recompile limit (8), and run eagerly after it. With automatic dynamism the second
    shape seen marks the sizes that changed as symbolic, and a few graphs serve every later step.
    """
    torch._dynamo.config.suppress_errors = True
    transformer.compile_repeated_blocks(dynamic=None)


# --------------------------------------------------------------------------------------------------
# Resuming, saving and evaluation.


def load_for_resume(directory: Path, spec: TinyWanSpec) -> WanPipeline:
    """A saved tiny pipeline in fp32, to train on; refused unless its models have ``spec``'s sizes."""
    ignored = {"latents_mean", "latents_std"}  # measured after stage 1, not part of the size
    return load_matching(WanPipeline, directory, build_pipeline(spec), ignored)


def export_pipeline(denoiser: Denoiser, spec: TinyWanSpec, dtype: torch.dtype = torch.bfloat16) -> WanPipeline:
    """The pipeline to ship: EMA transformer and text encoder, trained VAE, in ``dtype``."""
    ema_transformer, ema_text_encoder = (storage_copy(m, dtype) for m in denoiser.ema)
    vae = storage_copy(denoiser.pipe.vae, dtype)
    return assemble_pipeline(ema_transformer, vae, ema_text_encoder, spec)


def evaluation_captions(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [sample_caption(rng).text for _ in range(count)]


@torch.no_grad()
def evaluate(pipe: WanPipeline, call: dict[str, Any], count: int, until: float, seed: int = 1234) -> dict[str, Any]:
    """Colour and motion accuracy (see ``data.check_video``) of videos generated with ``call``'s
    size, steps and guidance, from ``count`` random captions; stops early rather than overrun ``until``."""
    pipe.set_progress_bar_config(disable=True)
    prompts = evaluation_captions(count, seed)
    checks, batch, last = [], 8, 0.0
    for first in range(0, count, batch):
        started = time.monotonic()
        if started + last >= until:  # the next batch would not end in time
            break
        chunk = prompts[first : first + batch]
        generator = torch.Generator("cpu").manual_seed(seed + first)
        frames = pipe(chunk, generator=generator, output_type="np", **call).frames
        checks += [check_video(p, f) for p, f in zip(chunk, frames, strict=True)]
        last = time.monotonic() - started
    if not checks:
        return {"videos": 0}
    return {
        "videos": len(checks),
        "colour_accuracy": sum(c["colour"] for c in checks) / len(checks),
        "motion_accuracy": sum(c["motion"] for c in checks) / len(checks),
        **call,
    }


# --------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.tiny_wan.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the pipeline to (replaced)")
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock budget of the whole run")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help=f"torch device (default {default_device})")
    parser.add_argument("--tiny", action="store_true", help="toy-sized model and data, for a CPU smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=None, help="log every N steps (default 50, toy 5)")
    parser.add_argument("--vae-share", type=float, default=None, help="fraction of the training time for the VAE")
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="continue from a pipeline this script saved: stage 1 then trains the VAE decoder only, keeping "
        "the latent space and its statistics, and stage 2 continues the transformer and text encoder",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks in stage 2")
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate of stage 2 (default 4e-4 full, 1e-3 toy); lower it when resuming a trained model",
    )
    parser.add_argument(
        "--first-frame-weight",
        type=float,
        default=None,
        help="weight of the first latent frame in the stage-2 loss, against 1 for the others (default 1)",
    )
    parser.add_argument(
        "--echo",
        type=int,
        default=None,
        help="stage 2 encodes 1/N of each batch anew and reuses recent samples for the rest (default 2)",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")
    if args.log_every is not None and args.log_every < 1:
        parser.error(f"--log-every must be >= 1, got {args.log_every}")
    if args.vae_share is not None and not 0.0 < args.vae_share < 1.0:
        parser.error(f"--vae-share must be in (0, 1), got {args.vae_share}")
    if args.echo is not None and args.echo < 1:
        parser.error(f"--echo must be >= 1, got {args.echo}")
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if args.first_frame_weight is not None and not args.first_frame_weight > 0:
        parser.error(f"--first-frame-weight must be > 0, got {args.first_frame_weight}")
    return args


def shared_schedule(schedule: Schedule, ranks: Ranks, device: torch.device) -> Schedule:
    """Rank 0's deadlines on every rank (the ranks started at slightly different times)."""
    values = torch.tensor(
        [schedule.vae_end, schedule.train_end, schedule.end, *schedule.checkpoints], dtype=torch.float64, device=device
    )
    broadcast_([values], ranks)
    vae_end, train_end, end, *checkpoints = values.tolist()
    return Schedule(vae_end, tuple(checkpoints), train_end, end)


def saved_latent_statistics(pipe: WanPipeline, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel latent mean and std in a saved pipeline's VAE config, where ``WanPipeline`` reads them."""
    config = pipe.vae.config
    return tuple(torch.tensor(v, device=device) for v in (config.latents_mean, config.latents_std))


def latent_statistics(
    pipe: WanPipeline, measured: VaeMeasurement, resumed: bool, ranks: Ranks, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent mean/std the transformer trains with: rank 0's measurement, written into the VAE
    config; when resuming, the saved ones, which the transformer was trained with."""
    if resumed:
        return saved_latent_statistics(pipe, device)
    mean, std = measured.mean.clone(), measured.std.clone()
    broadcast_([mean, std], ranks)
    pipe.vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    return mean, std


def plan_from_args(args: argparse.Namespace) -> Plan:
    """The toy or full plan, with the options given on the command line in place of its defaults."""
    plan = TOY_PLAN if args.tiny else FULL_PLAN
    names = ("vae_share", "echo", "lr", "first_frame_weight")  # the Plan fields that options of these names set
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return replace(plan, **given)


def main(argv: Sequence[str] | None = None, spent: float = 0.0) -> int:
    """Train and save; ``spent`` seconds of the budget are already used (the script passes its start-up).

    Under ``torchrun`` every process trains on its own data and rank 0 saves and evaluates."""
    args = parse_args(argv)
    plan = plan_from_args(args)
    log_every = args.log_every or (5 if args.tiny else 50)
    ranks, device = init_ranks(configure_device(args.device))
    try:
        return train_and_save(args, plan, log_every, ranks, device, spent)
    finally:
        close(ranks)


def train_and_save(
    args: argparse.Namespace, plan: Plan, log_every: int, ranks: Ranks, device: torch.device, spent: float
) -> int:
    schedule = shared_schedule(
        Schedule.from_budget(args.minutes, plan.vae_share, plan.reserve_seconds, spent), ranks, device
    )
    record: dict[str, Any] = {
        "spec": asdict(plan.spec),
        "plan": {k: v for k, v in asdict(plan).items() if k != "spec"},
        "args": {k: str(v) for k, v in vars(args).items()},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "processes": ranks.world,
        "torch": torch.__version__,
    }
    if args.resume is None:
        pipe = build_pipeline(plan.spec, seed=args.seed).to(device)
    else:
        pipe = load_for_resume(args.resume, plan.spec).to(device)
        record["resumed_from"] = read_record(args.resume)
    broadcast_state([pipe.transformer, pipe.text_encoder, pipe.vae], ranks)
    # Each rank its own videos and noise; the same video size per step on all (shared_rng).
    rng, shared_rng = np.random.default_rng([args.seed, ranks.rank]), np.random.default_rng(args.seed)
    torch.manual_seed(args.seed * 1000 + ranks.rank)
    say = print if ranks.main else (lambda *_, **__: None)
    say(f"training on {ranks.world} x {record['device']} for {args.minutes} min; writing {args.out}", flush=True)

    resumed = args.resume is not None
    record["vae"] = train_vae(pipe.vae, plan, schedule.vae_end, rng, device, log_every, ranks, decoder_only=resumed)
    measured = measure_vae(pipe.vae, plan, rng, device)
    mean, std = latent_statistics(pipe, measured, resumed, ranks, device)
    record["vae"]["reconstruction_psnr"] = measured.psnr
    record["vae"]["reconstruction_psnr_by_frame"] = measured.psnr_by_frame
    say(f"VAE reconstruction of native videos: {measured.psnr:.2f} dB PSNR; by frame {measured.psnr_by_frame}")
    say(f"latent mean {[round(v, 3) for v in mean.tolist()]}\nlatent std {[round(v, 3) for v in std.tolist()]}")

    denoiser = Denoiser(pipe, mean, std)
    if args.compile:
        compile_for_training(pipe.transformer)

    def checkpoint(summary: dict[str, Any]) -> None:
        save_pipeline(
            export_pipeline(denoiser, plan.spec),
            plan.spec.call_defaults(),
            args.out,
            {**record, "transformer": summary},
        )

    record["transformer"] = train_denoiser(
        denoiser, plan, schedule, rng, device, log_every, checkpoint, ranks, shared_rng
    )
    record["ranks_in_sync"] = in_sync([*denoiser.trained, pipe.vae, *denoiser.ema], ranks, device)
    if not ranks.main:
        return 0
    save_pipeline(export_pipeline(denoiser, plan.spec), plan.spec.call_defaults(), args.out, record)
    # Evaluate the saved bf16 weights on GPUs; on CPUs, where bf16 is slow, their fp32 originals.
    final = export_pipeline(denoiser, plan.spec, torch.bfloat16 if device.type == "cuda" else torch.float32)
    quick_end = time.monotonic() + (schedule.end - 3.0 - time.monotonic()) / 3
    record["evaluation"] = {
        "quick": evaluate(final, plan.spec.quick_call(), plan.eval_prompts, quick_end),
        "native": evaluate(final, plan.spec.call_defaults(), plan.eval_prompts, schedule.end - 3.0),
    }
    print(f"evaluation: {record['evaluation']}", flush=True)
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(spent=process_age_seconds()))
