"""Losses for learning concrete scores, and their exact values on a toy (lessons 3, 4 and 6).

A model proposes ratios ``s(x)_y`` for the true concrete score ``p_t(y) / p_t(x)``. Every loss
here weighs the ratio into state x from state y by the forward rate ``w_xy = Q[x, y]`` (the rate
y -> x), so that ``Q[x, y] s(x)_y`` is the reverse rate x -> y; the sums run over y != x.

=====  ======================================================================================
SE     score entropy: ``E_{x ~ p_t} sum_y w_xy (s_y - rho_y log s_y + K(rho_y))``,
       ``rho_y = p_t(y) / p_t(x)``, ``K(a) = a (log a - 1)``. Needs the true marginal ratios.
ISE    implicit score entropy: ``E_{x ~ p_t} sum_y (w_xy s(x)_y - w_yx log s(y)_x)``.
       Needs no ratios, only samples of p_t, but a model evaluated at the neighbours y of x.
DSE    denoising score entropy: ``E_{x0 ~ p0, x ~ p(.|x0)} sum_y w_xy (s_y - r_y log s_y + K(r_y))``
       with the conditional ratio ``r_y = p(y | x0) / p(x | x0)``: ``rm.score_entropy``.
DWDSE  diffusion-weighted DSE: ``int_0^1 sigma(t) DSE(t) dt``, the training loss and the
       likelihood bound of lesson 6.
CSM    concrete score matching, the l2 baseline: ``E_{x ~ p_t} sum_y w_xy (s_y - rho_y)^2``.
DCSM   its denoising form ``E_{x0, x} sum_y w_xy (s_y - r_y)^2`` (trainable from samples).
=====  ======================================================================================

SE - DSE, SE - ISE and CSM - DCSM do not depend on s (lesson 3 checks this to 1e-10): the
three score-entropy losses have the same minimiser, the true concrete score, where SE is 0.

Exact expectations are sums over every x0 and every x_t of a toy state space (n states, one
token), computed in float64 from ``P = expm(sigma_bar Q)``: nothing is sampled.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._checks import as_float, as_int, as_rate_matrix, as_tokens, check_p0, check_sigma_bar
from ._numerics import K as _K
from .exact import concrete_score, marginal

KINDS = ("se", "ise", "dse", "csm", "dcsm")

# Where a Monte Carlo loss takes the log of a ratio that may be 0 (nll_bound, the MDLM bound), it
# is floored here: a large finite penalty (50 r_y nats) instead of inf or NaN where the data has
# r_y > 0, and no change where r_y = 0.
LOG_FLOOR = -50.0


# ------------------------------------------------------------------ scalar building blocks
def K(a):
    """``K(a) = a (log a - 1)`` with ``K(0) = 0``: the constant that makes score entropy >= 0."""
    return _K(as_float(a))


def score_entropy_term(s, r):
    """One score-entropy term ``s - r log s + K(r)`` for a proposed ratio s and a true ratio r.

    Elementwise, >= 0, and 0 exactly at s = r (lesson 3). It equals the Bregman divergence
    ``D_F(r, s)`` of the negative entropy ``F(u) = u log u``, and ``r * neg_log_bregman(s, r)``:
    score entropy is a Bregman divergence of -log, weighted by the true ratio.
    """
    s, r = as_float(s), as_float(r)
    return s - torch.xlogy(r, s) + K(r)


def neg_log_bregman(a, b):
    """The Bregman divergence of ``F(u) = -log u``: ``F(a) - F(b) - F'(b)(a - b) = a/b - 1 - log(a/b)``.

    Lesson 3: ``score_entropy_term(s, r) = r * neg_log_bregman(s, r)``.
    """
    a, b = as_float(a), as_float(b)
    q = a / b
    return q - 1 - torch.log(q)


def csm_term(s, r):
    """One concrete-score-matching term ``(s - r)^2`` (the l2 baseline of lesson 3)."""
    s, r = as_float(s), as_float(r)
    return (s - r) ** 2


# ----------------------------------------------------- the Monte Carlo DWDSE (toy and text)
def stratified_times(num, t_min: float = 0.0, t_max: float = 1.0, *, batch=None,
                     stratum=None, shared_offset: bool = False, generator=None,
                     dtype=torch.float64, device=None) -> torch.Tensor:
    """Stratified times on [t_min, t_max]: ``t_j = t_min + (t_max - t_min) (j + U_j) / num``.

    The one time sampler of every DWDSE estimate (toy and text training, ``nll_bound``, the MDLM
    bound; lessons 4, 6, 8, 9). Each t_j is uniform on its slice of [t_min, t_max], so every
    t_j is still U(t_min, t_max) marginally and an average over j stays unbiased, while the
    strata cover the interval evenly and the average has a lower variance than i.i.d. times.

    * ``batch=None``: shape (num,), one time per stratum (the strata *are* the batch);
      ``batch=B``: shape (num, B), num strata for each of B sequences, offsets independent.
    * ``stratum=j``: only stratum j, shape () or (B,) — for loops that draw one stratum at a time.
    * ``shared_offset=True``: one offset U for all strata (a regular grid shifted at random),
      which is what the text trainer does.
    """
    u_shape = () if shared_offset else ((num,) if stratum is None else ()) + (
        () if batch is None else (batch,))
    u = torch.rand(u_shape, generator=generator, dtype=dtype, device=device)
    if stratum is None:
        j = torch.arange(num, device=device)
        if batch is not None:
            j = j[:, None]
    else:
        j = stratum
    return t_min + (t_max - t_min) * (j + u) / num


def stratified_stderr(values: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean of one draw per stratum, values of shape (num_t, B).

    The error bar of a :func:`stratified_times` estimate (lessons 6, 8). Adjacent strata are
    paired: E[(f_a - f_b)^2] >= Var f_a + Var f_b, so ``sum_pairs (f_a - f_b)^2 / num_t^2`` is a
    (slightly conservative) estimate of the variance of the stratified mean. With an odd num_t
    the plain i.i.d. formula is used.
    """
    N = values.shape[0]
    if N < 2:
        return torch.full(values.shape[1:], math.inf, dtype=values.dtype, device=values.device)
    if N % 2:
        return values.std(0) / math.sqrt(N)
    diff = values[0::2] - values[1::2]
    return (diff ** 2).sum(0).sqrt() / N


