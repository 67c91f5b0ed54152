"""``prime_composer``: training-free image composition on FLUX (PrimeComposer, METHODS.md).

The op edits the generator's attention in two ways, both through the acceleration op given as
``attention=`` (see :mod:`dit_accel.editing.prime_steering` for how an edit becomes plain q/k/v):

* **attention steering** for the first ``steer_until`` of the steps, in ``blocks``: the logits on
  the object's rows and columns are the correlation branch's (the pasted composite's trajectory,
  run by :mod:`dit_accel.editing.prime_correlation` before each call);
* **region-constrained text attention**, every step and block, on calls with the prompt's text:
  image tokens outside the box get ``-inf`` logits to the object's text tokens (FLUX's joint
  attention: the image-to-text logits play the cross-attention role).

The inversion, the blending of the background outside the box and the pipeline call are in
:func:`dit_accel.editing.compose`, which builds the :class:`CompositionPlan` this op needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from dit_accel.config import check_range
from dit_accel.context import AttentionContext
from dit_accel.forward_info import ForwardInfo
from dit_accel.methods.base import AttentionMethod
from dit_accel.pipelines import find_adapter
from dit_accel.pipelines.flux import FluxAdapter
from dit_accel.registry import method_for

from .aligned_gen import _check_span, _sub_context, resolve_blocks
from .inner_attention import InnerAttentionConfig
from .prime_correlation import CompositionPlan, CorrelationStore, attach_correlation
from .prime_steering import Steering, TextConstraint, edited_qkv
from .reference import CaptureComplete


@dataclass
class PrimeComposerConfig(InnerAttentionConfig):
    """Options of ``prime_composer`` (the acceleration's options are given flat, as for ``aligned_gen``).

    Attributes:
        attention: the acceleration method the attention runs through (name or config).
        blocks: half-open ``(start, end)`` range of the attention blocks that steer (dual-stream
            first); ``None``: all of them.
        steer_until: τ_a, the fraction of the steps (from the first) that steer, in [0, 1]. Default 1.0:
            on the tiny FLUX steering every step kept the object's shape best (pilot case of the
            benchmark: reader IoU 0.75 vs 0.67 at 0.4).
        text_constraint: whether image tokens outside the box are kept off the object's text tokens.
        plan: the :class:`CompositionPlan` built by ``compose()`` (trajectories and token masks).
    """

    method: ClassVar[str] = "prime_composer"

    blocks: tuple[int, int] | None = None
    steer_until: float = 1.0
    text_constraint: bool = True
    plan: CompositionPlan | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocks is not None:
            self.blocks = _check_span("blocks", self.blocks, open_end=False)
        check_range("steer_until", self.steer_until, 0.0, 1.0)
        if not isinstance(self.text_constraint, bool):
            raise TypeError(f"text_constraint must be a bool, got {self.text_constraint!r}")
        if self.plan is not None and not isinstance(self.plan, CompositionPlan):
            raise TypeError(f"plan must be a CompositionPlan (built by compose()), got {type(self.plan).__name__}")

    def steer_steps(self, num_steps: int) -> int:
        """How many leading steps steer."""
        return round(self.steer_until * num_steps)


def _in_call_order(mask: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
    """An image-token mask (raster order) over the call's whole sequence, in the call's token order."""
    layout, order = ctx.layout, ctx.info.token_order
    image = mask.to(ctx.info.device)
    if order is not None:
        image = image[order.long()]
    full = torch.zeros(layout.seq_len, dtype=torch.bool, device=image.device)
    full[layout.video_slice] = image
    return full


class PrimeComposerAttention(AttentionMethod):
    """The ``prime_composer`` method; :meth:`attach` (called by ``dit_accel.apply``) hooks the correlation branch."""

    name = "prime_composer"
    kind = "edit"
    description = "PrimeComposer: object composition (attention steering + region-constrained text), any attention"
    config_class = PrimeComposerConfig
    config: PrimeComposerConfig

    def __init__(self, config: PrimeComposerConfig) -> None:
        super().__init__(config)
        self.inner: AttentionMethod = method_for(config.attention, FluxAdapter.family)
        self.store = CorrelationStore()
        self.blocks: tuple[int, int] | None = None

    def attach(self, target: Any, transformers: list[torch.nn.Module]) -> Callable[[], None]:
        """Check the model and the plan, resolve ``blocks``, install the correlation hook."""
        for model in transformers:
            if not isinstance(find_adapter(model), FluxAdapter):
                raise TypeError(f"prime_composer supports FluxTransformer2DModel only, got {type(model).__name__}")
        plan = self.config.plan
        if plan is None:
            raise ValueError(
                "prime_composer needs a composition plan: use dit_accel.editing.compose(pipe, background, "
                "object_image, object_mask, box, prompt), which builds it"
            )
        self.blocks = resolve_blocks(self.config.blocks, transformers[0])
        steps = self.config.steer_steps(len(plan.sigmas) - 1) if self.blocks[0] < self.blocks[1] else 0
        return attach_correlation(transformers, plan, self.store, steps)

    def token_tile(self, info: ForwardInfo) -> tuple[int, int, int] | None:
        """The inner op's token order: the edit's masks are permuted into it (:func:`_in_call_order`)."""
        return self.inner.token_tile(info)

    def prepare(self, info: ForwardInfo) -> None:
        self.inner.prepare(info)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        if self.blocks is None or self.config.plan is None:
            raise RuntimeError("the prime_composer op must be installed by compose() (dit_accel.apply with a plan)")
        layer = ctx.layer_index
        in_blocks = self.blocks[0] <= layer < self.blocks[1]
        if self.store.capturing:
            if in_blocks:
                self.store.qk[layer] = (q, k)
            if layer + 1 >= self.blocks[1]:
                raise CaptureComplete
            return self.inner(q, k, v, _sub_context(ctx, "correlation"))
        plan = self.config.plan
        steering = None
        if in_blocks and layer in self.store.qk:
            steering = Steering(*self.store.qk[layer], objects=_in_call_order(plan.objects, ctx))
        constraint = None
        if self.config.text_constraint and self.store.constrain:
            columns = torch.zeros(ctx.layout.seq_len, dtype=torch.bool, device=q.device)
            columns[list(plan.text_tokens)] = True
            constraint = TextConstraint(rows=_in_call_order(plan.outside, ctx), columns=columns)
        if steering is None and constraint is None:
            return self.inner(q, k, v, ctx)
        q2, k2, v2 = edited_qkv(q, k, v, steering, constraint)
        return self.inner(q2, k2, v2, _sub_context(ctx, "edited"))[..., : q.shape[-1]]
