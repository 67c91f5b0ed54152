"""One call for a style-aligned set: ``aligned_batch(pipe, style, subjects)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import PIL.Image
import torch

from dit_accel.api import apply

PROMPT_TEMPLATE = "{subject}, {style}"


def aligned_batch(
    pipe: Any,
    style: str,
    subjects: Sequence[str],
    *,
    reference_image: PIL.Image.Image | torch.Tensor | None = None,
    template: str = PROMPT_TEMPLATE,
    options: Mapping[str, Any] | None = None,
    **pipe_kwargs: Any,
) -> Any:
    """Generate one image per subject, all in one style, with AlignedGen on for this call only.

    Args:
        pipe: a ``FluxPipeline``.
        style: the shared style phrase, e.g. ``"in the style of a watercolor painting"``.
        subjects: what each image shows; the first is the style reference unless ``reference_image`` is given.
        reference_image: optional external style image (same size as the generated images).
        template: how a prompt is built from a subject and the style.
        options: ``aligned_gen`` options (``style_lambda``, ``attention="topk"``, ``density``, ...).
        **pipe_kwargs: passed to the pipeline call (``num_inference_steps``, ``generator``, ...).

    Returns:
        The pipeline's ``images`` (PIL images unless ``output_type`` says otherwise), one per subject.
    """
    if not isinstance(style, str) or not style.strip():
        raise ValueError(f"style must be a non-empty string, got {style!r}")
    if isinstance(subjects, str) or not all(isinstance(s, str) and s.strip() for s in subjects):
        raise TypeError(f"subjects must be a sequence of non-empty strings, got {subjects!r}")
    if len(subjects) < (1 if reference_image is not None else 2):
        raise ValueError(
            f"subjects needs at least 2 entries (the first is the style reference) unless reference_image is given, "
            f"got {len(subjects)}"
        )
    if "prompt" in pipe_kwargs:
        raise TypeError("aligned_batch builds the prompts from style and subjects; do not pass prompt")
    prompts = [template.format(subject=subject, style=style) for subject in subjects]
    with apply(pipe, "aligned_gen", reference_image=reference_image, **dict(options or {})):
        return pipe(prompt=prompts, **pipe_kwargs).images
