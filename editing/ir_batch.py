"""One call for a multi-subject consistent batch: ``ir_batch(pipe, references, targets, ...)``.

A reference region may be a phrase of its prompt instead of a box or mask: its mask then comes from
attention (AttenCraft's concept masks, :mod:`dit_accel.editing.attencraft_masks`, at the setting tuned
on the tiny FLUX), from one generation of the reference prompt alone with the same seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dit_accel.api import apply

from .attencraft_masks import concept_masks
from .regions import Region

# AttenCraft's tuned setting on the tiny FLUX (benchmarks/attencraft_eval.py): A^2 · c, floor 0.7, no background map.
ATTENTION_MASK_SETTING = {"power": 2, "margin": 0.1, "floor": 0.7, "background": None}


def _prompts(name: str, prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise TypeError(f"{name} must be a non-empty sequence of non-empty strings, got {prompts!r}")
    return list(prompts)


def ir_batch(
    pipe: Any,
    references: Sequence[str],
    targets: Sequence[str],
    reference_regions: Sequence[Region | str],
    target_regions: Sequence[Sequence[Region]],
    *,
    seed: int | None = None,
    options: Mapping[str, Any] | None = None,
    **pipe_kwargs: Any,
) -> Any:
    """Generate ``[references..., targets...]`` with IR-Diffusion on for this call only.

    Args:
        pipe: a ``FluxPipeline``.
        references: one prompt per subject; image i shows subject i alone.
        targets: the prompts of the scenes the subjects appear in.
        reference_regions: subject i's box ``(x0, y0, x1, y1)`` (fractions) or mask in reference image i,
            or a phrase of its prompt (``"red star"``): the mask then comes from attention (needs ``seed``).
        target_regions: per target, one box or mask per subject.
        seed: image i uses ``torch.Generator().manual_seed(seed + i)`` (instead of a ``generator`` argument).
        options: other ``ir_diffusion`` options (``reposition="crop"``, ``attention="topk"``, ``density``, ...).
        **pipe_kwargs: passed to the pipeline call (``num_inference_steps``, ``generator``, ...).

    Returns:
        The pipeline's ``images``: the references first, then the targets.
    """
    prompts = _prompts("references", references) + _prompts("targets", targets)
    if "prompt" in pipe_kwargs:
        raise TypeError("ir_batch builds the prompts from references and targets; do not pass prompt")
    if len(reference_regions) != len(references) or len(target_regions) != len(targets):
        raise ValueError(
            f"one region per reference and one list of regions per target: got {len(references)} references with "
            f"{len(reference_regions)} regions, {len(targets)} targets with {len(target_regions)} region lists"
        )
    if seed is not None:
        if "generator" in pipe_kwargs:
            raise TypeError("pass seed or generator, not both")
        pipe_kwargs["generator"] = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    if any(isinstance(region, str) for region in reference_regions):
        reference_regions = attention_regions(pipe, references, reference_regions, seed, pipe_kwargs)
    regions = {"reference_regions": tuple(reference_regions), "target_regions": tuple(map(tuple, target_regions))}
    with apply(pipe, "ir_diffusion", **regions, **dict(options or {})):
        return pipe(prompt=prompts, **pipe_kwargs).images


def attention_regions(
    pipe: Any, references: Sequence[str], regions: Sequence[Region | str], seed: int | None, call: Mapping[str, Any]
) -> list[Region]:
    """``regions`` with each phrase replaced by its attention mask in reference i generated alone (seed + i)."""
    if seed is None:
        raise ValueError("reference regions given as phrases (masks from attention) need seed=... to regenerate them")
    call = {name: value for name, value in call.items() if name not in ("generator", "output_type")}
    out: list[Region] = []
    for i, (prompt, region) in enumerate(zip(references, regions, strict=True)):
        if not isinstance(region, str):
            out.append(region)
            continue
        mask = concept_masks(pipe, prompt, [region], seed=seed + i, **ATTENTION_MASK_SETTING, **call).masks[0]
        if not mask.any():
            raise ValueError(f"no pixel of reference {i} ({prompt!r}) belongs to {region!r} by its attention")
        out.append(mask)
    return out
