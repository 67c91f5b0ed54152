"""The block list's byte map (Triton, interpreter) against ``block_mask_from_lists``: padding, entries
after a row's count, rows longer than one compare chunk, empty rows, and out-of-range entries ignored."""

from __future__ import annotations

import pytest
import torch

from dit_accel.kernels import block_mask
from dit_accel.kernels.block_map import SLOTS, block_map_triton
from dit_accel.kernels.reference import block_mask_from_lists


def random_lists(gen: torch.Generator, lead: tuple[int, ...], num_blocks: int, width: int):
    """Ascending lists of random lengths (one empty, one full), -1 padded, with junk after some counts."""
    counts = torch.randint(0, width + 1, lead, generator=gen, dtype=torch.int32)
    counts.view(-1)[0], counts.view(-1)[-1] = 0, width
    indices = torch.full((*lead, width), -1, dtype=torch.int32)
    flat_counts, flat_indices = counts.view(-1), indices.view(-1, width)
    for row, count in enumerate(flat_counts.tolist()):
        flat_indices[row, :count] = torch.randperm(num_blocks, generator=gen)[:count].sort().values.to(torch.int32)
        if count < width and row % 3 == 0:  # a valid-looking block after the count: not listed
            flat_indices[row, count] = int(torch.randint(0, num_blocks, (1,), generator=gen))
    return indices, counts


@pytest.mark.parametrize(("num_blocks", "width"), [(37, 20), (5, 5), (70, 2 * SLOTS + 3)])
def test_byte_map_equals_the_list_mask(num_blocks, width):
    gen = torch.Generator().manual_seed(num_blocks)
    indices, counts = random_lists(gen, (2, 3, 7), num_blocks, width)
    got = block_map_triton(indices, counts, num_blocks)
    want = block_mask_from_lists(indices, counts, num_blocks)
    assert got.dtype == torch.int8 and got.is_contiguous()
    assert torch.equal(got.bool(), want) and set(got.unique().tolist()) <= {0, 1}
    assert torch.equal(got.view(torch.bool), want)  # what the block_mask op returns on CUDA: no conversion pass


def test_block_mask_op_on_the_triton_path_is_the_bool_mask(monkeypatch):
    from dit_accel.kernels import ops

    monkeypatch.setattr(ops, "use_triton", lambda t: True)  # the CUDA path, run by the interpreter
    gen = torch.Generator().manual_seed(5)
    indices, counts = random_lists(gen, (2, 1, 6), 13, 9)
    got = block_mask(indices, counts, 13)
    assert got.dtype == torch.bool and got.is_contiguous()
    assert torch.equal(got, block_mask_from_lists(indices, counts, 13))


def test_block_mask_op_serves_the_reference_on_cpu_and_passes_opcheck():
    gen = torch.Generator().manual_seed(3)
    indices, counts = random_lists(gen, (1, 2, 5), 11, 6)
    assert torch.equal(block_mask(indices, counts, 11), block_mask_from_lists(indices, counts, 11))
    torch.library.opcheck(block_mask, (indices, counts, 11))


def test_out_of_range_entries_are_ignored():
    indices = torch.tensor([[[[2, -1, 9, 4]]]], dtype=torch.int32)  # -1 and 9 (>= NK) inside the count
    counts = torch.tensor([[[4]]], dtype=torch.int32)
    got = block_map_triton(indices, counts, 6)
    assert got.view(-1).tolist() == [0, 0, 1, 0, 1, 0]
