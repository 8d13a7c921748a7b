"""Exact quantities on a toy state space: marginals, reverse generators, scores, posteriors.

Everything here is computed in float64 from the dense transition ``P = expm(sigma_bar Q)``; these
are the ground truths that the learned and approximate quantities of later lessons are held
against.
"""

from __future__ import annotations

import math

import torch

from ._checks import (as_float, as_rate_matrix, as_tokens, broadcast, check_distribution,
                      check_p0, check_shape, check_sigma_bar)
from ._numerics import kl_terms

# The single policy for ratios at states of probability zero, used by every exact ratio in ddlab
# (concrete_score here, the toy loss tables built on it, the sequence oracle exact_score_fn):
# a ratio p(y) / p(x) with p(x) = 0 is undefined, so asking for it raises ValueError. The one
# exception is a whole table whose rows at unreachable states carry zero weight (an expected loss
# sums p_t(x) * row x): there ``off_support="one"`` fills those rows with 1, the ratio of a flat
# distribution, which keeps every term finite and changes no weighted sum.
OFF_SUPPORT = ("raise", "one")


def marginal(rm, p0, sigma_bar) -> torch.Tensor:
    """``p_t = expm(sigma_bar Q) p0`` (lesson 1).

    ``p0`` has shape (n,); sigma_bar a scalar gives (n,), sigma_bar of shape (B,) gives (B, n).
    """
    rm = as_rate_matrix(rm)
    p0 = check_p0(p0, rm.n)
    # exact: float64 even for a float32 sigma_bar (which would otherwise clash with p0's dtype)
    P = rm.transition(check_sigma_bar(sigma_bar).to(torch.float64))
    return P @ p0


def concrete_score(p, x=None, *, off_support: str = "raise") -> torch.Tensor:
    """The concrete score ``S[..., x, y] = p[..., y] / p[..., x]`` (lesson 2).

    ``p`` is a distribution of shape (n,), or a stack (..., n) of them (one table each). With
    ``x=None`` the whole (n, n) table; with ``x`` an integer (or a tensor of states) just those
    rows, for a single p. A row at a state of probability zero is undefined: by default
    ValueError names the state; ``off_support="one"`` fills such rows with 1 instead (see
    ``OFF_SUPPORT`` in this module: for tables whose unreachable rows carry zero weight).
    """
    if off_support not in OFF_SUPPORT:
        raise ValueError(f"off_support must be one of {OFF_SUPPORT}, got {off_support!r}")
    p = check_distribution(p, None, "p").to(torch.float64)
    n = p.shape[-1]
    if x is not None and p.dim() != 1:
        raise ValueError(f"rows x= need a single distribution p of shape (n,), got shape "
                         f"{tuple(p.shape)}")
    if x is None:
        num, den = p[..., None, :], p[..., :, None]                  # (..., x, y)
    else:
        rows = as_tokens(x, n, "x")
        num, den = p, p[rows][..., None]
    zero = den == 0
    if off_support == "raise" and zero.any():
        bad = (torch.arange(n).expand(p.shape)[..., :, None] if x is None else
               rows[..., None])[zero].flatten()[0].item()
        hint = " (pass x= to ask only for rows at states with p > 0)" if x is None else ""
        raise ValueError(f"the concrete score at state {bad} is undefined: p[{bad}] = 0{hint}")
    S = num / torch.where(zero, torch.ones_like(den), den)
    S = torch.where(zero, torch.ones_like(S), S)
    if not torch.isfinite(S).all():
        # p[y] / p[x] overflows when p[x] is tiny but not zero (e.g. a subnormal 1e-310)
        raise ValueError("the concrete score overflows: some p[x] > 0 is too small for the "
                         "ratios p[y] / p[x] to be finite in float64")
    return S


def kl_divergence(p, q, dims: int | None = None) -> torch.Tensor:
    """``KL(p || q) = sum p log(p / q)`` in nats over the last ``dims`` axes (all by default).

    The one KL of ddlab (lessons 5-8: sampler laws against data). Terms with p = 0 count 0;
    p > 0 where q = 0 gives +inf, the honest answer, never NaN. The result is clamped at 0,
    so that rounding cannot print a negative divergence. A float64 tensor.
    """
    p, q = as_float(p, torch.float64), as_float(q, torch.float64)
    if p.shape != q.shape:
        raise ValueError(f"p has shape {tuple(p.shape)} but q has shape {tuple(q.shape)}")
    for name, v in (("p", p), ("q", q)):
        if (v < 0).any() or not torch.isfinite(v).all():
            raise ValueError(f"{name} must be finite and non-negative")
    dims = p.dim() if dims is None else dims
    terms = kl_terms(p, q)
    if not dims:
        return terms
    return terms.sum(dim=list(range(p.dim() - dims, p.dim()))).clamp_min(0)


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
    p0 = check_p0(p0, rm.n)
    P = rm.transition(check_sigma_bar(sigma_bar).to(torch.float64))
    joint = P.transpose(-1, -2) * p0[:, None]            # joint[x0, x] = p0[x0] P[x, x0]
    pt = joint.sum(-2, keepdim=True)
    return torch.where(pt > 0, joint / torch.where(pt > 0, pt, torch.ones_like(pt)),
                       torch.zeros_like(joint))


