"""PrimeComposer's attention edits expressed as plain q/k/v, so any acceleration op can compute them.

Two edits of the attention logits ``L = q kᵀ / sqrt(D)`` of one call:

* **steering**: on the object rows and columns (``i ∈ O`` or ``j ∈ O``) the logits are the
  correlation branch's, ``q_c kᵀ_c / sqrt(D)``; elsewhere the generator's own;
* **region-constrained text attention**: a bias ``B`` (``-1e4``, i.e. ``-inf`` after softmax) on
  the logits of chosen rows (image tokens outside the box) to chosen columns (the object's text tokens).

Both are exact as one attention over wider heads: with ``n = 1 - o`` (``o`` the object indicator),
``q' = [q·n, q_c, q_c·o, b]`` and ``k' = [k·n, k_c·o, k_c·n, t]`` give
``q'·k'ᵀ = n_i n_j q k + o_j q_c k_c + o_i n_j q_c k_c + b_i t_j``, which is the steered logit in all
four (row, column) cases plus the bias. The heads are zero-padded to a power of two and ``q'`` is
scaled so that the op's ``1/sqrt(D')`` equals the original ``1/sqrt(D)``; values are zero-padded and
the output sliced back. So the op never needs to know about the edit: block selection, kernels and
LSE merges all run on ``(q', k', v')`` as on any call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TEXT_BIAS = -1.0e4  # logit offset of the constrained text attention: exp(-1e4) is 0 in every float type


@dataclass(frozen=True)
class Steering:
    """The correlation branch's q/k for one call and the object tokens they replace.

    Attributes:
        q, k: ``(B, S, H, D)`` queries and keys of the correlation branch (same tokens and order as the call).
        objects: ``(S,)`` bool, True at the object's image tokens (in the call's token order).
    """

    q: torch.Tensor
    k: torch.Tensor
    objects: torch.Tensor


@dataclass(frozen=True)
class TextConstraint:
    """Rows that must not attend to some columns: ``rows`` (``(S,)`` bool) x ``columns`` (``(S,)`` bool)."""

    rows: torch.Tensor
    columns: torch.Tensor


def _padded(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[-1]))


def edited_qkv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    steering: Steering | None,
    constraint: TextConstraint | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q', k', v')`` whose plain attention is the edited attention of ``(q, k, v)``; slice its output to ``D``."""
    head_dim = q.shape[-1]
    q_parts, k_parts = [q], [k]
    if steering is not None:
        o = steering.objects.to(q.dtype)[None, :, None, None]
        n = 1.0 - o
        q_parts = [q * n, steering.q, steering.q * o]
        k_parts = [k * n, steering.k * o, steering.k * n]
    if constraint is not None:
        rows = constraint.rows.to(q.dtype)[None, :, None, None] * (TEXT_BIAS * math.sqrt(head_dim))
        columns = constraint.columns.to(k.dtype)[None, :, None, None]
        q_parts.append(rows.expand(q.shape[0], -1, q.shape[2], 1))
        k_parts.append(columns.expand(k.shape[0], -1, k.shape[2], 1))
    wide = sum(part.shape[-1] for part in q_parts)
    width = 1 << (wide - 1).bit_length()
    q_wide = _padded(torch.cat(q_parts, dim=-1), width) * math.sqrt(width / head_dim)
    return q_wide, _padded(torch.cat(k_parts, dim=-1), width), _padded(v, width)


def edited_logits(
    q: torch.Tensor, k: torch.Tensor, steering: Steering | None, constraint: TextConstraint | None
) -> torch.Tensor:
    """The edited logits ``(B, H, S, S)`` written out directly (the definition :func:`edited_qkv` must meet)."""
    scale = q.shape[-1] ** -0.5
    logits = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    if steering is not None:
        stored = torch.einsum("bihd,bjhd->bhij", steering.q, steering.k) * scale
        touched = steering.objects[:, None] | steering.objects[None, :]
        logits = torch.where(touched, stored, logits)
    if constraint is not None:
        logits = logits + TEXT_BIAS * (constraint.rows[:, None] & constraint.columns[None, :]).to(logits.dtype)
    return logits
