"""Triton kernels (under TRITON_INTERPRET=1 on CPU) against float64 references, fresh random inputs."""

from __future__ import annotations

import math

import pytest
import torch

from dit_accel.kernels import reference
from dit_accel.kernels.block_list import BlockList, ascending_lists
from dit_accel.kernels.block_pooling import gather_blocks_triton, pool_blocks_triton
from dit_accel.kernels.block_selection import select_blocks_triton
from dit_accel.kernels.block_sparse_attention import KernelConfig, block_sparse_attention_triton

TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def bshd(batch: int, seq: int, heads: int, dim: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """A (B, H, S, D) view of a (B, S, H, D) tensor, the layout Diffusers hands to attention."""
    return torch.randn(batch, seq, heads, dim, generator=gen).to(dtype).transpose(1, 2)


def random_block_lists(batch, heads, nq, nk, gen):
    """Random ascending block lists with some empty and some full rows."""
    counts = torch.randint(0, nk + 1, (batch, heads, nq), generator=gen, dtype=torch.int32)
    counts[0, 0, 0] = 0
    counts[-1, -1, -1] = nk
    indices = torch.full((batch, heads, nq, nk), -1, dtype=torch.int32)
    for b in range(batch):
        for h in range(heads):
            for i in range(nq):
                chosen = torch.randperm(nk, generator=gen)[: counts[b, h, i]].sort().values
                indices[b, h, i, : len(chosen)] = chosen.to(torch.int32)
    return indices, counts


# bf16 is checked on the GPU (benchmarks/gpu_check.py): Triton's interpreter mis-evaluates
# tl.dot on bf16 operands (seen with Triton 3.9: results off by ~1e10), so it is not used here.
CASES = [
    # batch, heads, seq_q, seq_k, head_dim, block_m, block_n, extra, dtype
    (1, 2, 45, 45, 16, 16, 16, 0, torch.float32),
    (2, 1, 70, 53, 32, 32, 16, 7, torch.float32),
    (1, 2, 33, 97, 64, 16, 32, 5, torch.float16),
    (2, 1, 37, 41, 128, 16, 16, 9, torch.float16),
]


KERNEL_CONFIGS = {
    "pointers": KernelConfig(kv_mode=0),
    "host-tma": KernelConfig(kv_mode=1),
    "device-tma-lazy": KernelConfig(kv_mode=2, lazy_rescale=True),
    # lists of 32-key blocks run as 16-key blocks (the lists split), as 128-key blocks do on the GPU
    "pointers-split-blocks": KernelConfig(kv_mode=0, max_block_n=16),
    "host-tma-split-blocks": KernelConfig(kv_mode=1, max_block_n=16),
    "device-tma-split-blocks": KernelConfig(kv_mode=2, max_block_n=16),
}


def test_split_key_blocks_keeps_the_keys_of_every_list():
    """Split lists name the same keys, ascending; -1 padding past a row's count stays unread."""
    from dit_accel.kernels.block_sparse_attention import split_key_blocks

    indices = torch.tensor([[[[0, 3, -1], [2, -1, -1]]]], dtype=torch.int32)
    counts = torch.tensor([[[2, 1]]], dtype=torch.int32)
    bias = torch.tensor([[[0.5, 1.0, 1.5, 2.0]]])
    split, split_counts, split_bias = split_key_blocks(indices, counts, bias, 64, 32)
    assert split_counts.tolist() == [[[4, 2]]]
    assert split[0, 0, 0, :4].tolist() == [0, 1, 6, 7] and split[0, 0, 1, :2].tolist() == [4, 5]
    assert split_bias.tolist() == [[[0.5, 0.5, 1.0, 1.0, 1.5, 1.5, 2.0, 2.0]]]
    assert split_key_blocks(indices, counts, None, 64, 32)[2] is None
    with pytest.raises(ValueError, match="cannot be split"):
        split_key_blocks(indices, counts, None, 64, 48)


@pytest.mark.parametrize("config", sorted(KERNEL_CONFIGS))
@pytest.mark.parametrize(("batch", "heads", "seq_q", "seq_k", "dim", "bm", "bn", "extra", "dtype"), CASES)
def test_block_sparse_attention_matches_float64(batch, heads, seq_q, seq_k, dim, bm, bn, extra, dtype, config):
    gen = torch.Generator().manual_seed(seq_q * 31 + seq_k + len(config))
    total_q = seq_q + 3  # three query rows the kernel must leave alone
    q = bshd(batch, total_q, heads, dim, dtype, gen)
    rows = (torch.randperm(seq_q, generator=gen) + 3).to(torch.int32)
    nk = math.ceil(seq_k / bn)
    k = torch.zeros(batch, heads, nk * bn, dim, dtype=dtype)
    v = torch.zeros_like(k)
    k[:, :, :seq_k] = torch.randn(batch, heads, seq_k, dim, generator=gen).to(dtype)
    v[:, :, :seq_k] = torch.randn(batch, heads, seq_k, dim, generator=gen).to(dtype)
    indices, counts = random_block_lists(batch, heads, math.ceil(seq_q / bm), nk, gen)
    bias = torch.randn(batch, heads, nk, generator=gen)
    kwargs = {"block_m": bm, "block_n": bn, "key_bias": bias, "q_rows": rows, "key_len": seq_k, "return_lse": True}
    if extra:
        kwargs["extra_k"] = bshd(batch, extra, heads, dim, dtype, gen)
        kwargs["extra_v"] = bshd(batch, extra, heads, dim, dtype, gen)
        kwargs["extra_valid"] = torch.randint(0, extra + 1, (batch,), generator=gen, dtype=torch.int32)
    out = torch.full_like(q, float("nan"))
    got, lse = block_sparse_attention_triton(q, k, v, indices, counts, out=out, config=KERNEL_CONFIGS[config], **kwargs)
    ref_kwargs = {
        key: (val.double() if isinstance(val, torch.Tensor) and val.is_floating_point() else val)
        for key, val in kwargs.items()
    }
    ref, ref_lse = reference.block_sparse_attention_reference(
        q.double(), k.double(), v.double(), indices, counts, **ref_kwargs
    )
    assert got is out
    assert torch.isnan(got[:, :, :3]).all(), "rows outside q_rows must be left untouched"
    assert not torch.isnan(got[:, :, 3:]).any()
    assert rel_err(got[:, :, 3:], ref[:, :, 3:]) < TOLERANCE[dtype]
    finite = torch.isfinite(ref_lse[:, :, 3:])
    assert torch.equal(finite, torch.isfinite(lse[:, :, 3:]))
    torch.testing.assert_close(lse[:, :, 3:][finite].double(), ref_lse[:, :, 3:][finite], rtol=0, atol=1e-3)
    empty_rows = rows[:bm].long()
    if not extra:
        assert (got[0, 0, empty_rows] == 0).all() and torch.isinf(lse[0, 0, empty_rows]).all()


def test_full_block_list_equals_dense_softmax_attention():
    gen = torch.Generator().manual_seed(7)
    q = bshd(1, 50, 2, 32, torch.float32, gen)
    k = bshd(1, 64, 2, 32, torch.float32, gen).contiguous()
    v = bshd(1, 64, 2, 32, torch.float32, gen).contiguous()
    nq, nk = math.ceil(50 / 16), 4
    indices = torch.arange(nk, dtype=torch.int32).expand(1, 2, nq, nk).contiguous()
    counts = torch.full((1, 2, nq), nk, dtype=torch.int32)
    dense = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(32), dim=-1) @ v.double()
    for config in KERNEL_CONFIGS.values():
        got, _ = block_sparse_attention_triton(q, k, v, indices, counts, block_m=16, block_n=16, config=config)
        assert rel_err(got, dense) < 2e-5


