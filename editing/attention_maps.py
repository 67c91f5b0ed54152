"""Attention maps of a FLUX generation, captured while any dit-accel method computes the attention.

Two maps per image, averaged over heads and over the chosen blocks, denoising steps and forwards:

* text→image: for each text token ``t`` and image token ``i``, the image query ``i``'s softmax over
  the text keys only (the cross-attention part of FLUX's joint attention), so ``text[:, i]`` sums to
  one; read per token as a ``(T, H, W)`` stack of maps;
* image→image affinity: the image query's softmax over the image keys only, a row-stochastic
  ``(N, N)`` matrix (row = query pixel).

The probabilities are computed here from the call's q/k (after norms and RoPE), head by head, for
the chosen calls only; the attention output is still whatever the installed method computes, so
capturing never changes the generation. Tokens that a block-sparse method put in tile order are
brought back to raster order.

Use it around any pipeline call (``capture_attention_maps``), or call
:meth:`AttentionMapCapture.observe` from an editing op's own ``__call__``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from dit_accel.api import _transformers_of
from dit_accel.context import AttentionContext
from dit_accel.pipelines import find_adapter
from dit_accel.pipelines.base import BoundProcessor

from .aligned_gen import _check_span, resolve_blocks


@dataclass(frozen=True)
class AttentionMaps:
    """Mean attention maps of a capture.

    Attributes:
        text: ``(B, T, H, W)`` float32: text token ``t``'s share of image query ``(h, w)``'s softmax over the text keys.
        affinity: ``(B, N, N)`` float32 row-stochastic image→image matrix (``N = H * W``, raster order), or None.
        calls: number of attention calls averaged.
    """

    text: torch.Tensor
    affinity: torch.Tensor | None
    calls: int

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.text.shape[-2]), int(self.text.shape[-1])

    def token_maps(self, tokens: list[int] | torch.Tensor, sample: int = 0) -> torch.Tensor:
        """``(N,)`` flat map of the mean over ``tokens`` (text positions) of one sample."""
        index = torch.as_tensor(tokens, dtype=torch.long)
        if index.numel() == 0:
            raise ValueError("tokens must name at least one text position")
        return self.text[sample, index].mean(dim=0).flatten()


def image_attention_probs(
    q: torch.Tensor, k: torch.Tensor, text: slice, image: slice, affinity: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Head-mean probabilities of the image queries: ``(B, N, T)`` over the text keys and ``(B, N, N)`` over
    the image keys (None unless ``affinity``), from ``(B, S, H, D)`` q/k; one head at a time to bound memory."""
    scale = q.shape[-1] ** -0.5
    heads = q.shape[2]
    to_text = None
    to_image = None
    for h in range(heads):
        qh = q[:, image, h].float() * scale
        part = torch.softmax(qh @ k[:, text, h].float().transpose(1, 2), dim=-1)
        to_text = part if to_text is None else to_text + part
        if affinity:
            part = torch.softmax(qh @ k[:, image, h].float().transpose(1, 2), dim=-1)
            to_image = part if to_image is None else to_image + part
    return to_text / heads, None if to_image is None else to_image / heads


