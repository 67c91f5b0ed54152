"""AttenCraft's training-free concept masks from one FLUX generation (METHODS.md, AttenCraft).

For each concept (a phrase of the prompt) its text tokens' cross-attention map ``c`` is refined by the
image self-attention affinity ``A`` (row-stochastic, query pixel → key pixels): ``A^p · c`` spreads the
map over the pixels that attend to the same content (``p = 4``). Each refined map is normalised to
[0, 1]; a pixel belongs to concept ``k`` when its map beats every other map, the background's included,
by ``margin`` (0.1). The background's map comes from the first text token (METHODS.md), or from a
phrase or token of the prompt; pixels no concept wins by the margin are background too. FLUX's T5 has
no start token whose map is the background, so ``floor`` offers the other reading of "background
otherwise": a pixel whose best concept map stays below ``floor`` is background (on the tiny FLUX,
no background map and ``floor=0.7`` is the tuned setting: ``benchmarks/attencraft_eval.py``).

The masks feed AttenCraft's training (:mod:`dit_accel.editing.attencraft_train`) and other editors
(IR-Diffusion, PrimeComposer): :func:`masks_from_maps` works on any captured :class:`AttentionMaps`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from .attention_maps import AttentionMaps, capture_attention_maps

BACKGROUND = -1  # label of background pixels
OVERLAY_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


def phrase_positions(tokenizer: Any, prompt: str, phrase: str, max_length: int, start: int = 0) -> list[int]:
    """Text positions of ``phrase``'s tokens in ``prompt`` as the pipeline tokenises it (first occurrence
    at or after token ``start``).

    ``ValueError`` when the phrase is not in the (truncated) prompt."""
    ids = tokenizer(prompt, max_length=max_length, truncation=True).input_ids
    part = tokenizer(phrase, add_special_tokens=False).input_ids
    if part:
        for first in range(start, len(ids) - len(part) + 1):
            if ids[first : first + len(part)] == part:
                return list(range(first, first + len(part)))
    where = f" after token {start}" if start else ""
    raise ValueError(
        f"concept {phrase!r} is not in the prompt {prompt!r}{where} (as tokenised, first {max_length} tokens)"
    )


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each row of ``(K, N)`` min-max scaled to [0, 1] (a constant row becomes 0)."""
    low = maps.amin(dim=-1, keepdim=True)
    span = maps.amax(dim=-1, keepdim=True) - low
    return (maps - low) / span.clamp_min(1e-12)


def refine(maps: torch.Tensor, affinity: torch.Tensor, power: int = 4) -> torch.Tensor:
    """``A^power · c`` for each ``(N,)`` row ``c`` of ``(K, N)`` maps, normalised to [0, 1]."""
    if not isinstance(power, int) or isinstance(power, bool) or power < 0:
        raise ValueError(f"power must be an int >= 0, got {power!r}")
    refined = maps.float().T
    for _ in range(power):
        refined = affinity.float() @ refined
    return normalise(refined.T)


def assign(
    maps: torch.Tensor, background: torch.Tensor | None, margin: float = 0.1, floor: float = 0.0
) -> torch.Tensor:
    """int64 labels of ``(K, ...)`` normalised maps: ``k`` where map ``k`` beats every other map and the
    background map by ``margin`` and reaches ``floor``, else :data:`BACKGROUND`. Without a background map
    a lone concept is compared with 0."""
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin!r}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor!r}")
    rivals = maps if background is None else torch.cat([maps, background[None]])
    if rivals.shape[0] == 1:
        rivals = torch.cat([rivals, torch.zeros_like(rivals)])
    top = rivals.topk(2, dim=0)
    wins = (top.values[0] - top.values[1] >= margin) & (top.indices[0] < maps.shape[0]) & (top.values[0] >= floor)
    return torch.where(wins, top.indices[0], torch.full_like(top.indices[0], BACKGROUND))


