"""The likelihood bound of SEDD: DWDSE plus a prior term, and the exact NLL on toys (lesson 6).

For a score function ``s_theta`` define the model as the reverse CTMC with rates
``Q[x_i, y] s_theta(x)_{i,y}``, started from the base law ``p_base`` at t = 1. Comparing the path
of the forward process *given x0* with the model's path (the KL divergence of two CTMC path
measures) gives, for every sequence x0,

    KL(p_{t_min|0}(. | x0) || p^theta_{t_min})
        <= int_{t_min}^1 sigma(t) E_{x_t ~ p(.|x0)} sum_i DSE_i(x_t, x0, t) dt
           + KL(p_{1|0}(. | x0) || p_base)                                            (1)

which bounds ``-log p_theta(x0)`` itself as ``t_min -> 0``, or at any t_min once the
reconstruction term below is added.

where ``DSE_i = sum_{y != x_i} Q[x_i, y] (s_y - r_y log s_y + K(r_y))`` is the denoising score
entropy (``rm.score_entropy``) with the conditional ratios ``r_y = p(y | x0) / p(x_i | x0)``:
the integrand is exactly the KL rate between the reverse chain of the forward process given x0
(rates ``Q r``) and the model (rates ``Q s``). :func:`nll_bound` estimates (1) in nats per
sequence.

Three things decide how tight it is, and each is documented and measured in lesson 6:

* **Monte Carlo.** t is *stratified*: stratum j of ``num_t`` gets ``t = (j + U_j) / num_t``
  (rescaled to [t_min, 1]), and x_t one draw per t. The standard error comes from differences of
  adjacent strata (slightly conservative).
* **t_min.** The integral starts at ``t = t_min``, not 0. With the exact score the right-hand side
  of (1) then equals ``KL(p(x_{t_min} | x0) || p_{t_min})`` (plus the prior mismatch below), which tends
  to ``-log p0(x0)`` as ``sigma_bar(t_min) -> 0``; :func:`bound_limit` computes it exactly on a
  toy. (Under LogLinear, ``sigma_bar(t_min) ~ t_min`` and the gap is O(d t_min); under Geometric,
  ``sigma_bar(0) = sigma_min > 0`` and the gap stays O(d n sigma_min) even at t_min = 0.) The gap
  can go either way: averaged over x0 ~ p0 the t_min-limit is the mutual information
  ``I(x0; x_{t_min}) <= H(p0)``, so without more the "bound" may dip below the true NLL by
  ``H(x0 | x_{t_min})``. ``reconstruction=True`` adds the missing term
  ``E[-log D(x0 | x_{t_min})]`` of the final denoising step and makes (1) a true bound at any t_min.
* **The prior.** For :class:`Uniform` and any general rate matrix, ``p_base`` is the
  stationary law per token and the prior term is ``sum_i KL(P[:, x0_i] at sigma_bar(1) || pi)``,
  computed in closed form. For :class:`Absorbing`, ``p_base`` is all-MASK, and the KL to it is
  *infinite* whenever ``sigma_bar(1) < inf`` (LogLinear(eps) leaves each token unmasked with
  probability eps at t = 1). We therefore continue the forward process to ``sigma_bar = inf``,
  where it *is* all-MASK, so the prior term is exactly 0, and integrate the DWDSE over
  ``[sigma_bar(t_min), inf)`` in the masking probability ``u = 1 - e^{-sigma_bar}``
  (``d sigma_bar = du / (1 - u)``; u is t for LogLinear(0)), drawn as ``u = w^2`` with w
  stratified, which tames the variance of the low-noise end where few tokens are masked. Beyond
  ``sigma_bar(1)`` the score is evaluated at ``sigma_bar(1)`` and rescaled by the exact time
  dependence of every absorbing score, ``s_y ∝ 1 / (e^{sigma_bar} - 1)`` at a masked token. This
  extra piece is O(e^{-sigma_bar(1)}) of the total (0.1% for LogLinear(1e-3)); the model bounded
  is then the continuous-time reverse chain started all-MASK at sigma_bar = inf, not a k-step
  sampler such as ``ddlab.sampling.sample``, whose law differs by its discretisation and
  factorisation errors (lessons 5, 6, 7).

Zero ratios: the log of a ratio is clamped at ``LOG_FLOOR`` = -50 before the loss. A ratio of 0
where the data has r_y > 0 makes the true bound infinite; the floor turns that into a large
finite penalty (50 r_y nats) instead of an inf or NaN. Where r_y = 0 the floor changes nothing.
"""

