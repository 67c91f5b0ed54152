"""The parts of the tiny models' budgeted training that do not depend on the model family.

A run has a wall-clock budget measured from process start: an autoencoder stage, then the denoiser
stage until a reserve for saving and a short evaluation, with EMA checkpoints along the way so that
a run cut short still leaves a model. Losses are logged unbuffered with throughput and time left;
the saved pipeline is bf16 (the modules the model classes keep in fp32 stay fp32), in shards under
16 MB, beside ``generation_defaults.json`` and ``train_record.json``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from dit_accel.tiny_model import GENERATION_DEFAULTS_FILE

from .distributed import Ranks, average_gradients

EMA_DECAY = 0.998
MAX_SHARD_SIZE = "15MB"
CHECKPOINTS = 4  # the denoiser stage saves its EMA weights after each quarter


def process_age_seconds() -> float:
    """Seconds since this process started (imports included), or 0 where /proc is missing."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def configure_device(name: str) -> torch.device:
    """The torch device of a ``--device`` option; on CUDA with TF32 matmuls and cuDNN autotuning."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was given but CUDA is not available; use --device cpu")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        # cuDNN's SDPA backward hit an illegal memory access on the H200 (torch 2.11, batch 256 x 4
        # heads x 288 tokens); flash / memory-efficient attention train the same model.
        torch.backends.cuda.enable_cudnn_sdp(False)
    return device


@dataclass
class Schedule:
    """Deadlines of the stages, as ``time.monotonic()`` values."""

    vae_end: float
    checkpoints: tuple[float, ...]
    train_end: float
    end: float

    @classmethod
    def from_budget(cls, minutes: float, vae_share: float, reserve_seconds: float, spent: float = 0.0) -> Schedule:
        """Split ``minutes`` of which ``spent`` seconds are already gone (process start-up): ``vae_share``
        of the training time for the autoencoder, a reserve of ``reserve_seconds`` (at least 5%) at the end."""
        now = time.monotonic()
        total = minutes * 60.0 - spent
        reserve = max(reserve_seconds, 0.05 * total)
        if total <= reserve:
            raise ValueError(f"--minutes {minutes} leaves no time to train (need more than {reserve / 60:.2f} min)")
        vae_end = now + vae_share * (total - reserve)
        train_end = now + total - reserve
        checkpoints = tuple(vae_end + (train_end - vae_end) * i / CHECKPOINTS for i in range(1, CHECKPOINTS))
        return cls(vae_end, checkpoints, train_end, now + total)


class Progress:
    """Unbuffered loss logging every ``every`` steps, with throughput.

    Losses stay on the device between log lines, so logging costs one synchronisation per line, not
    one per step: with non-blocking copies of each batch's numbers and token ids, the host prepares
    the next step while the GPU runs this one.
    """

    def __init__(self, stage: str, every: int, until: float, ranks: Ranks) -> None:
        self.stage, self.every, self.until, self.ranks = stage, every, until, ranks
        self.start = time.monotonic()
        self.pending: list[torch.Tensor] = []
        self.history: list[dict[str, float]] = []
        self.samples = 0

    def log(self, step: int, loss: torch.Tensor, lr: float, samples: int) -> None:
        self.pending.append(loss.detach())
        self.samples += samples * self.ranks.world
        if step % self.every == 0:
            self.flush(step, lr)

    def flush(self, step: int, lr: float) -> None:
        if not self.pending:
            return
        now = time.monotonic()
        mean = float(torch.stack(self.pending).float().mean())
        self.pending.clear()
        self.history.append({"step": step, "loss": round(mean, 5), "seconds": round(now - self.start, 1)})
        if not self.ranks.main:
            return
        print(
            f"[{self.stage}] step {step:6d}  loss {mean:.4f}  lr {lr:.2e}  "
            f"{self.samples / (now - self.start):7.1f} samples/s  {self.until - now:6.0f} s left",
            flush=True,
        )

    def summary(self, step: int, lr: float) -> dict[str, Any]:
        self.flush(step, lr)
        seconds = time.monotonic() - self.start
        return {
            "steps": step,
            "seconds": round(seconds, 1),
            "samples_per_second": round(self.samples / max(seconds, 1e-9), 2),
            "final_loss": self.history[-1]["loss"] if self.history else None,
            "history": self.history,
        }


def learning_rate(base: float, step: int, warmup: int, progress: float) -> float:
    """Linear warm-up over steps, then cosine decay to 10% over the stage's time."""
    cosine = 0.1 + 0.45 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return base * min(1.0, (step + 1) / warmup) * cosine


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.01)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float, ranks: Ranks) -> None:
    """Backward, average the gradients over ranks, clip their norm at 1, step at ``lr``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    average_gradients(params, ranks)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on GPUs; plain fp32 on CPUs, where bf16 is slower."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def update_ema(ema: Sequence[torch.nn.Module], models: Sequence[torch.nn.Module], step: int) -> None:
    """Move each EMA copy towards its model: decay :data:`EMA_DECAY`, less in the first steps."""
    decay = min(EMA_DECAY, (1 + step) / (10 + step))
    for average, model in zip(ema, models, strict=True):
        torch._foreach_lerp_(list(average.parameters()), list(model.parameters()), 1.0 - decay)


def psnr_db(error: torch.Tensor) -> torch.Tensor:
    """PSNR of mean squared errors of pixels in [-1, 1] (a value range of 2)."""
    return 10 * torch.log10(4.0 / error)


def flow_pair(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified flow: the noisy input ``(1 - s) x0 + s noise`` and the velocity target ``noise - x0``."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1)))
    return (1.0 - s) * x0 + s * noise, noise - x0


def sample_sigmas(count: int, shift: float, device: torch.device) -> torch.Tensor:
    """Logit-normal noise levels, shifted as the sampler's time shift shifts its schedule."""
    u = torch.sigmoid(torch.randn(count, device=device))
    return shift * u / (1.0 + (shift - 1.0) * u)


