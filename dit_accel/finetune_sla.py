"""Fine-tune a Wan transformer for ``sla``: distil the dense model into its sparse-linear self.

The teacher is a frozen copy of the transformer with dense attention; the student is the same
weights with ``sla`` applied. Training data comes from the model itself, so no data set is needed:
the teacher first generates a pool of videos (``pool_size`` prompt/seed pairs, the pipeline's own
sampler, ``output_type="latent"``) and keeps the latents its transformer was called on at every
sampling step. Each training step then takes, by ``states``:

* ``"noised"`` (default): the pool's clean latents noised to a random step of the schedule
  (``x_t = (1 - σ) x_0 + σ ε``, fresh noise every time);
* ``"trajectory"``: latents of the teacher's own sampling paths at one of their steps, the inputs
  the student meets when it replaces the teacher in the same sampler. A pool holds only
  ``pool_size x steps`` of them: on the tiny model (pool 48) they gave 0.3-0.4 dB less than fresh
  noise after the same 11 minutes (``benchmarks/results/quality/sla_finetune_h200_s20``).

The loss is the MSE between the student's and the teacher's velocity as the sampler uses it: with
classifier-free guidance (``guidance_scale > 1`` in the sampling arguments) the guided combination
``u + g (c - u)`` of the conditional and unconditional predictions, whose errors the sampler
integrates (the conditional error counts ``g`` times); else the conditional prediction. Trained:
the SLA projections, plus LoRA adapters (``train="lora"``, via ``peft``) or every weight
(``train="all"``). ``accelerate`` places the model and runs mixed precision (bf16 autocast with fp32
trainable weights when the pipeline is bf16), at a constant learning rate or one that decays along a
cosine to zero at ``steps`` (``lr_schedule="cosine"``). ``ema_decay`` keeps an exponential moving
average of the trained weights (Diffusers' ``EMAModel``) and writes it as the result instead of the
last step's weights. Checkpoints every ``save_every`` steps; ``resume=True``
continues from the last one (each step's samples are drawn from a generator seeded by the step, so
a resumed run is the same as an uninterrupted one). The result folder loads with
``dit_accel.apply(pipe, "sla", weights=out_dir, ...)`` (see :mod:`dit_accel.sla_weights`: with
``train="all"`` it also swaps in the trained transformer weights, and ``remove()`` swaps them back).

    dit-accel finetune-sla --out out/sla -o k_high=0.05 --steps 2000 --train lora
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dit_accel.methods.sla import SLAConfig

TRAIN_MODES = ("projections", "lora", "all")
STATE_SOURCES = ("noised", "trajectory")
LR_SCHEDULES = ("constant", "cosine")
DEFAULT_LR = {"projections": 1e-3, "lora": 1e-4, "all": 1e-5}
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
POOL_FILE = "teacher_pool.pt"
EMA_FILE = "ema.pt"
# What a checkpoint written before an objective field existed was trained with.
OBJECTIVE_DEFAULTS = {"lr_schedule": "constant", "cosine_steps": None, "ema_decay": None}
LOG_FILE = "log.jsonl"
CHECKPOINT_PREFIX = "checkpoint-"
KEEP_CHECKPOINTS = 2
# Prompts in the shipped tiny model's domain; any list can be given instead.
DEFAULT_PROMPTS = (
    "a pink circle moving left on a striped green background",
    "a yellow star moving up on a plain gray background",
    "a green square moving left on a checkered white background",
    "a blue triangle growing on a dotted orange background",
    "a pink diamond shrinking on a striped black background",
    "an orange ring moving down on a plain cyan background",
    "a purple circle turning yellow on a checkered gray background",
    "a cyan star moving right on a dotted pink background",
    "a red square moving up on a plain white background",
    "a green ring shrinking on a striped purple background",
    "a yellow triangle moving left on a dotted black background",
    "a blue diamond moving down on a checkered orange background",
)


@dataclass
class TeacherPool:
    """The teacher's own generations: clean latents, the latents its transformer saw at each sampling
    step (``states``, ``(N, steps, *latent)`` bf16), prompt embeddings and the noise schedule."""

    latents: torch.Tensor
    conditional: torch.Tensor
    unconditional: torch.Tensor
    timesteps: torch.Tensor
    sigmas: torch.Tensor
    states: torch.Tensor | None = None


@dataclass
class TrainingBatch:
    """One step's transformer inputs: latents, timesteps and both prompt embeddings of each sample."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    conditional: torch.Tensor
    unconditional: torch.Tensor


