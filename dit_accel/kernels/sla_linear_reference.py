"""PyTorch reference of SLA's linear branch (sparse-linear attention, arXiv 2509.24006).

For each query block i, linear attention with a feature map φ over the keys of its *marginal*
key blocks only (``marginal[b, h, i, j]`` true):

    h_j = φ(K_j)ᵀ V_j   (D x D),   z_j = φ(K_j)ᵀ 1   (D)            per key block j
    H_i = Σ_{j marginal} h_j,       Z_i = Σ_{j marginal} z_j          per query block i
    O_l = φ(Q_i) H_i / (φ(Q_i) · Z_i + eps)

Feature maps (over the head dimension, per row): ``softmax``; ``elu`` (elu(x) + 1); ``relu``.
The per-block sums are taken as one matrix product ``marginal @ [h | z]`` over all key blocks (no
(S, S) intermediate), which is also how the Triton path computes them. Differentiable; the float64
oracle of :mod:`.sla_linear` and :mod:`.sla_linear_bwd`, and the CPU path of the op. The backward
is written out (the Triton backward's formulas) because it runs inside a custom op, where autograd
is off; the tests check it against autograd of the forward.
"""

from __future__ import annotations

import math

import torch

FEATURE_MAPS = ("softmax", "elu", "relu")

Tensor = torch.Tensor


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def feature_map_reference(x: Tensor, name: str) -> Tensor:
    """φ(x) row by row over the last dimension."""
    if name == "softmax":
        return torch.softmax(x, dim=-1)
    if name == "elu":
        return torch.nn.functional.elu(x) + 1.0
    if name == "relu":
        return torch.relu(x)
    raise ValueError(f"feature_map must be one of {', '.join(map(repr, FEATURE_MAPS))}, got {name!r}")


def _blocks_of(x: Tensor, block: int) -> Tensor:
    """``(B, H, S, D)`` zero-padded to whole blocks, viewed ``(B, H, N, block, D)``."""
    b, h, s, d = x.shape
    n = math.ceil(s / block)
    padded = torch.nn.functional.pad(x, (0, 0, 0, n * block - s))
    return padded.view(b, h, n, block, d)


def key_summary_reference(k: Tensor, v: Tensor, block_n: int, key_len: int, feature_map: str) -> Tensor:
    """Per key block, ``[h_j.flatten() | z_j]``: ``(B, H, NK, D*D + D)`` in fp32 (fp64 for fp64 inputs)."""
    cdt = _compute_dtype(k)
    phi_k = _blocks_of(feature_map_reference(k[:, :, :key_len].to(cdt), feature_map), block_n)
    values = _blocks_of(v[:, :, :key_len].to(cdt), block_n)
    h = torch.einsum("bhntd,bhnte->bhnde", phi_k, values).flatten(-2)
    return torch.cat([h, phi_k.sum(dim=3)], dim=-1)


def sla_linear_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    marginal: Tensor,
    *,
    block_m: int,
    block_n: int,
    key_len: int | None = None,
    feature_map: str = "softmax",
    eps: float = 1e-6,
    q_rows: Tensor | None = None,
) -> Tensor:
    """The linear branch ``O_l``, shaped like q (only the ``q_rows`` rows non-zero when given).

    q, k, v are ``(B, H, S, D)``; ``marginal`` ``(B, H, NQ, NK)`` bool over the query blocks of the
    (``q_rows``-gathered) queries and the key blocks of the first ``key_len`` keys.
    """
    b, h, _, d = q.shape
    cdt = _compute_dtype(q)
    key_len = k.shape[2] if key_len is None else key_len
    summary = key_summary_reference(k, v, block_n, key_len, feature_map)
    sums = torch.matmul(marginal.to(cdt), summary)
    queries = (q if q_rows is None else q.index_select(2, q_rows.long())).to(cdt)
    seq = queries.shape[2]
    phi_q = _blocks_of(feature_map_reference(queries, feature_map), block_m)
    nq = phi_q.shape[2]
    num = torch.matmul(phi_q, sums[..., : d * d].reshape(b, h, nq, d, d))
    den = (phi_q * sums[..., None, d * d :]).sum(-1) + eps
    out = (num / den[..., None]).reshape(b, h, nq * block_m, d)[:, :, :seq].to(q.dtype)
    if q_rows is None:
        return out
    return q.new_zeros(q.shape).index_copy(2, q_rows.long(), out)