# --------------------------------------------------------------------------------------------------
# Saving.


def storage_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A ``dtype`` copy of a model; the modules its class keeps in fp32 (time embeddings, norms) stay fp32."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    copied = copy.deepcopy(model).eval()
    torch.nn.Module.to(copied, dtype)  # the plain cast; Diffusers' own .to() warns about the fp32 modules
    for name, module in copied.named_modules():
        if keep.intersection(name.split(".")):
            module.float()
    return copied


def portable_tokenizer_class(directory: Path, names: Sequence[str] = ("tokenizer",)) -> None:
    """Name the saved tokenizers ``PreTrainedTokenizerFast``, which transformers 4 and 5 both load."""
    index_path = directory / "model_index.json"
    index = json.loads(index_path.read_text())
    for name in names:
        index[name] = ["transformers", "PreTrainedTokenizerFast"]
        config_path = directory / name / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, indent=2) + "\n")
    index_path.write_text(json.dumps(index, indent=2) + "\n")


def write_record(directory: Path, record: dict[str, Any]) -> None:
    (directory / "train_record.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


def read_record(directory: Path) -> dict[str, Any]:
    """The training record saved beside a pipeline (empty if there is none)."""
    path = directory / "train_record.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def load_matching(
    pipeline_class: type[DiffusionPipeline], directory: Path, expected: DiffusionPipeline, ignored: set[str]
) -> DiffusionPipeline:
    """A saved pipeline in fp32, to resume training from; refused unless its transformer and VAE have
    the sizes of ``expected``'s (config entries in ``ignored`` aside: those measured by training)."""
    if not (directory / "model_index.json").is_file():
        raise ValueError(f"--resume needs a pipeline saved by this script; {directory} has no model_index.json")
    pipe = pipeline_class.from_pretrained(directory, dtype=torch.float32)
    for name in ("transformer", "vae"):
        saved, wanted = (json.loads(json.dumps(getattr(p, name).config)) for p in (pipe, expected))  # tuples as lists
        sizes = [k for k in wanted if not k.startswith("_") and k not in ignored]
        differing = sorted(k for k in sizes if saved.get(k) != wanted[k])
        if differing:
            raise ValueError(f"--resume {directory}: its {name} differs from this script's model in {differing}")
    return pipe


def save_pipeline(
    pipe: DiffusionPipeline,
    call_defaults: dict[str, Any],
    out: Path,
    record: dict[str, Any],
    tokenizers: Sequence[str] = ("tokenizer",),
) -> None:
    """Write the pipeline, its call defaults and the training record to ``out`` (replacing it whole)."""
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True, max_shard_size=MAX_SHARD_SIZE)
    portable_tokenizer_class(staging, tokenizers)
    (staging / GENERATION_DEFAULTS_FILE).write_text(json.dumps(call_defaults, indent=2) + "\n")
    write_record(staging, record)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    sizes = [p.stat().st_size for p in out.rglob("*") if p.is_file()]
    print(f"saved {out}: {sum(sizes) / 2**20:.1f} MiB in {len(sizes)} files, largest {max(sizes) / 2**20:.1f} MiB")