@dataclass
class FinetuneResult:
    """Where the weights are, the total step count reached and this run's per-step losses."""

    out_dir: Path
    step: int
    losses: list[float]


def _check_pipeline(pipe: Any) -> torch.nn.Module:
    from diffusers import WanPipeline

    transformer = getattr(pipe, "transformer", None)
    if not isinstance(pipe, WanPipeline) or getattr(pipe, "transformer_2", None) is not None:
        raise ValueError(
            "finetune-sla trains the transformer of a single-transformer Wan pipeline (WanPipeline); "
            f"got {type(pipe).__name__} with {type(transformer).__name__}"
        )
    return transformer


def _generation_call(pipe: Any, call: dict[str, Any] | None) -> dict[str, Any]:
    """The teacher's sampling arguments: the model folder's defaults, overridden by ``call``."""
    from dit_accel.compare import generation_defaults

    source = pipe.config.get("_name_or_path") if hasattr(pipe, "config") else None
    return {**(generation_defaults(source) if source else {}), **(call or {})}


def _encode(pipe: Any, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if getattr(pipe, "text_encoder", None) is None:
        raise ValueError("this pipeline has no text encoder: pass prompt_embeds and negative_prompt_embeds")
    with torch.no_grad():
        return pipe.encode_prompt(prompts, negative_prompt=[""] * len(prompts), device=device)


class _StepRecorder:
    """Keeps the latents the transformer is called on, once per sampling step: a guided sampler calls
    it twice a step (conditional, unconditional) with the same latents at the same timestep, while
    two steps differ in their latents even where a scheduler rounds their timesteps to one value."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.states: list[torch.Tensor] = []
        self.last: tuple[torch.Tensor, float] | None = None
        self.handle = transformer.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        latents, value = kwargs["hidden_states"].detach(), float(kwargs["timestep"].flatten()[0])
        if latents.shape[0] != 1:
            raise ValueError(f"the recorder keeps one sample a call; the sampler called the transformer on a batch of "
                             f"{latents.shape[0]} (batched guidance or several videos)")  # fmt: skip
        if self.last is not None and value == self.last[1] and torch.equal(latents, self.last[0]):
            return
        self.states.append(latents.to("cpu", torch.bfloat16))
        self.last = (latents, value)

    def take(self) -> torch.Tensor:
        """This generation's ``(steps, *latent)`` states; the recorder starts over."""
        states, self.states, self.last = torch.cat(self.states), [], None
        return states


def build_pool(pipe: Any, pool_size: int, call: dict[str, Any], seed: int, prompts: list[str] | None = None,
               prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
               keep_states: bool = False) -> TeacherPool:  # fmt: skip
    """``pool_size`` generations of the (dense) pipeline, cycling through the prompts, seeds ``seed + i``;
    with ``keep_states``, also the transformer's input latents at every step (``pool_size x steps``
    latents: at Wan-1.3B 480p, 4 MB each)."""
    device = torch.device(pipe._execution_device)
    if prompt_embeds is None:
        texts = list(prompts or DEFAULT_PROMPTS)
        prompt_embeds, negative_prompt_embeds = _encode(pipe, texts, device)
    if negative_prompt_embeds is None:
        negative_prompt_embeds = torch.zeros_like(prompt_embeds)
    pick = torch.arange(pool_size) % prompt_embeds.shape[0]
    conditional, unconditional = prompt_embeds[pick].to(device), negative_prompt_embeds[pick].to(device)
    call = dict(call)
    steps = call.pop("num_inference_steps", 30)
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps, device="cpu")
    timesteps = scheduler.timesteps.float()
    latents, states = [], []
    recorder = _StepRecorder(pipe.transformer) if keep_states else None
    try:
        for i in range(pool_size):
            out = pipe(prompt_embeds=conditional[i : i + 1], negative_prompt_embeds=unconditional[i : i + 1],
                       num_inference_steps=steps, generator=torch.Generator().manual_seed(seed + i),
                       output_type="latent", **call)  # fmt: skip
            if out.frames.shape[0] != 1:
                raise ValueError(f"the teacher's call made {out.frames.shape[0]} videos: one a prompt and seed only")
            latents.append(out.frames.detach().float().cpu())
            if recorder is not None:
                states.append(recorder.take())
                if states[-1].shape[0] != len(timesteps):  # checked on the first generation, not after all
                    raise RuntimeError(f"the sampler called the transformer at {states[-1].shape[0]} distinct "
                                       f"steps, its scheduler has {len(timesteps)}")  # fmt: skip
    finally:
        if recorder is not None:
            recorder.handle.remove()
    return TeacherPool(torch.cat(latents), conditional.cpu(), unconditional.cpu(), timesteps,
                       scheduler.sigmas[: len(timesteps)].float(), torch.stack(states) if states else None)  # fmt: skip


