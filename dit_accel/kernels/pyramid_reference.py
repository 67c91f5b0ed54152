"""PyTorch references of PSA's kernels (same signatures, any device and dtype) and the layout they share.

* The KV pyramid (:mod:`.pyramid`): level ``h`` (1..4) of key block ``j`` holds ``block_k / 2^(h-1)``
  keys; pooled key ``g`` averages the real tokens of ``[j*block_k + g*p, j*block_k + (g+1)*p)``,
  ``p = 2^(h-1)``. Levels 2..4 live in one tensor ``(B, H, 7/8 * NK * block_k, D)``, level ``h`` from
  row ``level_offset(h)``. The keys' self-similarity for level h: the mean cosine of key pairs
  ``2^(h-1)`` apart inside the block (1.0 when there is none).
* Block importance from sampled tokens (:mod:`.pyramid_importance`).
* Multi-level attention over ``(key block, level)`` lists (:mod:`.pyramid_attention`).

They serve CPU tensors and are the float64 oracles of the tests; memory stays O(S * chunk).
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor
_CHUNK_ELEMENTS = 1 << 24
LEVELS = 4  # 1x, 2x, 4x, 8x
SIM_LEVELS = LEVELS - 1  # the pooled levels a similarity cap can forbid
COS_EPS = 1e-12
MAX_SAMPLES = 64


def level_rows(num_blocks: int, block_k: int) -> int:
    """Rows of the level-1 layout (``NK * block_k``); the offsets of the pooled levels derive from it."""
    return num_blocks * block_k


def level_offset(level: int, num_blocks: int, block_k: int) -> int:
    """First row of pooled level ``level`` (2..4) in the pooled tensor."""
    total = level_rows(num_blocks, block_k)
    return total - (total >> (level - 2))


def pooled_rows(num_blocks: int, block_k: int) -> int:
    """Rows of the pooled tensor: levels 2..4 of every key block."""
    return level_offset(LEVELS + 1, num_blocks, block_k)


def check_block(block_k: int) -> None:
    """Key blocks must split into 2, 4 and 8 equal groups."""
    if block_k < 2 ** (LEVELS - 1) or block_k & (block_k - 1):
        raise ValueError(f"block_k must be a power of two >= {2 ** (LEVELS - 1)}, got {block_k}")


def empty_pyramid(k: Tensor, block_k: int, key_len: int, with_sim: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Uninitialised ``(pooled_k, pooled_v, sim)`` outputs of a pyramid of k."""
    b, h, _, d = k.shape
    nk = math.ceil(key_len / block_k)
    pk = k.new_empty(b, h, pooled_rows(nk, block_k), d)
    sim_dtype = torch.float64 if k.dtype == torch.float64 else torch.float32
    sim = k.new_empty((b, h, nk, SIM_LEVELS) if with_sim else (0,), dtype=sim_dtype)
    return pk, torch.empty_like(pk), sim


