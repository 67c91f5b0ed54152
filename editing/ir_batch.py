"""One call for a multi-subject consistent batch: ``ir_batch(pipe, references, targets, ...)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dit_accel.api import apply

from .regions import Region


def _prompts(name: str, prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise TypeError(f"{name} must be a non-empty sequence of non-empty strings, got {prompts!r}")
    return list(prompts)


def ir_batch(
    pipe: Any,
    references: Sequence[str],
    targets: Sequence[str],
    reference_regions: Sequence[Region],
    target_regions: Sequence[Sequence[Region]],
    *,
    options: Mapping[str, Any] | None = None,
    **pipe_kwargs: Any,
) -> Any:
    """Generate ``[references..., targets...]`` with IR-Diffusion on for this call only.

    Args:
        pipe: a ``FluxPipeline``.
        references: one prompt per subject; image i shows subject i alone.
        targets: the prompts of the scenes the subjects appear in.
        reference_regions: subject i's box ``(x0, y0, x1, y1)`` (fractions) or mask in reference image i.
        target_regions: per target, one box or mask per subject.
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
    regions = {"reference_regions": tuple(reference_regions), "target_regions": tuple(map(tuple, target_regions))}
    with apply(pipe, "ir_diffusion", **regions, **dict(options or {})):
        return pipe(prompt=prompts, **pipe_kwargs).images
