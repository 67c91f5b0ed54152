"""Pure-PyTorch references for every kernel in this package (same signatures, any device/dtype).

They define what the Triton kernels compute, serve CPU tensors and unsupported shapes, and are the
float64 oracles of the tests. Memory stays O(S * chunk), never O(S^2): attention is evaluated a
chunk of query blocks at a time.

Conventions shared with the kernels:
    * q, k, v are ``(B, H, S, D)`` (any strides); blocks are contiguous runs of ``block`` tokens.
    * A block list is ``indices`` ``(B, H, NQ, MAXK)`` int32 (the first ``counts`` entries of a row
      are the key blocks that query block attends to) and ``counts`` ``(B, H, NQ)`` int32.
    * ``extra_k``/``extra_v`` ``(B, H, Se, D)`` are keys every query attends to (text tokens);
      ``extra_valid`` ``(B,)`` masks padded ones.
    * ``q_rows`` ``(Sq,)`` maps logical (tiled) query row r to row ``q_rows[r]`` of q and of the output.
    * LSE is the natural-log log-sum-exp of the scaled logits, fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import math

import torch

_CHUNK_ELEMENTS = 1 << 24


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def block_counts(length: int, block: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Number of tokens in each block of a length-``length`` sequence (the last may be partial)."""
    starts = torch.arange(0, length, block, dtype=torch.int32, device=device)
    return (length - starts).clamp(max=block)  # device ops only: safe inside CUDA-graph capture


def pool_blocks_reference(x: torch.Tensor, block: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of each block of rows, fp32 ``(B, H, N, D)``; ``rows`` gathers the sequence first."""
    if rows is not None:
        x = x.index_select(2, rows.long())
    b, h, s, d = x.shape
    n = math.ceil(s / block)
    padded = torch.zeros(b, h, n * block, d, dtype=_compute_dtype(x), device=x.device)
    padded[:, :, :s] = x
    sums = padded.view(b, h, n, block, d).sum(dim=3)
    return sums / block_counts(s, block, x.device).to(sums.dtype)[:, None]


def gather_blocks_reference(
    k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, block: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather K/V rows into tile order, zero-padded to whole blocks, plus the block means of K.

    Returns ``(k_tiled, v_tiled, k_mean)`` with ``k_tiled``/``v_tiled`` ``(B, H, NK * block, D)``
    contiguous and ``k_mean`` fp32 ``(B, H, NK, D)``.
    """
    b, h, _, d = k.shape
    s = rows.numel()
    n = math.ceil(s / block)
    k_tiled = k.new_zeros(b, h, n * block, d)
    v_tiled = v.new_zeros(b, h, n * block, d)
    k_tiled[:, :, :s] = k.index_select(2, rows.long())
    v_tiled[:, :, :s] = v.index_select(2, rows.long())
    return k_tiled, v_tiled, pool_blocks_reference(k_tiled[:, :, :s], block)


def routing_scores(q_mean: torch.Tensor, k_mean: torch.Tensor, scale: float) -> torch.Tensor:
    """Pooled logits ``scale * q̄ k̄ᵀ`` (fp32 ``(B, H, NQ, NK)``); selection adds ``log n_j``."""
    dtype = torch.float64 if q_mean.dtype == torch.float64 else torch.float32
    return torch.matmul(q_mean.to(dtype), k_mean.to(dtype).transpose(-1, -2)) * scale


def check_query_key_pair(q: torch.Tensor, k: torch.Tensor) -> None:
    """q and k ``(B, H, S, D)`` must share batch, heads and head dim (``ValueError`` otherwise)."""
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} need the same batch, heads and head dim")


def keep_count(num_blocks: int, density: float, min_blocks: int) -> int:
    """Blocks kept per query block for a fixed ``density``, never fewer than ``min_blocks``."""
    wanted = max(1, math.ceil(density * num_blocks - 1e-9), min_blocks)
    return min(num_blocks, wanted)