def sla_projected_reference(
    q: Tensor, k: Tensor, v: Tensor, marginal: Tensor, residual: Tensor, weight: Tensor, **kwargs
) -> Tensor:
    """SLA's output ``residual + O_l weightᵀ`` (rows outside ``q_rows``: ``residual``'s), in residual's dtype."""
    cdt = _compute_dtype(q)
    linear = sla_linear_reference(q, k, v, marginal, **kwargs).to(cdt)
    out = (residual.to(cdt) + torch.nn.functional.linear(linear, weight.to(cdt))).to(residual.dtype)
    q_rows = kwargs.get("q_rows")
    if q_rows is None:
        return out
    return residual.index_copy(2, q_rows.long(), out.index_select(2, q_rows.long()))


def feature_map_grad_reference(x: Tensor, phi: Tensor, grad_phi: Tensor, name: str) -> Tensor:
    """dL/dx from dL/dφ for ``phi = φ(x)``."""
    if name == "softmax":
        return phi * (grad_phi - (grad_phi * phi).sum(-1, keepdim=True))
    if name == "elu":
        return torch.where(x > 0, grad_phi, grad_phi * phi)
    return torch.where(x > 0, grad_phi, 0.0)


def sla_linear_backward_reference(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    marginal: Tensor,
    *,
    block_m: int,
    block_n: int,
    key_len: int | None = None,
    feature_map: str = "softmax",
    eps: float = 1e-6,
    q_rows: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` of :func:`sla_linear_reference`, by the formulas the Triton backward uses
    (``sla_linear_bwd``), in fp32 (fp64 for fp64 inputs); plain tensor ops, so it also traces."""
    b, h, _, d = q.shape
    cdt = _compute_dtype(q)
    key_len = k.shape[2] if key_len is None else key_len
    rows = torch.arange(q.shape[2], device=q.device) if q_rows is None else q_rows.long()
    seq = rows.numel()
    x_q = q.index_select(2, rows).to(cdt)
    x_k, values = k[:, :, :key_len].to(cdt), v[:, :, :key_len].to(cdt)
    phi_q, phi_k = feature_map_reference(x_q, feature_map), feature_map_reference(x_k, feature_map)
    sums = torch.matmul(marginal.to(cdt), key_summary_reference(k, v, block_n, key_len, feature_map))
    pq, g = _blocks_of(phi_q, block_m), _blocks_of(grad_out.index_select(2, rows).to(cdt), block_m)
    nq, nk = pq.shape[2], math.ceil(key_len / block_n)
    big_h, big_z = sums[..., : d * d].reshape(b, h, nq, d, d), sums[..., None, d * d :]
    den = (pq * big_z).sum(-1) + eps
    out = torch.matmul(pq, big_h) / den[..., None]
    d_num, d_den = g / den[..., None], -(g * out).sum(-1) / den
    d_pq = torch.matmul(d_num, big_h.transpose(-1, -2)) + d_den[..., None] * big_z
    d_sums = torch.cat([torch.matmul(pq.transpose(-1, -2), d_num).flatten(-2), (pq * d_den[..., None]).sum(-2)], -1)
    d_summary = torch.matmul(marginal.transpose(-1, -2).to(cdt), d_sums)
    d_h, d_z = d_summary[..., : d * d].reshape(b, h, nk, d, d), d_summary[..., None, d * d :]
    pk, vk = _blocks_of(phi_k, block_n), _blocks_of(values, block_n)
    d_pk = (torch.matmul(vk, d_h.transpose(-1, -2)) + d_z).reshape(b, h, -1, d)[:, :, :key_len]
    d_v = torch.matmul(pk, d_h).reshape(b, h, -1, d)[:, :, :key_len]
    d_q = feature_map_grad_reference(x_q, phi_q, d_pq.reshape(b, h, -1, d)[:, :, :seq], feature_map)
    dq = q.new_zeros(q.shape).index_copy(2, rows, d_q.to(q.dtype))
    dk, dv = k.new_zeros(k.shape), v.new_zeros(v.shape)
    dk[:, :, :key_len] = feature_map_grad_reference(x_k, phi_k, d_pk, feature_map).to(k.dtype)
    dv[:, :, :key_len] = d_v.to(v.dtype)
    return dq, dk, dv