def upsample(maps: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``(K, N)`` token-grid maps as ``(K, *size)`` pixel maps (bilinear)."""
    stack = maps.reshape(maps.shape[0], 1, *grid)
    return F.interpolate(stack, size=size, mode="bilinear", align_corners=False)[:, 0]


@dataclass(frozen=True)
class ConceptMasks:
    """Masks of the concepts of one image.

    Attributes:
        labels: ``(H, W)`` int64 pixel labels: concept index, or :data:`BACKGROUND` (-1).
        maps: ``(K, H, W)`` refined, normalised concept maps at pixel size.
        background: ``(H, W)`` the background's refined map, or None.
        concepts: the concept phrases, in label order.
        image: the generated image, when the masks come from :func:`concept_masks`.
    """

    labels: torch.Tensor
    maps: torch.Tensor
    background: torch.Tensor | None
    concepts: tuple[str, ...]
    image: PIL.Image.Image | None = None

    @property
    def masks(self) -> torch.Tensor:
        """``(K, H, W)`` bool: one mask per concept."""
        return self.labels[None] == torch.arange(len(self.concepts))[:, None, None]

    def overlay(self, alpha: float = 0.5) -> PIL.Image.Image:
        """The image with each concept's mask tinted in its colour (:func:`mask_overlay`)."""
        if self.image is None:
            raise ValueError("these masks carry no image; use mask_overlay(image, masks.labels)")
        return mask_overlay(self.image, self.labels, alpha)


def masks_from_maps(
    maps: AttentionMaps,
    concept_tokens: list[list[int]],
    background_tokens: list[int] | None = None,
    size: tuple[int, int] | None = None,
    power: int = 4,
    margin: float = 0.1,
    sample: int = 0,
    concepts: tuple[str, ...] | None = None,
    floor: float = 0.0,
) -> ConceptMasks:
    """AttenCraft masks of one sample of captured maps; ``concept_tokens[k]`` are concept k's text positions,
    ``background_tokens`` the background's (None: no background map). ``size``: pixel size (default the grid);
    ``power``, ``margin``, ``floor``: see :func:`refine` and :func:`assign`."""
    if maps.affinity is None:
        raise ValueError("AttenCraft masks need the image affinity: capture with affinity=True")
    if not concept_tokens:
        raise ValueError("give at least one concept")
    grid = maps.grid
    size = size or grid
    stack = [maps.token_maps(tokens, sample) for tokens in concept_tokens]
    if background_tokens is not None:
        stack.append(maps.token_maps(background_tokens, sample))
    refined = upsample(refine(torch.stack(stack), maps.affinity[sample], power), grid, size)
    concept_maps = refined[: len(concept_tokens)]
    background = refined[len(concept_tokens)] if background_tokens is not None else None
    labels = assign(concept_maps, background, margin, floor)
    names = concepts or tuple(f"concept {k}" for k in range(len(concept_tokens)))
    return ConceptMasks(labels=labels, maps=concept_maps, background=background, concepts=tuple(names))


def threshold_masks(
    maps: AttentionMaps, concept_tokens: list[list[int]], size: tuple[int, int], threshold: float = 0.5, sample: int = 0
) -> torch.Tensor:
    """Baseline: ``(K, H, W)`` bool masks of each concept's raw cross-attention map, normalised and thresholded."""
    raw = normalise(torch.stack([maps.token_maps(tokens, sample) for tokens in concept_tokens]))
    return upsample(raw, maps.grid, size) >= threshold


def concept_masks(
    pipe: Any,
    prompt: str,
    concepts: list[str],
    background: str | int | None = 0,
    power: int = 4,
    margin: float = 0.1,
    floor: float = 0.0,
    blocks: tuple[int, int] | None = None,
    steps: tuple[int, int | None] = (0, None),
    seed: int = 0,
    method: str = "dense",
    method_options: dict[str, Any] | None = None,
    **call: Any,
) -> ConceptMasks:
    """Generate ``prompt`` once with ``pipe`` (a FluxPipeline) and return AttenCraft masks of ``concepts``.

    Args:
        concepts: phrases of the prompt ("red star"), one mask each.
        background: the background's map: a text position (default 0, the first token), a phrase of
            the prompt, or None (no background map: pixels no concept wins are background).
        power, margin, floor: refinement power ``p`` of ``A^p · c``, the assignment margin, and the
            least normalised map value of a concept pixel (see :func:`assign`).
        blocks, steps: the attention blocks and denoising steps averaged (see :class:`AttentionMapCapture`).
        method, method_options: the dit-accel method computing the attention, when none is applied yet.
        **call: further pipeline arguments (``num_inference_steps``, ``true_cfg_scale``, ...).
    """
    if not concepts:
        raise ValueError("give at least one concept")
    max_length = int(call.get("max_sequence_length", 512))
    tokenizer = pipe.tokenizer_2
    tokens = [phrase_positions(tokenizer, prompt, c, max_length) for c in concepts]
    if isinstance(background, str):
        background_tokens = phrase_positions(tokenizer, prompt, background, max_length)
    elif background is None:
        background_tokens = None
    elif isinstance(background, int) and not isinstance(background, bool) and 0 <= background < max_length:
        background_tokens = [background]
    else:
        raise ValueError(
            f"background must be a phrase, a text position in [0, {max_length}) or None, got {background!r}"
        )
    generator = torch.Generator("cpu").manual_seed(seed)
    with capture_attention_maps(pipe, blocks, steps, method=method, **(method_options or {})) as capture:
        image = pipe(prompt, generator=generator, **call).images[0]
    masks = masks_from_maps(
        capture.result(), tokens, background_tokens, (image.height, image.width), power, margin,
        concepts=tuple(concepts), floor=floor,
    )  # fmt: skip
    return ConceptMasks(masks.labels, masks.maps, masks.background, masks.concepts, image)


def mask_overlay(image: PIL.Image.Image, labels: torch.Tensor, alpha: float = 0.5) -> PIL.Image.Image:
    """``image`` with the pixels of label ``k`` blended with colour ``k`` (background left as is)."""
    if tuple(labels.shape) != (image.height, image.width):
        raise ValueError(f"labels are {tuple(labels.shape)}, the image is {(image.height, image.width)}")
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    label = labels.cpu().numpy()
    for k in range(int(label.max()) + 1 if label.size else 0):
        colour = np.array(OVERLAY_COLOURS[k % len(OVERLAY_COLOURS)], dtype=np.float32)
        rgb[label == k] = (1 - alpha) * rgb[label == k] + alpha * colour
    return PIL.Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8))
