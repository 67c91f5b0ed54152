"""FlashAttention-4 (``flash-attn-4``, CuTe DSL) as our block-sparse backend on Hopper and Blackwell.

FA4 takes per-query-block lists of key blocks in the same layout as :class:`BlockList` (counts
``(B, H, NQ)``, ascending indices ``(B, H, NQ, W)``), so our routing output is passed as is, as
its "full" (unmasked) lists. FA4 walks a list from its last entry and applies the sequence-length
mask to that first-visited block: with ascending lists that is the only block that can be partial.
The forward returns the natural-log LSE in fp32. The backward uses FA4's block-sparse backward
with the transposed lists (per key block, the query blocks that read it): 128-key blocks on FA4's
tiles; 64-key blocks at head_dim 128 on sm90, without a gradient on the LSE, on 64-key tiles of ours
(:data:`SM90_BACKWARD_TILES`); other lists on our Triton backward.

Both directions are wrapped as ``torch.library`` custom ops with fake implementations, so the
call traces under ``torch.compile`` (``fullgraph=True``) and runs in CUDA graphs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from collections.abc import Iterator

import torch

from .reference import transpose_block_lists

Tensor = torch.Tensor

# Key-block sizes FA4's block-sparse forward accepts with 128-row query blocks (measured on the H200).
SUPPORTED_BLOCKS = ((128, 128), (128, 64))
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)


def _find_fa4() -> bool:
    if importlib.util.find_spec("flash_attn") is None:
        return False
    return importlib.util.find_spec("flash_attn.cute") is not None


# Looked up once at import (without importing FA4), so that traced code only reads a constant.
FA4_INSTALLED = _find_fa4()
# FA4's sm90 backward tiles key blocks of 128 at head_dim 128 (block-sparse: 64 x 128 tiles, SdP
# transposed, dK/dV over two warpgroups) and takes lists of its tile. For 64-key lists these 64 x 64
# tiles (nothing transposed, each product split over the two MMA warpgroups' columns) replace it. On
# the H200 at the Wan-1.3B shape, k_high 0.05 lists of 128x64 blocks: 2.46 ms against our Triton
# backward's 3.06 (benchmarks/check_fa4_bwd_tiles.py, which checks gradients against float64 at an odd
# shape and against the Triton backward at the full one; a transposed-SdP variant was wrong at the full
# shape). FA4's compile key leaves out num_stages_PdS: keep it equal to the Q stages. Other key blocks,
# head dims and GPUs, and calls with a gradient on the LSE (not yet checked at these tiles), use our
# Triton backward.
SM90_BACKWARD_TILES = {
    (64, 128): dict(m_block_size=64, n_block_size=64, num_stages_Q=2, num_stages_dO=2, num_stages_PdS=2,
                    SdP_swapAB=False, dKV_swapAB=False, dQ_swapAB=False, AtomLayoutMSdP=1, AtomLayoutNdKV=1,
                    AtomLayoutMdQ=1),
}  # (key block, head_dim) -> BwdConfig fields  # fmt: skip
BACKWARD_KEY_BLOCK = 128
_CAPABILITY: dict[int, int] = {}


def _major(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPABILITY:
        _CAPABILITY[index] = torch.cuda.get_device_capability(index)[0]
    return _CAPABILITY[index]


def fa4_rejects(q: Tensor, block_q: int, block_k: int) -> str | None:
    """Why FA4 cannot serve this call (``(B, H, S, D)`` q), or None when it can."""
    if not q.is_cuda:
        return "FA4 needs CUDA tensors"
    major = _major(q.device)
    if major not in (9, 10):
        return f"FA4 needs sm90 or sm100, this GPU is sm{major}x"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"FA4 takes fp16/bf16, got {q.dtype}"
    if q.shape[-1] % 8 or not 8 <= q.shape[-1] <= (256 if major == 9 else 128):
        return f"FA4 does not take head_dim {q.shape[-1]} on sm{major}x"
    if (block_q, block_k) not in SUPPORTED_BLOCKS:
        return f"FA4 block-sparse takes block sizes {SUPPORTED_BLOCKS}, got {(block_q, block_k)}"
    if not FA4_INSTALLED:
        return 'flash-attn-4 is not installed (pip install "dit-accel[fa4]")'
    return None


_NO_MASK_CACHE: dict[tuple, tuple[Tensor, Tensor]] = {}


def _no_masked_blocks(counts: Tensor) -> tuple[Tensor, Tensor]:
    """Empty "masked block" lists FA4 requires beside the full ones (cached: never written)."""
    key = (tuple(counts.shape), str(counts.device))
    if key not in _NO_MASK_CACHE:
        b, h, n = counts.shape
        _NO_MASK_CACHE[key] = (counts.new_zeros(b, h, n), counts.new_zeros(b, h, n, 1))
    return _NO_MASK_CACHE[key]


def sparse_tensors(indices: Tensor, counts: Tensor, block_size: tuple[int, int]):
    """FA4's block-sparse container with our lists as its unmasked ("full") blocks."""
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

    no_mask_cnt, no_mask_idx = _no_masked_blocks(counts)
    return BlockSparseTensorsTorch(
        mask_block_cnt=no_mask_cnt,
        mask_block_idx=no_mask_idx,
        full_block_cnt=counts.contiguous(),
        full_block_idx=indices.contiguous(),
        block_size=block_size,
    )


