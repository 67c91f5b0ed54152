"""Where text and video tokens sit in the sequence of one attention call.

Adapters build a :class:`TokenLayout` for every attention call so that methods never have to know
which model family they run in: Wan self-attention is video only, HunyuanVideo puts the (padded)
text after the video, FLUX puts the text first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLayout:
    """Token ranges of one attention call.

    Attributes:
        seq_len: total number of tokens (query and key sequence length).
        video_start: index of the first video (image) token.
        video_len: number of video tokens.
        grid: latent token grid ``(T, H, W)`` after patching, in raster order, or ``None`` when the
            video tokens do not form one raster (they are then treated as a 1-D sequence).
        text_start: index of the first text token.
        text_len: number of text tokens (0 when the call has none, e.g. Wan self-attention).
        text_valid: optional ``(B,)`` int32 tensor, the number of unpadded text tokens per sample
            (HunyuanVideo pads its prompt); ``None`` means every text token is valid.
        cfg_groups: number of classifier-free-guidance groups stacked along the batch (1 when
            the pipeline runs the conditional and unconditional passes as separate calls).
        appended_len: key-only video tokens that follow the ``seq_len`` query tokens in k/v (0 for
            plain self-attention; AlignedGen appends the reference image's tokens).
        appended_grid: token grid of those appended tokens, if they form a raster.
        token_tile: the tile whose order the video (and appended) tokens are already in, when the
            adapter reorders tokens once per forward (see :mod:`dit_accel.tiling`); None = raster.
        external_start, external_len: key positions ``[external_start, external_start + external_len)``
            that hold fixed context rather than the tokens being generated (SkyReels-V2 diffusion
            forcing: the clean prefix frames; FLUX Kontext: the context image's tokens). 0 = none
            declared; :attr:`external_keys` then falls back to the appended key-only tokens.
        causal_block: for a video-only call under a block-causal mask (SkyReels-V2 diffusion forcing),
            tokens per causal block: token ``i`` sees token ``j`` only when ``j // causal_block <=
            i // causal_block``. 0 = no such mask.
    """

    seq_len: int
    video_start: int
    video_len: int
    grid: tuple[int, int, int] | None = None
    text_start: int = 0
    text_len: int = 0
    text_valid: torch.Tensor | None = None
    cfg_groups: int = 1
    appended_len: int = 0
    appended_grid: tuple[int, int, int] | None = None
    token_tile: tuple[int, int, int] | None = None
    external_start: int = 0
    external_len: int = 0
    causal_block: int = 0

    def __post_init__(self) -> None:
        for name in ("seq_len", "video_start", "video_len", "text_start", "text_len", "cfg_groups", "appended_len",
                     "external_start", "external_len", "causal_block"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"TokenLayout.{name} must be >= 0, got {getattr(self, name)}")
        if self.video_start + self.video_len > self.seq_len:
            raise ValueError(
                f"video range [{self.video_start}, {self.video_start + self.video_len}) exceeds seq_len={self.seq_len}"
            )
        if self.text_start + self.text_len > self.seq_len:
            raise ValueError(
                f"text range [{self.text_start}, {self.text_start + self.text_len}) exceeds seq_len={self.seq_len}"
            )
        overlap = min(self.video_end, self.text_end) - max(self.video_start, self.text_start)
        if self.text_len and self.video_len and overlap > 0:
            raise ValueError("text and video token ranges overlap")
        if self.grid is not None:
            t, h, w = self.grid
            if t * h * w != self.video_len:
                raise ValueError(f"grid {self.grid} has {t * h * w} tokens but video_len={self.video_len}")
        if self.appended_grid is not None and math.prod(self.appended_grid) != self.appended_len:
            raise ValueError(
                f"appended_grid {self.appended_grid} does not hold appended_len={self.appended_len} tokens"
            )
        if self.external_start + self.external_len > self.seq_len + self.appended_len:
            raise ValueError(
                f"external range [{self.external_start}, {self.external_start + self.external_len}) exceeds the "
                f"{self.seq_len + self.appended_len} keys"
            )

    @property
    def video_end(self) -> int:
        return self.video_start + self.video_len

    @property
    def text_end(self) -> int:
        return self.text_start + self.text_len

    @property
    def video_slice(self) -> slice:
        return slice(self.video_start, self.video_end)

    @property
    def text_slice(self) -> slice:
        return slice(self.text_start, self.text_end)

    @property
    def external_keys(self) -> tuple[int, int]:
        """``(start, length)`` of the keys holding fixed context: the declared span, else the appended tokens."""
        if self.external_len:
            return self.external_start, self.external_len
        return self.seq_len, self.appended_len

    @property
    def video_only(self) -> bool:
        """True when every token of the call is a video token."""
        return self.video_start == 0 and self.video_len == self.seq_len


def video_only_layout(seq_len: int, grid: tuple[int, int, int] | None, token_tile=None) -> TokenLayout:
    """Layout of a call whose tokens are all video tokens (Wan self-attention)."""
    if grid is not None and grid[0] * grid[1] * grid[2] != seq_len:
        grid = token_tile = None
    return TokenLayout(seq_len=seq_len, video_start=0, video_len=seq_len, grid=grid, token_tile=token_tile)
