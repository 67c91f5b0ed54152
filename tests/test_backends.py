"""The backend dispatcher on the CPU: choice, overrides, one-time fallback warnings, the LSE convention."""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
from types import SimpleNamespace

import pytest
import torch

from dit_accel.kernels import backends, block_sparse_attention_bwd, fa4, reference
from dit_accel.kernels.block_list import BlockList


def fake_cuda_query(dtype=torch.bfloat16, head_dim: int = 128):
    """Stands in for a CUDA ``(B, H, S, D)`` query on device 7: what the FA4 checks read."""
    return SimpleNamespace(is_cuda=True, device=torch.device("cuda", 7), dtype=dtype, shape=(1, 2, 256, head_dim))


@pytest.fixture
def gpu_of(monkeypatch):
    def set_major(major: int, installed: bool = True) -> None:
        monkeypatch.setitem(fa4._CAPABILITY, 7, major)
        monkeypatch.setattr(fa4, "FA4_INSTALLED", installed)

    return set_major


@pytest.mark.parametrize(
    ("major", "dtype", "head_dim", "blocks", "installed", "reason"),
    [
        (9, torch.bfloat16, 128, (128, 64), True, None),
        (10, torch.float16, 64, (128, 128), True, None),
        (8, torch.bfloat16, 128, (128, 64), True, "sm90 or sm100, this GPU is sm8x"),
        (9, torch.float32, 128, (128, 64), True, "fp16/bf16"),
        (10, torch.bfloat16, 256, (128, 64), True, "head_dim 256 on sm10x"),
        (9, torch.bfloat16, 100, (128, 64), True, "head_dim 100"),
        (9, torch.bfloat16, 128, (64, 64), True, "block sizes"),
        (9, torch.bfloat16, 128, (128, 64), False, 'pip install "dit-accel\\[fa4\\]"'),
    ],
)
def test_fa4_names_why_it_rejects_an_input(gpu_of, major, dtype, head_dim, blocks, installed, reason):
    gpu_of(major, installed)
    got = fa4.fa4_rejects(fake_cuda_query(dtype, head_dim), *blocks)
    if reason is None:
        assert got is None
    else:
        assert got is not None and re.search(reason, got), got


def test_automatic_choice_and_overrides(gpu_of, monkeypatch, caplog):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    cpu = torch.zeros(1, 2, 256, 128)
    assert backends.resolve_backend(None, cpu, 128, 64) == "reference"
    gpu_of(9)
    hopper = fake_cuda_query()
    assert backends.resolve_backend(None, hopper, 128, 64) == "fa4"
    assert backends.resolve_backend("triton", hopper, 128, 64) == "triton"
    assert backends.resolve_backend(None, hopper, 128, 64, key_bias=True) == "triton"  # FA4 takes no bias
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert backends.resolve_backend(None, hopper, 128, 64) == "reference"
    assert backends.resolve_backend("fa4", hopper, 128, 64) == "fa4"  # the argument beats the variable
    monkeypatch.delenv(backends.ENV_VAR)
    gpu_of(8)
    monkeypatch.setattr(backends, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="dit_accel"):
        assert backends.resolve_backend("fa4", fake_cuda_query(), 128, 64) == "triton"
        assert backends.resolve_backend("fa4", fake_cuda_query(), 128, 64) == "triton"
        assert backends.resolve_backend(None, fake_cuda_query(), 128, 64) == "triton"  # auto: no warning
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "FA4 backend not used (FA4 needs sm90 or sm100" in warnings[0]


