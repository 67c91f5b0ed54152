"""Machinery shared by the per-model adapters.

An adapter knows, for one transformer family, which attention modules to take over, how to build
the processor that replaces the stock one, and what to read from the transformer's call (latent
grid, text length) before the blocks run.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from dit_accel import context_parallel
from dit_accel.context import AttentionContext, LayerBinding
from dit_accel.forward_info import ForwardInfo
from dit_accel.layout import TokenLayout
from dit_accel.steps import StepTracker

# Module hooks read the current call's facts (token order) from the handle's tracker.
InfoSource = StepTracker


class BoundProcessor:
    """Base of dit-accel processors: computes attention through the bound op.

    ``_attention_backend`` and ``_parallel_config`` mirror the stock processors so that
    ``model.set_attention_backend(...)`` keeps working and the dense path uses the same backend.
    Under Diffusers' Ulysses context parallelism the op runs on the full sequence of the rank's heads
    (:mod:`dit_accel.context_parallel`); ``context_parallel_refusal`` names families that cannot.
    """

    _attention_backend = None
    _parallel_config = None
    context_parallel_refusal: ClassVar[str | None] = None

    def __init__(self, binding: LayerBinding) -> None:
        self.binding = binding

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        spans: tuple[int, ...],
        make_layout: Callable[[tuple[int, ...]], TokenLayout],
        attention_mask: torch.Tensor | None = None,
        rotary_emb: Any = None,
    ) -> torch.Tensor:
        """Run the op on ``(B, S, H, D)`` q/k/v with this call's context.

        ``spans`` are the lengths of the consecutive token spans of the call's sequence (FLUX: text,
        image); ``make_layout`` builds the layout from the lengths of the spans the op will see (the
        whole sequence's under context parallelism, where q/k/v hold one rank's shard).
        """
        op = self.binding.op
        config = context_parallel.cp_config_of(self._parallel_config)
        if config is None or op.runs_diffusers_parallelism():
            return self._call_op(query, key, value, make_layout(spans), attention_mask, rotary_emb)
        if self.context_parallel_refusal is not None:
            raise ValueError(self.context_parallel_refusal)
        context_parallel.check_ulysses(config, op.name)
        if attention_mask is not None:
            raise ValueError(f"dit-accel method {op.name!r} does not support attention masks under context parallelism")
        exchange = context_parallel.UlyssesExchange(config, spans, query.shape[2], query.device)
        query, key, value = (exchange.gather(x) for x in (query, key, value))
        out = self._call_op(query, key, value, make_layout(exchange.full_spans), None, rotary_emb, parallel=False)
        return exchange.scatter(out)

    def _call_op(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        layout: TokenLayout,
        attention_mask: torch.Tensor | None,
        rotary_emb: Any,
        parallel: bool = True,
    ) -> torch.Tensor:
        """The op's call; ``parallel=False`` once q/k/v are gathered, so ``ctx.dense`` runs locally."""
        ctx = AttentionContext(
            layout=layout,
            binding=self.binding,
            attention_mask=attention_mask,
            rotary_emb=rotary_emb,
            backend=self._attention_backend,
            parallel_config=self._parallel_config if parallel else None,
        )
        return self.binding.op(query, key, value, ctx)


def padding_to_valid_lengths(attention_mask: torch.Tensor | None, text_start: int, text_len: int):
    """Per-sample count of valid text keys from a ``(B, 1, 1, N)`` boolean key-padding mask.

    Returns ``None`` when there is no mask; raises ``ValueError`` for masks of another form, which
    the block-sparse methods cannot express.
    """
    if attention_mask is None or text_len == 0:
        return None
    if attention_mask.dtype != torch.bool or attention_mask.ndim != 4 or attention_mask.shape[1:3] != (1, 1):
        raise ValueError(
            "only (B, 1, 1, N) boolean key-padding masks are supported by dit-accel methods, got "
            f"{tuple(attention_mask.shape)} {attention_mask.dtype}"
        )
    keys = attention_mask[:, 0, 0, text_start : text_start + text_len]
    return keys.sum(dim=-1, dtype=torch.int32)


