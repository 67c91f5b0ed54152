"""PyTorch references of PISA's kernels: per-block statistics and the approximate tail.

PISA (piecewise sparse attention) computes the selected key blocks exactly and replaces every
skipped block ``j`` (``n_j`` keys, mean key ``k̄_j``, mean value ``v̄_j``) by a Taylor expansion of
``exp(s q·k)`` around ``k̄_j``:

* zeroth order: one pseudo-token with logit ``s q·k̄_j + log n_j`` and value ``v̄_j``;
* first order: the numerator gains ``Σ_{j skipped} e^{s q·k̄_j} · s qᵀH̄`` with
  ``H_j = Σ_{t∈j} (k_t − k̄_j) v_tᵀ`` and ``H̄`` their mean over all key blocks (one ``D×D`` per head);
  the denominator is unchanged (``Σ_t (k_t − k̄_j) = 0``).

The tail returns its own ``(out, lse)`` (natural log), merged with the exact part by LSE. These
functions define what the Triton kernels (:mod:`.pisa_stats`, :mod:`.pisa_tail`) compute and serve
CPU tensors; the statistics are accumulated in float64.
"""

from __future__ import annotations

import math

import torch

from .reference import block_mask_from_lists

_CHUNK_ELEMENTS = 1 << 24


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _blocks(x: torch.Tensor, block: int, key_len: int) -> torch.Tensor:
    """The first ``key_len`` rows of x as float64 ``(B, H, NK, block, D)``, zero-padded."""
    b, h, _, d = x.shape
    n = math.ceil(key_len / block)
    padded = torch.zeros(b, h, n * block, d, dtype=torch.float64, device=x.device)
    padded[:, :, :key_len] = x[:, :, :key_len]
    return padded.view(b, h, n, block, d)


