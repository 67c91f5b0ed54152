"""AttenCraft customisation: LoRA adapters on a FLUX transformer that learn the concepts of one image.

Each step samples a subset of the concepts (``uniform``ly, or ``reweighted`` towards the concepts whose
attention fits their masks worst), noises the image's latents at a random flow-matching time, and
minimises

* the masked diffusion loss: the velocity error over the latent tokens of the sampled concepts' masks;
* plus ``attention_weight`` × the attention loss: the Jensen–Shannon divergence between each sampled
  concept's text→image attention map (its tokens, averaged over heads and blocks, captured in the
  same forward by :mod:`dit_accel.editing.attention_maps`) and its mask, both as distributions over
  the image tokens.

Every ``mask_every`` steps the masks are recomputed from the current model's attention on the image
(:func:`~dit_accel.editing.attencraft_masks.masks_from_maps`) and kept only if their SSIM with the
previous masks is at least ``mask_ssim`` (0.8). The concepts are phrases of the prompt (existing words
or new placeholder words the tokenizer knows). A step's prompt names what it trains (union sampling, as
Break-A-Scene, which AttenCraft builds on): with ``subset_template`` set, a step that samples only some
of the concepts is prompted with the template holding their phrases ("a photo of {}" → "a photo of red
star"), so that one-concept prompts later call up that concept alone; a step that samples them all, or
any step without a template, is prompted with the image's whole prompt.

The adapters are saved in Diffusers' LoRA format (``pytorch_lora_weights.safetensors``; a
``checkpoint-<step>`` folder every ``save_every`` steps and the final one in ``out_dir``), so the
trained concepts load into the normal pipeline with ``FluxPipeline.load_lora_weights(out_dir)``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from dit_accel.metrics import ssim

from .attencraft_masks import ConceptMasks, masks_from_maps
from .attencraft_prompts import StepPrompts, StepText
from .attention_maps import AttentionMapCapture, capture_attention_maps

SAMPLING = ("uniform", "reweighted")
# FLUX's attention projections, its double-stream blocks' feed-forwards, its single-stream blocks' MLP and
# every layer named proj_out (the single blocks' and the model's output projection: peft matches names by
# their ending). The shape of an object is drawn by the MLPs as much as by the attention.
LORA_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out",
)  # fmt: skip
ADAPTER = "attencraft"
MASK_SIGMA = 0.5  # noise level of the forward the masks are recomputed from


@dataclass
class AttenCraftTrainConfig:
    """Options of :func:`train_attencraft`.

    Attributes:
        steps: optimizer steps. lr: AdamW learning rate. rank: LoRA rank (alpha = rank).
        attention_weight: factor on the attention (JS) loss; 0 trains on the masked diffusion loss only.
        sampling: ``"uniform"`` or ``"reweighted"`` (by each concept's running attention loss).
        mask_every: recompute the masks every this many steps (0: never); mask_ssim: SSIM they need
            with the previous masks to be accepted.
        save_every: checkpoint interval in steps (0: only the final adapter).
        blocks: attention blocks whose maps the attention loss reads (None: all).
        power, margin, floor: mask settings of the recomputation (see ``masks_from_maps``).
        seed: seed of the noise, times and concept draws.
        subset_template: prompt of a step that samples some of the concepts, ``{}`` standing for their
            phrases joined by ``subset_joiner`` (Break-A-Scene's "a photo of {}"), or several such prompts
            (each step draws one, as textual inversion's template lists); None prompts every step with
            the whole prompt. A model with a closed vocabulary (the tiny FLUX) needs its own words here.
        lora_targets: names of the linear layers that get adapters (peft ``target_modules``).
    """

    steps: int = 200
    lr: float = 1e-4
    rank: int = 8
    attention_weight: float = 0.1
    sampling: str = "uniform"
    mask_every: int = 20
    mask_ssim: float = 0.8
    save_every: int = 0
    blocks: tuple[int, int] | None = None
    power: int = 2
    margin: float = 0.1
    floor: float = 0.7
    seed: int = 0
    subset_template: str | tuple[str, ...] | None = "a photo of {}"
    subset_joiner: str = " and "
    lora_targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self) -> None:
        for name, least in (("steps", 1), ("rank", 1), ("mask_every", 0), ("save_every", 0), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not self.attention_weight >= 0:
            raise ValueError(f"attention_weight must be >= 0, got {self.attention_weight!r}")
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {self.sampling!r}")
        if not 0.0 <= self.mask_ssim <= 1.0:
            raise ValueError(f"mask_ssim must be in [0, 1], got {self.mask_ssim!r}")
        if isinstance(self.subset_template, list):
            self.subset_template = tuple(self.subset_template)
        if self.subset_template is not None and not (
            isinstance(self.subset_template, (str, tuple))
            and self.templates
            and all(isinstance(t, str) and t.count("{}") == 1 for t in self.templates)
        ):
            raise ValueError(
                f"subset_template must be a string with one '{{}}' or a non-empty sequence of them, "
                f"got {self.subset_template!r}"
            )
        if not isinstance(self.subset_joiner, str):
            raise ValueError(f"subset_joiner must be a string, got {self.subset_joiner!r}")
        if isinstance(self.lora_targets, str):
            self.lora_targets = (self.lora_targets,)
        if isinstance(self.lora_targets, list):
            self.lora_targets = tuple(self.lora_targets)
        if not (
            isinstance(self.lora_targets, tuple)
            and self.lora_targets
            and all(isinstance(t, str) and t for t in self.lora_targets)
        ):
            raise ValueError(
                f"lora_targets must be a layer name or a non-empty sequence of them, got {self.lora_targets!r}"
            )

    @property
    def templates(self) -> tuple[str, ...]:
        """The one-concept-subset prompt templates (empty: every step gets the whole prompt)."""
        if self.subset_template is None:
            return ()
        return (self.subset_template,) if isinstance(self.subset_template, str) else self.subset_template


@dataclass
class TrainResult:
    """What :func:`train_attencraft` did: the adapter folder, per-step losses, mask updates, final masks."""

    out_dir: Path
    losses: list[dict[str, float]] = field(default_factory=list)
    mask_updates: list[dict[str, Any]] = field(default_factory=list)
    labels: torch.Tensor | None = None


def js_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Jensen–Shannon divergence (nats) of two non-negative ``(..., N)`` maps, each normalised to sum 1."""
    p = p / p.sum(dim=-1, keepdim=True).clamp_min(eps)
    q = q / q.sum(dim=-1, keepdim=True).clamp_min(eps)
    m = (p + q) / 2

    def kl(a: torch.Tensor) -> torch.Tensor:
        return (a * ((a + eps).log() - (m + eps).log())).sum(dim=-1)

    return (kl(p) + kl(q)) / 2


def token_masks(labels: torch.Tensor, count: int, grid: tuple[int, int]) -> torch.Tensor:
    """``(K, N)`` share of each latent token covered by concept k's pixels (``labels`` at pixel size)."""
    onehot = torch.stack([(labels == k).float() for k in range(count)])[:, None]
    return F.adaptive_avg_pool2d(onehot, grid)[:, 0].flatten(1)


def sample_concepts(weights: torch.Tensor, generator: torch.Generator) -> list[int]:
    """A non-empty subset: its size uniform in 1..K, its members drawn without replacement by ``weights``."""
    size = int(torch.randint(1, weights.numel() + 1, (1,), generator=generator))
    return sorted(torch.multinomial(weights, size, replacement=False, generator=generator).tolist())


@dataclass
class _Batch:
    """The training image as the transformer sees it."""

    latents: torch.Tensor  # (1, N, C) packed
    image_ids: torch.Tensor
    grid: tuple[int, int]

    def forward(
        self, model: torch.nn.Module, text: StepText, noise: torch.Tensor, sigma: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The predicted and the true velocity at noise level ``sigma`` under the prompt ``text``."""
        noisy = (1 - sigma) * self.latents + sigma * noise
        guidance = torch.ones(1, device=noisy.device) if model.config.guidance_embeds else None
        out = model(
            hidden_states=noisy, timestep=torch.full((1,), sigma, device=noisy.device), guidance=guidance,
            pooled_projections=text.pooled, encoder_hidden_states=text.prompt_embeds, txt_ids=text.text_ids,
            img_ids=self.image_ids, return_dict=False,
        )[0]  # fmt: skip
        return out, noise - self.latents


@torch.no_grad()
def _batch(pipe: Any, image: PIL.Image.Image) -> _Batch:
    device, dtype = pipe.transformer.device, pipe.transformer.dtype
    pixels = pipe.image_processor.preprocess(image).to(device, pipe.vae.dtype)
    latents = pipe.vae.encode(pixels).latent_dist.mean
    latents = (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    _, channels, height, width = latents.shape
    packed = pipe._pack_latents(latents.to(dtype), 1, channels, height, width)
    image_ids = pipe._prepare_latent_image_ids(1, height // 2, width // 2, device, dtype)
    return _Batch(packed, image_ids, (height // 2, width // 2))


def _trainable_attention(device: torch.device) -> contextlib.AbstractContextManager:
    """SDPA without cuDNN on CUDA while training: cuDNN's SDPA backward failed on the H200 with torch 2.11
    (an illegal memory access training the tiny FLUX, see its model card), and the one bf16 run of this
    training there ended in NaN losses that the CPU does not reproduce; flash / memory-efficient attention
    train the same model."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _masks_now(
    model: torch.nn.Module, batch: _Batch, text: StepText, size: tuple[int, int], cfg: AttenCraftTrainConfig
) -> ConceptMasks:
    """Masks from the current model's attention on the image noised at :data:`MASK_SIGMA` (fixed noise)
    under the whole prompt ``text``."""
    noise = torch.randn(batch.latents.shape, generator=torch.Generator().manual_seed(cfg.seed)).to(batch.latents)
    with torch.no_grad(), capture_attention_maps(model, blocks=cfg.blocks, forwards=None) as capture:
        batch.forward(model, text, noise, MASK_SIGMA)
    return masks_from_maps(capture.result(), text.tokens, None, size, cfg.power, cfg.margin, floor=cfg.floor)


def _mask_similarity(a: torch.Tensor, b: torch.Tensor, count: int) -> float:
    """Mean SSIM of the concepts' binary masks in two label images."""
    return float(np.mean([ssim((a == k).float().numpy(), (b == k).float().numpy(), 1.0) for k in range(count)]))


def save_adapter(pipe: Any, folder: Path) -> None:
    """The transformer's AttenCraft adapter in Diffusers' format (loadable by ``pipe.load_lora_weights``)."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(pipe.transformer, adapter_name=ADAPTER)
    type(pipe).save_lora_weights(folder, transformer_lora_layers=state)


def train_attencraft(
    pipe: Any,
    image: PIL.Image.Image,
    prompt: str,
    concepts: list[str],
    out_dir: str | Path,
    masks: ConceptMasks | torch.Tensor | None = None,
    config: AttenCraftTrainConfig | None = None,
    max_sequence_length: int = 512,
) -> TrainResult:
    """Train LoRA adapters on ``pipe.transformer`` (FLUX) for the ``concepts`` of ``image`` (AttenCraft).

    Args:
        image, prompt: the training image and its prompt; concepts: phrases of the prompt.
        masks: the concepts' masks (a :class:`ConceptMasks` from ``concept_masks`` or ``(H, W)`` labels
            at the image size, concept index or -1); None computes them from the model's attention on the image.
        out_dir: where the adapter (and checkpoints, ``attencraft_train.json``) go.

    The pipeline's transformer is left without the adapter; load it with ``pipe.load_lora_weights(out_dir)``.
    """
    from accelerate import Accelerator
    from peft import LoraConfig

    cfg = config or AttenCraftTrainConfig()
    if not concepts:
        raise ValueError("give at least one concept")
    prompts = StepPrompts(pipe, prompt, concepts, cfg.templates, cfg.subset_joiner, max_sequence_length)
    whole = prompts.whole()
    size = (image.height, image.width)
    labels = masks.labels if isinstance(masks, ConceptMasks) else masks
    if labels is not None and tuple(labels.shape) != size:
        raise ValueError(f"masks are {tuple(labels.shape)}, the image is {size}")
    labels = None if labels is None else labels.cpu()  # masks and attention maps are compared on the CPU
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = pipe.transformer
    batch = _batch(pipe, image)
    if labels is None:
        labels = _masks_now(model, batch, whole, size, cfg).labels
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.rank, target_modules=list(cfg.lora_targets), init_lora_weights=True)
    had_adapters = bool(getattr(model, "peft_config", None))
    with torch.random.fork_rng(devices=[]):  # the adapters' initial weights (made on the CPU) follow cfg.seed
        torch.default_generator.manual_seed(cfg.seed)
        model.add_adapter(lora, adapter_name=ADAPTER)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(".lora_" in name)
    parameters = [p for p in model.parameters() if p.requires_grad]
    accelerator = Accelerator(cpu=model.device.type != "cuda")
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(cfg.seed)
    # the template draws apart, so that runs differing only in their templates share noise and times
    draws = torch.Generator().manual_seed(cfg.seed + 1)
    running = torch.ones(len(concepts))
    result = TrainResult(out)
    try:
        target = token_masks(labels, len(concepts), batch.grid)
        with (
            _trainable_attention(model.device),
            capture_attention_maps(model, blocks=cfg.blocks, forwards=None, affinity=False) as capture,
        ):
            for step in range(1, cfg.steps + 1):
                chosen = sample_concepts(
                    running if cfg.sampling == "reweighted" else torch.ones(len(concepts)), generator
                )
                losses = _train_step(model, batch, capture, prompts.draw(chosen, draws), target, chosen, cfg, generator)
                if not torch.isfinite(losses["total"]):
                    raise FloatingPointError(
                        f"AttenCraft training: the loss is {losses['total'].item()} at step {step} ({model.dtype} "
                        f"on {model.device}); no adapter was saved. Train in float32 (--dtype float32) or lower lr."
                    )
                accelerator.backward(losses["total"])
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                for k, value in zip(chosen, losses["per_concept"].tolist(), strict=True):
                    running[k] = 0.9 * running[k] + 0.1 * value + 1e-6
                values = {name: losses[name].item() for name in ("total", "diffusion", "attention")}
                result.losses.append({"step": step, "concepts": chosen, **values})
                if cfg.mask_every and step % cfg.mask_every == 0:
                    capture.clear()
                    new = _masks_now(model, batch, whole, size, cfg).labels
                    similarity = _mask_similarity(new, labels, len(concepts))
                    accepted = similarity >= cfg.mask_ssim
                    result.mask_updates.append({"step": step, "ssim": similarity, "accepted": accepted})
                    if accepted:
                        labels, target = new, token_masks(new, len(concepts), batch.grid)
                if cfg.save_every and step % cfg.save_every == 0:
                    save_adapter(pipe, out / f"checkpoint-{step}")
        save_adapter(pipe, out)
        info = {"prompt": prompt, "concepts": concepts, "tokens": whole.tokens, "config": asdict(cfg),
                "losses": result.losses, "mask_updates": result.mask_updates}  # fmt: skip
        (out / "attencraft_train.json").write_text(json.dumps(info, indent=1) + "\n")
        result.labels = labels
    finally:
        accelerator.unwrap_model(model, keep_fp32_wrapper=False)
        if had_adapters:
            pipe.transformer.delete_adapters(ADAPTER)
        else:
            pipe.transformer.unload_lora()  # the original linear layers back
        for name, parameter in pipe.transformer.named_parameters():
            parameter.requires_grad_(flags.get(name, parameter.requires_grad))
    return result


def _train_step(
    model: torch.nn.Module,
    batch: _Batch,
    capture: AttentionMapCapture,
    text: StepText,
    target: torch.Tensor,
    chosen: list[int],
    cfg: AttenCraftTrainConfig,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """One forward under the step's prompt ``text`` (``text.tokens[i]``: where concept ``chosen[i]`` is):
    the masked diffusion loss over the chosen concepts' tokens and their attention (JS) loss."""
    noise = torch.randn(batch.latents.shape, generator=generator).to(batch.latents)
    sigma = float(torch.rand(1, generator=generator).clamp(0.02, 0.98))
    capture.clear()
    predicted, velocity = batch.forward(model, text, noise, sigma)
    error = (predicted - velocity).float().pow(2).mean(dim=-1)[0]  # (N,)
    union = target[chosen].amax(dim=0).to(error.device)  # (N,); the masks and maps live on the CPU
    diffusion = (error * union).sum() / union.sum().clamp_min(1.0)
    maps = capture.result()
    attention_maps = torch.stack([maps.token_maps(positions) for positions in text.tokens])
    per_concept = js_divergence(attention_maps, target[chosen])
    attention = per_concept.mean()
    total = diffusion + cfg.attention_weight * attention if cfg.attention_weight else diffusion
    return {"total": total, "diffusion": diffusion, "attention": attention, "per_concept": per_concept.detach()}
