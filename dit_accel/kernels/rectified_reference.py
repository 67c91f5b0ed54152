"""Float64-capable PyTorch references of Rectified SpaAttn's kernels (no Triton needed).

:func:`block_stats_reference` defines :mod:`.rectified_stats` (block means and mean absolute
deviations); :func:`rectified_merge_reference` defines :mod:`.rectified_tail` (IPAR, GAPR and the
``R · O + C`` merge). :func:`pooled_logits` and :func:`rectified_row_weights` are the formulas the
method also uses for its block selection and its float64 definition.
"""

from __future__ import annotations

import math

import torch

from .reference import block_counts, block_mask_from_lists, pool_blocks_reference

Tensor = torch.Tensor


def _mean_and_mad(x: Tensor, block: int) -> tuple[Tensor, Tensor]:
    mean = pool_blocks_reference(x, block)
    spread = mean.repeat_interleave(block, dim=2)[:, :, : x.shape[2]]
    return mean, pool_blocks_reference((x.to(mean.dtype) - spread).abs(), block)


def block_stats_reference(
    q: Tensor, k: Tensor, v: Tensor, block_q: int, block_k: int, key_len: int, q_rows: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """What :func:`~.rectified_stats.block_stats_triton` computes, in fp32 (float64 for float64 inputs)."""
    queries = q if q_rows is None else q.index_select(2, q_rows.long())
    keys, values = k[:, :, :key_len], v[:, :, :key_len]
    return (*_mean_and_mad(queries, block_q), *_mean_and_mad(keys, block_k), pool_blocks_reference(values, block_k))


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def pooled_logits(
    x: Tensor, k_mean: Tensor, key_len: int, block_k: int, scale: float,
    extra_k: Tensor | None = None, extra_valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """IPAR's logits for statistic rows ``x`` ``(B, H, M, D)``: ``(s x·k̄_j + log n_j, log Σ_t e^{s x·k_t})``.

    The first is ``(B, H, M, NK)``, the second the text keys' log-mass ``(B, H, M)`` (valid keys
    only, unpooled; ``-inf`` without text). ``P̃ = softmax`` over both, text collapsed to one column.
    """
    cdt = _compute_dtype(x, k_mean, extra_k)
    x = x.to(cdt)
    log_n = block_counts(key_len, block_k, x.device).to(cdt).log()
    video = torch.matmul(x, k_mean.to(cdt).transpose(-1, -2)) * scale + log_n
    if extra_k is None or extra_k.shape[2] == 0:
        return video, torch.full(video.shape[:3], -math.inf, dtype=cdt, device=x.device)
    text = torch.matmul(x, extra_k.to(cdt).transpose(-1, -2)) * scale
    if extra_valid is not None:
        padded = torch.arange(extra_k.shape[2], device=x.device)[None, :] >= extra_valid.long()[:, None]
        text = text.masked_fill(padded[:, None, None, :], -math.inf)
    return video, torch.logsumexp(text, dim=-1)


def gapr_passes(x: Tensor, x_mad: Tensor | None, k_mean: Tensor, k_mad: Tensor) -> Tensor:
    """GAPR's test ``|x·k̄_j| > |x·δk_j| (+ |δq·k̄_j| with ``x_mad``)``, bool ``(B, H, M, NK)`` for rows ``x``."""
    cdt = _compute_dtype(x, k_mean)
    x, k_mean = x.to(cdt), k_mean.to(cdt)
    gain = torch.matmul(x, k_mean.transpose(-1, -2)).abs()
    err = torch.matmul(x, k_mad.to(cdt).transpose(-1, -2)).abs()
    if x_mad is not None:
        err = err + torch.matmul(x_mad.to(cdt), k_mean.transpose(-1, -2)).abs()
    return gain > err


def rectified_weights(
    x: Tensor, x_mad: Tensor | None, k_mean: Tensor, k_mad: Tensor, v_mean: Tensor, critical: Tensor, *,
    key_len: int, block_k: int, scale: float, extra_k: Tensor | None = None, extra_valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(R, C)`` of statistic rows ``x`` ``(B, H, M, D)``: ``(B, H, M)`` and ``(B, H, M, D)``.

    ``critical`` ``(B, H, M, NK)`` marks each row's exact blocks; ``x_mad`` (block means only) adds
    the query pooling error ``|δq·k̄_j|`` to GAPR's error.
    """
    video, text_lse = pooled_logits(x, k_mean, key_len, block_k, scale, extra_k, extra_valid)
    log_z = torch.logaddexp(torch.logsumexp(video, dim=-1), text_lse)
    moved = torch.exp(video - log_z[..., None]) * (~critical & gapr_passes(x, x_mad, k_mean, k_mad))
    return 1.0 - moved.sum(-1), torch.matmul(moved, v_mean.to(video.dtype))


def rectified_row_weights(
    q: Tensor, q_mean: Tensor, q_mad: Tensor, k_mean: Tensor, k_mad: Tensor, v_mean: Tensor, indices: Tensor,
    counts: Tensor, *, block_q: int, block_k: int, key_len: int, scale: float, per_row: bool,
    q_rows: Tensor | None = None, extra_k: Tensor | None = None, extra_valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(R, C)`` of every logical query row, ``(B, H, S)`` and ``(B, H, S, D)`` (S video query rows)."""
    seq = q.shape[2] if q_rows is None else q_rows.numel()
    critical = block_mask_from_lists(indices, counts, k_mean.shape[2])
    stats = dict(key_len=key_len, block_k=block_k, scale=scale, extra_k=extra_k, extra_valid=extra_valid)
    if per_row:
        queries = q if q_rows is None else q.index_select(2, q_rows.long())
        return rectified_weights(queries, None, k_mean, k_mad, v_mean,
                                 critical.repeat_interleave(block_q, dim=2)[:, :, :seq], **stats)  # fmt: skip
    keep, add = rectified_weights(q_mean, q_mad, k_mean, k_mad, v_mean, critical, **stats)
    return keep.repeat_interleave(block_q, dim=2)[:, :, :seq], add.repeat_interleave(block_q, dim=2)[:, :, :seq]


def rectified_merge_reference(
    out: Tensor, q: Tensor, q_mean: Tensor, q_mad: Tensor, k_mean: Tensor, k_mad: Tensor, v_mean: Tensor,
    indices: Tensor, counts: Tensor, *, block_q: int, block_k: int, key_len: int, scale: float, per_row: bool,
    q_rows: Tensor | None = None, extra_k: Tensor | None = None, extra_valid: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """What :func:`~.rectified_tail.rectified_merge_triton` computes (other rows copied from ``out``)."""
    keep, add = rectified_row_weights(
        q, q_mean, q_mad, k_mean, k_mad, v_mean, indices, counts, block_q=block_q, block_k=block_k,
        key_len=key_len, scale=scale, per_row=per_row, q_rows=q_rows, extra_k=extra_k, extra_valid=extra_valid,
    )  # fmt: skip
    rows = torch.arange(q.shape[2], device=q.device) if q_rows is None else q_rows.long()
    result = out.clone()
    result[:, :, rows] = (keep[..., None] * out[:, :, rows].to(keep.dtype) + add).to(out.dtype)
    return result
