"""``aligned_gen``: style-aligned FLUX batches (AlignedGen, METHODS.md), training-free.

Image 0 of each CFG group is the style reference; every other image of the group is a target. In
the chosen blocks and steps (Advanced Attention Sharing):

* the reference attends to its own tokens only, through the inner op, so it comes out exactly as
  without sharing;
* each target's image-token Q and K are AdaIN'd (before RoPE) to the reference's per-channel
  statistics, and its keys/values are extended with the reference's image-token keys, RoPE'd at
  ShiftPE positions ``(row, col + W)`` and scaled by λ, and values. Text tokens are not shared.

Attention itself runs through an acceleration op (``attention="dense"``, ``"topk"``, ...); the
appended reference tokens reach it as ``layout.appended_len`` key-only tokens. With
``reference_image`` the reference is an external style image instead of image 0 (all images are
then targets); see :mod:`dit_accel.editing.style_reference`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import PIL.Image
import torch

from dit_accel.config import MethodConfig, check_range
from dit_accel.context import AttentionContext
from dit_accel.forward_info import ForwardInfo
from dit_accel.layout import TokenLayout
from dit_accel.methods.base import AttentionMethod
from dit_accel.pipelines import find_adapter
from dit_accel.pipelines.flux import FluxAdapter
from dit_accel.registry import method_for

from .inner_attention import InnerAttentionConfig
from .reference import CaptureComplete, ReferenceFeatures, ReferenceStore, align_image_tokens
from .rope import Table, shift_table
from .style_reference import attach_style_reference

LAMBDA_SCHEDULES = ("fixed", "decreasing")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_span(name: str, value: Any, open_end: bool) -> tuple[int, int | None]:
    """Validate a half-open ``(start, end)`` range of ints; ``end=None`` only where ``open_end``."""
    ok_pair = isinstance(value, (tuple, list)) and len(value) == 2
    if not ok_pair or not _is_int(value[0]) or not (_is_int(value[1]) or (open_end and value[1] is None)):
        end = "an int or None" if open_end else "an int"
        raise TypeError(f"{name} must be a (start, end) pair: start an int, end {end}; got {value!r}")
    start, end = value
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"{name}=(start, end) needs 0 <= start <= end, got {value!r}")
    return start, end


@dataclass
class AlignedGenConfig(InnerAttentionConfig):
    """Options of ``aligned_gen``.

    The common options (``dense_steps``, ``dense_layers``, ``block_size``, ``num_inference_steps``)
    belong to the acceleration op that computes the attention, and the inner method's own options
    are given flat: ``apply(pipe, "aligned_gen", attention="topk", density=0.1)``.

    Attributes:
        attention: the method AlignedGen's attention runs through: a registered method name
            (``"dense"``, ``"topk"``, ...) or its config instance. After construction this is always
            the inner config instance.
        blocks: half-open ``(start, end)`` range of the attention blocks that share, over the
            flattened block index (dual-stream blocks first, then single-stream). Default: the
            single-stream blocks, ``(19, 57)`` on FLUX.1 (blocks 19-56). ``start == end`` shares nowhere.
        steps: half-open ``(start, end)`` range of denoising steps that share; ``end=None`` runs to
            the last step.
        style_lambda: λ, the factor on the reference keys targets see (>= 0; default 1.1). Larger
            λ sharpens the targets' attention to the reference. ``0`` switches sharing off.
        lambda_schedule: ``"fixed"`` (λ every step) or ``"decreasing"``: λ falls linearly from
            ``style_lambda`` at the first sharing step to 1.0 at the last (needs ``style_lambda >= 1``
            and a known last step: ``steps=(start, end)`` or a known step count).
        reference_image: an external style image (``PIL.Image`` or a ``(3, H, W)``/``(1, 3, H, W)``
            tensor in [0, 1]) of the generated size; every generated image is then a target. Needs a
            pipeline (its VAE encodes the image). ``None``: image 0 of the batch is the reference.
        reference_seed: seed of the fixed noise the external reference is noised with.
    """

    method: ClassVar[str] = "aligned_gen"

    attention: str | MethodConfig = "dense"
    blocks: tuple[int, int] | None = None
    steps: tuple[int, int | None] = (0, None)
    style_lambda: float = 1.1
    lambda_schedule: str = "fixed"
    reference_image: Any = field(default=None, repr=False, compare=False)
    reference_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocks is not None:
            self.blocks = _check_span("blocks", self.blocks, open_end=False)
        self.steps = _check_span("steps", self.steps, open_end=True)
        check_range("style_lambda", self.style_lambda, 0.0, math.inf)
        if self.lambda_schedule not in LAMBDA_SCHEDULES:
            raise ValueError(f"lambda_schedule must be one of {LAMBDA_SCHEDULES}, got {self.lambda_schedule!r}")
        if self.lambda_schedule == "decreasing" and self.style_lambda < 1.0:
            raise ValueError(
                f"lambda_schedule='decreasing' falls from style_lambda to 1.0, so style_lambda must be >= 1.0, "
                f"got {self.style_lambda}"
            )
        if self.reference_image is not None and not isinstance(self.reference_image, (PIL.Image.Image, torch.Tensor)):
            raise TypeError(f"reference_image must be a PIL.Image or a torch.Tensor, got {type(self.reference_image)}")
        if not _is_int(self.reference_seed):
            raise TypeError(f"reference_seed must be an int, got {self.reference_seed!r}")

    def lambda_at(self, step: int, num_steps: int | None) -> float:
        """λ on the reference keys at ``step``; 0.0 (no sharing) outside ``steps``."""
        start, end = self.steps
        if step < start or (end is not None and step >= end):
            return 0.0
        if self.lambda_schedule == "fixed":
            return float(self.style_lambda)
        last = end if end is not None else num_steps
        if last is None:
            raise ValueError(
                "lambda_schedule='decreasing' with steps=(start, None) needs the number of steps, which is unknown "
                "for this call: pass steps=(start, end) or num_inference_steps=N"
            )
        span = last - 1 - start
        if span <= 0:
            return float(self.style_lambda)
        return self.style_lambda + (1.0 - self.style_lambda) * (step - start) / span


def resolve_blocks(blocks: tuple[int, int] | None, model: torch.nn.Module) -> tuple[int, int]:
    """``blocks`` checked against a FLUX transformer's attention blocks; ``None`` = its single-stream blocks."""
    dual = len(model.transformer_blocks)
    total = dual + len(model.single_transformer_blocks)
    if blocks is None:
        return dual, total
    if blocks[1] > total:
        raise ValueError(
            f"blocks={blocks} is out of range: this model has attention blocks 0..{total - 1} "
            f"(dual-stream 0..{dual - 1}, single-stream {dual}..{total - 1}); end is exclusive, at most {total}"
        )
    return blocks