def dwdse(rm, log_score_fn, x0, sigma_bar, weight, *, x_t=None, generator=None,
          divergence=None) -> torch.Tensor:
    """One Monte Carlo sample of the diffusion-weighted DSE per sequence, shape (B,), nats.

    ``weight_b * sum_i DSE_i(x_t, x0, sigma_bar_b)`` with ``x_t ~ p(. | x0)`` drawn by
    ``rm.sample_transition`` at ``sigma_bar_b`` (or the given ``x_t``) and the model's
    log-ratios ``log_score_fn(x_t, sigma_bar)`` of shape (B, d, n). With ``sigma_bar =
    schedule.sigma_bar(t)``, ``weight = schedule.sigma(t)`` and t uniform on [t_min, 1], the mean
    over t is an unbiased estimate of ``int_{t_min}^1 sigma(t) E[DSE_t] dt / (1 - t_min)``; other
    ways of drawing sigma_bar put their density ratio into ``weight`` (``nll_bound`` for
    absorbing noise).

    This is the single DWDSE of ddlab: toy training (lesson 4), text training (lesson 9),
    ``nll_bound`` (lesson 6) and ``mdlm.mdlm_nll_bound`` (lesson 8) all call it, and
    :func:`expected_dwdse` is its exact expectation on a toy. ``divergence(log_score, x_t, x0,
    sigma_bar)`` replaces the per-token score entropy ``rm.score_entropy`` (lesson 3 trains the
    l2 baseline DCSM through the same estimator). ``x0`` is a (B, d) batch; ``sigma_bar`` and
    ``weight`` have shape (B,) (or broadcast to it). The result has the dtype of the log-score.
    """
    sb = torch.as_tensor(sigma_bar)
    if x_t is None:
        x_t = rm.sample_transition(x0, sb[..., None], generator=generator)
    log_s = log_score_fn(x_t, sb)
    per_token = rm.score_entropy if divergence is None else divergence
    se = per_token(log_s, x_t, x0, sb[..., None].to(log_s.dtype))
    return torch.as_tensor(weight).to(se.dtype) * se.sum(-1)


