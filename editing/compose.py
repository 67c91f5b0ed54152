"""One call for a PrimeComposer composite: ``compose(pipe, background, object_image, object_mask, box, prompt)``.

Steps: place the object in the box (:mod:`~dit_accel.editing.prime_inputs`); invert the background
and the pasted composite (:mod:`~dit_accel.editing.flow_inversion`); generate from the composite's
inverted noise with ``prime_composer`` applied (attention steering by the correlation branch and
region-constrained text attention), while **progressive blending** puts the background's inverted
latents back outside the box after every step until ``blend_until`` (τ_b) of the steps; the rest
of the steps denoise freely, which heals the box border.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import PIL.Image
import torch

from dit_accel.api import apply
from dit_accel.config import check_range

from .flow_inversion import PromptInputs, Velocity, encode_image, flux_sigmas, invert
from .prime_correlation import CompositionPlan
from .prime_inputs import Placement, place_object, text_token_positions, token_mask


@dataclass
class Composition:
    """The result of :func:`compose`: the composite, the paste baseline and the masks used."""

    image: PIL.Image.Image
    placement: Placement
    plan: CompositionPlan


def compose(
    pipe: Any,
    background: Any,
    object_image: Any,
    object_mask: Any,
    box: tuple[int, int, int, int],
    prompt: str,
    *,
    object_text: str | None = None,
    blend_until: float = 0.8,
    inversion: str = "ode",
    num_inference_steps: int = 20,
    max_sequence_length: int = 512,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    **pipe_kwargs: Any,
) -> Composition:
    """Put ``object_image``'s masked object into ``box`` of ``background`` (a ``FluxPipeline``, PrimeComposer).

    Args:
        pipe: a ``FluxPipeline``.
        background: RGB background (PIL or ``(H, W, 3)`` uint8); the output has its size.
        object_image, object_mask: the object's image and its mask (same size; nonzero = object).
        box: ``(x0, y0, x1, y1)`` pixels, half-open, where the object goes (it is stretched to fill it).
        prompt: the scene with the object, e.g. ``"a red star on a striped gray background"``.
        object_text: the words of ``prompt`` naming the object; their tokens are kept inside the box.
            ``None``: no region-constrained text attention.
        blend_until: τ_b, the fraction of steps after which the background is no longer blended in.
        inversion: ``"ode"`` or ``"noise"`` (see :mod:`~dit_accel.editing.flow_inversion`).
        num_inference_steps, max_sequence_length: as for the pipeline.
        seed: seed of the noise inversion.
        options: ``prime_composer`` options (``steer_until``, ``blocks``, ``attention="topk"``, ``density``...).
        **pipe_kwargs: passed to the pipeline call; a ``callback_on_step_end`` runs after each step's
            blending. Leave guidance off (``true_cfg_scale`` 1, FLUX-dev's ``guidance_scale`` as inverted): the
            ODE inversion follows the unguided velocity, and a guided generator does not retrace it (on the
            tiny FLUX at ``true_cfg_scale=4`` the object is lost).
    """
    check_range("blend_until", blend_until, 0.0, 1.0)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    reserved = sorted({"prompt", "latents", "height", "width"} & set(pipe_kwargs))
    if reserved:
        raise TypeError(f"compose sets {reserved} itself; do not pass them")
    pixels_per_token = pipe.vae_scale_factor * 2
    placement = place_object(background, object_image, object_mask, box, pixels_per_token)
    text_tokens = ()
    if object_text is not None:
        text_tokens = text_token_positions(pipe.tokenizer_2, prompt, object_text, max_sequence_length)
    width, height = placement.pasted.size
    grid = (height // pixels_per_token, width // pixels_per_token)
    sigmas = flux_sigmas(pipe, num_inference_steps, grid[0] * grid[1])
    prompt_inputs = PromptInputs.encode(pipe, prompt, max_sequence_length)
    velocity = Velocity(pipe, prompt_inputs, grid) if inversion == "ode" else None
    background_path = invert(encode_image(pipe, placement.background), sigmas, velocity, inversion, seed)
    composite_path = invert(encode_image(pipe, placement.pasted), sigmas, velocity, inversion, seed)
    outside = ~token_mask(placement.box_mask, pixels_per_token)
    plan = CompositionPlan(
        composite=composite_path,
        sigmas=sigmas,
        objects=token_mask(placement.object_mask, pixels_per_token),
        outside=outside,
        text_tokens=text_tokens,
        prompt_embeds=prompt_inputs.embeds,
    )
    blend_steps = round(blend_until * num_inference_steps)
    after_step = pipe_kwargs.pop("callback_on_step_end", None)

    def outside_from_background(latents: torch.Tensor, index: int) -> torch.Tensor:
        keep = outside.to(latents.device)[None, :, None]
        return torch.where(keep, background_path[index].to(latents), latents)

    def blend(pipeline: Any, step: int, timestep: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        latents = tensors["latents"]
        if step + 1 <= blend_steps:
            latents = outside_from_background(latents, step + 1)
        tensors = {**tensors, "latents": latents}
        return tensors if after_step is None else after_step(pipeline, step, timestep, tensors)

    start = outside_from_background(composite_path[0], 0) if blend_steps else composite_path[0]
    with apply(pipe, "prime_composer", plan=plan, **dict(options or {})):
        image = pipe(
            prompt=prompt,
            height=height,
            width=width,
            latents=start.to(pipe.transformer.device, pipe.transformer.dtype),
            num_inference_steps=num_inference_steps,
            max_sequence_length=max_sequence_length,
            callback_on_step_end=blend,
            **pipe_kwargs,
        ).images[0]
    return Composition(image=image, placement=placement, plan=plan)
