"""AlignedGen's external style reference: a user image as the reference instead of image 0.

The image is encoded once with the pipeline's VAE and packed as ``FluxPipeline`` packs latents.
Before every denoising step's first transformer call, a hook noises it to the step's sigma by flow
matching, ``x_t = (1 - sigma) x_0 + sigma eps`` (``eps`` fixed per handle, ``sigma`` from the
scheduler), and runs it once through the transformer with the call's first prompt. The op, in capture
mode, stores each sharing layer's :class:`~dit_accel.editing.reference.ReferenceFeatures` and
ends the pass after the last sharing layer. Later calls of the same step (true CFG) reuse them.
The hook is stateful, so the pipeline's end-of-call reset frees the cache.

The capture pass goes through Diffusers' hook chain below this hook (so the step tracker sees it);
Diffusers' block caches (FirstBlockCache, ...) would see it as an extra call and are not supported
together with an external reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import PIL.Image
import torch
from diffusers.hooks.hooks import HookRegistry, ModelHook

from dit_accel.pipelines import ModelAdapter, find_adapter
from dit_accel.pipelines.flux import raster_grid_from_ids
from dit_accel.steps import timestep_value

from .reference import CaptureComplete, ReferenceStore

HOOK_NAME = "dit_accel_aligned_gen_reference"
# Transformer arguments with a batch dimension; the capture pass takes their first sample.
BATCHED_ARGUMENTS = ("encoder_hidden_states", "pooled_projections", "timestep", "guidance")


@dataclass(frozen=True)
class StyleLatents:
    """The encoded style image: clean packed latents, the fixed noise, and its size.

    Attributes:
        latents: ``(1, N, C)`` packed clean latents ``x_0``.
        noise: ``(1, N, C)`` noise ``eps`` used at every step.
        grid: token grid ``(1, rows, cols)`` of the packed latents.
        pixels_per_token: image pixels per token side (VAE factor x 2x2 packing).
    """

    latents: torch.Tensor
    noise: torch.Tensor
    grid: tuple[int, int, int]
    pixels_per_token: int

    def noised(self, sigma: float, like: torch.Tensor) -> torch.Tensor:
        """``(1 - sigma) x_0 + sigma eps`` on ``like``'s device and dtype."""
        return ((1.0 - sigma) * self.latents + sigma * self.noise).to(device=like.device, dtype=like.dtype)

    def describe(self, grid: tuple[int, int, int]) -> str:
        """``WxH px (rows x cols tokens)`` of a token grid at this image's pixel scale."""
        _, rows, cols = grid
        return f"{cols * self.pixels_per_token}x{rows * self.pixels_per_token} px ({rows}x{cols} tokens)"


def image_size(image: PIL.Image.Image | torch.Tensor) -> tuple[int, int]:
    """``(height, width)`` of a PIL image or a ``(3, H, W)`` / ``(1, 3, H, W)`` tensor."""
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    if image.ndim == 3 or (image.ndim == 4 and image.shape[0] == 1):
        return int(image.shape[-2]), int(image.shape[-1])
    raise ValueError(f"reference_image tensor must be (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")