def _sub_context(ctx: AttentionContext, name: str, layout: TokenLayout | None = None) -> AttentionContext:
    """``ctx`` for one of the op's inner calls, with its own per-layer state (batches differ between them)."""
    binding = dataclasses.replace(ctx.binding, state=ctx.state.setdefault(name, {}))
    return dataclasses.replace(ctx, binding=binding, layout=layout or ctx.layout)


class AlignedGenAttention(AttentionMethod):
    """The ``aligned_gen`` method; :meth:`attach` (called by ``dit_accel.apply``) binds it to a FLUX model."""

    name = "aligned_gen"
    kind = "edit"
    description = "AlignedGen: style-aligned FLUX batches (ShiftPE + attention sharing), attention through any method"
    config_class = AlignedGenConfig
    config: AlignedGenConfig

    def __init__(self, config: AlignedGenConfig) -> None:
        super().__init__(config)
        self.inner: AttentionMethod = method_for(config.attention, FluxAdapter.family)
        self.store = ReferenceStore()
        self.blocks: tuple[int, int] | None = None
        self._shift_tables: dict[tuple[int, str], Table] = {}

    def attach(self, target: Any, transformers: list[torch.nn.Module]) -> Callable[[], None]:
        """Check the model, resolve ``blocks``, and install the style-reference capture if asked."""
        for model in transformers:
            if not isinstance(find_adapter(model), FluxAdapter):
                raise TypeError(f"aligned_gen supports FluxTransformer2DModel only, got {type(model).__name__}")
        self.blocks = resolve_blocks(self.config.blocks, transformers[0])
        if self.config.reference_image is None:
            return self.store.clear
        return attach_style_reference(
            target, transformers, self.config.reference_image, self.config.reference_seed, self.store
        )

    def token_tile(self, info: ForwardInfo) -> tuple[int, int, int] | None:
        """The token order the inner op wants for the whole forward (see ``StepTrackingHook``).

        AlignedGen is indifferent to it: AdaIN statistics, the RoPE rows (reordered with the tokens)
        and the constant ShiftPE rotation are per token, and the appended reference tokens come in
        the reference's own order, which is the targets' order (``appended_grid == grid``).
        """
        return self.inner.token_tile(info)

    def prepare(self, info: ForwardInfo) -> None:
        """Let the inner method precompute from the forward's facts (called by the step-tracking hook)."""
        self.inner.prepare(info)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        if self.blocks is None:
            raise RuntimeError("the aligned_gen op must be installed with dit_accel.apply(pipe, 'aligned_gen', ...)")
        if ctx.info.pos_embed is None:
            raise TypeError("aligned_gen runs on FluxTransformer2DModel only (the call carries no FLUX position ids)")
        step_lambda = self.config.lambda_at(ctx.step_index, ctx.num_steps)
        in_blocks = self.blocks[0] <= ctx.layer_index < self.blocks[1]
        lam = step_lambda if in_blocks else 0.0
        if self.store.capturing:
            return self._capture(q, k, v, ctx, lam, more=step_lambda > 0.0 and ctx.layer_index + 1 < self.blocks[1])
        external = self.config.reference_image is not None
        per_group = q.shape[0] // ctx.layout.cfg_groups
        if not external and per_group < 2:
            raise ValueError(
                f"aligned_gen needs a batch of at least 2 images per CFG group (image 0 is the style reference), "
                f"got {per_group}; pass several prompts, or reference_image=... to align to a style image"
            )
        if lam == 0.0:
            return self.inner(q, k, v, ctx)
        self._check_shareable(ctx)
        if external:
            rows = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
            return self._targets(q, k, v, ctx, self.store.layer(ctx.layer_index).select(rows), lam)
        return self._in_batch(q, k, v, ctx, per_group, lam)

    def _in_batch(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext, per_group: int, lam: float
    ) -> torch.Tensor:
        """Image 0 of each group attends to itself only; the others share its tokens."""
        is_reference = torch.zeros(q.shape[0], dtype=torch.bool, device=q.device)
        is_reference[::per_group] = True
        references = is_reference.nonzero().squeeze(1)
        targets = (~is_reference).nonzero().squeeze(1)
        ref_q, ref_k, ref_v = q[references], k[references], v[references]
        reference_out = self.inner(ref_q, ref_k, ref_v, _sub_context(ctx, "reference"))
        features = self._features(ref_q, ref_k, ref_v, ctx).select(targets // per_group)
        target_out = self._targets(q[targets], k[targets], v[targets], ctx, features, lam)
        out = reference_out.new_empty((q.shape[0], *reference_out.shape[1:]))
        out[references] = reference_out
        out[targets] = target_out.to(out.dtype)
        return out

    def _targets(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        ctx: AttentionContext,
        reference: ReferenceFeatures,
        lam: float,
    ) -> torch.Tensor:
        """AdaIN'd targets attending to ``[own tokens ; λ · shifted reference image keys / values]``."""
        image, table = ctx.layout.video_slice, ctx.rotary_emb
        q = align_image_tokens(q, reference.q_stats, image, table)
        k = align_image_tokens(k, reference.k_stats, image, table)
        keys = torch.cat([k, reference.keys * lam], dim=1)
        values = torch.cat([v, reference.values], dim=1)
        appended = reference.keys.shape[1]
        layout = dataclasses.replace(ctx.layout, appended_len=appended, appended_grid=ctx.layout.grid)
        return self.inner(q, keys, values, _sub_context(ctx, "targets", layout))

    def _capture(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext, lam: float, more: bool
    ) -> torch.Tensor:
        """Capture pass of an external reference: record this layer's features; stop when no later layer needs any."""
        if lam > 0.0:
            self._check_shareable(ctx)
            self.store.features[ctx.layer_index] = self._features(q, k, v, ctx)
        if not more:
            raise CaptureComplete
        return self.inner(q, k, v, _sub_context(ctx, "reference"))

    def _features(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext) -> ReferenceFeatures:
        return ReferenceFeatures.from_attention(q, k, v, ctx.layout.video_slice, ctx.rotary_emb, self._shift(ctx))

    def _shift(self, ctx: AttentionContext) -> Table:
        """ShiftPE rotation for this call's grid width, from the model's own rotary module (cached)."""
        grid, device = ctx.layout.grid, ctx.rotary_emb[0].device
        key = (grid[-1], str(device))
        if key not in self._shift_tables:
            self._shift_tables[key] = shift_table(ctx.info.pos_embed, grid, device)
        return self._shift_tables[key]

    @staticmethod
    def _check_shareable(ctx: AttentionContext) -> None:
        if ctx.attention_mask is not None:
            raise ValueError("aligned_gen does not support attention masks in FLUX attention")
        if ctx.layout.grid is None or ctx.rotary_emb is None:
            raise ValueError("aligned_gen needs image tokens in one raster (row-major img_ids) and rotary embeddings")