@dataclass
class _Training:
    """What fine-tuning changed on the transformer, to put back afterwards."""

    lora: dict[str, Any] | None
    remove_lora: Any
    dtypes: dict[torch.nn.Parameter, torch.dtype]
    flags: dict[torch.nn.Parameter, bool]

    def restore(self) -> None:
        if self.remove_lora is not None:
            self.remove_lora()
        for parameter, dtype in self.dtypes.items():
            parameter.data = parameter.data.to(dtype)
        for parameter, flag in self.flags.items():
            parameter.requires_grad_(flag)


def _trainable(transformer: torch.nn.Module, train: str, lora_rank: int) -> _Training:
    """Mark what trains, in fp32 (the SLA projections, + LoRA adapters or every weight)."""
    from dit_accel.methods.sla import SLAProjection
    from dit_accel.sla_weights import add_lora

    flags = {p: p.requires_grad for p in transformer.parameters()}
    transformer.requires_grad_(train == "all")
    lora = remove_lora = None
    if train == "lora":
        lora = {"r": lora_rank, "lora_alpha": lora_rank, "target_modules": LORA_TARGETS, "init_lora_weights": True}
        remove_lora = add_lora(transformer, lora)
        for name, parameter in transformer.named_parameters():
            parameter.requires_grad_(".lora_" in name)
    for module in transformer.modules():
        if isinstance(module, SLAProjection):
            module.requires_grad_(True)
    dtypes = {p: p.dtype for p in transformer.parameters() if p.requires_grad and p in flags}
    for parameter in transformer.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    return _Training(lora, remove_lora, dtypes, flags)


