"""Block maps: how each query block of one attention call treated each key block, as a picture.

A user (or the demo) asks a handle for the map of one layer at one step
(``handle.capture_block_map(layer=3, step=10)``); when that call runs, a block-sparse method stores
a code per (query block, key block) — exact, approximated, skipped, or a method's own classes (PSA's
pyramid levels, SLA's linear blocks) named by its legend — and :meth:`BlockMap.picture` draws it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Colours by legend position: the first entry (what the method did least: skipped) is white, the
# last (exact) dark blue; classes in between go from orange to light blue.
_PALETTE = (
    (255, 255, 255),
    (253, 174, 97),
    (254, 224, 144),
    (171, 217, 233),
    (116, 173, 209),
    (69, 117, 180),
    (33, 53, 120),
)


@dataclass(frozen=True)
class BlockMapRequest:
    """Which call to capture: attention layer index and denoising step (0-based)."""

    layer: int
    step: int

    def __post_init__(self) -> None:
        for name in ("layer", "step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")


@dataclass
class BlockMap:
    """Codes ``(B, H, NQ, NK)`` (uint8, CPU) of one call and what each code means."""

    codes: torch.Tensor
    legend: dict[int, str]
    layer: int
    step: int

    def fractions(self, batch: int = 0, head: int | None = None) -> dict[str, float]:
        """Share of (query block, key block) pairs per class, for one head or averaged over heads."""
        codes = self.codes[batch] if head is None else self.codes[batch, head]
        return {name: float((codes == code).float().mean()) for code, name in self.legend.items()}

    def picture(self, batch: int = 0, head: int = 0, cell: int = 4) -> np.ndarray:
        """``(NQ * cell, NK * cell, 3)`` uint8 RGB: one coloured square per (query block, key block)."""
        if not 0 <= head < self.codes.shape[1]:
            raise ValueError(f"head must be in [0, {self.codes.shape[1] - 1}], got {head}")
        if not 0 <= batch < self.codes.shape[0]:
            raise ValueError(f"batch must be in [0, {self.codes.shape[0] - 1}], got {batch}")
        colours = np.zeros((256, 3), dtype=np.uint8)
        for rank, code in enumerate(sorted(self.legend)):
            position = round(rank * (len(_PALETTE) - 1) / max(1, len(self.legend) - 1))
            colours[code] = _PALETTE[position]
        image = colours[self.codes[batch, head].numpy()]
        return image.repeat(cell, axis=0).repeat(cell, axis=1)

    def legend_colours(self) -> dict[str, tuple[int, int, int]]:
        """Legend name -> the RGB colour :meth:`picture` gives it."""
        one_of_each = BlockMap(torch.tensor(sorted(self.legend), dtype=torch.uint8).view(1, 1, 1, -1), self.legend,
                               self.layer, self.step)  # fmt: skip
        row = one_of_each.picture(cell=1)[0]
        return {self.legend[code]: tuple(int(c) for c in row[i]) for i, code in enumerate(sorted(self.legend))}
