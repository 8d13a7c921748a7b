"""Exact quantities on a toy state space: marginals, reverse generators, scores, posteriors.

Everything here is computed in float64 from the dense transition ``P = expm(sigma_bar Q)``; these
are the ground truths that the learned and approximate quantities of later lessons are held
against.
"""

from __future__ import annotations

import torch

from ._checks import (as_float, as_tokens, broadcast, check_distribution, check_shape,
                      check_sigma_bar)
from .rate_matrices import RateMatrix


def as_rate_matrix(rm) -> RateMatrix:
    """Accept a RateMatrix (or subclass) or anything a RateMatrix can be built from."""
    return rm if isinstance(rm, RateMatrix) else RateMatrix(rm)


def marginal(rm, p0, sigma_bar) -> torch.Tensor:
    """``p_t = expm(sigma_bar Q) p0`` (lesson 1).

    ``p0`` has shape (n,); sigma_bar a scalar gives (n,), sigma_bar of shape (B,) gives (B, n).
    """
    rm = as_rate_matrix(rm)
    p0 = check_distribution(p0, rm.n, "p0").to(torch.float64)
    if p0.dim() != 1:
        raise ValueError(f"p0 must be a vector of shape ({rm.n},), got shape {tuple(p0.shape)}")
    # exact: float64 even for a float32 sigma_bar (which would otherwise clash with p0's dtype)
    P = rm.transition(check_sigma_bar(sigma_bar).to(torch.float64))
    return P @ p0


def concrete_score(p, x=None) -> torch.Tensor:
    """The concrete score ``S[x, y] = p[y] / p[x]`` (lesson 2).

    With ``x=None`` the whole (n, n) matrix, which needs p > 0 everywhere; with ``x`` an integer
    (or a tensor of states) just those rows. A ratio asked at a state of probability zero is
    undefined and raises ValueError naming the state.
    """
    p = check_distribution(p, None, "p").to(torch.float64)
    if p.dim() != 1:
        raise ValueError(f"p must be a vector, got shape {tuple(p.shape)}")
    n = p.shape[0]
    rows = torch.arange(n) if x is None else as_tokens(x, n, "x")
    zero = p[rows] == 0
    if zero.any():
        bad = rows[zero].flatten()[0].item()
        hint = " (pass x= to ask only for rows at states with p > 0)" if x is None else ""
        raise ValueError(f"the concrete score at state {bad} is undefined: p[{bad}] = 0{hint}")
    return p[None, :] / p[rows][..., None] if x is None else p / p[rows][..., None]


def reverse_rate_matrix(Q, p) -> torch.Tensor:
    """The generator of the time-reversed chain at marginal ``p`` (lesson 2).

    ``Qbar[y, x] = p[y] / p[x] * Q[x, y]`` for y != x and ``Qbar[x, x] = -sum_{y != x} Qbar[y, x]``.
    Columns at states with p[x] = 0 are zero: the reverse chain is never there. It satisfies
    ``Qbar @ p = -(Q @ p)``: run backward, the reverse chain retraces the forward marginals.
    ``p`` of shape (M, n) gives the M generators at once, shape (M, n, n).
    """
    Q = as_rate_matrix(Q).Q
    n = Q.shape[0]
    p = check_distribution(p, n, "p").to(torch.float64)
    if p.dim() not in (1, 2):
        raise ValueError(f"p must have shape ({n},) or (M, {n}), got shape {tuple(p.shape)}")
    safe = torch.where(p > 0, p, torch.ones_like(p))
    Qbar = p[..., :, None] / safe[..., None, :] * Q.T
    Qbar = torch.where(p[..., None, :] > 0, Qbar, torch.zeros_like(Qbar))
    Qbar = Qbar - torch.diag_embed(torch.diagonal(Qbar, dim1=-2, dim2=-1))
    Qbar = Qbar - torch.diag_embed(Qbar.sum(-2))
    if not torch.isfinite(Qbar).all():
        # p[y] / p[x] overflows when p[x] is tiny but not zero (e.g. a subnormal 1e-310)
        x = int((~torch.isfinite(Qbar)).any(-2).reshape(-1, n).any(0).nonzero()[0])
        raise ValueError(f"the reverse rates out of state {x} overflow: p[..., {x}] is too small "
                         f"for the ratios p[y] / p[{x}] to be finite in float64")
    return Qbar


def posterior(rm, p0, sigma_bar) -> torch.Tensor:
    """Exact Bayes: ``D[x0, x] = p_{0|t}(x0 | x_t = x) = P[x, x0] p0[x0] / p_t[x]`` (lesson 2).

    Shape (n, n) for a scalar sigma_bar, (B, n, n) for shape (B,). Each column with p_t[x] > 0
    sums to one; columns at unreachable states (p_t[x] = 0) are zero.
    """
    rm = as_rate_matrix(rm)
    p0 = check_distribution(p0, rm.n, "p0").to(torch.float64)
    if p0.dim() != 1:
        raise ValueError(f"p0 must be a vector of shape ({rm.n},), got shape {tuple(p0.shape)}")
    P = rm.transition(check_sigma_bar(sigma_bar).to(torch.float64))
    joint = P.transpose(-1, -2) * p0[:, None]            # joint[x0, x] = p0[x0] P[x, x0]
    pt = joint.sum(-2, keepdim=True)
    return torch.where(pt > 0, joint / torch.where(pt > 0, pt, torch.ones_like(pt)),
                       torch.zeros_like(joint))


def tweedie_denoiser(rm, sigma_bar, score, x) -> torch.Tensor:
    """Discrete Tweedie: the clean-data posterior from the score at one state (lesson 2).

    ``p_{0|t}(x0 | x) = (expm(-sigma_bar Q) s(x))[x0] * expm(sigma_bar Q)[x, x0]`` where
    ``s(x)_y = p_t(y) / p_t(x)``. With the exact score this equals ``posterior(...)[:, x]``;
    nothing is clipped, so an inexact score can give small negative entries.
    """
    rm = as_rate_matrix(rm)
    x = as_tokens(x, rm.n, "x")
    sb = check_sigma_bar(sigma_bar).to(torch.float64)
    score = as_float(score, torch.float64)
    check_shape(score, tuple(x.shape) + (rm.n,), "score")
    if not torch.isfinite(score).all():
        raise ValueError("score must be finite")
    sb = broadcast(sb, x.shape, "sigma_bar", "the shape of x")
    return rm.apply_inverse_transition(score, sb) * rm.transition_to(x, sb).to(torch.float64)


__all__ = ["marginal", "concrete_score", "reverse_rate_matrix", "posterior", "tweedie_denoiser",
           "as_rate_matrix"]
