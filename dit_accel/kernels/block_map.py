"""The ``(query block, key block)`` byte map of a block list, in one launch (Triton).

Tail kernels (PISA's pseudo-tokens, Rectified SpaAttn's correction) stream every key block and must
skip the ones computed exactly. A byte per (query block, key block) lets each chunk load its flags
without walking the list. Built by one program per query block: the row's listed entries, 16 at a
time, against the row's columns, then one store. The PyTorch composition (arange, compare, where,
zeros, scatter, copy) took about ten host-side ops per call; this is one launch. Entries past
``counts`` and entries outside ``[0, NK)`` are ignored.

Reference: :func:`.reference.block_mask_from_lists`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SLOTS = 16  # list entries compared with the row's columns at a time (SLOTS x NK flags in registers)


@triton.jit
def _block_map(Indices, Counts, Map, width, num_blocks, NK_P2: tl.constexpr, SLOTS: tl.constexpr):
    """Grid (B * H * NQ,). Indices ``(rows, width)`` int32 and Map ``(rows, num_blocks)`` int8, contiguous."""
    row = tl.program_id(0).to(tl.int64)
    slots = tl.arange(0, SLOTS)
    cols = tl.arange(0, NK_P2)
    listed_count = tl.minimum(tl.load(Counts + row), width)
    chosen = tl.zeros([NK_P2], dtype=tl.int32)  # a max over int8 is int32: the loop keeps one type
    for start in range(0, listed_count, SLOTS):
        listed = tl.load(Indices + row * width + start + slots, mask=start + slots < listed_count, other=-1)
        chosen = tl.maximum(chosen, tl.max((listed[:, None] == cols[None, :]).to(tl.int32), 0))
    tl.store(Map + row * num_blocks + cols, chosen.to(tl.int8), mask=cols < num_blocks)


def block_map_triton(indices: torch.Tensor, counts: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """int8 ``(B, H, NQ, NK)`` contiguous: 1 where ``indices``/``counts`` list the key block, else 0.

    Same values as :func:`~.reference.block_mask_from_lists` (bool); indices ``(B, H, NQ, W)`` int32.
    """
    lead = indices.shape[:-1]
    width = indices.shape[-1]
    out = torch.empty(*lead, num_blocks, dtype=torch.int8, device=indices.device)
    rows = lead.numel()
    if rows and num_blocks:
        _block_map[(rows,)](
            indices.contiguous(), counts.contiguous(), out, width, num_blocks,
            NK_P2=triton.next_power_of_2(num_blocks), SLOTS=SLOTS,
        )  # fmt: skip
    return out