def test_bad_backend_names_the_allowed_ones(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of auto, fa4, triton, reference, got 'cuda'"):
        backends.resolve_backend("cuda", torch.zeros(1, 1, 1, 16), 16, 16)
    monkeypatch.setenv(backends.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="got 'fast'"):
        backends.resolve_backend(None, torch.zeros(1, 1, 1, 16), 16, 16)
    with pytest.raises(ValueError, match="dense backend must be one of fa4, cudnn, triton"):
        backends.dense_attention(*(torch.zeros(1, 4, 1, 16),) * 3, "stock")


def test_sparse_attention_returns_out_and_natural_log_lse():
    """Odd sizes, text keys with per-sample padding, a partial last key block, an empty row."""
    gen = torch.Generator().manual_seed(3)
    b, h, s, d, text, bq, bk = 2, 3, 53, 32, 5, 16, 8
    q, k, v = (torch.randn(b, h, s, d, generator=gen, dtype=torch.float64) for _ in range(3))
    ek, ev = (torch.randn(b, h, text, d, generator=gen, dtype=torch.float64) for _ in range(2))
    valid = torch.tensor([5, 2], dtype=torch.int32)
    nq, nk = math.ceil(s / bq), math.ceil(s / bk)
    scores = torch.randn(b, h, nq, nk, generator=gen)
    indices, counts = reference.select_blocks_reference(scores, density=0.4)
    blocks = BlockList(indices, counts, bq, bk, s)
    out, lse = backends.sparse_attention(q, k, v, blocks, extra=backends.ExtraKeys(ek, ev, valid))
    allowed = reference.block_mask_from_lists(indices, counts, nk)
    allowed = allowed.repeat_interleave(bq, 2)[:, :, :s].repeat_interleave(bk, 3)[..., :s]
    text_ok = (torch.arange(text)[None, :] < valid[:, None])[:, None, None, :].expand(b, h, s, text)
    logits = torch.cat([q @ k.transpose(-1, -2), q @ ek.transpose(-1, -2)], -1) * d**-0.5
    logits = logits.masked_fill(~torch.cat([allowed, text_ok], -1), -math.inf)
    expected_lse = torch.logsumexp(logits, -1)
    expected = torch.softmax(logits, -1) @ torch.cat([v, ev], 2)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_block_list_checks_its_shapes_and_full_lists_are_dense():
    with pytest.raises(ValueError, match=r"indices \(B, H, NQ, W\) and counts \(B, H, NQ\)"):
        BlockList(torch.zeros(1, 2, 3, 4, dtype=torch.int32), torch.zeros(1, 2, 4, dtype=torch.int32), 16, 16, 64)
    full = BlockList.full(2, 3, 50, 70, 16, 32, "cpu")
    assert full.num_key_blocks == 3 and full.density() == 1.0
    assert full.counts.shape == (2, 3, 4) and torch.equal(full.indices[1, 2, 3], torch.arange(3, dtype=torch.int32))


def test_backend_names_agree_between_the_options_and_the_dispatcher():
    """config.py keeps its own copy (importing the kernels there would load Triton with the options)."""
    from dit_accel import config

    assert config.BACKENDS == backends.BACKENDS


def test_fa4_backward_tiles_64_key_lists_on_hopper_only():
    assert fa4.backward_tiles(9, 64, 128)["n_block_size"] == 64, "sla's default 128x64 lists on FA4's backward"
    assert fa4.backward_tiles(9, 128, 128) is None, "FA4's own 128-key tiles"
    assert fa4.backward_tiles(10, 64, 128) is None and fa4.backward_tiles(9, 64, 64) is None, "our Triton backward"


def test_the_sm90_tile_swap_lasts_for_its_block_only(monkeypatch):
    interface = SimpleNamespace(_tile_size_bwd_sm90=lambda *args, **kwargs: "FA4's choice")
    monkeypatch.setitem(sys.modules, "flash_attn", SimpleNamespace())
    monkeypatch.setitem(sys.modules, "flash_attn.cute", SimpleNamespace(interface=interface))
    with fa4.sm90_backward_tiles("ours"):
        assert interface._tile_size_bwd_sm90(128, 128, False, False, sparse_block_size_q=128) == "ours"
    with pytest.raises(RuntimeError), fa4.sm90_backward_tiles("ours"):
        raise RuntimeError("the backward failed")
    assert interface._tile_size_bwd_sm90(128, 128, False, False) == "FA4's choice"


@pytest.fixture
def stub_fa4(monkeypatch):
    """FA4 replaced by stubs on a pretend sm90 GPU: ``calls`` records which backward ran, and with what tiles."""
    calls = []
    interface = SimpleNamespace(_tile_size_bwd_sm90=lambda *args, **kwargs: "FA4's tiles", BwdConfig=dict)

    def forward(q, k, v, **kwargs):
        return torch.zeros_like(q), torch.zeros(q.shape[0], q.shape[2], q.shape[1])

    def backward(q, k, v, out, dout, lse, **kwargs):
        calls.append(("fa4", interface._tile_size_bwd_sm90(128, 128, False, False), kwargs["dlse"] is not None))
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)

    def triton(dout, q, *args, **kwargs):
        calls.append(("triton", None, kwargs["dlse"] is not None))
        return torch.zeros_like(q), torch.zeros_like(q), torch.zeros_like(q)

    interface._flash_attn_fwd, interface._flash_attn_bwd = forward, backward
    monkeypatch.setitem(sys.modules, "flash_attn", SimpleNamespace())
    monkeypatch.setitem(sys.modules, "flash_attn.cute", SimpleNamespace(interface=interface))
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", interface)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.block_sparsity", SimpleNamespace(BlockSparseTensorsTorch=dict))
    monkeypatch.setattr(fa4, "_major", lambda device: 9)
    monkeypatch.setattr(block_sparse_attention_bwd, "block_sparse_attention_backward_triton", triton)
    return calls