def select_blocks_reference(
    scores: torch.Tensor,
    *,
    density: float | None = None,
    top_p: float | None = None,
    min_blocks: int = 1,
    log_counts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (``density``) or top-p (``top_p``) key blocks of each row of ``scores`` (B, H, NQ, NK).

    ``log_counts`` (NK,) is added to every row first (the ``log n_j`` term of the routing).
    Returns ``(indices, counts)``; each row's selected indices are ascending. For ``top_p`` the set
    is the smallest whose softmax mass reaches ``top_p``, and never fewer than ``min_blocks``.
    """
    if (density is None) == (top_p is None):
        raise ValueError("pass exactly one of density or top_p")
    if log_counts is not None:
        scores = scores + log_counts.to(scores.dtype)
    num_blocks = scores.shape[-1]
    order = scores.argsort(dim=-1, descending=True, stable=True)
    if density is not None:
        k = keep_count(num_blocks, density, min_blocks)
        counts = torch.full(scores.shape[:-1], k, dtype=torch.int32, device=scores.device)
        width = k
    else:
        probs = torch.softmax(scores.double(), dim=-1).gather(-1, order)
        before = probs.cumsum(dim=-1) - probs
        counts = (before < top_p).sum(dim=-1).clamp(min=min(min_blocks, num_blocks), max=num_blocks)
        counts = counts.to(torch.int32)
        width = num_blocks
    ranks = torch.arange(num_blocks, device=scores.device)
    chosen = torch.where(ranks < counts[..., None], order, num_blocks)
    indices = chosen.sort(dim=-1).values[..., :width]
    indices = torch.where(indices == num_blocks, -1, indices).to(torch.int32)
    return indices.contiguous(), counts


def block_mask_from_lists(indices: torch.Tensor, counts: torch.Tensor, num_key_blocks: int) -> torch.Tensor:
    """Boolean ``(B, H, NQ, NK)`` mask of the selected blocks of a block list."""
    slots = torch.arange(indices.shape[-1], device=indices.device)
    valid = slots < counts[..., None].long()
    target = torch.where(valid, indices.long(), num_key_blocks)
    mask = torch.zeros(*indices.shape[:-1], num_key_blocks + 1, dtype=torch.bool, device=indices.device)
    mask.scatter_(-1, target, True)
    return mask[..., :num_key_blocks]


def block_sparse_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    counts: torch.Tensor,
    *,
    block_m: int,
    block_n: int,
    key_bias: torch.Tensor | None = None,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    extra_valid: torch.Tensor | None = None,
    scale: float | None = None,
    q_rows: torch.Tensor | None = None,
    key_len: int | None = None,
    out: torch.Tensor | None = None,
    return_lse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Block-sparse attention: each query block attends to its listed key blocks and the extra keys.

    ``key_len`` is the number of real keys in k/v (the rest is block padding); ``key_bias``
    ``(B, H, NK)`` is added to every logit of a key block. Rows that attend to nothing give 0 and
    LSE ``-inf``. Returns ``(out, lse)``; ``out`` has q's shape (only the listed rows are written
    when ``q_rows`` is given), ``lse`` is ``(B, H, Sq_total)`` or None.
    """
    b, h, _, d = q.shape
    rows = torch.arange(q.shape[2], device=q.device) if q_rows is None else q_rows.long()
    key_len = k.shape[2] if key_len is None else key_len
    scale = d**-0.5 if scale is None else scale
    cdt = _compute_dtype(q)
    num_q_blocks = math.ceil(rows.numel() / block_m)
    num_k_blocks = math.ceil(key_len / block_n)
    keys, values = k[:, :, :key_len].to(cdt), v[:, :, :key_len].to(cdt)
    mask = block_mask_from_lists(indices, counts, num_k_blocks)
    key_block_of = torch.arange(key_len, device=q.device) // block_n
    bias = None
    if key_bias is not None:
        bias = key_bias.to(cdt)[..., key_block_of]
    extra_mask = None
    if extra_k is not None:
        keys = torch.cat([keys, extra_k.to(cdt)], dim=2)
        values = torch.cat([values, extra_v.to(cdt)], dim=2)
        extra_cols = torch.arange(extra_k.shape[2], device=q.device)
        limit = torch.full((b,), extra_k.shape[2], device=q.device) if extra_valid is None else extra_valid
        extra_mask = (extra_cols[None, :] < limit.long()[:, None])[:, None, None, :].expand(b, h, 1, -1)
    if out is None:
        out = torch.zeros_like(q)
    lse = torch.full((b, h, q.shape[2]), -math.inf, dtype=cdt, device=q.device) if return_lse else None
    blocks_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, b * h * block_m * keys.shape[2]))
    for first in range(0, num_q_blocks, blocks_per_chunk):
        last = min(num_q_blocks, first + blocks_per_chunk)
        chunk_rows = rows[first * block_m : last * block_m]
        qc = q[:, :, chunk_rows].to(cdt)
        logits = torch.matmul(qc, keys.transpose(-1, -2)) * scale
        sparse = logits[..., :key_len]
        if bias is not None:
            sparse += bias[:, :, None, :]
        allowed = mask[:, :, first:last].repeat_interleave(block_m, dim=2)[:, :, : chunk_rows.numel()]
        allowed = allowed[..., key_block_of]
        if extra_mask is not None:
            allowed = torch.cat([allowed, extra_mask.expand(-1, -1, allowed.shape[2], -1)], dim=-1)
        logits = logits.masked_fill(~allowed, -math.inf)
        row_lse = torch.logsumexp(logits, dim=-1)
        probs = torch.exp(logits - torch.where(torch.isinf(row_lse), 0.0, row_lse)[..., None])
        out[:, :, chunk_rows] = torch.matmul(probs, values).to(out.dtype)
        if lse is not None:
            lse[:, :, chunk_rows] = row_lse
    return out, lse