# tweedie_denoiser answers only when its estimated rounding error is below this (absolute, on
# probabilities); past it, the score no longer holds the posterior to this accuracy in float64.
TWEEDIE_ATOL = 1e-10
_EPS64 = torch.finfo(torch.float64).eps


def tweedie_denoiser(rm, sigma_bar, score, x) -> torch.Tensor:
    """Discrete Tweedie: the clean-data posterior from the score at one state (lesson 2).

    ``p_{0|t}(x0 | x) = (expm(-sigma_bar Q) s(x))[x0] * expm(sigma_bar Q)[x, x0]`` where
    ``s(x)_y = p_t(y) / p_t(x)``. With the exact score this equals ``posterior(...)[:, x]``;
    nothing is clipped, so an inexact score can give small negative entries.

    Precision: the inverse transition amplifies the rounding of the score by up to
    ``max (|expm(-sigma_bar Q)| s)`` (``e^{n sigma_bar}`` for ``Uniform(n)``; ``e^{sigma_bar}``,
    largely cancelled, for ``Absorbing``), so past some noise level no float64 computation can
    recover p_{0|t} from a score. The function estimates the rounding error of every entry and
    raises ValueError, saying where the limit lies, when it exceeds ``TWEEDIE_ATOL`` = 1e-10 or
    when an intermediate overflows; it never returns a wrong distribution. ``ddlab.posterior``
    computes the same posterior from p0 at any noise level. Scores must be >= 0.
    """
    rm = as_rate_matrix(rm)
    x = as_tokens(x, rm.n, "x")
    sb = check_sigma_bar(sigma_bar).to(torch.float64)
    score = as_float(score, torch.float64)
    check_shape(score, tuple(x.shape) + (rm.n,), "score")
    if not torch.isfinite(score).all():
        raise ValueError("score must be finite")
    if (score < 0).any():
        raise ValueError(f"score must be >= 0 (it holds ratios of probabilities), got "
                         f"{score.min().item():.6g}")
    sb = broadcast(sb, x.shape, "sigma_bar", "the shape of x")
    # |expm(-sb Q)| s bounds what the rounding of s and of the product can reach (dense: a toy)
    M = torch.linalg.matrix_exp(-sb.reshape(-1, 1, 1) * rm.Q).reshape(*sb.shape, rm.n, rm.n)
    P_x = rm.transition_to(x, sb).to(torch.float64)
    amp = (M.abs() @ score[..., None])[..., 0] * P_x
    err = 4 * rm.n * _EPS64 * amp
    bad = ~torch.isfinite(err) | (err > TWEEDIE_ATOL)
    if bad.any():
        idx = tuple(bad.nonzero()[0].tolist())[:-1]
        where = float(sb[idx])
        worst = err[idx].max().item()
        how = (f"amplifies the score's rounding to an estimated error of {worst:.1e} "
               f"(> {TWEEDIE_ATOL:g})" if math.isfinite(worst) else "overflows float64")
        raise ValueError(
            f"tweedie_denoiser cannot recover p_0|t from a score at sigma_bar = {where:.6g} in "
            f"float64: expm(-sigma_bar Q) {how}{_tweedie_limit(rm)}. Use ddlab.posterior(rm, "
            f"p0, sigma_bar) for the exact posterior at this noise level")
    return rm.apply_inverse_transition(score, sb) * P_x


def _tweedie_limit(rm) -> str:
    """Where precision runs out, in words, for the structured chains (a closed form)."""
    from .rate_matrices import Absorbing, Uniform
    if isinstance(rm, Uniform):
        limit = math.log(TWEEDIE_ATOL / (8 * rm.n * _EPS64)) / rm.n
        return (f"; for Uniform({rm.n}) the amplification is e^(n sigma_bar), and precision is "
                f"lost from about sigma_bar = {limit:.3g}")
    if isinstance(rm, Absorbing):
        return ("; for Absorbing the ratios out of MASK fall like e^(-sigma_bar) and underflow "
                "float64 near sigma_bar = 700")
    return ""


__all__ = ["marginal", "concrete_score", "reverse_rate_matrix", "posterior", "tweedie_denoiser",
           "kl_divergence", "OFF_SUPPORT", "TWEEDIE_ATOL"]