def level_counts_of_keys(key_len: int, num_blocks: int, block_k: int, first_level: int,
                         device: torch.device | str) -> Tensor:  # fmt: skip
    """Tokens behind each key of levels ``first_level..4`` in row order (int64, 0 past ``key_len``)."""
    counts = []
    for level in range(first_level, LEVELS + 1):
        pool = 2 ** (level - 1)
        first = torch.arange(level_rows(num_blocks, block_k) // pool, device=device) * pool
        counts.append((key_len - first).clamp(0, pool))
    return torch.cat(counts)


def _padded(x: Tensor, rows: int, key_len: int, cdt: torch.dtype) -> Tensor:
    """The first ``key_len`` rows of x in ``cdt``, zero-padded to ``rows``."""
    out = x.new_zeros(*x.shape[:2], rows, x.shape[3], dtype=cdt)
    out[:, :, :key_len] = x[:, :, :key_len]
    return out


def pyramid_reference(
    k: torch.Tensor, v: torch.Tensor, block_k: int, key_len: int, with_sim: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pooled_k, pooled_v, sim)`` of :func:`~.pyramid.pyramid_triton`, in fp32 (fp64 for fp64
    inputs) then cast to k's dtype (sim stays fp32/fp64), any device."""
    check_block(block_k)
    cdt = torch.float64 if k.dtype == torch.float64 else torch.float32
    b, h, _, d = k.shape
    nk = math.ceil(key_len / block_k)
    total = level_rows(nk, block_k)
    counts = level_counts_of_keys(key_len, nk, block_k, 2, k.device).to(cdt).clamp(min=1)[:, None]
    padded = [_padded(x, total, key_len, cdt) for x in (k, v)]
    pooled = []
    for x, full in zip((k, v), padded, strict=True):
        sums = [full.view(b, h, -1, 2 ** (lvl - 1), d).sum(3) for lvl in range(2, LEVELS + 1)]
        pooled.append((torch.cat(sums, dim=2) / counts).to(x.dtype))
    _, _, sim = empty_pyramid(k, block_k, key_len, with_sim)
    if with_sim:
        blocks = padded[0].view(b, h, nk, block_k, d)
        norms = blocks.norm(dim=-1)
        position = torch.arange(total, device=k.device).view(nk, block_k)
        for lvl in range(1, LEVELS):
            gap = 2**lvl
            dots = (blocks[..., :-gap, :] * blocks[..., gap:, :]).sum(-1)
            cos = dots / (norms[..., :-gap] * norms[..., gap:]).clamp(min=COS_EPS)
            pair_ok = (position[:, gap:] < key_len).to(cdt)
            pairs = pair_ok.sum(-1)
            mean = (cos * pair_ok).sum(-1) / pairs.clamp(min=1)
            sim[..., lvl - 1] = torch.where(pairs > 0, mean, torch.ones_like(mean))
    return pooled[0], pooled[1], sim


def check_samples(samples: int) -> None:
    """Samples per block: a power of two (the kernel's tiles hold whole groups of them)."""
    if not 1 <= samples <= MAX_SAMPLES or samples & (samples - 1):
        raise ValueError(f"samples must be a power of two in [1, {MAX_SAMPLES}], got {samples}")


def sample_rows(length: int, block: int, samples: int, device: torch.device | str) -> torch.Tensor:
    """Logical rows ``(N, samples)`` of the sampled tokens of each block of a length-``length`` sequence."""
    n_blocks = math.ceil(length / block)
    first = torch.arange(n_blocks, device=device) * block
    n = (length - first).clamp(max=block)
    s = torch.arange(samples, device=device)
    return first[:, None] + ((2 * s[None, :] + 1) * n[:, None]) // (2 * samples)


def importance_reference(
    q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int, key_len: int, scale: float, samples: int,
    q_rows: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Importance ``(B, H, NQ, NK)`` of :func:`~.pyramid_importance.importance_triton`, in fp32 (fp64
    for fp64 inputs), any device: ``exp(m_ij - max_j m_ij)``, ``m_ij`` the largest scaled logit between
    the sampled queries of block i and the sampled keys of block j."""
    check_samples(samples)
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    seq_q = q.shape[2] if q_rows is None else q_rows.numel()
    q_sampled = sample_rows(seq_q, block_q, samples, q.device)
    if q_rows is not None:
        q_sampled = q_rows.long()[q_sampled]
    k_sampled = sample_rows(key_len, block_k, samples, k.device)
    qs = q[:, :, q_sampled.flatten()].to(cdt)
    ks = k[:, :, k_sampled.flatten()].to(cdt)
    logits = torch.matmul(qs, ks.transpose(-1, -2)) * scale
    b, h = q.shape[:2]
    best = logits.view(b, h, q_sampled.shape[0], samples, k_sampled.shape[0], samples).amax(dim=(3, 5))
    return torch.exp(best - best.amax(dim=-1, keepdim=True))


def level_map_from_lists(indices: Tensor, level_counts: Tensor, num_key_blocks: int) -> Tensor:
    """The ``(B, H, NQ, NK)`` int8 level map (0 = skipped) of ``(indices, level_counts)`` lists: the
    first ``level_counts[..., 0]`` entries of a row are level 1, the next level 2, and so on."""
    slots = torch.arange(indices.shape[-1], device=indices.device)
    ends = level_counts.long().cumsum(-1)
    slot_level = 1 + (slots[:, None] >= ends[..., None, :]).sum(-1)
    valid = slot_level <= LEVELS
    target = torch.where(valid, indices.long(), num_key_blocks)
    levels = torch.zeros(*indices.shape[:-1], num_key_blocks + 1, dtype=torch.int8, device=indices.device)
    levels.scatter_(-1, target, torch.where(valid, slot_level, 0).to(torch.int8))
    return levels[..., :num_key_blocks]


def pyramid_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pooled_k: torch.Tensor,
    pooled_v: torch.Tensor,
    indices: torch.Tensor,
    level_counts: torch.Tensor,
    block_q: int,
    block_k: int,
    key_len: int,
    scale: float,
    q_rows: torch.Tensor | None = None,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    extra_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-level attention as one masked softmax, in fp32 (fp64 for fp64 inputs).

    Every query of block i sees, for each listed (key block j, level h), the keys of level h of
    block j (its tokens for h = 1, else its pooled keys) with logit bias ``log(count)``, plus the
    valid extra keys. Returns ``(out, lse)``: out shaped like q (only the ``q_rows`` rows written
    when given, the rest 0), lse ``(B, H, S)`` natural log, ``-inf`` where nothing is attended.
    """
    b, h = q.shape[:2]
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    rows = torch.arange(q.shape[2], device=q.device) if q_rows is None else q_rows.long()
    nk = math.ceil(key_len / block_k)
    total = level_rows(nk, block_k)
    keys = torch.cat([_padded(k, total, key_len, cdt), pooled_k.to(cdt)], dim=2)
    values = torch.cat([_padded(v, total, key_len, cdt), pooled_v.to(cdt)], dim=2)
    counts = level_counts_of_keys(key_len, nk, block_k, 1, q.device).to(cdt)
    bias = torch.where(counts > 0, counts.clamp(min=1).log(), -math.inf)
    key_level = torch.cat([torch.full((total >> (lvl - 1),), lvl, device=q.device) for lvl in range(1, LEVELS + 1)])
    key_block = torch.cat([torch.arange(total >> (lvl - 1), device=q.device) // (block_k >> (lvl - 1))
                           for lvl in range(1, LEVELS + 1)])  # fmt: skip
    levels = level_map_from_lists(indices, level_counts, nk)
    num_q = levels.shape[2]
    padded_rows = torch.cat([rows, rows.new_zeros(num_q * block_q - rows.numel())])  # whole blocks
    extra_bias = None
    if extra_k is not None:
        keys = torch.cat([keys, extra_k.to(cdt)], dim=2)
        values = torch.cat([values, extra_v.to(cdt)], dim=2)
        valid = torch.full((b,), extra_k.shape[2], device=q.device) if extra_valid is None else extra_valid.long()
        extra_ok = torch.arange(extra_k.shape[2], device=q.device)[None, :] < valid[:, None]
        extra_bias = torch.where(extra_ok, 0.0, -math.inf).to(cdt)[:, None, None, :]
    out = torch.zeros_like(q)
    lse = torch.full((b, h, q.shape[2]), -math.inf, dtype=cdt, device=q.device)
    per_chunk = max(1, _CHUNK_ELEMENTS // max(1, b * h * block_q * keys.shape[2]))
    for first in range(0, num_q, per_chunk):
        last = min(num_q, first + per_chunk)
        # One additive bias per (query block, key): log(count) where the key's level is the block's, else -inf.
        key_bias = torch.where(levels[:, :, first:last][..., key_block] == key_level, bias, -math.inf)
        if extra_bias is not None:
            key_bias = torch.cat([key_bias, extra_bias.expand(b, h, last - first, -1)], dim=-1)
        chunk_rows = padded_rows[first * block_q : last * block_q]
        logits = torch.matmul(q[:, :, chunk_rows].to(cdt), keys.transpose(-1, -2)) * scale
        logits = logits.view(b, h, last - first, block_q, -1) + key_bias[:, :, :, None, :]
        row_lse = torch.logsumexp(logits, dim=-1).view(b, h, -1)
        probs = torch.exp(
            logits.view(b, h, chunk_rows.numel(), -1) - torch.where(row_lse.isinf(), 0.0, row_lse)[..., None]
        )
        real = slice(0, min(rows.numel() - first * block_q, chunk_rows.numel()))
        out[:, :, chunk_rows[real]] = torch.matmul(probs[:, :, real], values).to(out.dtype)
        lse[:, :, chunk_rows[real]] = row_lse[:, :, real]
    return out, lse