@pytest.mark.parametrize(
    ("block_k", "use_lse", "ran"),
    [
        (64, False, ("fa4", "tiles", False)),  # sla: the LSE is unused, so no dlse reaches the backward
        (64, True, ("triton", None, True)),
        (128, False, ("fa4", "FA4's tiles", False)),
        (128, True, ("fa4", "FA4's tiles", True)),
    ],
)
def test_the_fa4_op_backward_picks_its_engine_and_tiles_through_autograd(stub_fa4, block_k, use_lse, ran):
    q, k, v = (torch.randn(1, 256, 2, 128, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    nk = 256 // block_k
    indices = torch.arange(nk, dtype=torch.int32).expand(1, 2, 2, nk).contiguous()
    counts = torch.full((1, 2, 2), nk, dtype=torch.int32)
    out, lse = fa4.fa4_block_sparse_attention(q, k, v, indices, counts, 128, block_k, 0.1)
    (out.float().sum() + (lse.sum() if use_lse else 0)).backward()
    engine, tiles, with_dlse = stub_fa4[-1]
    want_tiles = fa4.SM90_BACKWARD_TILES[(64, 128)] if ran[1] == "tiles" else ran[1]
    assert (engine, tiles, with_dlse) == (ran[0], want_tiles, ran[2])
    assert q.grad is not None and q.grad.shape == q.shape


def test_tile_overrides_of_interleaved_threads_stay_apart_and_end(monkeypatch):
    interface = SimpleNamespace(_tile_size_bwd_sm90=lambda *args, **kwargs: "FA4's tiles")
    monkeypatch.setitem(sys.modules, "flash_attn", SimpleNamespace())
    monkeypatch.setitem(sys.modules, "flash_attn.cute", SimpleNamespace(interface=interface))
    both_inside, a_left = threading.Barrier(2), threading.Event()
    seen = {}

    def call(name: str) -> None:
        with fa4.sm90_backward_tiles(name):
            both_inside.wait()
            if name == "b":
                a_left.wait()  # a's block ends first, as in an interleaving of a enter, b enter, a exit, b exit
            seen[name] = interface._tile_size_bwd_sm90(128, 128, False, False)
        if name == "a":
            a_left.set()

    threads = [threading.Thread(target=call, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert seen == {"a": "a", "b": "b"}
    assert interface._tile_size_bwd_sm90(128, 128, False, False) == "FA4's tiles"
