"""PISA: statistics and tail kernels (Triton interpreter) vs float64, the method vs its defining formula."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dit_accel import kernels
from dit_accel.bench import standalone_context
from dit_accel.kernels import merge_attention, pool_blocks, reference
from dit_accel.kernels.pisa_ops import pisa_block_stats, pisa_tail, pisa_tail_merge
from dit_accel.kernels.pisa_reference import pisa_block_stats_reference, pisa_tail_reference
from dit_accel.kernels.pisa_stats import StatsConfig, pisa_block_stats_triton
from dit_accel.kernels.pisa_tail import TailConfig, pisa_tail_triton
from dit_accel.layout import TokenLayout
from dit_accel.methods.pisa import PISAAttention, PISAConfig

# bf16 is checked on the GPU (benchmarks/check_pisa.py): the interpreter mis-evaluates bf16 tl.dot.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 3e-3}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def bhsd(gen: torch.Generator, batch: int, heads: int, seq: int, dim: int, offset: float = 0.0) -> torch.Tensor:
    """A (B, H, S, D) view of a (B, S, H, D) tensor (Diffusers' layout), float64."""
    return (torch.randn(batch, seq, heads, dim, generator=gen, dtype=torch.float64) + offset).transpose(1, 2)


def explicit_h_blocks(k: torch.Tensor, v: torch.Tensor, block: int) -> torch.Tensor:
    """Every ``H_j = Σ_{t∈j} (k_t − k̄_j) v_tᵀ`` by a loop over blocks, ``(B, H, NK, D, D)`` float64."""
    blocks = []
    for start in range(0, k.shape[2], block):
        kj, vj = k[:, :, start : start + block].double(), v[:, :, start : start + block].double()
        blocks.append((kj - kj.mean(dim=2, keepdim=True)).transpose(-1, -2) @ vj)
    return torch.stack(blocks, dim=2)


def random_lists(gen: torch.Generator, batch: int, heads: int, nq: int, nk: int):
    """Ascending block lists of random lengths, one row empty (all skipped) and one full (empty tail)."""
    indices = torch.full((batch, heads, nq, nk), -1, dtype=torch.int32)
    counts = torch.randint(0, nk + 1, (batch, heads, nq), generator=gen, dtype=torch.int32)
    counts[0, 0, 0], counts[-1, -1, -1] = 0, nk
    for b in range(batch):
        for h in range(heads):
            for i in range(nq):
                chosen = torch.randperm(nk, generator=gen)[: counts[b, h, i]].sort().values
                indices[b, h, i, : chosen.numel()] = chosen.to(torch.int32)
    return indices, counts


@pytest.mark.parametrize(
    ("key_len", "block_k", "dtype"),
    [(150, 16, torch.float32), (77, 32, torch.float16), (301, 128, torch.float32)],  # 128: two sub-tiles per block
)
def test_block_stats_triton_matches_float64_and_the_explicit_per_block_sum(key_len, block_k, dtype):
    gen = torch.Generator().manual_seed(key_len)
    batch, heads, dim = 2, 3, 32
    k = bhsd(gen, batch, heads, key_len + 5, dim, offset=3.0).to(dtype).double()  # a large shared mean
    v = bhsd(gen, batch, heads, key_len + 5, dim).to(dtype).double()
    k_mean = reference.pool_blocks_reference(k[:, :, :key_len], block_k)
    fp32_dot = StatsConfig(sub_k=64, input_dot=False)  # 16-bit product: test_block_stats_16bit_dot_matches_...
    got = pisa_block_stats_triton(k.to(dtype), v.to(dtype), k_mean.float(), block_k, key_len, True, True, fp32_dot)
    want = pisa_block_stats_reference(k.to(dtype), v.to(dtype), k_mean, block_k, key_len, True, True)
    h_blocks = explicit_h_blocks(k[:, :, :key_len].to(dtype), v[:, :, :key_len].to(dtype), block_k)
    torch.testing.assert_close(want[1].double(), h_blocks.mean(dim=2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(want[2].double(), h_blocks.flatten(-2).norm(dim=-1), rtol=1e-5, atol=1e-5)
    v_mean = reference.pool_blocks_reference(v[:, :, :key_len].to(dtype).double(), block_k)
    torch.testing.assert_close(want[0].double(), v_mean, rtol=1e-6, atol=1e-6)
    for name, g, w in zip(("v_mean", "h_bar", "h_norm"), got, want, strict=True):
        assert g.dtype == torch.float32 and rel_err(g, w) < 1e-5, name
    v_only = pisa_block_stats_triton(k.float(), v.float(), k_mean.float(), block_k, key_len, False, False)
    assert v_only[1].numel() == 0 and v_only[2].numel() == 0 and rel_err(v_only[0], want[0]) < 1e-5
    h_only = pisa_block_stats_triton(k.to(dtype), v.to(dtype), k_mean.float(), block_k, key_len, True, False, fp32_dot)
    assert h_only[2].numel() == 0 and rel_err(h_only[1], want[1]) < 1e-5


@pytest.mark.parametrize(("key_len", "block_k", "sub_k"), [(77, 32, 16), (150, 16, 64)])
def test_block_stats_16bit_dot_matches_float64_to_its_rounding(key_len, block_k, sub_k):
    """``input_dot``: the centred keys are rounded to fp16 for the ``H`` product; v̄ stays exact, H̄ and
    the norms within fp16 rounding, keys with a large shared mean included."""
    gen = torch.Generator().manual_seed(key_len)
    k = bhsd(gen, 2, 3, key_len, 32, offset=3.0).half()
    v = bhsd(gen, 2, 3, key_len, 32).half()
    k_mean = reference.pool_blocks_reference(k.double(), block_k)
    want = pisa_block_stats_reference(k, v, k_mean, block_k, key_len, True, True)
    config = StatsConfig(programs=4, sub_k=sub_k, input_dot=True, num_warps=4)
    got = pisa_block_stats_triton(k, v, k_mean.float(), block_k, key_len, True, True, config)
    assert rel_err(got[0], want[0]) < 1e-5
    for name, g, w in zip(("h_bar", "h_norm"), got[1:], want[1:], strict=True):
        assert rel_err(g, w) < 2e-3, name


def tail_inputs(gen: torch.Generator, batch=2, heads=3, seq=150, dim=32, block_q=32, block_k=8):
    """q with 5 extra leading rows and a row order, block statistics from random k/v (19 key blocks: two
    chunks of 16 and a partial one in the kernel), random lists."""
    q = bhsd(gen, batch, heads, seq + 5, dim)
    rows = (torch.randperm(seq, generator=gen) + 5).to(torch.int32)
    k, v = bhsd(gen, batch, heads, seq, dim), bhsd(gen, batch, heads, seq, dim)
    k_mean = reference.pool_blocks_reference(k, block_k).double()
    v_mean, h_bar, _ = pisa_block_stats_reference(k, v, k_mean, block_k, seq, True, False)
    log_counts = reference.block_counts(seq, block_k).double().log()
    indices, counts = random_lists(gen, batch, heads, math.ceil(seq / block_q), k_mean.shape[2])
    return q, rows, k_mean, v_mean, h_bar, log_counts, indices, counts


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("gathered", [True, False])
@pytest.mark.parametrize(("dtype", "block_m"), [(torch.float32, 32), (torch.float16, 16)])
def test_tail_triton_matches_float64(order, gathered, dtype, block_m):
    gen = torch.Generator().manual_seed(order * 10 + gathered * 3 + block_m)
    q, rows, k_mean, v_mean, h_bar, log_counts, indices, counts = tail_inputs(gen)
    rows = rows if gathered else None
    q_in = (q if gathered else q[:, :, 5:]).to(dtype).double()
    h = h_bar if order else None
    args = (k_mean, v_mean, h, log_counts, indices, counts, 32, 32**-0.5, rows)
    want, want_lse = pisa_tail_reference(q_in, *args)
    config = TailConfig(block_m=block_m, block_n=16, num_warps=4)
    got, got_lse = pisa_tail_triton(q_in.to(dtype), *(x.float() if x is not None else None for x in args[:4]),
                                    *args[4:], config=config)  # fmt: skip
    logical = rows.long() if gathered else torch.arange(q_in.shape[2])
    got, got_lse, want, want_lse = (x[:, :, logical] for x in (got, got_lse, want, want_lse))
    empty = torch.isneginf(want_lse)
    assert empty.any() and torch.equal(torch.isneginf(got_lse), empty)  # the fully selected query block
    assert (got[empty] == 0).all() and not torch.isnan(got).any()
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got_lse[~empty].double(), want_lse[~empty], rtol=tol, atol=tol)
    assert rel_err(got, want) < tol
    if order:  # the first-order term is there: order 0 differs
        assert rel_err(pisa_tail_reference(q_in, *args[:2], None, *args[3:])[0][:, :, logical], want) > 1e-3


@pytest.mark.parametrize("merged", [False, True])
def test_finer_pseudo_tokens_equal_the_tail_over_lists_of_the_parts(merged):
    """Pseudo-tokens of 4 keys under lists of 8-key blocks: the tail of the 4-key blocks whose lists name
    both halves of each listed block (146 keys: 37 tokens, 19 blocks, the last of one 2-key part)."""
    gen = torch.Generator().manual_seed(21 + merged)
    q, rows, _, _, _, _, indices, counts = tail_inputs(gen)
    k, v = bhsd(gen, 2, 3, 146, 32), bhsd(gen, 2, 3, 146, 32)
    k_mean = reference.pool_blocks_reference(k, 4).double()
    v_mean, h_bar, _ = pisa_block_stats_reference(k, v, k_mean, 4, 146, True, False)
    log_counts = reference.block_counts(146, 4).double().log()
    assert k_mean.shape[2] == 37
    parts = torch.stack((2 * indices, 2 * indices + 1), dim=-1).flatten(-2)
    parts = torch.where(parts >= 0, parts, -1).masked_fill(parts >= k_mean.shape[2], -1)
    order = torch.argsort((parts < 0).int(), dim=-1, stable=True)  # listed parts first
    parts = parts.gather(-1, order)
    part_counts = (parts >= 0).sum(-1).int()
    args = (k_mean, v_mean, h_bar, log_counts)
    want = pisa_tail_reference(q, *args, parts, part_counts, 32, 32**-0.5, rows)
    got = pisa_tail_reference(q, *args, indices, counts, 32, 32**-0.5, rows, 2)
    logical = rows.long()
    assert torch.equal(got[1][:, :, logical], want[1][:, :, logical]) and torch.equal(got[0], want[0])
    exact = (torch.randn(q.shape, generator=gen, dtype=torch.float64), torch.randn(q.shape[:3], generator=gen,
             dtype=torch.float64)) if merged else None  # fmt: skip
    if merged:
        want = reference.merge_attention_reference(*exact, *want)
    config = TailConfig(block_m=32, block_n=16, num_warps=4)
    triton = pisa_tail_triton(q.float(), *(x.float() for x in args), indices, counts, 32, 32**-0.5, rows,
                              config=config, tokens_per_block=2,
                              merge_into=tuple(x.float() for x in exact) if merged else None)  # fmt: skip
    finite = torch.isfinite(want[1][:, :, logical])
    assert torch.equal(torch.isfinite(triton[1][:, :, logical]), finite) and finite.any()
    torch.testing.assert_close(triton[1][:, :, logical][finite].double(), want[1][:, :, logical][finite],
                               rtol=2e-5, atol=2e-5)  # fmt: skip
    assert rel_err(triton[0][:, :, logical], want[0][:, :, logical]) < 2e-5


@pytest.mark.parametrize(("gathered", "prefetch"), [(True, True), (False, True), (True, False)])
def test_fused_merge_equals_the_tail_then_the_lse_merge(gathered, prefetch):
    gen = torch.Generator().manual_seed(5 + gathered)
    q, rows, k_mean, v_mean, h_bar, log_counts, indices, counts = tail_inputs(gen)
    rows = rows if gathered else None
    q_in = q if gathered else q[:, :, 5:]
    exact_out = torch.randn(q_in.shape, generator=gen, dtype=torch.float64)
    exact_lse = 3 * torch.randn(q_in.shape[:3], generator=gen, dtype=torch.float64)
    logical = rows.long() if gathered else torch.arange(q_in.shape[2])
    exact_lse[0, 0, logical[:40]] = -math.inf  # exact part empty (the first query block's tail is all)
    exact_lse[-1, -1, logical[128:]] = -math.inf  # both parts empty (the last query block keeps every block)
    exact_out[torch.isneginf(exact_lse)] = math.nan  # an empty exact part's rows may be left unwritten
    args = (k_mean, v_mean, h_bar, log_counts, indices, counts, 32, 32**-0.5, rows)
    want, want_lse = reference.merge_attention_reference(exact_out, exact_lse, *pisa_tail_reference(q_in, *args))
    got, got_lse = pisa_tail_triton(
        q_in.float(), *(x.float() for x in args[:4]), *args[4:], merge_into=(exact_out.float(), exact_lse.float()),
        config=TailConfig(block_m=32, block_n=16, num_warps=4, prefetch_exact=prefetch),
    )  # fmt: skip
    got, got_lse, want, want_lse = (x[:, :, logical] for x in (got, got_lse, want, want_lse))
    assert torch.isneginf(want_lse).any() and torch.equal(torch.isneginf(got_lse), torch.isneginf(want_lse))
    finite = torch.isfinite(want_lse)
    torch.testing.assert_close(got_lse[finite].double(), want_lse[finite], rtol=2e-5, atol=2e-5)
    assert rel_err(got, want) < 2e-5 and (got[~finite] == 0).all()
    op_out, op_lse = pisa_tail_merge(q_in, *args, exact_out, exact_lse)  # CPU: the reference composition
    assert torch.equal(op_out[:, :, logical], want) and torch.equal(op_lse[:, :, logical], want_lse)


def definition(q, k, v, allowed, key_block, counts, scale, order):
    """PISA by its formula, float64: rows of q over the keys ``allowed`` exactly (``(B, H, Sq, Sk)``) plus,
    for each key block with no allowed key, ``n_j e^{s q·k̄_j}`` (value ``v̄_j``) and, with ``order``,
    ``e^{s q·k̄_j} s qᵀH̄``; ``key_block`` maps a key to its block (-1: text, never approximated)."""
    nk = counts.numel()
    members = key_block[None, :] == torch.arange(nk)[:, None]  # (NK, Sk)
    k_mean = torch.einsum("js,bhsd->bhjd", members.double(), k) / counts[:, None]
    v_mean = torch.einsum("js,bhsd->bhjd", members.double(), v) / counts[:, None]
    centred = k - torch.einsum("bhjd,js->bhsd", k_mean, members.double())
    h_bar = centred.transpose(-1, -2) @ (v * (key_block >= 0)[:, None]) / nk
    logits = q @ k.transpose(-1, -2) * scale
    pooled = q @ k_mean.transpose(-1, -2) * scale
    skipped = ~torch.einsum("bhqs,js->bhqj", allowed.double(), members.double()).bool()
    shift = torch.maximum(logits.masked_fill(~allowed, -math.inf).amax(-1), pooled.amax(-1))[..., None]
    exact = torch.exp(logits - shift) * allowed
    pseudo = torch.exp(pooled - shift) * skipped
    numerator = exact @ v + (pseudo * counts) @ v_mean
    if order:
        numerator = numerator + pseudo.sum(-1, keepdim=True) * scale * (q @ h_bar)
    return numerator / (exact.sum(-1) + (pseudo * counts).sum(-1))[..., None]


CALLS = {
    # name: (layout, appended key-only tokens)
    "video-grid": (TokenLayout(seq_len=165, video_start=0, video_len=165, grid=(3, 5, 11)), 0),
    "text-first": (TokenLayout(seq_len=157, video_start=7, video_len=150, text_start=0, text_len=7), 0),
    "appended-keys": (TokenLayout(seq_len=140, video_start=0, video_len=140, appended_len=70), 70),
}


@pytest.mark.parametrize(("order", "tail_block"), [(0, 16), (1, 16), (1, 8), (0, 4)])
@pytest.mark.parametrize("call", sorted(CALLS))
def test_method_matches_the_float64_formula(call, order, tail_block):
    layout, appended = CALLS[call]
    gen = torch.Generator().manual_seed(len(call) + order)
    batch, heads, dim = 2, 3, 32
    q = torch.randn(batch, layout.seq_len, heads, dim, generator=gen, dtype=torch.float64)
    k = torch.randn(batch, layout.seq_len + appended, heads, dim, generator=gen, dtype=torch.float64)
    v = torch.randn_like(k)
    config = PISAConfig(density=0.3, order=order, block_size=(32, 16), tail_block=tail_block)
    method = PISAAttention(config)
    ctx = standalone_context(layout, method.config)
    out = method(q.float(), k.float(), v.float(), ctx)

    routing = method.route(q, k, v, ctx)
    blocks = method.select(routing, ctx)
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    key_block = torch.full((k.shape[1],), -1, dtype=torch.long)
    key_block[routing.key_rows.long()] = torch.arange(routing.key_len) // blocks.block_k
    mask = reference.block_mask_from_lists(blocks.indices, blocks.counts, blocks.num_key_blocks)
    rows = routing.q_rows.long() if routing.q_rows is not None else torch.arange(layout.video_start, layout.video_end)
    query_block = torch.empty(layout.seq_len, dtype=torch.long)
    query_block[rows] = torch.arange(rows.numel()) // blocks.block_q
    allowed = mask[:, :, query_block[rows]][..., key_block.clamp(min=0)] | (key_block < 0)
    pseudo_block = tail_block  # the formula's blocks are the pseudo-tokens' parts
    key_part = torch.full_like(key_block, -1)
    key_part[routing.key_rows.long()] = torch.arange(routing.key_len) // pseudo_block
    counts = reference.block_counts(routing.key_len, pseudo_block).double()
    want = definition(qh[:, :, rows], kh, vh, allowed, key_part, counts, dim**-0.5, order)
    got = out.transpose(1, 2)[:, :, rows]
    assert 0.05 < blocks.density() < 0.6
    assert rel_err(got, want) < 1e-5
    if tail_block < blocks.block_k:  # a different approximation from one pseudo-token per key block
        block_counts = reference.block_counts(routing.key_len, blocks.block_k).double()
        coarse = definition(qh[:, :, rows], kh, vh, allowed, key_block, block_counts, dim**-0.5, order)
        assert rel_err(got, coarse) > 1e-3
    if layout.text_len:
        text_out, text_want = out[:, layout.text_slice].double(), ctx.dense(q, k, v)[:, layout.text_slice]
        torch.testing.assert_close(text_out, text_want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("triton", [True, False])
def test_pseudo_logit_far_above_every_exact_logit(triton):
    """A skipped block whose pseudo-logit beats every exact logit by ~50 (e^50 in the merge), met in a
    later chunk than other skipped blocks (the running max rises mid-walk): the right answer."""
    gen = torch.Generator().manual_seed(7)
    batch, heads, seq, dim, block = 1, 2, 128, 32, 4
    q, k, v = (bhsd(gen, batch, heads, seq, dim) for _ in range(3))
    direction = q[:, :, :1] / q[:, :, :1].norm(dim=-1, keepdim=True)
    k[:, :, 120:124] += 60 * direction  # block 30 aligned with query row 0: logit ~ 60 * |q| / sqrt(32) ~ 60
    listed = [j for j in range(24) if j not in (5, 9)]  # skipped: 5, 9 (first chunk of 16), 24..31
    indices = torch.tensor(listed, dtype=torch.int32).expand(batch, heads, 8, len(listed)).contiguous()
    counts = torch.full((batch, heads, 8), len(listed), dtype=torch.int32)
    scale = dim**-0.5
    k_mean = reference.pool_blocks_reference(k, block).double()
    v_mean, h_bar, _ = pisa_block_stats_reference(k, v, k_mean, block, seq, True, False)
    log_counts = reference.block_counts(seq, block).double().log()
    args = (k_mean, v_mean, h_bar, log_counts, indices, counts, 16, scale)
    if triton:
        tail = pisa_tail_triton(q.float(), *(x.float() for x in args[:4]), *args[4:],
                                config=TailConfig(block_m=16, block_n=16, num_warps=4))  # fmt: skip
    else:
        tail = pisa_tail_reference(q, *args)
    key_block = torch.arange(seq) // block
    allowed = reference.block_mask_from_lists(indices, counts, 32).repeat_interleave(16, 2)[..., key_block]
    logits = (q @ k.transpose(-1, -2) * scale).masked_fill(~allowed, -math.inf)
    exact = (torch.softmax(logits, -1) @ v, torch.logsumexp(logits, -1))
    pooled = (q @ k_mean.transpose(-1, -2) * scale)[..., 30]
    assert (pooled[:, :, 0] - logits[:, :, 0].max(-1).values > 50).all()
    out, _ = merge_attention(exact[0].float(), exact[1].float(), tail[0].float(), tail[1].float())
    want = definition(q, k, v, allowed, key_block, torch.full((32,), float(block)), scale, order=1)
    assert rel_err(out, want) < 1e-5
    assert rel_err(out[:, :, 0], tail[0][:, :, 0]) < 1e-6  # row 0: the exact part weighs e^-50 against the tail


def test_ops_dispatch_to_the_reference_on_cpu_and_pass_opcheck():
    gen = torch.Generator().manual_seed(11)
    q, rows, k_mean, v_mean, h_bar, log_counts, indices, counts = tail_inputs(gen, batch=1, heads=2, seq=70, dim=16)
    args = (q, k_mean, v_mean, h_bar, log_counts, indices, counts, 32, 0.25, rows)
    out, lse = pisa_tail(*args)
    want, want_lse = pisa_tail_reference(*args)
    assert torch.equal(out, want) and torch.equal(lse, want_lse)
    torch.library.opcheck(pisa_tail, args)
    torch.library.opcheck(pisa_tail, (*args[:3], None, *args[4:9], None))
    torch.library.opcheck(pisa_tail_merge, (*args, torch.randn_like(q), torch.randn(q.shape[:3], dtype=q.dtype)))
    k, v = bhsd(gen, 1, 2, 70, 16), bhsd(gen, 1, 2, 70, 16)
    k_mean = reference.pool_blocks_reference(k, 16).double()
    torch.library.opcheck(pisa_block_stats, (k, v, k_mean, 16, 70, True, True))
    torch.library.opcheck(pisa_block_stats, (k, v, k_mean, 16, 70, False, False))


def test_config_validation_and_family_defaults():
    with pytest.raises(ValueError, match="order must be one of 0, 1"):
        PISAConfig(order=2)
    with pytest.raises(ValueError, match="order must be one of 0, 1"):
        PISAConfig(order=True)
    with pytest.raises(ValueError, match="use_bias must be one of True, False"):
        PISAConfig(use_bias="yes")
    with pytest.raises(ValueError, match=r"density must be in \(0.0, 1.0\]"):
        PISAConfig(density=1.5)
    for bad in (48, 0, True, 16.0):
        with pytest.raises(ValueError, match=r"tail_block must divide the key block \(64\)"):
            PISAConfig(block_size=(128, 64), tail_block=bad)
    assert PISAConfig(block_size=(128, 128), tail_block=32).tail_block == 32
    assert (PISAConfig(block_size=(128, 128)).tail_keys, PISAConfig(block_size=32).tail_keys) == (64, 32)
    assert dataclasses.replace(PISAConfig(), block_size=(128, 32)).tail_keys == 32  # the default follows the blocks
    flux, wan, default = (PISAConfig().for_family(f) for f in ("flux", "wan", None))
    assert (flux.density, flux.dense_layers, flux.use_bias, flux.dense_steps) == (0.15, 4, True, 0.2)
    assert (wan.density, wan.dense_layers, wan.use_bias, wan.dense_steps) == (0.125, 1, False, 0.2)
    assert default == wan and wan.order == 1 and (wan.block_size, wan.tail_keys) == ((128, 64), 64)
    assert PISAConfig(density=0.3, use_bias=False).for_family("flux").density == 0.3
    assert not PISAConfig(use_bias=False).for_family("flux").use_bias
    assert PISAAttention(PISAConfig()).config.density == 0.125  # built outside apply(): the defaults


def test_block_ordered_keys_are_pooled_once_at_the_part_size():
    """Tokens already in tile order (as the adapters leave them): the key-block means are the count-weighted
    averages of the part means from the same pooling call, ragged last block included (165 keys)."""
    layout, _ = CALLS["video-grid"]
    method = PISAAttention(PISAConfig(density=0.25, block_size=(32, 16), tail_block=4))
    layout = dataclasses.replace(layout, token_tile=method.tile(layout.grid))
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, layout.seq_len, 3, 32, generator=gen) for _ in range(3))
    routing = method.route(q, k, v, standalone_context(layout, method.config))
    assert routing.q_rows is None and routing.known_part_mean is None
    assert routing.scores.shape[-1] == 11
    assert routing.known_part_mean is not None  # pooled with the queries
    keys = k.transpose(1, 2).double()
    torch.testing.assert_close(routing.k_mean.double(), reference.pool_blocks_reference(keys, 16), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(routing.part_mean.double(), reference.pool_blocks_reference(keys, 4), rtol=1e-6,
                               atol=1e-6)  # fmt: skip
    assert routing.part_mean.shape[2] == 42 and routing.k_mean.shape[2] == 11


@pytest.mark.parametrize("tail_block", [None, 4])
def test_use_bias_routes_by_pooled_score_plus_log_h_norm(tail_block, monkeypatch):
    """The bias is ``‖H_j‖_F`` of each key block, also when the pseudo-tokens are finer; tokens in tile order
    (the adapters' case): the statistics come after one pooling of queries and parts."""
    layout, _ = CALLS["video-grid"]
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, layout.seq_len, 2, 32, generator=gen) for _ in range(3))
    method = PISAAttention(PISAConfig(density=0.25, use_bias=True, block_size=(32, 16), tail_block=tail_block))
    layout = dataclasses.replace(layout, token_tile=method.tile(layout.grid))
    ctx = standalone_context(layout, method.config)
    routing = method.route(q, k, v, ctx)
    pooled_alone = []
    monkeypatch.setattr(kernels, "pool_blocks", lambda *args: pooled_alone.append(args) or pool_blocks(*args))
    blocks = method.select(routing, ctx)
    assert routing.q_rows is None and (routing.known_part_mean is not None) == (tail_block is not None)
    assert not pooled_alone  # queries and keys (or parts) pooled together, once
    norms = explicit_h_blocks(routing.k[:, :, : routing.key_len], routing.v[:, :, : routing.key_len], 16)
    torch.testing.assert_close(routing.stats[4].double(), norms.flatten(-2).norm(dim=-1), rtol=1e-5, atol=1e-5)
    scores = routing.scores + routing.log_counts + torch.log(routing.stats[4] + 1e-5)[:, :, None, :]
    want, _ = reference.select_blocks_reference(scores, density=0.25)
    plain, _ = reference.select_blocks_reference(routing.scores + routing.log_counts, density=0.25)
    assert torch.equal(blocks.indices, want) and not torch.equal(want, plain)