from __future__ import annotations

import math

import torch

from ._checks import as_batch, as_float, as_int, as_rate_matrix, as_real, as_tokens, check_schedule
from ._numerics import kl_rows, log_expm1
from .losses import LOG_FLOOR, dwdse, stratified_stderr, stratified_times
from .rate_matrices import Absorbing
from .sampling import check_scores, denoise_probs
from .sequences import all_sequences, product_marginal



def _check_t_min(t_min) -> float:
    return as_real(t_min, "t_min (the smallest time of the integral)", 0.0, 1.0)


def prior_kl(rm, x0, sigma_bar_T) -> torch.Tensor:
    """``sum_i KL(P[:, x0_i] at sigma_bar_T || pi)`` per sequence, pi the stationary law (lesson 6).

    The prior term of the bound for a rate matrix with a unique, full-support stationary law
    (Uniform: pi uniform). For :class:`Absorbing` the bound uses no prior term (see the module
    docstring), and this function raises ValueError.
    """
    rm = as_rate_matrix(rm)
    if isinstance(rm, Absorbing):
        raise ValueError("the all-MASK prior of an absorbing chain has KL = inf at finite "
                         "sigma_bar(1); nll_bound integrates to sigma_bar = inf instead")
    x0 = as_tokens(x0, rm.n, "x0")
    P = rm.transition_from(x0, torch.as_tensor(float(sigma_bar_T), dtype=torch.float64,
                                               device=x0.device))
    kl = kl_rows(P, rm.stationary().to(P))
    return kl.reshape(x0.shape[0], -1).sum(-1) if x0.dim() > 1 else kl


def _log_scores(score_fn, rm, x_t, sb, sb_T):
    """Validated log-ratios, clamped at LOG_FLOOR; for Absorbing beyond sigma_bar(1), rescaled."""
    absorbing = isinstance(rm, Absorbing)
    sb_call = sb.clamp_max(sb_T) if absorbing else sb
    s = check_scores(score_fn(x_t, sb_call), x_t, rm.n)
    # float64 whatever the network's dtype: the absorbing weight reaches ~1e300 at the high-noise
    # end, where a float32 product would overflow
    log_s = torch.log(s.to(torch.float64)).clamp_min(LOG_FLOOR)
    if absorbing:
        # every absorbing ratio out of MASK scales as 1 / (e^{sigma_bar} - 1): move it from
        # sb_call to sb (a no-op where sb <= sigma_bar(1))
        shift = log_expm1(sb_call) - log_expm1(sb)             # (B,)
        clean = torch.arange(rm.n, device=x_t.device) != rm.mask
        where = (x_t == rm.mask)[..., None] & clean
        log_s = log_s + torch.where(where, shift[:, None, None], torch.zeros_like(log_s))
    return log_s