@pytest.mark.parametrize("kv_mode", [0, 2])
def test_unpadded_strided_keys_in_diffusers_layout(kv_mode):
    """Pre-tiled tokens: K/V are the model's own (B, S, H, D) tensors, last block partial, no copy."""
    gen = torch.Generator().manual_seed(11 + kv_mode)
    seq, bn = 53, 16
    q, k, v = (bshd(2, seq, 3, 32, torch.float32, gen) for _ in range(3))
    nk = math.ceil(seq / bn)
    indices, counts = random_block_lists(2, 3, math.ceil(seq / 16), nk, gen)
    config = KernelConfig(kv_mode=kv_mode, lazy_rescale=kv_mode == 2)
    got, lse = block_sparse_attention_triton(
        q, k, v, indices, counts, block_m=16, block_n=bn, return_lse=True, config=config
    )
    ref, ref_lse = reference.block_sparse_attention_reference(
        q.double(), k.double(), v.double(), indices, counts, block_m=16, block_n=bn, return_lse=True
    )
    assert rel_err(got, ref) < 2e-5
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite].double(), ref_lse[finite], rtol=0, atol=1e-4)


@pytest.mark.parametrize(("seq", "block", "dim"), [(77, 16, 32), (40, 32, 16), (150, 64, 16)])  # 64: two loads a block
def test_pool_and_gather_match_reference(seq, block, dim):
    gen = torch.Generator().manual_seed(seq)
    x = bshd(2, seq, 3, dim, torch.float32, gen)
    y = bshd(2, seq, 3, dim, torch.float32, gen)
    rows = torch.randperm(seq, generator=gen).to(torch.int32)
    torch.testing.assert_close(
        pool_blocks_triton(x, block, rows).double(), reference.pool_blocks_reference(x.double(), block, rows)
    )
    torch.testing.assert_close(
        pool_blocks_triton(x, block).double(), reference.pool_blocks_reference(x.double(), block)
    )
    k_tiled, v_tiled, mean = gather_blocks_triton(x, y, rows, block)
    k_ref, v_ref, mean_ref = reference.gather_blocks_reference(x, y, rows, block)
    assert torch.equal(k_tiled, k_ref) and torch.equal(v_tiled, v_ref)
    assert (k_tiled[:, :, seq:] == 0).all(), "block padding must be zeros"
    torch.testing.assert_close(mean.double(), mean_ref.double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("density", "min_blocks", "nk"), [(0.3, 1, 37), (0.05, 4, 61), (1.0, 1, 9)])
