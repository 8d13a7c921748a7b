"""Small numerically careful formulas used across the library (no validation here)."""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)


def log_expm1(x: torch.Tensor) -> torch.Tensor:
    """``log(e^x - 1)`` for x > 0 without overflow or cancellation.

    Small x: ``log(expm1(x))`` is accurate; large x: ``x + log1p(-e^{-x})`` avoids e^x overflowing.
    Used by the absorbing score's time dependence, ``s ∝ 1 / (e^{sigma_bar} - 1)`` (lessons 6, 9).
    """
    big = x > 1.0
    small = torch.log(torch.expm1(torch.where(big, torch.ones_like(x), x)))
    large = x + torch.log1p(-torch.exp(-torch.where(big, x, torch.ones_like(x))))
    return torch.where(big, large, small)


def K(a: torch.Tensor) -> torch.Tensor:
    """``K(a) = a (log a - 1)`` with ``K(0) = 0``: the constant that makes score entropy >= 0."""
    return torch.xlogy(a, a) - a


def kl_terms(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Elementwise ``p log(p / q)``: 0 where p = 0, +inf where p > 0 = q (never NaN)."""
    q = q.expand_as(p)
    terms = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p))
    return torch.where((p > 0) & (q <= 0), torch.full_like(p, math.inf), terms)


def kl_rows(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``sum_j q[..., j] log(q[..., j] / p[..., j])`` over the last axis; inf where p = 0 < q."""
    return kl_terms(q, p).sum(-1)