class AttentionMapCapture:
    """Accumulates :func:`image_attention_probs` over the attention calls it is shown.

    Args:
        blocks: half-open ``(start, end)`` range of attention blocks (flattened: dual-stream first),
            or None for every block.
        steps: half-open ``(start, end)`` range of denoising steps, ``end=None`` to the last.
        forwards: which transformer forwards of a step to use, counted from 0 within the step
            (FluxPipeline's true CFG runs the prompt first, then the negative prompt: ``(0,)`` keeps
            the prompt's maps only); None uses every forward.
        affinity: also accumulate the image→image matrix (``N²`` memory per sample).
    """

    def __init__(
        self,
        blocks: tuple[int, int] | None = None,
        steps: tuple[int, int | None] = (0, None),
        forwards: tuple[int, ...] | None = (0,),
        affinity: bool = True,
    ) -> None:
        self.blocks = None if blocks is None else _check_span("blocks", blocks, open_end=False)
        self.steps = _check_span("steps", steps, open_end=True)
        if forwards is not None and (
            not isinstance(forwards, tuple) or not all(isinstance(f, int) and f >= 0 for f in forwards)
        ):
            raise ValueError(f"forwards must be None or a tuple of ints >= 0, got {forwards!r}")
        self.forwards = forwards
        self.affinity = affinity
        self._forward = (-1, -1, -1)  # (tracker calls, step, forward index within the step) of the last call seen
        self.clear()

    def clear(self) -> None:
        """Forget what was accumulated."""
        self._text: torch.Tensor | None = None
        self._image: torch.Tensor | None = None
        self._grid: tuple[int, int] | None = None
        self.calls = 0

    def _forward_in_step(self, ctx: AttentionContext) -> int:
        calls, step = ctx.tracker.calls, ctx.step_index
        last_calls, last_step, index = self._forward
        if calls != last_calls:
            index = index + 1 if step == last_step else 0
            self._forward = (calls, step, index)
        return self._forward[2]

    def wants(self, ctx: AttentionContext) -> bool:
        """Whether this call's block, step and forward are captured."""
        forward = self._forward_in_step(ctx)
        start, end = self.steps
        step = ctx.step_index
        if step < start or (end is not None and step >= end):
            return False
        if self.blocks is not None and not self.blocks[0] <= ctx.layer_index < self.blocks[1]:
            return False
        return self.forwards is None or forward in self.forwards

    def observe(self, q: torch.Tensor, k: torch.Tensor, ctx: AttentionContext) -> None:
        """Add this call's maps if :meth:`wants` it (q/k as the op receives them)."""
        if not self.wants(ctx):
            return
        layout = ctx.layout
        if layout.grid is None or layout.text_len == 0:
            raise ValueError("attention maps need text tokens and image tokens in one raster (FLUX img_ids)")
        frames, height, width = layout.grid
        count = frames * height * width
        image = slice(layout.video_start, layout.video_start + count)
        text = slice(layout.text_start, layout.text_start + layout.text_len)
        to_text, to_image = image_attention_probs(q, k, text, image, self.affinity)
        inverse = ctx.info.token_inverse if layout.token_tile is not None else None
        if inverse is not None:  # tile order -> raster order, on both image axes
            inverse = inverse[:count].to(to_text.device)
            to_text = to_text.index_select(1, inverse)
            to_image = None if to_image is None else to_image.index_select(1, inverse).index_select(2, inverse)
        to_text = to_text.transpose(1, 2)
        if self._text is None:
            self._text, self._image, self._grid = to_text, to_image, (frames * height, width)
        elif self._text.shape != to_text.shape:
            raise ValueError(f"captured calls differ in shape: {tuple(self._text.shape)} vs {tuple(to_text.shape)}")
        else:
            self._text = self._text + to_text
            self._image = None if to_image is None else self._image + to_image
        self.calls += 1

    def result(self) -> AttentionMaps:
        """The mean maps so far; ``RuntimeError`` when no call was captured."""
        if self._text is None:
            raise RuntimeError(
                f"no attention call was captured (blocks={self.blocks}, steps={self.steps}, forwards={self.forwards})"
            )
        text = (self._text / self.calls).reshape(*self._text.shape[:2], *self._grid).cpu()
        image = None if self._image is None else (self._image / self.calls).cpu()
        return AttentionMaps(text=text, affinity=image, calls=self.calls)


class CapturingOp:
    """An installed op wrapped so that each call is also shown to an :class:`AttentionMapCapture`."""

    def __init__(self, inner: Any, capture: AttentionMapCapture) -> None:
        self.inner = inner
        self.capture = capture

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        self.capture.observe(q, k, ctx)
        return self.inner(q, k, v, ctx)


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return find_adapter(model).attention_modules(model)


@contextlib.contextmanager
def capture_attention_maps(
    target: Any,
    blocks: tuple[int, int] | None = None,
    steps: tuple[int, int | None] = (0, None),
    forwards: tuple[int, ...] | None = (0,),
    affinity: bool = True,
    method: str = "dense",
    **options: Any,
) -> Iterator[AttentionMapCapture]:
    """Capture attention maps of the pipeline calls made inside the ``with`` block.

    If a dit-accel method is already applied to ``target`` (a FLUX pipeline or transformer), its ops
    are wrapped and keep computing the attention; otherwise ``method`` (with ``options``) is applied
    for the duration and removed afterwards. Read ``capture.result()`` after the calls.

    Example::

        with dit_accel.apply(pipe, "topk", density=0.25), capture_attention_maps(pipe, steps=(5, 15)) as cap:
            image = pipe(prompt).images[0]
        maps = cap.result()
    """
    import dit_accel

    models = _transformers_of(target)
    processors = [
        module.processor
        for model in models
        for module in _attention_modules(model)
        if isinstance(module.processor, BoundProcessor)
    ]
    handle = None
    if not processors:
        handle = dit_accel.apply(target, method, **options)
        processors = [module.processor for model in models for module in _attention_modules(model)]
    elif options or method != "dense":
        raise ValueError("a dit-accel method is already applied: capture_attention_maps takes no method or options")
    capture = AttentionMapCapture(
        None if blocks is None else resolve_blocks(blocks, models[0]), steps, forwards, affinity
    )
    bindings = [p.binding for p in processors]
    try:
        for processor, binding in zip(processors, bindings, strict=True):
            processor.binding = dataclasses.replace(binding, op=CapturingOp(binding.op, capture))
        yield capture
    finally:
        for processor, binding in zip(processors, bindings, strict=True):
            processor.binding = binding
        if handle is not None:
            handle.remove()