class ModelAdapter:
    """One transformer family. Subclasses fill in the class attributes and three methods."""

    family: ClassVar[str] = ""  # the key of per-family option defaults (MethodConfig.family_defaults)
    model_class_names: ClassVar[tuple[str, ...]] = ()
    stock_processor_names: ClassVar[tuple[str, ...]] = ()

    def matches(self, model: torch.nn.Module) -> bool:
        return any(cls.__name__ in self.model_class_names for cls in type(model).__mro__)

    def attention_modules(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The attention modules to take over, in layer order."""
        raise NotImplementedError

    def make_processor(self, binding: LayerBinding) -> BoundProcessor:
        raise NotImplementedError

    def capture(self, model: torch.nn.Module, arguments: dict[str, Any]) -> ForwardInfo:
        """Facts about this forward the processors need (grid, text length), from its arguments."""
        raise NotImplementedError

    def can_reorder(self, model: torch.nn.Module, arguments: dict[str, Any]) -> bool:
        """Whether this call's video tokens may be put in tile order for the whole forward."""
        return False

    def install_reorder_hooks(self, model: torch.nn.Module, info: InfoSource) -> list[Any]:
        """Module hooks that permute tokens into tile order after embedding and back before the output."""
        return []

    def bind_arguments(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
        signature = inspect.signature(type(model).forward)
        bound = signature.bind_partial(model, *args, **kwargs)
        return dict(bound.arguments)

    def check_processors(self, modules: list[torch.nn.Module]) -> None:
        """Refuse to replace processors that are not the stock ones (IP-Adapter, user processors)."""
        for module in modules:
            if isinstance(module.processor, BoundProcessor):
                raise ValueError(
                    "dit-accel is already applied to this model; call handle.remove() on the existing handle first"
                )
            name = type(module.processor).__name__
            if name not in self.stock_processor_names:
                raise ValueError(
                    f"{type(module).__name__} uses processor {name}; dit-accel replaces only the stock "
                    f"processors {self.stock_processor_names}. Restore them (model.set_default_attn_processor() "
                    "or unload the adapter that installed it) before dit_accel.apply()."
                )


class DualSingleStreamAdapter(ModelAdapter):
    """Families with dual-stream ``transformer_blocks`` then single-stream ``single_transformer_blocks``."""

    def attention_modules(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.attn for block in model.transformer_blocks] + [
            block.attn for block in model.single_transformer_blocks
        ]

    @staticmethod
    def first_block(model: torch.nn.Module) -> torch.nn.Module:
        """The block that receives the embedded hidden states first."""
        return model.transformer_blocks[0] if len(model.transformer_blocks) else model.single_transformer_blocks[0]


def video_forward_info(hidden_states: torch.Tensor, patch: tuple[int, int, int]) -> ForwardInfo:
    """Forward facts of a video transformer whose attention sequence starts with the video tokens.

    ``grid`` is the token grid of the ``(B, C, F, H, W)`` latent after a ``(pt, ph, pw)`` patch
    embedding; ``video_start``/``video_len`` locate those tokens in the attention sequence.
    """
    _, _, frames, height, width = hidden_states.shape
    grid = (frames // patch[0], height // patch[1], width // patch[2])
    return ForwardInfo(grid=grid, video_start=0, video_len=math.prod(grid), device=hidden_states.device)


def _permute(x: torch.Tensor, dim: int, info: InfoSource, key: str) -> torch.Tensor:
    index = getattr(info.info, key)
    if index is None:
        return x
    if x.shape[dim] != index.numel():
        raise RuntimeError(f"token reorder: {x.shape[dim]} tokens on dim {dim}, but the call has {index.numel()}")
    return x.index_select(dim, index)


def reorder_output(info: InfoSource, dim: int, after_text: bool = False):
    """Forward hook putting a rotary module's ``(cos, sin)`` rows in the call's token order."""
    key = "token_order_after_text" if after_text else "token_order"

    def hook(module: torch.nn.Module, args: tuple, output: tuple) -> tuple:
        return tuple(_permute(x, dim, info, key) for x in output)

    return hook


def reorder_argument(info: InfoSource, dim: int, inverse: bool = False, keyword: str | None = None):
    """Forward pre-hook permuting a module's hidden-state input into (or, inverse, out of) tile order."""
    key = "token_inverse" if inverse else "token_order"

    if keyword is None:

        def hook(module: torch.nn.Module, args: tuple) -> tuple:
            return (_permute(args[0], dim, info, key), *args[1:])

        return hook

    def hook_with_kwargs(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, keyword: _permute(kwargs[keyword], dim, info, key)}

    return hook_with_kwargs
