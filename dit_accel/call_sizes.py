"""Which sizes a pipeline's model can generate, and the call size to use when none is given.

Checked before any run, so a bad height or frame count gets a message that says what is allowed
instead of failing deep inside the model (RoPE tables, patch embeddings) minutes later. On a CPU the
default call is small enough to finish in about a minute on 2 cores; on a GPU it is the model's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The CPU call: on the shipped tiny model (VAE 4x in time and space, 2x2 patches) 17 frames of 96x96
# make 5x12x12 = 720 video tokens, enough for topk's 128-token query blocks to run sparse (Wan's 8x
# VAE: 5x6x6 = 180, and they run dense, which the result then says). About 45 s for dense and topk
# on 2 idle cores.
CPU_CALL = {"num_frames": 17, "height": 96, "width": 96, "num_inference_steps": 8}
SIZE_NAMES = ("num_frames", "height", "width", "num_inference_steps")


@dataclass(frozen=True)
class SizeRules:
    """Allowed sizes: height/width multiples of ``multiple``; frames ``frame_step * k + 1``; at most
    ``max_positions`` latent positions per axis (the RoPE table), when the model has such a limit."""

    pipeline: str
    multiple: int
    frame_step: int | None
    max_positions: int | None

    def check(self, height: int | None, width: int | None, num_frames: int | None) -> None:
        """Raise ``ValueError`` naming the allowed values when a given size does not fit the model."""
        for name, value in (("height", height), ("width", width)):
            if value is None:
                continue
            top = self.multiple * self.max_positions if self.max_positions else None
            if value % self.multiple or (top and value > top):
                limit = f" up to {top}" if top else ""
                raise ValueError(
                    f"{name} must be a multiple of {self.multiple}{limit} for {self.pipeline}, got {value}"
                )
        if num_frames is None or self.frame_step is None:
            return
        top = self.frame_step * (self.max_positions - 1) + 1 if self.max_positions else None
        if (num_frames - 1) % self.frame_step or (top and num_frames > top):
            step = self.frame_step
            allowed = f"{step}k+1 (1, {step + 1}, {2 * step + 1}, ...{f', {top}' if top else ''})"
            raise ValueError(f"num_frames must be {allowed} for {self.pipeline}, got {num_frames}")


def size_rules(pipe: Any) -> SizeRules:
    """The size rules of ``pipe``'s transformer and VAE (Wan, HunyuanVideo, FLUX)."""
    config = pipe.transformer.config
    spatial = getattr(pipe, "vae_scale_factor_spatial", None) or getattr(pipe, "vae_scale_factor", 8)
    patch = config.patch_size[-1] if isinstance(config.patch_size, (tuple, list)) else config.patch_size
    return SizeRules(
        pipeline=type(pipe).__name__,
        multiple=spatial * max(patch, 2),  # FLUX has patch 1 but packs 2x2 latents
        frame_step=getattr(pipe, "vae_scale_factor_temporal", None),
        max_positions=getattr(config, "rope_max_seq_len", None),
    )


def resolve_call(
    given: dict[str, Any], model_defaults: dict[str, Any], on_cpu: bool, video: bool
) -> tuple[dict[str, Any], str | None]:
    """Sizes, steps and guidance for a call: ``given`` (None: default) over the defaults, which are
    :data:`CPU_CALL` over the model's own (``generation_defaults.json``) on a CPU. The note says
    which size the CPU defaults chose, or is None when they chose nothing."""
    defaults = {**model_defaults, **CPU_CALL} if on_cpu else model_defaults
    call = {
        name: defaults.get(name) if given.get(name) is None else given[name] for name in (*SIZE_NAMES, "guidance_scale")
    }
    if not video:
        call["num_frames"] = None
    if not on_cpu or all(given.get(name) is not None for name in SIZE_NAMES if call[name] is not None):
        return call, None
    native = ", ".join(f"{name}={model_defaults[name]}" for name in SIZE_NAMES if name in model_defaults)
    frames = f"{call['num_frames']} frames of " if video else ""
    note = (
        f"CPU defaults: {frames}{call['height']}x{call['width']}, {call['num_inference_steps']} steps, to finish "
        f"in about a minute{f' (the model was trained for {native})' if native else ''}; give a size and "
        "steps to change them"
    )
    return call, note
