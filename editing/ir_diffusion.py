"""``ir_diffusion``: multi-subject consistent FLUX batches (IR-Diffusion, METHODS.md), training-free.

Each CFG group of the batch is ``[reference 0, ..., reference n-1, target 0, ..., target T-1]``:
reference i shows subject i, inside ``reference_regions[i]``; target t shows subject i inside
``target_regions[t][i]``. In the chosen blocks and steps, the target's image queries inside subject
i's region are recomputed with

* Isolation Attention: they do not attend to the target's own keys inside subject j's region
  (j != i): logits -inf on ``m_i m_jᵀ``;
* Reposition Attention: they attend to ``[own keys ; reference i's keys inside its mask, moved to
  the target's region]``; the reference's keys outside its (relocated) mask are never shown. On
  FLUX the move is a change of RoPE positions (``reposition="rope"``: every masked token shifted by
  the offset between the two regions' centres), or a crop of the reference's box resized onto the
  target's box on the token grid (``reposition="crop"``); see :mod:`dit_accel.editing.reposition`.

Every other row of the call (references, text, target background) is the acceleration op's
output: the whole call runs through ``attention`` (``"dense"``, ``"topk"``, ...), and the target's
subject rows, a fraction of the tokens, are then recomputed exactly by masked dense attention,
since their key sets differ per region. References come out exactly as without the editor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from dit_accel.config import check_choice, check_range
from dit_accel.context import AttentionContext
from dit_accel.forward_info import ForwardInfo
from dit_accel.methods.base import AttentionMethod
from dit_accel.pipelines import find_adapter
from dit_accel.pipelines.flux import FluxAdapter
from dit_accel.registry import method_for

from .aligned_gen import _check_span, resolve_blocks
from .inner_attention import InnerAttentionConfig
from .regions import Region, check_region, token_mask
from .reposition import REPOSITION_MODES, Placement, place
from .rope import Table, rotate, rows, unrotate

REPOSITION_CHOICES = (*REPOSITION_MODES, "off")


@dataclass
class IRDiffusionConfig(InnerAttentionConfig):
    """Options of ``ir_diffusion`` (besides ``attention`` and the inner method's options, given flat).

    Attributes:
        reference_regions: subject i's region in reference image i (image i of each CFG group): a box
            ``(x0, y0, x1, y1)`` in fractions of the image or a 2-D bool mask (any resolution). With
            no regions at all (the default) there is nothing to edit and the op is its attention method.
        target_regions: for each target image (the images after the references), one region per
            subject, in the references' order: ``target_regions[t][i]``.
        isolation: Isolation Attention on (a subject's queries ignore the other subjects' keys).
        reposition: ``"rope"`` (move the reference's masked tokens by RoPE positions), ``"crop"`` (crop
            its box and resize it onto the target's box on the token grid) or ``"off"``.
        reference_scale: factor on the repositioned reference keys (> 1 sharpens attention to them).
        blocks: half-open ``(start, end)`` range of attention blocks that edit (dual-stream blocks
            first); default every block.
        steps: half-open ``(start, end)`` range of denoising steps that edit; ``end=None``: to the last.
    """

    method: ClassVar[str] = "ir_diffusion"

    reference_regions: tuple[Region, ...] = field(default=(), repr=False, compare=False)
    target_regions: tuple[tuple[Region, ...], ...] = field(default=(), repr=False, compare=False)
    isolation: bool = True
    reposition: str = "rope"
    reference_scale: float = 1.0
    blocks: tuple[int, int] | None = None
    steps: tuple[int, int | None] = (0, None)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.isolation, bool):
            raise TypeError(f"isolation must be a bool, got {self.isolation!r}")
        check_choice("reposition", self.reposition, REPOSITION_CHOICES)
        check_range("reference_scale", self.reference_scale, 0.0, 10.0, low_open=True)
        if self.blocks is not None:
            self.blocks = _check_span("blocks", self.blocks, open_end=False)
        self.steps = _check_span("steps", self.steps, open_end=True)
        if isinstance(self.reference_regions, (str, bytes)) or isinstance(self.target_regions, (str, bytes)):
            raise TypeError("reference_regions and target_regions must be sequences of regions, not strings")
        if not self.reference_regions and not self.target_regions:
            return  # no subjects: nothing to edit, the op is its attention method
        if not self.reference_regions:
            raise ValueError("reference_regions must list one region (box or mask) per subject, got none")
        self.reference_regions = tuple(
            check_region(f"reference_regions[{i}]", region) for i, region in enumerate(self.reference_regions)
        )
        subjects = len(self.reference_regions)
        if not self.target_regions:
            raise ValueError("target_regions must list, for each target image, one region per subject; got none")
        checked = []
        for t, regions in enumerate(self.target_regions):
            if not isinstance(regions, (tuple, list)) or len(regions) != subjects or _is_box(regions):
                raise ValueError(
                    f"target_regions[{t}] must hold one region per subject ({subjects}, the number of "
                    f"reference_regions), got {regions!r}"
                )
            checked.append(tuple(check_region(f"target_regions[{t}][{i}]", r) for i, r in enumerate(regions)))
        self.target_regions = tuple(checked)

    @property
    def edits(self) -> bool:
        """Whether the editor changes anything (subjects given, isolation or reposition on)."""
        return bool(self.reference_regions) and (self.isolation or self.reposition != "off")

    def in_steps(self, step: int) -> bool:
        start, end = self.steps
        return start <= step and (end is None or step < end)


def _is_box(value: Any) -> bool:
    return len(value) == 4 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)


@dataclass(frozen=True)
class Geometry:
    """Token-grid facts of the configured regions on one grid and device.

    Attributes:
        labels: per target, ``(N,)`` long: the subject each image token belongs to (-1: none; where
            regions overlap, the lower subject index wins).
        placements: per target, per subject, the reference tokens shown there.
        tables: per target, per subject, the RoPE table of those tokens' new positions.
    """

    labels: list[torch.Tensor]
    placements: list[list[Placement]]
    tables: list[list[Table]]


class IRDiffusionAttention(AttentionMethod):
    """The ``ir_diffusion`` method; :meth:`attach` (called by ``dit_accel.apply``) binds it to a FLUX model."""

    name = "ir_diffusion"
    kind = "edit"
    description = "IR-Diffusion: consistent subjects across a FLUX batch (isolation + reposition attention)"
    config_class = IRDiffusionConfig
    config: IRDiffusionConfig

    def __init__(self, config: IRDiffusionConfig) -> None:
        super().__init__(config)
        self.inner: AttentionMethod = method_for(config.attention, FluxAdapter.family)
        self.blocks: tuple[int, int] | None = None
        self._geometry: dict[tuple[int, int, str], Geometry] = {}

    def attach(self, target: Any, transformers: list[torch.nn.Module]) -> Callable[[], None]:
        """Check the model and resolve ``blocks`` (default: every attention block)."""
        for model in transformers:
            if not isinstance(find_adapter(model), FluxAdapter):
                raise TypeError(f"ir_diffusion supports FluxTransformer2DModel only, got {type(model).__name__}")
        model = transformers[0]
        everything = (0, len(model.transformer_blocks) + len(model.single_transformer_blocks))
        self.blocks = resolve_blocks(self.config.blocks or everything, model)
        return self._geometry.clear

    def token_tile(self, info: ForwardInfo) -> None:
        """Raster order for the whole forward: regions are given on the raster grid."""
        return None

    def prepare(self, info: ForwardInfo) -> None:
        self.inner.prepare(info)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        if self.blocks is None:
            raise RuntimeError("the ir_diffusion op must be installed with dit_accel.apply(pipe, 'ir_diffusion', ...)")
        if ctx.info.pos_embed is None:
            raise TypeError("ir_diffusion runs on FluxTransformer2DModel only (the call carries no FLUX position ids)")
        subjects, targets = len(self.config.reference_regions), len(self.config.target_regions)
        per_group = q.shape[0] // ctx.layout.cfg_groups
        if subjects and per_group != subjects + targets:
            raise ValueError(
                f"ir_diffusion was set up for {subjects} reference(s) + {targets} target(s) = {subjects + targets} "
                f"images per CFG group, got {per_group}"
            )
        out = self.inner(q, k, v, ctx)
        in_blocks = self.blocks[0] <= ctx.layer_index < self.blocks[1]
        if not (in_blocks and self.config.edits and self.config.in_steps(ctx.step_index)):
            return out
        if ctx.attention_mask is not None:
            raise ValueError("ir_diffusion does not support attention masks in FLUX attention")
        geometry = self.geometry(ctx)
        image = ctx.layout.video_start
        for base in range(0, q.shape[0], per_group):
            for t in range(targets):
                sample = base + subjects + t
                tokens, rows_out = self._subject_rows(q, k, v, ctx, geometry, base, t)
                out[sample, image + tokens] = rows_out.to(out.dtype)
        return out

    def _subject_rows(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        ctx: AttentionContext,
        geometry: Geometry,
        base: int,
        target: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The target's image tokens inside subject regions and their attention output ``(n, H, D)``."""
        sample = base + len(self.config.reference_regions) + target
        image, seq = ctx.layout.video_start, q.shape[1]
        labels = geometry.labels[target]
        tokens = (labels >= 0).nonzero().squeeze(1)
        query_labels = labels[tokens]
        key_labels = torch.full((seq,), -1, dtype=torch.long, device=q.device)
        key_labels[image : image + labels.numel()] = labels
        own = (key_labels[None, :] < 0) | (key_labels[None, :] == query_labels[:, None])
        keys, values, allowed = [k[sample]], [v[sample]], [own if self.config.isolation else torch.ones_like(own)]
        if self.config.reposition != "off":
            for subject, (placement, table) in enumerate(
                zip(geometry.placements[target], geometry.tables[target], strict=True)
            ):
                source = image + placement.source
                moved = rotate(unrotate(k[base + subject, source][None], rows(ctx.rotary_emb, source)), table)[0]
                keys.append((moved * self.config.reference_scale).to(k.dtype))
                values.append(v[base + subject, source])
                allowed.append((query_labels == subject)[:, None].expand(-1, source.numel()))
        mask = torch.cat(allowed, dim=1)[None, None]
        out = ctx.dense(q[sample, image + tokens][None], torch.cat(keys)[None], torch.cat(values)[None], mask)
        return tokens, out[0]

    def geometry(self, ctx: AttentionContext) -> Geometry:
        """Labels, placements and their RoPE tables for this call's grid (cached per grid and device)."""
        grid = ctx.layout.grid
        if grid is None or grid[0] != 1 or ctx.rotary_emb is None or ctx.info.img_ids is None:
            raise ValueError("ir_diffusion needs one raster of image tokens (row-major img_ids) and rotary embeddings")
        height, width, device = grid[1], grid[2], ctx.rotary_emb[0].device
        key = (height, width, str(device))
        if key not in self._geometry:
            self._geometry[key] = self._build_geometry(ctx, height, width, device)
        return self._geometry[key]

    def _build_geometry(self, ctx: AttentionContext, height: int, width: int, device: torch.device) -> Geometry:
        img_ids = ctx.info.img_ids
        ids = (img_ids[0] if img_ids.ndim == 3 else img_ids).to(device)
        references = [token_mask(r, height, width) for r in self.config.reference_regions]
        labels, placements, tables = [], [], []
        for regions in self.config.target_regions:
            masks = [token_mask(r, height, width) for r in regions]
            label = torch.full((height * width,), -1, dtype=torch.long)
            for subject in reversed(range(len(masks))):
                label[masks[subject].flatten()] = subject
            labels.append(label.to(device))
            mode = self.config.reposition if self.config.reposition != "off" else "rope"
            placed = [place(mode, ref, mask) for ref, mask in zip(references, masks, strict=True)]
            placements.append([Placement(p.source.to(device), p.shift.to(device)) for p in placed])
            tables.append([self._table(ctx, ids, p) for p in placements[-1]])
        return Geometry(labels, placements, tables)

    @staticmethod
    def _table(ctx: AttentionContext, ids: torch.Tensor, placement: Placement) -> Table:
        """RoPE table of the placed tokens at their new positions, from the model's own ``pos_embed``.

        ``forward`` is called directly: module hooks on ``pos_embed`` (dit-accel's token reorder)
        are for the model's own per-token table.
        """
        moved = ids[placement.source].clone().float()
        moved[:, 1:3] += placement.shift.to(moved.dtype)
        return ctx.info.pos_embed.forward(moved)