def backward_tiles(major: int, block_k: int, head_dim: int) -> dict | None:
    """The ``BwdConfig`` fields FA4's backward runs ``block_k``-key lists with on an sm``major``x GPU;
    None where FA4's own tiles stand (128-key blocks) or our Triton backward runs instead."""
    return SM90_BACKWARD_TILES.get((block_k, head_dim)) if major == 9 else None


_TILE_OVERRIDE = threading.local()


@contextlib.contextmanager
def sm90_backward_tiles(config) -> Iterator[None]:
    """FA4's sm90 backward with the tile ``config`` (a ``flash_attn.cute.interface.BwdConfig``) inside the block.

    FA4 chooses the tiles in ``_tile_size_bwd_sm90`` (128-key tiles at head_dim 128) and takes
    block-sparse lists whose key blocks are its tile. The first use wraps that function once: the
    wrapper returns this thread's override while a block is open and FA4's own choice otherwise, so
    calls on other threads, and blocks that interleave, keep their own tiles.
    """
    from flash_attn.cute import interface

    if not getattr(interface._tile_size_bwd_sm90, "reads_dit_accel_override", False):
        fa4_choice = interface._tile_size_bwd_sm90

        def choose(*args, **kwargs):
            override = getattr(_TILE_OVERRIDE, "config", None)
            return override if override is not None else fa4_choice(*args, **kwargs)

        choose.reads_dit_accel_override = True
        interface._tile_size_bwd_sm90 = choose
    outer = getattr(_TILE_OVERRIDE, "config", None)
    _TILE_OVERRIDE.config = config
    try:
        yield
    finally:
        _TILE_OVERRIDE.config = outer


@torch.library.custom_op("dit_accel::fa4_block_sparse_attention", mutates_args=())
def fa4_block_sparse_attention(
    q: Tensor, k: Tensor, v: Tensor, indices: Tensor, counts: Tensor, block_q: int, block_k: int, scale: float
) -> tuple[Tensor, Tensor]:
    """Block-sparse attention on ``(B, S, H, D)`` q/k/v; returns ``(out (B, S, H, D), lse (B, H, S) fp32)``."""
    from flash_attn.cute.interface import _flash_attn_fwd

    out, lse, *_ = _flash_attn_fwd(
        q, k, v, softmax_scale=scale,
        block_sparse_tensors=sparse_tensors(indices, counts, (block_q, block_k)), return_lse=True,
    )  # fmt: skip
    return out, lse