def dcsm(rm, log_score, x, x0, sigma_bar) -> torch.Tensor:
    """Denoising concrete score matching per token, shape S (lesson 3).

    ``sum_{y != x} Q[x, y] (s_y - r_y)^2`` with ``s = exp(log_score)`` and the conditional ratios
    ``r = rm.conditional_ratios(x, x0, sigma_bar)``. Its expectation equals the CSM loss plus a
    constant, because ``E[r_y | x_t = x] = p_t(y) / p_t(x)``. The l2 counterpart of
    ``rm.score_entropy`` (same arguments after ``rm``), for :func:`dwdse`'s ``divergence``.
    """
    rm = as_rate_matrix(rm)
    log_score = as_float(log_score)
    x = as_tokens(x, rm.n, "x")
    if tuple(log_score.shape) != tuple(x.shape) + (rm.n,):
        raise ValueError(f"log_score has shape {tuple(log_score.shape)}, expected "
                         f"{tuple(x.shape) + (rm.n,)}")
    r = rm.conditional_ratios(x, x0, sigma_bar).to(log_score.dtype)
    w = rm.rates_into(x).to(log_score.dtype).scatter(-1, x[..., None], 0.0)
    return (w * (torch.exp(log_score) - r) ** 2).sum(-1)


# ------------------------------------------------------------ exact expectations (toys)
def true_score_table(rm, p0, sigma_bar) -> torch.Tensor:
    """The concrete score of p_t as a table ``S[x, y] = p_t(y) / p_t(x)``, float64 (lesson 3).

    ``ddlab.concrete_score`` of ``marginal(rm, p0, sigma_bar)``: shape (n, n) for a scalar
    sigma_bar, (T, n, n) for shape (T,). Rows at states with ``p_t(x) = 0`` are never visited and
    carry zero weight in every expected loss; they hold 1 (``off_support="one"``, the one policy
    of ``ddlab.exact``).
    """
    rm = as_rate_matrix(rm)
    return concrete_score(marginal(rm, check_p0(p0, rm.n), _check_sb(sigma_bar)),
                          off_support="one")


def score_table(rm, score, sigma_bar) -> torch.Tensor:
    """Evaluate a score function at every state: ``S[..., x, y]``, shape (n, n) or (T, n, n).

    ``score`` is a callable ``score_fn(x_t, sigma_bar)`` of the agreed signature (x_t of shape
    (B, 1)), returning ratios or log-ratios (e.g. ``model.log_score``): the table holds whatever
    it returns. Lesson 4 uses this to hold a network against ``true_score_table``.
    """
    rm = as_rate_matrix(rm)
    sb = _check_sb(sigma_bar)
    n = rm.n
    T = max(sb.numel(), 1)
    x = torch.arange(n).repeat(T)[:, None]
    out = score(x, sb.reshape(-1).repeat_interleave(n) if sb.dim() else sb.expand(n))
    out = as_float(out)
    if tuple(out.shape) != (T * n, 1, n):
        raise ValueError(f"the score function returned shape {tuple(out.shape)} for x_t of shape "
                         f"({T * n}, 1); expected ({T * n}, 1, {n})")
    out = out.reshape(T, n, n)
    return out if sb.dim() else out[0]