def merge_attention_reference(
    out1: torch.Tensor, lse1: torch.Tensor, out2: torch.Tensor, lse2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact union of two partial attentions over disjoint key sets, by their natural-log LSEs.

    ``o = (e^{l1-m} o1 + e^{l2-m} o2) / (e^{l1-m} + e^{l2-m})`` and ``lse = m + log(e^{l1-m} + e^{l2-m})``
    with ``m = max(l1, l2)``. A part with LSE ``-inf`` contributes nothing (its output is not
    trusted); two empty parts give 0 and ``-inf``. Returns out in out1's dtype and lse fp32 (fp64
    for fp64 inputs); differentiable.
    """
    cdt = _compute_dtype(out1)
    l1, l2 = lse1.to(cdt), lse2.to(cdt)
    m = torch.maximum(l1, l2)
    empty = torch.isneginf(m)
    m_safe = torch.where(empty, 0.0, m)
    w1, w2 = torch.exp(l1 - m_safe), torch.exp(l2 - m_safe)
    total = torch.where(empty, 1.0, w1 + w2)
    a1 = torch.where(empty, 0.0, w1 / total)[..., None]
    a2 = torch.where(empty, 0.0, w2 / total)[..., None]
    o1 = torch.where(a1 > 0, out1.to(cdt), 0.0)
    o2 = torch.where(a2 > 0, out2.to(cdt), 0.0)
    out = (a1 * o1 + a2 * o2).to(out1.dtype)
    lse = torch.where(empty, -math.inf, m_safe + torch.log(total))
    return out, lse


def transpose_block_lists(
    indices: torch.Tensor, counts: torch.Tensor, num_key_blocks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per key block, the query blocks whose lists hold it: ``(t_indices, t_counts)``.

    ``t_indices`` is ``(B, H, NK, NQ)`` int32, each row's first ``t_counts`` entries ascending and
    the rest -1; ``t_counts`` is ``(B, H, NK)`` int32. The backward walks these for dk and dv.
    A running count places each listed query block: a sort took 0.08-0.15 ms at the Wan-1.3B shape
    on the H200; the passes that replace it stay below the profile's top 12 (< 0.056 ms). Every
    unlisted entry lands in one spare column (on CUDA, which one's value stays there is not
    deterministic), which is dropped.
    """
    num_q_blocks = indices.shape[-2]
    mask = block_mask_from_lists(indices, counts, num_key_blocks).transpose(-1, -2)
    slots = mask.cumsum(dim=-1, dtype=torch.int32) - 1
    slots = torch.where(mask, slots, num_q_blocks).long()  # unlisted: one spare column, dropped below
    query_blocks = torch.arange(num_q_blocks, device=indices.device, dtype=torch.int32).expand(slots.shape)
    t_indices = torch.full((*slots.shape[:-1], num_q_blocks + 1), -1, device=indices.device, dtype=torch.int32)
    t_indices.scatter_(-1, slots, query_blocks)
    return t_indices[..., :num_q_blocks].contiguous(), mask.sum(dim=-1, dtype=torch.int32)


def block_sparse_attention_backward_reference(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    indices: torch.Tensor,
    counts: torch.Tensor,
    *,
    block_m: int,
    block_n: int,
    key_len: int | None = None,
    scale: float | None = None,
    key_bias: torch.Tensor | None = None,
    dlse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` of :func:`block_sparse_attention_reference` (no ``q_rows``, no extra keys).

    Recomputes the forward under autograd in fp32 (fp64 for fp64 inputs); ``out`` and ``lse`` are
    accepted for the kernel's signature and not needed. ``dlse`` is the gradient of the LSE output.
    """
    cdt = _compute_dtype(q)
    with torch.enable_grad():
        qc, kc, vc = (x.detach().to(cdt).requires_grad_() for x in (q, k, v))
        o, lse_c = block_sparse_attention_reference(
            qc, kc, vc, indices, counts, block_m=block_m, block_n=block_n, key_len=key_len, scale=scale,
            key_bias=key_bias.detach() if key_bias is not None else None, return_lse=True,
        )  # fmt: skip
        outputs, grads = [o], [dout.to(cdt)]
        if dlse is not None:
            outputs.append(lse_c)
            grads.append(dlse.to(cdt))
        dq, dk, dv = torch.autograd.grad(outputs, (qc, kc, vc), grads)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def route_blocks_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    block_q: int,
    block_k: int,
    scale: float,
    *,
    density: float | None = None,
    top_p: float | None = None,
    min_blocks: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Routing of block-ordered q, k ``(B, H, S, D)``: ``(indices, counts, q_mean, k_mean)``.

    Block means, scores ``scale * q̄ k̄ᵀ + log n_j`` (``n_j`` the tokens of key block j) and the
    top-k (``density``) or top-p selection of :func:`select_blocks_reference`.
    """
    q_mean, k_mean = pool_blocks_reference(q, block_q), pool_blocks_reference(k, block_k)
    log_counts = block_counts(k.shape[2], block_k, k.device).float().log()
    scores = routing_scores(q_mean, k_mean, scale)
    indices, counts = select_blocks_reference(
        scores, density=density, top_p=top_p, min_blocks=min_blocks, log_counts=log_counts
    )
    return indices, counts, q_mean, k_mean