@fa4_block_sparse_attention.register_fake
def _(q, k, v, indices, counts, block_q, block_k, scale):
    b, s, h, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(b, h, s, dtype=torch.float32)


@torch.library.custom_op("dit_accel::fa4_block_sparse_attention_backward", mutates_args=())
def fa4_block_sparse_attention_backward(
    dout: Tensor, dlse: Tensor | None, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    indices: Tensor, counts: Tensor, block_q: int, block_k: int, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """dq, dk, dv of :func:`fa4_block_sparse_attention` through FA4's block-sparse backward.

    ``dlse`` carries the gradient reaching the LSE output (an LSE merge downstream gives one).
    FA4's backward runs 128-key blocks with its own tiles and, without ``dlse``, 64-key blocks at
    head_dim 128 on sm90 with :data:`SM90_BACKWARD_TILES`; other block lists run our Triton backward.
    """
    tiles = backward_tiles(_major(q.device), block_k, q.shape[-1]) if dlse is None else None
    if block_k != BACKWARD_KEY_BLOCK and tiles is None:
        from .block_sparse_attention_bwd import block_sparse_attention_backward_triton

        grads = block_sparse_attention_backward_triton(
            dout.transpose(1, 2), q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), out.transpose(1, 2),
            lse, indices, counts, block_m=block_q, block_n=block_k, key_len=k.shape[1], scale=scale, dlse=dlse,
        )  # fmt: skip
        return tuple(g.transpose(1, 2).contiguous() for g in grads)
    if tiles is None:
        return fa4_sparse_backward(dout, dlse, q, k, v, out, lse, indices, counts, block_q, block_k, scale)
    from flash_attn.cute.interface import BwdConfig

    with sm90_backward_tiles(BwdConfig(**tiles)):
        return fa4_sparse_backward(dout, dlse, q, k, v, out, lse, indices, counts, block_q, block_k, scale)


def fa4_sparse_backward(
    dout: Tensor, dlse: Tensor | None, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    indices: Tensor, counts: Tensor, block_q: int, block_k: int, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """FA4's block-sparse backward on the transposed lists, with whatever tiles FA4 picks for the call
    (its own, or those of an open :func:`sm90_backward_tiles` block); ``(B, S, H, D)`` in and out."""
    from flash_attn.cute.interface import _flash_attn_bwd

    t_indices, t_counts = transpose_block_lists(indices, counts, -(-k.shape[1] // block_k))
    bwd_lists = sparse_tensors(t_indices, t_counts, (block_q, block_k))
    dq, dk, dv = _flash_attn_bwd(
        q, k, v, out, dout.contiguous(), lse, softmax_scale=scale, block_sparse_tensors=bwd_lists,
        dlse=None if dlse is None else dlse.contiguous(),
    )  # fmt: skip
    return dq, dk, dv


@fa4_block_sparse_attention_backward.register_fake
def _(dout, dlse, q, k, v, out, lse, indices, counts, block_q, block_k, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    q, k, v, indices, counts, block_q, block_k, scale = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], indices, counts)
    ctx.blocks = (block_q, block_k, scale)
    ctx.set_materialize_grads(False)  # an unused LSE gives None, not zeros: the backward then skips dlse


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, indices, counts = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = fa4_block_sparse_attention_backward(dout, dlse, q, k, v, out, lse, indices, counts, *ctx.blocks)
    return dq, dk, dv, None, None, None, None, None


fa4_block_sparse_attention.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("dit_accel::fa4_dense_attention", mutates_args=())
def fa4_dense_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Dense FA4 attention on ``(B, S, H, D)``: the fastest dense baseline on Hopper/Blackwell."""
    from flash_attn.cute.interface import _flash_attn_fwd

    out, lse, *_ = _flash_attn_fwd(q, k, v, softmax_scale=scale, return_lse=True)
    return out, lse


@fa4_dense_attention.register_fake
def _(q, k, v, scale):
    b, s, h, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(b, h, s, dtype=torch.float32)
