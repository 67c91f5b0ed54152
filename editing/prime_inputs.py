"""PrimeComposer's inputs: validation, placing the object in the box, and token masks.

The object is cut out by its mask's bounding box and stretched to the target box (image with
bilinear, mask with nearest resampling); the pasted composite is what the correlation branch
inverts and what the paste baseline is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch

Box = tuple[int, int, int, int]


def as_rgb(image: Any, name: str) -> PIL.Image.Image:
    """``image`` as an RGB PIL image (from PIL, or an ``(H, W, 3)`` uint8 array)."""
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return PIL.Image.fromarray(image)
    raise TypeError(f"{name} must be a PIL image or an (H, W, 3) uint8 array, got {type(image).__name__}")


def as_mask(mask: Any, name: str = "object_mask") -> np.ndarray:
    """``mask`` as an ``(H, W)`` bool array (from a bool/0-1/0-255 array or a PIL image: nonzero is object)."""
    if isinstance(mask, PIL.Image.Image):
        mask = np.asarray(mask.convert("L"))
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise TypeError(f"{name} must be an (H, W) array or a PIL image, got {type(mask).__name__}")
    return mask > (127 if mask.dtype == np.uint8 and mask.max() > 1 else 0)


def check_box(box: Any, width: int, height: int, min_side: int) -> Box:
    """``box = (x0, y0, x1, y1)`` in pixels (half-open), inside a ``width x height`` image, sides >= ``min_side``."""
    ok = isinstance(box, (tuple, list)) and len(box) == 4
    if not ok or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in box):
        raise TypeError(f"box must be four ints (x0, y0, x1, y1) in pixels, got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(
            f"box {box!r} must lie inside the {width}x{height} background with x0 < x1 and y0 < y1 "
            f"(0 <= x0 < x1 <= {width}, 0 <= y0 < y1 <= {height})"
        )
    if x1 - x0 < min_side or y1 - y0 < min_side:
        raise ValueError(f"box {box!r} is smaller than one token: both sides must be at least {min_side} px")
    return x0, y0, x1, y1


@dataclass(frozen=True)
class Placement:
    """The object placed in the box.

    Attributes:
        background: the background (RGB).
        pasted: the background with the object pasted in (RGB).
        object_mask: ``(H, W)`` bool, the placed object's pixels.
        box_mask: ``(H, W)`` bool, the box's pixels.
    """

    background: PIL.Image.Image
    pasted: PIL.Image.Image
    object_mask: np.ndarray
    box_mask: np.ndarray


def place_object(background: Any, object_image: Any, object_mask: Any, box: Any, pixels_per_token: int) -> Placement:
    """Validate the inputs and paste the masked object, stretched to ``box``, onto ``background``."""
    background = as_rgb(background, "background")
    object_image = as_rgb(object_image, "object_image")
    mask = as_mask(object_mask)
    width, height = background.size
    if width % pixels_per_token or height % pixels_per_token:
        raise ValueError(
            f"background is {width}x{height} px; both sides must be multiples of {pixels_per_token} "
            "(the VAE factor times FLUX's 2x2 packing)"
        )
    if mask.shape != (object_image.height, object_image.width):
        raise ValueError(
            f"object_mask is {mask.shape[1]}x{mask.shape[0]} px but object_image is "
            f"{object_image.width}x{object_image.height} px; the mask must match the object image"
        )
    if not mask.any():
        raise ValueError("object_mask is empty: it must mark the object's pixels (nonzero = object)")
    if mask.all():
        raise ValueError("object_mask covers the whole object image: it must mark the object only, not its background")
    x0, y0, x1, y1 = check_box(box, width, height, pixels_per_token)
    rows, cols = np.nonzero(mask)
    crop = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
    size = (x1 - x0, y1 - y0)
    patch = object_image.crop(crop).resize(size, PIL.Image.BILINEAR)
    patch_mask = PIL.Image.fromarray(mask.astype(np.uint8) * 255).crop(crop).resize(size, PIL.Image.NEAREST)
    pasted = background.copy()
    pasted.paste(patch, (x0, y0), patch_mask)
    placed = np.zeros((height, width), dtype=bool)
    placed[y0:y1, x0:x1] = np.asarray(patch_mask) > 127
    box_mask = np.zeros((height, width), dtype=bool)
    box_mask[y0:y1, x0:x1] = True
    return Placement(background, pasted, placed, box_mask)


def token_mask(pixels: np.ndarray, pixels_per_token: int, min_share: float = 0.5) -> torch.Tensor:
    """``(rows * cols,)`` bool in raster order: tokens whose patch is at least ``min_share`` covered by ``pixels``."""
    height, width = pixels.shape
    rows, cols = height // pixels_per_token, width // pixels_per_token
    share = pixels.reshape(rows, pixels_per_token, cols, pixels_per_token).mean(axis=(1, 3))
    return torch.from_numpy(share >= min_share).flatten()


def text_token_positions(tokenizer: Any, prompt: str, phrase: str, max_length: int) -> tuple[int, ...]:
    """Positions of ``phrase``'s tokens inside ``prompt``'s tokens (as FLUX's T5 sees them), or a ValueError."""
    if not isinstance(phrase, str) or not phrase.strip():
        raise ValueError(f"object_text must be a non-empty string, got {phrase!r}")
    ids = tokenizer(prompt, max_length=max_length, truncation=True, add_special_tokens=True).input_ids
    part = tokenizer(phrase, add_special_tokens=False).input_ids
    for start in range(len(ids) - len(part) + 1):
        if part and ids[start : start + len(part)] == part:
            return tuple(range(start, start + len(part)))
    raise ValueError(f"object_text {phrase!r} is not among the prompt's first {max_length} tokens: {prompt!r}")