def pisa_block_stats_reference(
    k: torch.Tensor,
    v: torch.Tensor,
    k_mean: torch.Tensor,
    block_k: int,
    key_len: int,
    with_h: bool,
    with_norms: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-key-block statistics of the first ``key_len`` rows of k, v ``(B, H, S, D)``.

    Returns ``(v_mean, h_bar, h_norm)``: ``v_mean`` ``(B, H, NK, D)`` block means of v; ``h_bar``
    ``(B, H, D, D)`` the mean over the NK blocks of ``H_j = Σ_{t∈j} (k_t − k̄_j) v_tᵀ`` (``k̄_j`` from
    ``k_mean``), through ``Σ_j H_j = KᵀV − Σ_j n_j k̄_j v̄_jᵀ`` (no per-block ``D×D``); ``h_norm``
    ``(B, H, NK)`` the Frobenius norms ``‖H_j‖_F``. Outputs not asked for are empty. fp32 (fp64
    for fp64 inputs).
    """
    out_dtype = _compute_dtype(k)
    num_blocks = math.ceil(key_len / block_k)
    counts = torch.full((num_blocks,), float(block_k), dtype=torch.float64, device=k.device)
    counts[-1] = key_len - (num_blocks - 1) * block_k
    v_blocks = _blocks(v, block_k, key_len)
    v_mean = v_blocks.sum(dim=3) / counts[:, None]
    h_bar, h_norm = k.new_empty(0, dtype=out_dtype), k.new_empty(0, dtype=out_dtype)
    if with_h:
        keys, values = k[:, :, :key_len].double(), v[:, :, :key_len].double()
        weighted_means = k_mean.double() * counts[:, None]
        h_sum = keys.transpose(-1, -2) @ values - weighted_means.transpose(-1, -2) @ v_mean
        h_bar = (h_sum / num_blocks).to(out_dtype)
    if with_norms:
        k_blocks = _blocks(k, block_k, key_len)
        rows_ok = (torch.arange(num_blocks * block_k, device=k.device) < key_len).view(num_blocks, block_k, 1)
        centered = (k_blocks - k_mean.double()[:, :, :, None, :]) * rows_ok
        per_chunk = max(1, _CHUNK_ELEMENTS // max(1, k.shape[0] * k.shape[1] * k.shape[-1] ** 2))
        norms = [
            torch.einsum("bhntd,bhnte->bhnde", centered[:, :, first : first + per_chunk],
                         v_blocks[:, :, first : first + per_chunk]).flatten(-2).norm(dim=-1)
            for first in range(0, num_blocks, per_chunk)
        ]  # fmt: skip
        h_norm = torch.cat(norms, dim=2).to(out_dtype)
    return v_mean.to(out_dtype), h_bar, h_norm


def pisa_tail_reference(
    q: torch.Tensor,
    k_mean: torch.Tensor,
    v_mean: torch.Tensor,
    h_bar: torch.Tensor | None,
    log_counts: torch.Tensor,
    indices: torch.Tensor,
    counts: torch.Tensor,
    block_q: int,
    scale: float,
    q_rows: torch.Tensor | None = None,
    tokens_per_block: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PISA's tail: each query row over the pseudo-tokens of the key blocks its query block skipped.

    q ``(B, H, S, D)``; logical row r is ``q[..., r, :]`` or, with ``q_rows``, ``q[..., q_rows[r], :]``
    and belongs to query block ``r // block_q``. ``k_mean``/``v_mean`` ``(B, H, NK, D)`` and
    ``log_counts`` ``(NK,)`` describe the key blocks; ``indices``/``counts`` are the block list of
    the exact part (those blocks are left out). With ``tokens_per_block`` > 1, ``k_mean``/``v_mean``/
    ``log_counts`` describe ``NT`` finer pseudo-tokens, ``tokens_per_block`` consecutive ones per key
    block of the lists (the last block may have fewer). ``h_bar`` ``(B, H, D, D)`` adds the first-order
    term (None or empty: zeroth order only). Returns ``(out, lse)``: out shaped like q (only the logical
    rows written), lse fp32 (fp64 for fp64 q) ``(B, H, S)``; a row with nothing skipped gives 0, -inf.
    """
    cdt = _compute_dtype(q)
    b, h = q.shape[:2]
    rows = torch.arange(q.shape[2], device=q.device) if q_rows is None else q_rows.long()
    num_tokens = k_mean.shape[2]
    num_key_blocks = math.ceil(num_tokens / tokens_per_block)
    skipped = ~block_mask_from_lists(indices, counts, num_key_blocks)
    skipped = skipped.repeat_interleave(tokens_per_block, dim=-1)[..., :num_tokens]
    keys, values = k_mean.to(cdt), v_mean.to(cdt)
    first_order = h_bar is not None and h_bar.numel() > 0
    out = torch.zeros_like(q)
    lse = torch.full((b, h, q.shape[2]), -math.inf, dtype=cdt, device=q.device)
    blocks_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, b * h * block_q * num_tokens))
    for first in range(0, skipped.shape[2], blocks_per_chunk):
        chunk_rows = rows[first * block_q : (first + blocks_per_chunk) * block_q]
        qc = q[:, :, chunk_rows].to(cdt)
        logits = torch.matmul(qc, keys.transpose(-1, -2)) * scale
        allowed = skipped[:, :, first : first + blocks_per_chunk].repeat_interleave(block_q, dim=2)
        weighted = (logits + log_counts.to(cdt)).masked_fill(~allowed[:, :, : chunk_rows.numel()], -math.inf)
        row_lse = torch.logsumexp(weighted, dim=-1)
        safe_lse = torch.where(torch.isinf(row_lse), 0.0, row_lse)[..., None]
        chunk_out = torch.exp(weighted - safe_lse) @ values
        if first_order:
            unweighted = torch.exp(logits - safe_lse).masked_fill(torch.isneginf(weighted), 0.0).sum(dim=-1)
            chunk_out = chunk_out + (unweighted * scale)[..., None] * (qc @ h_bar.to(cdt))
        out[:, :, chunk_rows] = chunk_out.to(out.dtype)
        lse[:, :, chunk_rows] = row_lse
    return out, lse