@torch.no_grad()
def encode_style_image(pipe: Any, image: PIL.Image.Image | torch.Tensor, seed: int) -> StyleLatents:
    """VAE-encode (distribution mode) and pack ``image`` as ``FluxPipeline`` packs its latents."""
    height, width = image_size(image)
    multiple = pipe.vae_scale_factor * 2
    if height % multiple or width % multiple:
        raise ValueError(
            f"reference_image is {width}x{height} px; its height and width must be multiples of {multiple} "
            "(the VAE factor times FLUX's 2x2 packing), and equal to the generated size"
        )
    pixels = pipe.image_processor.preprocess(image, height=height, width=width)
    vae = pipe.vae
    latents = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode()
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    _, channels, latent_h, latent_w = latents.shape
    packed = pipe._pack_latents(latents, 1, channels, latent_h, latent_w)
    noise = torch.randn(packed.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return StyleLatents(
        latents=packed.float(),
        noise=noise.to(packed.device),
        grid=(1, latent_h // 2, latent_w // 2),
        pixels_per_token=multiple,
    )


def sigma_at(scheduler: Any, timestep: float) -> float:
    """Sigma of the scheduler step whose timestep the FLUX transformer received (``t / num_train_timesteps``)."""
    timesteps = scheduler.timesteps.detach().double().cpu() / scheduler.config.num_train_timesteps
    return float(scheduler.sigmas[int((timesteps - timestep).abs().argmin())])


class StyleCaptureHook(ModelHook):
    """Before a transformer call of a new step, run the noised style image once to fill the store."""

    # Stateful: pipelines reset stateful hooks at the end of every call, which frees the cache.
    _is_stateful = True

    def __init__(self, style: StyleLatents, store: ReferenceStore, scheduler: Any, adapter: ModelAdapter) -> None:
        super().__init__()
        self.style = style
        self.store = store
        self.scheduler = scheduler
        self.adapter = adapter

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        arguments = self.adapter.bind_arguments(module, args, kwargs)
        timestep = timestep_value(arguments["timestep"])
        if self.store.timestep != timestep:
            self._capture(arguments, timestep)
        return args, kwargs

    def _capture(self, arguments: dict[str, Any], timestep: float) -> None:
        hidden = arguments["hidden_states"]
        grid = raster_grid_from_ids(arguments.get("img_ids"))
        if grid != self.style.grid or hidden.shape[-1] != self.style.latents.shape[-1]:
            generated = self.style.describe(grid) if grid is not None else f"{hidden.shape[1]} image tokens"
            raise ValueError(
                f"reference_image is {self.style.describe(self.style.grid)} but the pipeline generates {generated}; "
                "give a reference image of the generated size"
            )
        inputs = {name: value for name, value in arguments.items() if name != "self"}
        for name in BATCHED_ARGUMENTS:
            if inputs.get(name) is not None:
                inputs[name] = inputs[name][:1]
        inputs["hidden_states"] = self.style.noised(sigma_at(self.scheduler, timestep), like=hidden)
        inputs["joint_attention_kwargs"] = dict(inputs.get("joint_attention_kwargs") or {})
        inputs["return_dict"] = False
        self.store.clear()
        self.store.capturing = True
        try:
            self.fn_ref.forward(**inputs)
        except CaptureComplete:
            pass
        finally:
            self.store.capturing = False
        self.store.timestep = timestep

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.store.clear()
        return module


def attach_style_reference(
    pipe: Any,
    transformers: list[torch.nn.Module],
    image: PIL.Image.Image | torch.Tensor,
    seed: int,
    store: ReferenceStore,
) -> Callable[[], None]:
    """Encode ``image`` with ``pipe``'s VAE and hook the transformers; returns the function that undoes it."""
    if not all(hasattr(pipe, name) for name in ("vae", "image_processor", "_pack_latents", "scheduler")):
        raise ValueError(
            f"reference_image needs a FluxPipeline (its VAE encodes the image), got {type(pipe).__name__}; "
            "apply aligned_gen to the pipeline, not the transformer"
        )
    if not hasattr(pipe.scheduler, "sigmas"):
        raise ValueError(
            f"reference_image needs a flow-matching scheduler with sigmas, got {type(pipe.scheduler).__name__}"
        )
    style = encode_style_image(pipe, image, seed)
    for model in transformers:
        hook = StyleCaptureHook(style, store, pipe.scheduler, find_adapter(model))
        HookRegistry.check_if_exists_or_initialize(model).register_hook(hook, HOOK_NAME)

    def detach() -> None:
        for model in transformers:
            HookRegistry.check_if_exists_or_initialize(model).remove_hook(HOOK_NAME, recurse=False)
        store.clear()

    return detach