def expected_loss(rm, kind: str, score, p0, sigma_bar, log: bool = False) -> torch.Tensor:
    """The exact expected loss of a score at noise level sigma_bar, by enumeration (lesson 3).

    ``kind`` is one of "se", "ise", "dse", "csm", "dcsm" (see the module docstring). ``score``
    is a ratio table ``s[x, y]`` of shape (n, n) (or (T, n, n) with sigma_bar of shape (T,)),
    or a score function ``score_fn(x_t, sigma_bar)``; ``log=True`` says it holds log-ratios.
    Entries with zero weight (y = x, and y with ``Q[x, y] = 0``) are ignored. The expectation
    is over ``x0 ~ p0`` and ``x ~ p(. | x0)`` exactly: a float64 scalar, or shape (T,).
    Differentiable in a table with ``requires_grad``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rm = as_rate_matrix(rm)
    p0 = check_p0(p0, rm.n)
    sb = _check_sb(sigma_bar)
    n = rm.n
    if callable(score):
        table = score_table(rm, score, sb)
    else:
        table = as_float(score)
    L, S = _log_and_ratio(table, sb, n, log)

    P = rm.transition(sb).to(torch.float64)          # P[..., y, x0]
    pt = P @ p0                                       # p_t[..., x]
    W = rm.Q.clone().fill_diagonal_(0.0)              # W[x, y] = Q[x, y], y != x
    on = W > 0

    if kind in ("se", "csm", "ise"):
        safe = torch.where(pt > 0, pt, torch.ones_like(pt))
        rho = pt[..., None, :] / safe[..., :, None]  # rho[x, y] = p_t(y) / p_t(x)
        if kind == "se":
            terms = S - _xl(rho, L) + K(rho)
        elif kind == "csm":
            terms = (S - rho) ** 2
        else:
            # w_xy s(x)_y - w_yx log s(y)_x: the second part reads the transposed log table
            zero = torch.zeros((), dtype=torch.float64)
            terms = (torch.where(on, W * S, zero)
                     - torch.where(on.T, W.T * L.transpose(-1, -2), zero))
            per_x = terms.sum(-1)
            return (torch.where(pt > 0, pt * per_x, torch.zeros_like(per_x))).sum(-1)
        per_x = (torch.where(on, W * terms, torch.zeros_like(terms))).sum(-1)
        return (torch.where(pt > 0, pt * per_x, torch.zeros_like(per_x))).sum(-1)

    # Denoising losses: joint over (x0, x); r[x0, x, y] = P[y, x0] / P[x, x0].
    Pt = P.transpose(-1, -2)                          # Pt[..., x0, y] = p(y | x0)
    joint = Pt * p0[:, None]                          # joint[x0, x] = p0(x0) p(x | x0)
    safe = torch.where(Pt > 0, Pt, torch.ones_like(Pt))
    r = Pt[..., :, None, :] / safe[..., :, :, None]   # (.., x0, x, y)
    Lx, Sx = L[..., None, :, :], S[..., None, :, :]
    terms = Sx - _xl(r, Lx) + K(r) if kind == "dse" else (Sx - r) ** 2
    per = (torch.where(on, W * terms, torch.zeros_like(terms))).sum(-1)     # (.., x0, x)
    return (torch.where(joint > 0, joint * per, torch.zeros_like(per))).sum((-1, -2))


def loss_floor(rm, kind: str, p0, sigma_bar) -> torch.Tensor:
    """The Bayes-optimal value: ``expected_loss(kind, true_score_table(...))`` (lesson 3).

    0 for SE and CSM; for DSE it is what no model can beat, ``C_DSE = E[sum w K(r)] -
    E[sum w K(rho)] >= 0``; for ISE it is ``-E[sum w K(rho)]``; for DCSM the conditional variance
    of r.
    """
    return expected_loss(rm, kind, true_score_table(rm, p0, sigma_bar), p0, sigma_bar)


def loss_constants(rm, p0, sigma_bar) -> dict:
    """The score-independent gaps ``SE - DSE``, ``SE - ISE`` and ``CSM - DCSM`` (lesson 3).

    They are minus the floors of DSE, ISE and DCSM (SE and CSM are 0 at the true score).
    """
    return {"se-dse": -loss_floor(rm, "dse", p0, sigma_bar),
            "se-ise": -loss_floor(rm, "ise", p0, sigma_bar),
            "csm-dcsm": -loss_floor(rm, "dcsm", p0, sigma_bar)}


def expected_dwdse(rm, schedule, score, p0, num_t: int = 64, t_min: float = 1e-5,
                   t_max: float = 1.0, log: bool = False) -> torch.Tensor:
    """``int_{t_min}^{t_max} sigma(t) E[DSE_t] dt``, exact in x0 and x_t, Gauss-Legendre in t.

    ``score`` is a score function of the agreed signature (``log=True``: one returning
    log-ratios, e.g. ``model.log_score``); it is called once on all n states at every node. ``num_t`` Gauss-Legendre nodes on [t_min, t_max]; the integrand is smooth in t for
    LogLinear and Geometric schedules, and 64 nodes give ~1e-8 relative accuracy on the
    floors of lesson 4. Returns a float64 scalar, in nats per token (lesson 4).
    """
    t, w = _gauss_legendre(num_t, t_min, t_max)
    sb = schedule.sigma_bar(t)
    per_t = expected_loss(rm, "dse", score, p0, sb, log=log)
    return (w * schedule.sigma(t) * per_t).sum()


def dwdse_floor(rm, schedule, p0, num_t: int = 64, t_min: float = 1e-5,
                t_max: float = 1.0) -> torch.Tensor:
    """``expected_dwdse`` at the true scores: the lowest DWDSE any model can reach (lesson 4).

    For Absorbing with LogLinear(eps) it has the closed form
    ``(1 - eps) (t_max - t_min) H(p0)``: the DSE floor at noise sigma_bar is
    ``e^{-sigma_bar} H(p0)`` and ``sigma(t) e^{-sigma_bar(t)} = 1 - eps``.
    """
    t, w = _gauss_legendre(num_t, t_min, t_max)
    sb = schedule.sigma_bar(t)
    per_t = loss_floor(rm, "dse", p0, sb)
    return (w * schedule.sigma(t) * per_t).sum()


# ---------------------------------------------------------------------------- helpers
def _xl(r, L):
    """``r * L`` with 0 where r == 0 (so a zero ratio with log-score -inf contributes 0)."""
    return torch.where(r > 0, r * L, torch.zeros((), dtype=L.dtype))


def _log_and_ratio(table, sb, n, log):
    want = (n, n) if sb.dim() == 0 else (sb.shape[0], n, n)
    if tuple(table.shape) != want:
        raise ValueError(f"the score table has shape {tuple(table.shape)}, expected {want} "
                         f"(for sigma_bar of shape {tuple(sb.shape)} and n = {n})")
    table = table.to(torch.float64)
    if torch.isnan(table).any():
        raise ValueError("the score table holds NaN")
    if log:
        if (table == float("inf")).any():
            raise ValueError("the log-score table holds +inf")
        return table, torch.exp(table)
    if not torch.isfinite(table).all() or (table < 0).any():
        bad = (~torch.isfinite(table) | (table < 0)).nonzero()[0].tolist()
        raise ValueError(f"ratios must be finite and >= 0, got {table[tuple(bad)].item()!r} "
                         f"at index {tuple(bad)} (pass log=True if the score holds log-ratios)")
    return torch.log(table), table


def _check_sb(sigma_bar):
    sb = check_sigma_bar(sigma_bar).to(torch.float64)
    if sb.dim() > 1:
        raise ValueError(f"sigma_bar must be a scalar or of shape (T,), got shape {tuple(sb.shape)}")
    if sb.numel() and (sb == 0).any():
        raise ValueError("sigma_bar must be > 0: at sigma_bar = 0 nothing has moved and the "
                         "conditional ratios p(y|x0)/p(x|x0) are infinite")
    return sb


def _gauss_legendre(num_t, t_min, t_max):
    num_t = as_int(num_t, "num_t", 1)
    if not (0 <= t_min < t_max <= 1):
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min = {t_min!r}, t_max = {t_max!r}")
    u, w = np.polynomial.legendre.leggauss(num_t)
    half = (t_max - t_min) / 2
    t = torch.as_tensor(t_min + half * (u + 1), dtype=torch.float64)
    return t, torch.as_tensor(half * w, dtype=torch.float64)


__all__ = ["KINDS", "K", "score_entropy_term", "neg_log_bregman", "csm_term",
           "stratified_times", "stratified_stderr", "dwdse", "LOG_FLOOR", "dcsm", "true_score_table", "score_table",
           "expected_loss", "loss_floor", "loss_constants", "expected_dwdse", "dwdse_floor"]