def nll_bound(score_fn, x0, rm, schedule, num_t=64, *, generator=None, t_min=1e-5,
              return_stderr=False, shared_t=False, reconstruction=False):
    """Upper bound on ``-log p_theta(x0)`` in nats, one per sequence: DWDSE + prior (lesson 6).

    ``x0`` is a (B, d) int64 batch; ``score_fn(x_t, sigma_bar) -> (B, d, n)`` ratios (an oracle
    or a network). The integral over t in [t_min, 1] is estimated with ``num_t`` stratified times
    per sequence, each with one draw of x_t; for Absorbing it runs on to sigma_bar = inf and the
    prior term is 0, otherwise the prior is ``prior_kl`` (module docstring). Batched over
    sequences and positions (one score_fn call of batch B per stratum) and on ``x0.device``.
    ``shared_t=True`` uses the same stratified time for every sequence of a stratum (x_t still
    drawn independently): each sequence's estimate stays unbiased, and an exact oracle, which
    computes one marginal per distinct sigma_bar, runs B times faster; errors are then correlated
    across the batch. ``reconstruction=True`` adds the term that closes the t_min gap,
    ``E_{x_{t_min} ~ p(.|x0)} [-sum_i log D_i(x0_i | x_{t_min})]`` with D the final Tweedie denoising
    step of ``ddlab.sampling.sample`` (one more draw per stratum): the result is then a true
    upper bound on ``-log`` of the law of the model *with* its denoising step, at any t_min.
    Returns a float64 tensor (B,), and with ``return_stderr`` also its Monte Carlo standard
    error (B,).
    """
    rm = as_rate_matrix(rm)
    x0 = as_batch(x0, rm.n, "x0")
    num_t = as_int(num_t, "num_t", 1)
    t_min = _check_t_min(t_min)
    check_schedule(schedule)
    device = x0.device
    B = x0.shape[0]
    f64 = dict(dtype=torch.float64, device=device)
    sb_lo = float(schedule.sigma_bar(t_min))
    sb_T = float(schedule.sigma_bar(1.0))
    absorbing = isinstance(rm, Absorbing)
    w_lo = math.sqrt(-math.expm1(-sb_lo))
    values = torch.empty(num_t, B, **f64)
    def log_score_fn(x_t, sb):
        return _log_scores(score_fn, rm, x_t, sb, sb_T)

    for j in range(num_t):
        frac = stratified_times(num_t, stratum=j, batch=1 if shared_t else B,
                                generator=generator, device=device).expand(B)
        if absorbing:
            # u = 1 - e^{-sigma_bar}, the masking probability, drawn as u = w^2 with w
            # stratified on [sqrt(u_lo), 1): density 1 / (2 w (1 - sqrt(u_lo))). Uniform u would
            # give the low-noise end (few masks, weight 1/u) a variance growing like log(1/t_min).
            one_minus_w = (1 - w_lo) * (1 - frac)
            w = 1 - one_minus_w
            v = (one_minus_w * (1 + w)).clamp_min(1e-300)              # 1 - u, without cancellation
            sb = -torch.log(v)
            weight = 2 * w * (1 - w_lo) / v                             # (d sigma_bar / du) / density
        else:
            t = t_min + (1 - t_min) * frac
            sb = schedule.sigma_bar(t).to(**f64)
            weight = (1 - t_min) * schedule.sigma(t).to(**f64)
        values[j] = dwdse(rm, log_score_fn, x0, sb, weight, generator=generator).to(torch.float64)
        if reconstruction:
            values[j] += _reconstruction(score_fn, rm, x0, sb_lo, generator)
    if not torch.isfinite(values).all():
        raise ValueError("the score entropy came out infinite or NaN; check the score function "
                         "and that the schedule's sigma is finite on [t_min, 1]")
    bound = values.mean(0)
    if not absorbing:
        bound = bound + prior_kl(rm, x0, sb_T).to(**f64)
    if not return_stderr:
        return bound
    return bound, stratified_stderr(values)


def _reconstruction(score_fn, rm, x0, sb_lo, generator):
    """One draw of ``-sum_i log D_i(x0_i | x_{t_min})``, x_{t_min} ~ p(.|x0) at sigma_bar(t_min), (B,)."""
    sb = torch.tensor(sb_lo, dtype=torch.float64, device=x0.device)
    x_eps = rm.sample_transition(x0, sb, generator=generator)
    out = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    # under absorbing noise an unmasked sequence is denoised to itself with probability 1
    if isinstance(rm, Absorbing):
        rows = (x_eps == rm.mask).any(-1)
    else:
        rows = torch.ones_like(out, dtype=torch.bool)
    if rows.any():
        probs = denoise_probs(rm, score_fn, x_eps[rows], sb_lo)
        p_x0 = torch.gather(probs, -1, x0[rows][..., None])[..., 0]
        out[rows] = -torch.log(p_x0).clamp_min(LOG_FLOOR).sum(-1).to(torch.float64)
    return out


def exact_nll(p0, x0) -> torch.Tensor:
    """``-log p0[x0]`` per sequence, float64 (B,), for a joint p0 of shape (n,)*d (lesson 6).

    ``inf`` for a sequence of probability 0.
    """
    p0 = as_float(p0, torch.float64)
    if p0.dim() < 1 or len(set(p0.shape)) != 1:
        raise ValueError(f"p0 must have shape (n,)*d, got {tuple(p0.shape)}")
    n, d = p0.shape[0], p0.dim()
    if (p0 < 0).any() or abs(p0.sum().item() - 1) > 1e-6:
        raise ValueError("p0 must be non-negative and sum to 1")
    x0 = as_batch(x0, n, "x0")
    if x0.shape[1] != d:
        raise ValueError(f"x0 has {x0.shape[1]} tokens per sequence but p0 has d = {d}")
    return -torch.log(p0.to(x0.device)[tuple(x0.T)])


