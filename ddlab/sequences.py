"""Sequences of d tokens on the product space (n,)*d, computed exactly (lesson 7).

Each token is noised independently with the same Q, so the transition of a whole sequence is the
Kronecker product of d per-token transitions. It is never formed: the marginal p_t is obtained by
contracting the per-token transition along each axis of the joint p0 in turn, d matrix products
of cost n^(d+1) each.
"""

from __future__ import annotations

import math

import torch

from ._checks import as_float, as_tokens, check_sigma_bar
from .exact import as_rate_matrix


def _check_joint(p0, n: int) -> torch.Tensor:
    p0 = as_float(p0, torch.float64)
    if p0.dim() < 1 or any(s != n for s in p0.shape):
        raise ValueError(f"p0 must have shape (n,)*d with n = {n}, got shape {tuple(p0.shape)}")
    if (p0 < 0).any() or not torch.isfinite(p0).all():
        raise ValueError("p0 must be finite and non-negative")
    total = p0.sum().item()
    if abs(total - 1) > 1e-6:
        raise ValueError(f"p0 must sum to 1, but sums to {total:.8g}")
    return p0


def product_marginal(rm, p0, sigma_bar) -> torch.Tensor:
    """``p_t`` on (n,)*d for a scalar sigma_bar: the per-token transition applied on every axis."""
    rm = as_rate_matrix(rm)
    p0 = _check_joint(p0, rm.n)
    sb = check_sigma_bar(sigma_bar)
    if sb.dim() != 0:
        raise ValueError(f"sigma_bar must be a scalar here, got shape {tuple(sb.shape)}")
    P = rm.transition(sb).to(torch.float64)
    pt = p0
    for axis in range(p0.dim()):
        # new[..., y, ...] = sum_x P[y, x] p[..., x, ...] along this axis
        pt = torch.movedim(torch.tensordot(P, pt, dims=([1], [axis])), 0, axis)
    return pt


def hamming1_ratios(pt: torch.Tensor, x) -> torch.Tensor:
    """``s[b, i, y] = pt(x_b with token i set to y) / pt(x_b)``, shape (B, d, n) (lesson 7).

    ``x`` has shape (B, d); every x_b must have pt(x_b) > 0 (a ratio at a zero-probability
    sequence is undefined and raises ValueError naming the sequence).
    """
    d, n = pt.dim(), pt.shape[0]
    x = as_tokens(x, n, "x")
    if x.dim() != 2 or x.shape[1] != d:
        raise ValueError(f"x must have shape (B, {d}), got {tuple(x.shape)}")
    strides = torch.tensor([n ** (d - 1 - i) for i in range(d)], dtype=torch.long, device=x.device)
    flat = pt.reshape(-1)
    base = (x * strides).sum(-1)                                          # (B,)
    y = torch.arange(n, device=x.device)
    idx = base[:, None, None] + (y[None, None, :] - x[:, :, None]) * strides[None, :, None]
    num = flat[idx]                                                       # (B, d, n)
    den = flat[base]
    if (den <= 0).any():
        b = int((den <= 0).nonzero()[0])
        raise ValueError(f"sequence {x[b].tolist()} (batch index {b}) has probability 0 under p_t; "
                         f"its ratios are undefined")
    return num / den[:, None, None]


def exact_score_fn(p0, rm, schedule=None):
    """An oracle score function for a joint ``p0`` of shape (n,)*d (lesson 7).

    Returns ``score_fn(x_t, sigma_bar) -> (B, d, n)`` with the exact Hamming-1 ratios
    ``p_t(x with x_i = y) / p_t(x)``, the same signature as a network's score function, so exact
    oracles and networks are interchangeable in samplers and in ``nll_bound``. ``sigma_bar`` is a
    scalar or of shape (B,); the marginal is computed once per distinct value. ``schedule`` is
    kept as ``score_fn.schedule`` for callers that want it.
    """
    rm = as_rate_matrix(rm)
    p0 = _check_joint(p0, rm.n)
    d = p0.dim()
    cache: dict[float, torch.Tensor] = {}

    def score_fn(x_t, sigma_bar):
        x_t = as_tokens(x_t, rm.n, "x_t")
        if x_t.dim() == 1 and d == 1:
            x_t = x_t[:, None]
        if x_t.dim() != 2 or x_t.shape[1] != d:
            raise ValueError(f"x_t must have shape (B, {d}), got {tuple(x_t.shape)}")
        sb = torch.broadcast_to(check_sigma_bar(sigma_bar, dtype=torch.float64), x_t.shape[:1])
        out = torch.empty(*x_t.shape, rm.n, dtype=torch.float64)
        for value in torch.unique(sb).tolist():
            if value not in cache:
                if len(cache) > 64:
                    cache.clear()
                cache[value] = product_marginal(rm, p0, value)
            rows = sb == value
            out[rows] = hamming1_ratios(cache[value], x_t[rows])
        return out

    score_fn.p0 = p0
    score_fn.rm = rm
    score_fn.schedule = schedule
    score_fn.d = d
    return score_fn


def memory_needed(n: int, d: int, itemsize: int = 8) -> int:
    """Bytes needed to hold a joint distribution on (n,)*d."""
    return int(math.prod([n] * d)) * itemsize


__all__ = ["product_marginal", "hamming1_ratios", "exact_score_fn", "memory_needed"]