def test_topk_selection_matches_reference(density, min_blocks, nk):
    gen = torch.Generator().manual_seed(nk)
    scores = torch.randn(2, 3, 5, nk, generator=gen)
    log_counts = torch.rand(nk, generator=gen).log()
    got = select_blocks_triton(scores, density=density, min_blocks=min_blocks, log_counts=log_counts)
    ref = reference.select_blocks_reference(scores, density=density, min_blocks=min_blocks, log_counts=log_counts)
    assert torch.equal(got[1], ref[1]) and torch.equal(got[0], ref[0])
    assert (got[1] == reference.keep_count(nk, density, min_blocks)).all()


def test_topk_selection_with_ties_keeps_exactly_k_of_the_largest():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (1, 2, 6, 29), generator=gen).float()
    indices, counts = select_blocks_triton(scores, density=0.25)
    k = reference.keep_count(29, 0.25, 1)
    assert (counts == k).all()
    for row, idx in zip(scores.reshape(-1, 29), indices.reshape(-1, k), strict=True):
        assert len(set(idx.tolist())) == k and bool((idx.diff() > 0).all())
        kept = torch.zeros(29, dtype=torch.bool)
        kept[idx.long()] = True
        assert row[kept].min() >= row[~kept].max()


@pytest.mark.parametrize(("top_p", "min_blocks"), [(0.5, 1), (0.9, 3), (1.0, 1), (0.01, 2)])
def test_top_p_selection_is_the_smallest_set_reaching_the_mass(top_p, min_blocks):
    gen = torch.Generator().manual_seed(int(top_p * 100))
    nk = 45
    scores = torch.randn(2, 2, 4, nk, generator=gen) * 3
    indices, counts = select_blocks_triton(scores, top_p=top_p, min_blocks=min_blocks)
    probs = torch.softmax(scores.double(), dim=-1).reshape(-1, nk)
    for p, idx, count in zip(probs, indices.reshape(-1, nk), counts.reshape(-1), strict=True):
        chosen = idx[:count].long()
        assert (idx[count:] == -1).all() and bool((chosen.diff() > 0).all())
        mass = p[chosen].sum()
        if count > min_blocks:
            assert mass >= top_p - 1e-5
            assert mass - p[chosen].min() < top_p + 1e-5, "a smaller set would have reached top_p"
        else:
            assert count == min_blocks
        kept = torch.zeros(nk, dtype=torch.bool)
        kept[chosen] = True
        if count < nk:
            assert p[kept].min() >= p[~kept].max()
    ref_counts = reference.select_blocks_reference(scores, top_p=top_p, min_blocks=min_blocks)[1]
    assert (counts - ref_counts).abs().max() <= 1  # float rounding at the threshold only


@pytest.mark.parametrize("width", [None, 9])
def test_block_list_from_a_mask_lists_each_rows_blocks_ascending(width):
    gen = torch.Generator().manual_seed(12)
    mask = torch.rand(2, 3, 5, 23, generator=gen) < 0.3
    mask[0, 0, 0] = False  # an empty row
    mask = mask & (mask.cumsum(-1) <= 9)  # at most 9 blocks a row: width 9 holds them
    indices, counts = ascending_lists(mask, width)
    assert indices.shape[-1] == (23 if width is None else width) and indices.dtype == torch.int32
    for row, (listed, count) in enumerate(zip(indices.view(-1, indices.shape[-1]), counts.view(-1), strict=True)):
        want = torch.nonzero(mask.view(-1, 23)[row]).flatten()
        assert int(count) == want.numel()
        assert torch.equal(listed[:count].long(), want) and (listed[count:] == -1).all()
    blocks = BlockList.from_mask(mask, 16, 16, 23 * 16 - 3)
    assert torch.equal(reference.block_mask_from_lists(blocks.indices, blocks.counts, 23), mask)