def _sequence_kernel(rm, sigma_bar, x0, states):
    """q[b, j] = prod_i P[states[j, i], x0[b, i]] = p(x_t = states[j] | x0[b])."""
    P = rm.transition(torch.as_tensor(float(sigma_bar), dtype=torch.float64))
    q = torch.ones(x0.shape[0], states.shape[0], dtype=torch.float64)
    for i in range(x0.shape[1]):
        q = q * P[states[:, i][None, :], x0[:, i][:, None]]
    return q


def _exact_reconstruction(p0, x0, q_eps, kernel):
    """sum_x q_eps[b, x] (-sum_i log p(x0_i = x0[b, i] | x_eps = x)), posteriors by Bayes."""
    n, d = p0.shape[0], p0.dim()
    # joint[a, x] = p0(a) p(x | a); kernel[a, x] = p(x_eps = x | x0 = a)
    joint = p0.reshape(-1)[:, None] * kernel
    p_x = joint.sum(0)
    states = all_sequences(n, d)
    out = torch.zeros(x0.shape[0], dtype=torch.float64)
    for i in range(d):
        # post[b, x] = p(x0_i = x0[b, i] | x) = sum_{a: a_i = x0[b, i]} joint[a, x] / p(x)
        match = (states[None, :, i] == x0[:, i, None]).to(torch.float64)         # (B, N)
        post = (match @ joint) / torch.where(p_x > 0, p_x, torch.ones_like(p_x))
        out = out - torch.where(q_eps > 0, q_eps * torch.log(post), torch.zeros_like(q_eps)).sum(-1)
    return out


def bound_limit(rm, schedule, p0, x0, t_min=1e-5, reconstruction=False) -> torch.Tensor:
    """What ``nll_bound`` converges to with the exact score as num_t -> inf, per sequence.

    ``KL(p(x_eps | x0) || p_eps)`` over all n^d sequences, plus (not for Absorbing) the prior
    mismatch ``KL(p_{1|0} || pi^d) - KL(p_{1|0} || p_1)``. As ``sigma_bar(t_min) -> 0`` and
    ``sigma_bar(1) -> inf`` it tends to ``exact_nll(p0, x0)``. Exact, float64, small n^d only
    (lesson 6). ``reconstruction=True`` adds the exact denoising term
    ``E_{x_eps ~ p(.|x0)} [-sum_i log p(x0_i | x_eps)]`` (per-position posteriors by Bayes on the
    joint), as ``nll_bound(..., reconstruction=True)`` estimates it; averaged over x0 ~ p0 the
    result is then >= the entropy of p0.
    """
    rm = as_rate_matrix(rm)
    _check_t_min(t_min)
    p0 = as_float(p0, torch.float64)
    n, d = rm.n, p0.dim()
    x0 = as_batch(x0, n, "x0").cpu()
    if x0.shape[1] != d:
        raise ValueError(f"x0 has {x0.shape[1]} tokens per sequence but p0 has d = {d}")
    states = all_sequences(n, d)
    sb_lo = float(schedule.sigma_bar(t_min))
    p_eps = product_marginal(rm, p0, sb_lo).reshape(-1)
    q_eps = _sequence_kernel(rm, sb_lo, x0, states)
    out = kl_rows(q_eps, p_eps)
    if reconstruction:
        out = out + _exact_reconstruction(p0, x0, q_eps, _sequence_kernel(rm, sb_lo, states, states))
    if not isinstance(rm, Absorbing):
        sb_T = float(schedule.sigma_bar(1.0))
        q_T = _sequence_kernel(rm, sb_T, x0, states)
        p_T = product_marginal(rm, p0, sb_T).reshape(-1)
        out = out + prior_kl(rm, x0, sb_T) - kl_rows(q_T, p_T)
    return out


__all__ = ["LOG_FLOOR", "nll_bound", "exact_nll", "bound_limit", "prior_kl"]