def _checkpoints(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.json").is_file())


def _save_checkpoint(out_dir: Path, step: int, model: torch.nn.Module, optimizer: Any, objective: dict[str, Any],
                     ema: Any | None) -> None:  # fmt: skip
    """The trainable weights as the last step left them, the optimizer and the moving average."""
    folder = out_dir / f"{CHECKPOINT_PREFIX}{step:07d}"
    folder.mkdir(parents=True, exist_ok=True)
    params = {n: p.detach().float().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(params, str(folder / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    if ema is not None:
        torch.save(ema.state_dict(), folder / EMA_FILE)
    (folder / "state.json").write_text(json.dumps({"step": step, **objective}))
    for old in _checkpoints(out_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old)


def _load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: Any, objective: dict[str, Any],
                     ema: Any | None) -> int:  # fmt: skip
    """Restores the trainable weights, optimizer and moving average; refuses a run whose loss, inputs,
    schedule or averaging differ."""
    state = json.loads((folder / "state.json").read_text())
    saved = {key: state.get(key, OBJECTIVE_DEFAULTS.get(key)) for key in objective}
    differing = [key for key in objective if saved[key] != objective[key]]
    if differing:
        was = ", ".join(f"{key}={saved[key]!r}" for key in differing)
        asked = ", ".join(f"{key}={objective[key]!r}" for key in differing)
        raise ValueError(f"{folder} was trained with {was}, this run asks for {asked}: resume with the same "
                         f"{', '.join(differing)}, or start in a new folder")  # fmt: skip
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in load_file(str(folder / "trainable.safetensors")).items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    if ema is not None:
        ema.load_state_dict(torch.load(folder / EMA_FILE, map_location="cpu", weights_only=True))
        ema.to(device=next(p for p in model.parameters() if p.requires_grad).device)
    return state["step"]


def _lr_factor(schedule: str, step: int, steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``steps``, as a fraction of the base one:
    constant, or a cosine from 1 at the first step towards 0 at ``steps``."""
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def _batch(pool: TeacherPool, step: int, seed: int, batch_size: int, device: torch.device, dtype: torch.dtype,
           states: str = "noised") -> TrainingBatch:  # fmt: skip
    """Step ``step``'s inputs (drawn from a generator seeded by the step): pool samples at random sampling
    steps, their clean latents freshly noised (``"noised"``) or as the teacher's sampler met them."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    pick = torch.randint(0, pool.latents.shape[0], (batch_size,), generator=gen)
    when = torch.randint(0, pool.timesteps.numel(), (batch_size,), generator=gen)
    if states == "trajectory":
        latents = pool.states[pick, when]
    else:
        x0 = pool.latents[pick]
        sigma = pool.sigmas[when].view(-1, *([1] * (x0.ndim - 1)))
        latents = (1 - sigma) * x0 + sigma * torch.randn(x0.shape, generator=gen)
    conditional, unconditional = pool.conditional[pick].to(device, dtype), pool.unconditional[pick].to(device, dtype)
    return TrainingBatch(latents.to(device, dtype), pool.timesteps[when].to(device), conditional, unconditional)


def _velocity(model: torch.nn.Module, batch: TrainingBatch, guidance_scale: float) -> torch.Tensor:
    """The velocity the sampler steps with: ``u + g (c - u)`` under guidance (both in one batched call),
    else the conditional prediction."""
    if guidance_scale <= 1:
        return model(hidden_states=batch.latents, timestep=batch.timesteps, encoder_hidden_states=batch.conditional,
                     return_dict=False)[0].float()  # fmt: skip
    embeds = torch.cat([batch.conditional, batch.unconditional])
    both = model(hidden_states=torch.cat([batch.latents, batch.latents]), timestep=batch.timesteps.repeat(2),
                 encoder_hidden_states=embeds, return_dict=False)[0]  # fmt: skip
    conditional, unconditional = both.float().chunk(2)
    return unconditional + guidance_scale * (conditional - unconditional)


def _guidance_scale(pipe: Any, call: dict[str, Any]) -> float:
    """The sampler's guidance scale: the call's, else the pipeline's default."""
    if "guidance_scale" in call:
        return float(call["guidance_scale"])
    default = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
    return float(default.default) if default is not None and default.default is not None else 1.0


def finetune_sla(
    pipe_or_model_path: Any,
    out_dir: str | Path,
    *,
    sla_options: dict[str, Any] | None = None,
    train: str = "projections",
    states: str = "noised",
    steps: int = 1000,
    lr: float | None = None,
    lr_schedule: str = "constant",
    ema_decay: float | None = None,
    batch_size: int = 1,
    lora_rank: int = 16,
    prompts: list[str] | None = None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    pool_size: int = 16,
    call: dict[str, Any] | None = None,
    save_every: int = 200,
    resume: bool = False,
    seed: int = 0,
    max_minutes: float | None = None,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
) -> FinetuneResult:
    """Distil the dense transformer into its ``sla`` self; writes a weights folder to ``out_dir``.

    Args:
        pipe_or_model_path: a Wan pipeline, or its folder / hub id (loaded on ``device`` in ``dtype``).
        sla_options: options of ``sla`` (``k_high``, ``k_low``, ``feature_map``, ``block_size`` ...).
        train: ``"projections"`` (the SLA projections only), ``"lora"`` (and LoRA adapters of rank
            ``lora_rank`` on to_q/to_k/to_v/to_out) or ``"all"`` (and every transformer weight).
        states: the training latents: ``"noised"`` (the pool's clean latents, freshly noised) or
            ``"trajectory"`` (the teacher's sampling paths; the pool then keeps every step's latents).
        batch_size: samples a step; under guidance each costs a conditional and an unconditional call
            of the student and of the teacher.
        steps: total optimizer steps (a resumed run counts the ones done); ``max_minutes`` stops earlier.
        lr: AdamW learning rate; default 1e-3 / 1e-4 / 1e-5 for projections / lora / all.
        lr_schedule: ``"constant"``, or ``"cosine"``: decays from ``lr`` to zero at ``steps`` (set
            ``steps`` to what ``max_minutes`` allows, else the rate hardly falls); a cosine run
            resumes only with the same ``steps``.
        ema_decay: keep an exponential moving average of the trained weights with this decay (e.g.
            0.999) and write it as the result; it starts at the first step's weights and averages with
            decay ``min(ema_decay, (1 + n) / (10 + n))`` at step ``n + 1`` (``EMAModel``'s warm-up:
            0.999 is reached after 9,000 steps; the last decay used is in the folder's ``sla.json``).
            The checkpoints hold the last step's weights as well.
        prompts: the teacher's prompts (default: the tiny model's domain); or ``prompt_embeds`` and
            ``negative_prompt_embeds`` ``(N, L, E)`` for a pipeline without a text encoder.
        pool_size: teacher generations to draw training latents from.
        call: sampling arguments of the teacher's generations (num_frames, height, width,
            num_inference_steps, guidance_scale); default the model folder's ``generation_defaults.json``.
            Its guidance scale (else the pipeline's default) also sets the loss's guided combination.
        save_every: checkpoint interval in steps; ``resume`` continues from ``out_dir``'s last checkpoint.
    """
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from dit_accel.api import apply
    from dit_accel.compare import load_pipeline
    from dit_accel.sla_weights import MATCHED_OPTIONS, named_transformers, save_sla_weights

    if train not in TRAIN_MODES:
        raise ValueError(f"train must be one of {', '.join(TRAIN_MODES)}, got {train!r}")
    if states not in STATE_SOURCES:
        raise ValueError(f"states must be one of {', '.join(STATE_SOURCES)}, got {states!r}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
    if ema_decay is not None and not 0.0 < ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay}")
    if steps < 1 or save_every < 1 or batch_size < 1 or pool_size < 1:
        raise ValueError("steps, save_every, batch_size and pool_size must be >= 1")
    config = SLAConfig(**(sla_options or {}))
    if config.weights is not None:
        raise ValueError("sla_options: weights is what fine-tuning writes; leave it out")
    out = Path(out_dir)
    if _checkpoints(out) and not resume:
        raise ValueError(f"{out} holds checkpoints: pass resume=True (--resume) or choose another folder")
    pipe = load_pipeline(str(pipe_or_model_path), device, dtype) if isinstance(pipe_or_model_path, (str, Path)) else (
        pipe_or_model_path
    )  # fmt: skip
    transformer = _check_pipeline(pipe)
    out.mkdir(parents=True, exist_ok=True)
    sampling = _generation_call(pipe, call)
    guidance_scale = _guidance_scale(pipe, sampling)
    if resume and (out / POOL_FILE).is_file():
        pool = TeacherPool(**torch.load(out / POOL_FILE, weights_only=True))
        if states == "trajectory" and pool.states is None:
            raise ValueError(f"{out / POOL_FILE} has no sampling-path states (a noised run, or an older version): "
                             "resume with states='noised' (--states noised) or start in a new folder")  # fmt: skip
    else:
        pipe.set_progress_bar_config(disable=True)
        pool = build_pool(pipe, pool_size, sampling, seed, prompts, prompt_embeds, negative_prompt_embeds,
                          keep_states=states == "trajectory")  # fmt: skip
        torch.save({field.name: getattr(pool, field.name) for field in fields(pool)}, out / POOL_FILE)

    base_dtype = transformer.dtype
    teacher = copy.deepcopy(transformer).eval().requires_grad_(False)
    handle = apply(transformer, config)
    training = _trainable(transformer, train, lora_rank)
    on_gpu = transformer.device.type == "cuda"
    accelerator = Accelerator(mixed_precision="bf16" if on_gpu and base_dtype == torch.bfloat16 else "no",
                              cpu=not on_gpu)  # fmt: skip
    parameters = [p for p in transformer.parameters() if p.requires_grad]
    base_lr = lr or DEFAULT_LR[train]
    optimizer = torch.optim.AdamW(parameters, lr=base_lr, weight_decay=0.0)
    model, optimizer = accelerator.prepare(transformer, optimizer)
    ema = EMAModel(parameters, decay=ema_decay, foreach=True) if ema_decay is not None else None
    objective = {"states": states, "guidance_scale": guidance_scale, "lr_schedule": lr_schedule,
                 "cosine_steps": steps if lr_schedule == "cosine" else None, "ema_decay": ema_decay}  # fmt: skip
    latest = _checkpoints(out)[-1:] if resume else []
    start = _load_checkpoint(latest[0], transformer, optimizer, objective, ema) if latest else 0

    losses: list[float] = []
    began = time.monotonic()
    step = start
    bar = tqdm(total=steps, initial=start, desc="finetune-sla", disable=not (progress and accelerator.is_main_process))
    with (out / LOG_FILE).open("a") as log:
        while step < steps and (max_minutes is None or time.monotonic() - began < 60 * max_minutes):
            batch = _batch(pool, step, seed, batch_size, accelerator.device, base_dtype, states)
            for group in optimizer.param_groups:
                group["lr"] = base_lr * _lr_factor(lr_schedule, step, steps)
            with torch.no_grad():
                target = _velocity(teacher, batch, guidance_scale)
            loss = torch.nn.functional.mse_loss(_velocity(model, batch, guidance_scale), target)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(parameters)
            step += 1
            losses.append(loss.item())
            log.write(json.dumps({"step": step, "loss": losses[-1], "lr": optimizer.param_groups[0]["lr"],
                                  "timestep": batch.timesteps.tolist(),
                                  "seconds": round(time.monotonic() - began, 3)}) + "\n")  # fmt: skip
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
            if step % save_every == 0 and accelerator.is_main_process:
                _save_checkpoint(out, step, transformer, optimizer, objective, ema)
    bar.close()

    named = named_transformers(transformer, [transformer])
    if accelerator.is_main_process:
        latest = _checkpoints(out)[-1:]
        if not latest or json.loads((latest[0] / "state.json").read_text())["step"] != step:
            _save_checkpoint(out, step, transformer, optimizer, objective, ema)
        if ema is not None:  # the result is the average; the checkpoint keeps the last step's weights
            ema.copy_to(parameters)
        info = {"sla_options": {n: getattr(config, n) for n in MATCHED_OPTIONS}, "train": train, "steps": step,
                "lr": base_lr, "lora_rank": lora_rank if training.lora else None, "pool_size": pool.latents.shape[0],
                "seed": seed, **objective,
                "ema_last_decay": ema.get_decay(ema.optimization_step) if ema is not None else None}  # fmt: skip
        save_sla_weights(out, named, info, training.lora, transformer=train == "all")
    accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    training.restore()
    handle.remove()
    if train == "all":  # the trained weights are in the folder; the pipeline gets its own back
        transformer.load_state_dict(teacher.state_dict())
    return FinetuneResult(out, step, losses)


def _run(args: argparse.Namespace) -> int:
    prompts = Path(args.prompts).read_text().splitlines() if args.prompts else None
    call = {name: getattr(args, name) for name in ("num_frames", "height", "width", "num_inference_steps",
                                                   "guidance_scale")}  # fmt: skip
    result = finetune_sla(
        args.model, args.out, sla_options=dict(args.option), train=args.train, states=args.states, steps=args.steps,
        lr=args.lr, lr_schedule=args.lr_schedule, ema_decay=args.ema_decay, batch_size=args.batch_size,
        lora_rank=args.lora_rank,
        prompts=[p for p in prompts or [] if p.strip()] or None, pool_size=args.pool_size,
        call={k: v for k, v in call.items() if v is not None}, save_every=args.save_every,
        resume=args.resume, seed=args.seed, max_minutes=args.minutes, device=args.device, dtype=args.dtype,
    )  # fmt: skip
    tail = result.losses[-10:]
    mean = f", mean loss of the last {len(tail)} steps {sum(tail) / len(tail):.4g}" if tail else ""
    print(f"finetune-sla: step {result.step}{mean}; weights in {result.out_dir} "
          f"(dit_accel.apply(pipe, 'sla', weights='{result.out_dir}', ...))")  # fmt: skip
    return 0


def register(subparsers: Any) -> None:
    """``dit-accel finetune-sla``: distil the dense model into its sla self (projections, LoRA or all weights)."""
    from dit_accel.compare import parse_option
    from dit_accel.tiny_model import TINY_MODEL_DIR

    parser = subparsers.add_parser("finetune-sla", help="fine-tune a Wan model for sla (distil its dense self)",
                                   description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--model", default=str(TINY_MODEL_DIR), help="Wan pipeline folder or hub id (default: tiny)")
    parser.add_argument("--out", type=Path, required=True, help="folder for checkpoints, log and the weights")
    parser.add_argument("-o", "--option", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                        help="sla option, e.g. k_high=0.05 k_low=0.1 feature_map=softmax")  # fmt: skip
    parser.add_argument("--train", choices=TRAIN_MODES, default="projections")
    parser.add_argument("--states", choices=STATE_SOURCES, default="noised",
                        help="training latents: the teacher's sampling paths or its noised latents")  # fmt: skip
    parser.add_argument("--steps", type=int, default=1000, help="total optimizer steps")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this many minutes of training")
    parser.add_argument("--lr", type=float, default=None, help="default 1e-3 / 1e-4 / 1e-5 (projections/lora/all)")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                        help="cosine: decay to zero at --steps")  # fmt: skip
    parser.add_argument("--ema-decay", type=float, default=None,
                        help="write an exponential moving average of the weights (e.g. 0.999)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--pool-size", type=int, default=16, help="teacher generations to train on")
    parser.add_argument("--prompts", default=None, help="text file, one prompt a line (default: built-in list)")
    parser.add_argument("--frames", dest="num_frames", type=int, default=None, help="default: the model's")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--sample-steps", dest="num_inference_steps", type=int, default=None,
                        help="the teacher's sampling steps (default: the model's)")  # fmt: skip
    parser.add_argument("--guidance-scale", dest="guidance_scale", type=float, default=None,
                        help="the teacher's guidance scale, also the loss's (default: the model's)")  # fmt: skip
    parser.add_argument("--save-every", type=int, default=200)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.set_defaults(func=_run)
