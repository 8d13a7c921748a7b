"""Masked diffusion (MDLM) as absorbing SEDD, numerically (lesson 8).

For the absorbing process (MASK = n - 1) a token survives to total noise sigma_bar with
probability ``alpha = exp(-sigma_bar)``; under ``LogLinear`` that is ``alpha(t) = 1 - (1-eps) t``.
MDLM (Sahoo et al. 2024) trains a *denoiser* ``p_theta(x0_i | x_t)`` over the clean tokens with
the continuous-time weighted cross-entropy

    L_MDLM(x0) = int_0^1 w(t) E_{x_t | x0} [ sum_{i : x_t,i = MASK} -log p_theta(x0_i | x_t) ] dt,
    w(t) = -alpha'(t) / (1 - alpha(t)) = sigma(t) e^{-sigma_bar} / (1 - e^{-sigma_bar})
         = sigma(t) / (e^{sigma_bar(t)} - 1),

and samples ancestrally: a masked token at t stays masked at s < t with probability
``(1 - alpha_s) / (1 - alpha_t)`` and is otherwise revealed as a draw from ``p_theta``.

SEDD learns ratios instead. At a masked position the exact ratios are
``s_y = p_t(x with x_i = y) / p_t(x) = p_{0|t}(y | x_t) / (e^{sigma_bar} - 1)`` (lesson 2's
Tweedie formula for the absorbing chain), so a denoiser *is* a score:
``s_y = r p_theta(y | x_t)`` with ``r = 1 / (e^{sigma_bar} - 1)``. Put into the per-token
score entropy ``sum_y s_y - r log s_{x0} + K(r)``:

    sum_y s_y      = r                          (p_theta sums to one)
    -r log s_{x0}  = -r log r - r log p_theta(x0 | x_t)
    K(r)           = r log r - r
    total          = -r log p_theta(x0 | x_t)   (the constant r - r log r + r log r - r is 0)

and ``sigma(t) r = w(t)``: the DWDSE integrand *is* the MDLM integrand, term by term, with
constant 0. Dropping K(r) (it has no gradient) leaves the constant ``sigma(t) r (1 - log r)`` per
masked token (:func:`score_entropy_offset`). The Tweedie step of the absorbing chain with this
score is exactly MDLM's ancestral step (tests hold them equal to 1e-12).

Shapes: ``x_t``, ``x0`` are (B, d) int64; a denoiser returns ``probs`` (B, d, n) over the clean
tokens (entry MASK is 0); a denoiser function is ``denoiser_fn(x_t, sigma_bar) -> probs``.
"""

from __future__ import annotations

import math

import torch

from ._checks import (as_float, as_int, as_real, as_tokens, check_clamp, check_schedule,
                      check_shape, check_sigma_bar, check_time, per_sequence_sigma_bar)
from ._numerics import log_expm1
from .losses import LOG_FLOOR, dwdse, stratified_stderr, stratified_times
from .rate_matrices import Absorbing, sample_categorical
from .sampling import EvaluationCache, mdlm_step_probs


def _check_batch(x, n: int, name: str) -> torch.Tensor:
    x = as_tokens(x, n, name)
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (B, d), got {tuple(x.shape)}")
    return x


def _check_probs(probs, x_t: torch.Tensor, n: int, name: str = "probs") -> torch.Tensor:
    probs = as_float(probs)
    check_shape(probs, tuple(x_t.shape) + (n,), name)
    if not torch.isfinite(probs).all() or (probs < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    return probs


# ------------------------------------------------------------------------------ the loss


def mdlm_weight(schedule, t) -> torch.Tensor:
    """``w(t) = sigma(t) / (e^{sigma_bar(t)} - 1) = -alpha'(t) / (1 - alpha(t))`` (lesson 8).

    For LogLinear(eps), ``alpha = 1 - (1 - eps) t`` and the weight is exactly ``1 / t``.
    Needs t > 0 (the weight is infinite at t = 0).
    """
    t = check_time(t)
    if (t == 0).any():
        raise ValueError("t must be > 0: the MDLM weight sigma(t) / (e^sigma_bar(t) - 1) is "
                         "infinite at t = 0")
    return schedule.sigma(t) / torch.expm1(schedule.sigma_bar(t))


def mdlm_loss(log_probs, x_t, x0, weight) -> torch.Tensor:
    """MDLM's weighted cross-entropy per sequence, shape (B,) (lesson 8).

    ``weight[b] * sum_{i : x_t[b, i] = MASK} -log_probs[b, i, x0[b, i]]``, with ``log_probs``
    (B, d, n) the denoiser's log-probabilities over clean tokens and ``weight`` the value of
    :func:`mdlm_weight` at each sequence's t (scalar or (B,)). Unmasked positions contribute 0.
    Follows the dtype of ``log_probs``.
    """
    log_probs = as_float(log_probs)
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must have shape (B, d, n), got {tuple(log_probs.shape)}")
    n = log_probs.shape[-1]
    mask = n - 1
    x_t = _check_batch(x_t, n, "x_t")
    x0 = _check_batch(x0, n, "x0")
    check_shape(log_probs, tuple(x_t.shape) + (n,), "log_probs")
    if x0.shape != x_t.shape:
        raise ValueError(f"x0 has shape {tuple(x0.shape)} but x_t has {tuple(x_t.shape)}")
    if (x0 == mask).any():
        raise ValueError("x0 holds the MASK token; clean data never contains MASK")
    if ((x_t != mask) & (x_t != x0)).any():
        raise ValueError("x_t has an unmasked token that differs from x0; under absorbing noise "
                         "a token is either kept or masked")
    w = as_float(weight, log_probs.dtype)
    if w.dim() > 1 or (w.dim() == 1 and w.shape[0] not in (1, x_t.shape[0])):
        raise ValueError(f"weight must be a scalar or of shape ({x_t.shape[0]},), "
                         f"got shape {tuple(w.shape)}")
    lp = torch.gather(log_probs, -1, x0[..., None])[..., 0]
    masked = x_t == mask
    if not torch.isfinite(lp[masked]).all():
        raise ValueError("log_probs gives -inf (probability 0) to a true token at a masked "
                         "position: the cross-entropy is infinite")
    ce = torch.where(masked, -lp, torch.zeros_like(lp)).sum(-1)
    return w * ce


def log_score_from_denoiser(log_probs, x_t, sigma_bar) -> torch.Tensor:
    """SEDD log-ratios from a denoiser: ``log s_y = log p(y | x_t) - log(e^{sigma_bar} - 1)``.

    At masked positions, for clean y; the MASK entry is log 1 = 0. At unmasked positions every
    entry is 0: the absorbing chain has no reverse move out of a clean token, so those ratios
    are multiplied by a zero rate in the loss and in the sampler (lesson 8). Shape (B, d, n).
    """
    log_probs = as_float(log_probs)
    n = log_probs.shape[-1]
    x_t = _check_batch(x_t, n, "x_t")
    check_shape(log_probs, tuple(x_t.shape) + (n,), "log_probs")
    sb = per_sequence_sigma_bar(sigma_bar, x_t.shape[0], positive=True).to(log_probs.dtype)
    ls = log_probs - log_expm1(sb)[..., None]
    ls = ls.clone()
    ls[..., n - 1] = 0.0
    masked = (x_t == n - 1)[..., None]
    return torch.where(masked, ls, torch.zeros_like(ls))


def score_from_denoiser(probs, x_t, sigma_bar) -> torch.Tensor:
    """``s_y = p(y | x_t) / (e^{sigma_bar} - 1)`` at masked positions, 1 elsewhere (lesson 8)."""
    probs = as_float(probs)
    n = probs.shape[-1]
    x_t = _check_batch(x_t, n, "x_t")
    probs = _check_probs(probs, x_t, n)
    sb = per_sequence_sigma_bar(sigma_bar, x_t.shape[0], positive=True).to(probs.dtype)
    s = probs / torch.expm1(sb)[..., None]
    s = s.clone()
    s[..., n - 1] = 1.0
    return torch.where((x_t == n - 1)[..., None], s, torch.ones_like(s))


def denoiser_from_score(score, x_t, sigma_bar) -> torch.Tensor:
    """The inverse map: ``p(y | x_t) = s_y (e^{sigma_bar} - 1)`` at masked positions (lesson 8).

    This is the discrete Tweedie formula of the absorbing chain. At unmasked positions the
    result is the point mass on the observed token (a clean token is the clean token). MASK
    gets probability 0. Shape (B, d, n), in the dtype of ``score``.
    """
    score = as_float(score)
    n = score.shape[-1]
    x_t = _check_batch(x_t, n, "x_t")
    check_shape(score, tuple(x_t.shape) + (n,), "score")
    sb = per_sequence_sigma_bar(sigma_bar, x_t.shape[0], positive=True).to(score.dtype)
    p = score * torch.expm1(sb)[..., None]
    p = p.clone()
    p[..., n - 1] = 0.0
    onehot = torch.nn.functional.one_hot(x_t.clamp_max(n - 2), n).to(score.dtype)
    return torch.where((x_t == n - 1)[..., None], p, onehot)


def denoiser_fn_from_score_fn(score_fn, n: int):
    """Wrap a SEDD score function as an MDLM denoiser function ``(x_t, sigma_bar) -> probs``.

    With ``ddlab.exact_score_fn(p0, Absorbing(n))`` this is the exact per-token posterior
    ``p_{0|t}(x0_i | x_t)``, each masked row summing to one.
    """
    def denoiser_fn(x_t, sigma_bar):
        x_t = _check_batch(x_t, n, "x_t")
        sb = check_sigma_bar(sigma_bar, dtype=torch.float64)
        sb = torch.broadcast_to(sb, x_t.shape[:1]) if sb.dim() == 0 else sb
        return denoiser_from_score(score_fn(x_t, sb), x_t, sb)
    return denoiser_fn


def score_entropy_offset(sigma_bar) -> torch.Tensor:
    """``r (1 - log r)`` with ``r = 1 / (e^{sigma_bar} - 1)`` (lesson 8).

    Per masked token: score entropy *without* its constant K(r), evaluated at the score built
    from a normalised denoiser, minus MDLM's ``-r log p(x0)``. With K(r) included (as
    ``rm.score_entropy`` does) the offset is exactly 0.
    """
    sb = check_sigma_bar(sigma_bar)
    if (sb == 0).any():
        raise ValueError("sigma_bar must be > 0")
    r = 1.0 / torch.expm1(sb)
    return r * (1.0 - torch.log(r))


# ------------------------------------------------------------------------------ the sampler


def mdlm_sample(schedule, denoiser_fn, batch: int, d: int, n: int, steps: int, *, t_min=1e-5,
                clamp=None, generator=None, cache: bool = False, return_stats: bool = False,
                device=None):
    """MDLM's ancestral sampler, from all-MASK to clean tokens (lessons 8 and 10).

    Time grid ``t_k`` linear from 1 to ``t_min`` in ``steps`` steps, then one last step from
    ``sigma_bar(t_min)`` to 0, which reveals every token still masked (as ``ddlab.sampling.sample``
    does with ``denoise=True``). ``clamp = (positions, values)`` as in ``ddlab.sampling.sample``
    pins those positions (prompting, infilling). Returns (batch, d) int64 with no MASK left.

    ``cache=True`` is the caching sampler: a step that reveals nothing leaves x_t as it was, so a
    *time-agnostic* denoiser would return what it returned before, and the call is skipped (per
    sequence: only the sequences that changed are given to ``denoiser_fn``). The law is then
    unchanged (``ddlab.sampling.exact_sampler_distribution(..., cache=True)`` is its exact twin),
    and one sequence costs at most ``min(steps, d) + 1`` evaluations whatever the number of steps
    (``ddlab.sampling.expected_evaluations`` is the mean). A denoiser that reads sigma_bar is
    time-dependent: caching then reuses an output computed at an earlier time and changes the law.
    ``return_stats`` also returns ``{"network_calls", "evaluations", "steps"}`` (calls of
    ``denoiser_fn``, sequences given to it, steps). ``device``: where the tokens live (default:
    the generator's device, else CPU).
    """
    steps, batch = as_int(steps, "steps", 1), as_int(batch, "batch", 1)
    d, n = as_int(d, "d", 1), as_int(n, "n", 2)
    t_min = as_real(t_min, "t_min", 0.0, 1.0)
    check_schedule(schedule)
    if not isinstance(cache, bool):
        raise ValueError(f"cache must be True or False, got {cache!r}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    x = torch.full((batch, d), n - 1, dtype=torch.long, device=device)
    clamp = check_clamp(clamp, batch, d, n - 1, device)    # clean tokens only
    pos, val = ((torch.zeros_like(x, dtype=torch.bool), torch.zeros_like(x))
                if clamp is None else clamp)
    ts = torch.linspace(1.0, t_min, steps + 1, dtype=torch.float64)
    sbs = [schedule.sigma_bar(t).to(torch.float64) for t in ts] + [torch.tensor(0.0, dtype=torch.float64)]
    model = EvaluationCache(denoiser_fn, cache)
    for k in range(len(sbs) - 1):
        x = torch.where(pos, val, x)
        sb_t = sbs[k].to(device).expand(batch)
        out, _ = model(x, sb_t)
        probs = as_float(out, torch.float64)
        step = mdlm_step_probs(probs, x, sb_t, sbs[k + 1].to(device))
        x = sample_categorical(step, generator)
    x = torch.where(pos, val, x)
    if return_stats:
        return x, {**model.stats(), "steps": len(sbs) - 1}
    return x


def mdlm_nll_bound(schedule, denoiser_fn, x0, n: int, num_t: int = 64, *, t_min: float = 1e-5,
                   generator=None, return_stderr: bool = False):
    """MDLM's continuous-time bound on -log p(x0) per sequence, by Monte Carlo (lesson 8).

    ``int_{t_min}^1 w(t) E_{x_t | x0}[ sum_masked -log p_theta(x0_i | x_t) ] dt`` with stratified
    t (one uniform draw in each of ``num_t`` equal slices of [t_min, 1]) and one x_t per t, for
    the absorbing chain on n states (MASK = n - 1). MDLM treats t = 1 as all-MASK; LogLinear(eps)
    leaves a fraction eps unmasked there, so this omits a prior term of order d eps log n (and the
    slice [0, t_min], of order t_min). Returns (B,) nats (and the Monte Carlo standard error).

    It is computed by the library's one DWDSE estimator, ``losses.dwdse``, with the denoiser
    turned into a score by :func:`log_score_from_denoiser`: the module docstring shows the two
    integrands are equal term by term, and tests hold this against :func:`mdlm_loss` directly.
    """
    rm = Absorbing(n)
    x0 = _check_batch(x0, n, "x0")
    num_t = as_int(num_t, "num_t", 1)
    t_min = as_real(t_min, "t_min", 0.0, 1.0)
    check_schedule(schedule)
    t = stratified_times(num_t, t_min, batch=x0.shape[0], generator=generator)   # (num_t, B)
    log_score_fn = _denoiser_as_log_score(denoiser_fn, x0, n)
    terms = torch.stack([dwdse(rm, log_score_fn, x0, schedule.sigma_bar(t[k]).to(torch.float64),
                               schedule.sigma(t[k]) * (1 - t_min), generator=generator)
                         for k in range(num_t)])                  # (num_t, B)
    est = terms.mean(0)
    if return_stderr:
        return est, stratified_stderr(terms)
    return est


def _denoiser_as_log_score(denoiser_fn, x0, n: int):
    """The log-ratios the MDLM bounds feed to ``losses.dwdse``: the denoiser as a SEDD score.

    With them the DWDSE integrand is MDLM's weighted cross-entropy, term by term (lesson 8).
    ``x0`` is the batch the score function will be called for (the check reads its tokens).
    """
    def log_score_fn(x_t, sb):
        log_p = torch.log(as_float(denoiser_fn(x_t, sb), torch.float64).clamp_min(0))
        at_x0 = torch.gather(log_p, -1, x0[..., None])[..., 0]
        if not torch.isfinite(at_x0[x_t == n - 1]).all():
            raise ValueError("the denoiser gives probability 0 to a true token at a masked "
                             "position: the cross-entropy is infinite")
        # probability 0 at a wrong token is a ratio 0 whose target r_y is 0 too: its log is
        # floored like nll_bound's (the loss changes by e^-50 r per such entry)
        return log_score_from_denoiser(log_p.clamp_min(LOG_FLOOR), x_t, sb)
    return log_score_fn


__all__ = [
    "mdlm_weight", "mdlm_loss", "log_score_from_denoiser", "score_from_denoiser",
    "denoiser_from_score", "denoiser_fn_from_score_fn", "score_entropy_offset",
    "mdlm_step_probs", "mdlm_sample", "mdlm_nll_bound",
]


# ------------------------------------------------------------------ lesson 8's figures and slider


def smoothed_denoiser_fn(denoiser_fn, n: int, mix: float = 0.3):
    """Lesson 8's deliberately imperfect model: ``(1 - mix) * denoiser + mix * uniform``.

    The uniform part is over the ``n - 1`` clean tokens (MASK keeps probability 0), so every
    clean token has probability at least ``mix / (n - 1)``: its cross-entropy is finite
    everywhere, and it is *not* the exact denoiser (SEDD's and MDLM's integrands must agree for
    any normalised denoiser, not only the exact one).
    """
    mix = as_real(mix, "mix", 0.0, 1.0)
    flat = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
    flat[n - 1] = 0.0

    def smoothed(x_t, sigma_bar):
        return (1 - mix) * denoiser_fn(x_t, sigma_bar) + mix * flat
    return smoothed


def expected_integrands(schedule, denoiser_fn, p0, t) -> dict:
    """SEDD's and MDLM's loss integrands at times t, averaged exactly over the data (lesson 8).

    For the absorbing chain on ``n = p0.shape[0]`` states (MASK = n - 1) and a joint ``p0`` of
    shape (n,)*d with no mass on MASK, by enumeration of every x0 in the support and every x_t
    with ``p(x_t | x0) > 0`` (no Monte Carlo):

    * ``sedd``: ``E sigma(t) sum_i DSE_i`` with the denoiser turned into a score
      (:func:`log_score_from_denoiser`), through the library's one estimator ``losses.dwdse``;
    * ``mdlm``: ``E w(t) sum_{masked i} -log p_theta(x0_i | x_t)`` (:func:`mdlm_loss`);
    * ``sedd_without_K``: ``sedd`` plus ``sigma(t) score_entropy_offset`` per masked token, the
      loss that drops the constant K(r);
    * ``weight``: :func:`mdlm_weight` at t.

    Returns a dict of float64 tensors of the shape of ``t`` (a 1-D grid or a scalar) and ``t``.
    A denoiser's zero at a wrong token is floored at ``LOG_FLOOR`` like ``mdlm_nll_bound``.
    """
    from .sequences import all_sequences
    p0 = as_float(p0, torch.float64)
    n, d = p0.shape[0], p0.dim()
    if len(set(p0.shape)) != 1 or n < 2:
        raise ValueError(f"p0 must have shape (n,)*d with n >= 2, got {tuple(p0.shape)}")
    rm = Absorbing(n)
    t = check_time(t).to(torch.float64)
    scalar = t.dim() == 0
    ts = t.reshape(-1)
    if (ts == 0).any():
        raise ValueError("t must be > 0: the weights are infinite at t = 0")
    states = all_sequences(n, d)
    flat = p0.reshape(-1)
    x0s, w0 = states[flat > 0], flat[flat > 0]
    if (x0s == n - 1).any():
        raise ValueError("p0 puts mass on a sequence holding MASK; clean data never contains MASK")
    out = {k: torch.empty(ts.shape[0], dtype=torch.float64)
           for k in ("sedd", "mdlm", "sedd_without_K", "weight")}
    for k, tk in enumerate(ts):
        sb = schedule.sigma_bar(tk).to(torch.float64)
        P = rm.transition(sb)                                          # P[y, x] = p(y | x)
        q = torch.ones(x0s.shape[0], states.shape[0], dtype=torch.float64)
        for i in range(d):
            q = q * P[states[:, i][None, :], x0s[:, i][:, None]]
        b, j = (q > 0).nonzero(as_tuple=True)
        pair_w = w0[b] * q[b, j]
        x_t, x0 = states[j], x0s[b]
        log_p = torch.log(as_float(denoiser_fn(states, sb.expand(states.shape[0])),
                                   torch.float64).clamp_min(0)).clamp_min(LOG_FLOOR)[j]
        sb_b = sb.expand(x_t.shape[0])
        sig = schedule.sigma(tk).to(torch.float64)
        sedd = dwdse(rm, lambda x, s: log_score_from_denoiser(log_p, x, s), x0, sb_b, sig, x_t=x_t)
        ce = mdlm_loss(log_p, x_t, x0, mdlm_weight(schedule, tk))
        offset = sig * score_entropy_offset(sb) * (x_t == n - 1).sum(-1)
        out["sedd"][k] = (pair_w * sedd).sum()
        out["mdlm"][k] = (pair_w * ce).sum()
        out["sedd_without_K"][k] = (pair_w * (sedd + offset)).sum()
        out["weight"][k] = mdlm_weight(schedule, tk)
    if scalar:
        out = {k: v[0] for k, v in out.items()}
    out["t"] = t
    return out


def plot_loss_integrands(schedule, denoiser_fn, p0, t, ax=None):
    """Lesson 8's figure: SEDD's, MDLM's and the K-free integrand against t, on a symlog axis.

    Draws the three curves of :func:`expected_integrands` on ``ax`` (a new course figure when
    None) and returns ``(fig, curves)``; the K-free loss is negative at small t, hence symlog.
    """
    from .plotting import figure
    curves = expected_integrands(schedule, denoiser_fn, p0, t)
    if ax is None:
        fig, ax = figure()
    else:
        fig = ax.figure
    tt = curves["t"].reshape(-1).numpy()
    for key, label, style in (("sedd", "SEDD (score entropy)", "-"),
                              ("mdlm", "MDLM (weighted CE)", "o"),
                              ("sedd_without_K", "SEDD without K(r)", "--")):
        ax.plot(tt, curves[key].reshape(-1).numpy(), style, label=label, ms=4)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("time $t$")
    ax.set_ylabel(r"loss integrand $\mathbb{E}$ [nats per unit $t$]")
    ax.legend()
    return fig, curves


__all__ += ["smoothed_denoiser_fn", "expected_integrands", "plot_loss_integrands"]


# ------------------------------------------------------------------ lesson 10: the exact bound
#
# Under absorbing noise x_t given x0 is x0 with a random set M of positions masked, each
# independently with probability 1 - alpha: 2^d patterns, pattern M with probability
# (1 - alpha)^|M| alpha^(d - |M|). Enumerating them gives every expectation over x_t exactly.


def masking_patterns(d: int) -> torch.Tensor:
    """All 2^d subsets of d positions as a (2^d, d) bool tensor, row j the binary digits of j.

    The masking patterns of lesson 10: x_t given x0 is x0 with one of them masked."""
    from .sequences import all_sequences
    return all_sequences(2, as_int(d, "d", 1)).bool()


def exact_integrand_moments(denoiser_fn, x0, n: int, sigma_bar):
    """``E[S]`` and ``E[S^2]`` for ``S = sum_i DSE_i(x_t, x0, sigma_bar)``, x_t ~ p(. | x0) (lesson 10).

    S is the score entropy of the denoiser read as a SEDD score, the quantity ``mdlm_nll_bound``
    draws one sample of per time (through ``losses.dwdse``); for a normalised denoiser
    ``S = r sum_{masked i} -log p_theta(x0_i | x_t)`` with ``r = 1 / (e^{sigma_bar} - 1)``.
    Exact: the expectation runs over the 2^d masking patterns of each x0, each with its
    probability. ``x0`` (B, d) without MASK; ``sigma_bar`` > 0, a scalar or shape (T,); returns
    ``(m1, m2)``, float64 of shape (B,) or (T, B). One denoiser call on T * B * 2^d sequences.
    """
    rm = Absorbing(as_int(n, "n", 2))
    x0 = _check_batch(x0, n, "x0")
    if (x0 == n - 1).any():
        raise ValueError("x0 holds the MASK token; clean data never contains MASK")
    sb = check_sigma_bar(sigma_bar, dtype=torch.float64)
    if sb.dim() > 1:
        raise ValueError(f"sigma_bar must be a scalar or of shape (T,), got shape {tuple(sb.shape)}")
    if (sb == 0).any():
        raise ValueError("sigma_bar must be > 0: at sigma_bar = 0 nothing is masked and the "
                         "ratio r = 1 / (e^sigma_bar - 1) is infinite")
    sbs = sb.reshape(-1)
    B, d = x0.shape
    masks = masking_patterns(d)                                          # (P, d)
    k = masks.sum(-1).to(torch.float64)                                  # masked count per pattern
    # pattern probabilities (1 - alpha)^k alpha^(d - k), in logs: 1 - alpha = -expm1(-sigma_bar)
    log_prob = k * torch.log(-torch.expm1(-sbs))[:, None] - (d - k) * sbs[:, None]   # (T, P)
    prob = torch.exp(log_prob)
    T, P = sbs.shape[0], masks.shape[0]
    x_t = torch.where(masks[None], n - 1, x0[:, None, :])                # (B, P, d)
    x_rows = x_t[None].expand(T, B, P, d).reshape(-1, d)
    x0_rows = x0[None, :, None].expand(T, B, P, d).reshape(-1, d)
    sb_rows = sbs[:, None, None].expand(T, B, P).reshape(-1)
    values = dwdse(rm, _denoiser_as_log_score(denoiser_fn, x0_rows, n), x0_rows, sb_rows,
                   torch.ones((), dtype=torch.float64), x_t=x_rows)
    values = values.to(torch.float64).reshape(T, B, P)
    if not torch.isfinite(values).all():
        raise ValueError("the score entropy came out infinite or NaN; check the denoiser")
    m1 = (prob[:, None, :] * values).sum(-1)
    m2 = (prob[:, None, :] * values ** 2).sum(-1)
    if sb.dim() == 0:
        return m1[0], m2[0]
    return m1, m2


def _log_t_rule(a: float, b: float, num_nodes: int):
    """Gauss-Legendre nodes and weights for int_a^b f(t) dt in the variable log t, 0 < a < b.

    [a, b] is cut into pieces of at most a factor 10 in t, each with ``num_nodes`` nodes: the
    masking integrands behave like powers of t near t = 0 (1/t for the weight of LogLinear),
    which are smooth in log t.
    """
    import numpy as np
    pieces = max(1, math.ceil(math.log10(b / a)))
    u, w = np.polynomial.legendre.leggauss(num_nodes)
    edges = np.exp(np.linspace(math.log(a), math.log(b), pieces + 1))
    ts, ws = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        half = (math.log(hi) - math.log(lo)) / 2
        v = math.log(lo) + half * (u + 1)
        ts.append(np.exp(v))
        ws.append(half * w * np.exp(v))                      # dt = t d(log t)
    return (torch.as_tensor(np.concatenate(ts), dtype=torch.float64),
            torch.as_tensor(np.concatenate(ws), dtype=torch.float64))


def _check_bound_args(schedule, t_min, num_nodes):
    check_schedule(schedule)
    t_min = as_real(t_min, "t_min", 0.0, 1.0, lo_closed=True)
    num_nodes = as_int(num_nodes, "num_nodes", 1)
    return t_min, num_nodes


def exact_mdlm_bound(schedule, denoiser_fn, x0, n: int, *, t_min: float = 1e-5,
                     num_nodes: int = 64, variable: str = "alpha") -> torch.Tensor:
    """What ``mdlm_nll_bound`` converges to: ``int_{t_min}^1 sigma(t) E[S_t] dt``, exact in x_t.

    The exact twin of :func:`mdlm_nll_bound` (lesson 10), per sequence, float64 (B,), with the
    expectation over x_t by enumeration (:func:`exact_integrand_moments`) and the integral by
    quadrature in one of two variables:

    * ``variable="alpha"`` (default): substitute ``alpha = e^{-sigma_bar(t)}``, so
      ``sigma(t) dt = d sigma_bar = -d alpha / alpha`` and the integral is
      ``int_{alpha(1)}^{alpha(t_min)} E[S](alpha) / alpha d alpha``. The schedule is gone from
      the integrand: it only sets the two endpoints. ``num_nodes`` Gauss-Legendre nodes in
      alpha; for a time-agnostic denoiser ``E[S] / alpha`` is a polynomial of degree d - 1 in
      alpha and ``ceil(d / 2)`` nodes are already exact.
    * ``variable="t"``: the integral on the schedule's own clock, Gauss-Legendre in log t with
      ``num_nodes`` nodes per factor 10 of t (t_min > 0 needed). The integrand differs from one
      schedule to the next; its integral does not.
    """
    t_min, num_nodes = _check_bound_args(schedule, t_min, num_nodes)
    if variable == "alpha":
        import numpy as np
        a_lo = math.exp(-float(schedule.sigma_bar(1.0)))
        a_hi = math.exp(-float(schedule.sigma_bar(t_min)))
        u, w = np.polynomial.legendre.leggauss(num_nodes)
        half = (a_hi - a_lo) / 2
        alpha = torch.as_tensor(a_lo + half * (u + 1), dtype=torch.float64)
        m1, _ = exact_integrand_moments(denoiser_fn, x0, n, -torch.log(alpha))
        return (torch.as_tensor(half * w, dtype=torch.float64)[:, None] * m1
                / alpha[:, None]).sum(0)
    if variable == "t":
        if t_min <= 0:
            raise ValueError("variable='t' needs t_min > 0: its nodes are placed in log t")
        t, w = _log_t_rule(t_min, 1.0, num_nodes)
        m1, _ = exact_integrand_moments(denoiser_fn, x0, n, schedule.sigma_bar(t))
        return ((w * schedule.sigma(t).to(torch.float64))[:, None] * m1).sum(0)
    raise ValueError(f"variable must be 'alpha' or 't', got {variable!r}")


def mdlm_bound_variance(schedule, denoiser_fn, x0, n: int, num_t: int = 1, *,
                        t_min: float = 1e-5, num_nodes: int = 24) -> torch.Tensor:
    """The exact variance of ``mdlm_nll_bound(..., num_t)`` per sequence, float64 (B,) (lesson 10).

    ``mdlm_nll_bound`` averages ``f_j = (1 - t_min) sigma(t_j) S_{t_j}`` over K = num_t strata
    ``t_j ~ U(stratum j)``, one x_t each, so its variance is
    ``(1/K^2) sum_j [K (1 - t_min) int_j sigma^2 E[S^2] dt - K^2 (int_j sigma E[S] dt)^2]``.
    Unlike the mean, this depends on the whole schedule, not only on its endpoints: it is what
    a choice of schedule changes (lesson 10). Needs t_min > 0 (for LogLinear the variance
    grows like log(1 / t_min)). Each stratum is integrated in log t (``num_nodes`` per factor
    10 of t), all in one denoiser call.
    """
    t_min, num_nodes = _check_bound_args(schedule, t_min, num_nodes)
    K = as_int(num_t, "num_t", 1)
    if t_min <= 0:
        raise ValueError("the variance needs t_min > 0: near t = 0 the weighted loss has "
                         "infinite second moment for LogLinear (it grows like log(1 / t_min))")
    edges = [t_min + (1 - t_min) * j / K for j in range(K + 1)]
    rules = [_log_t_rule(a, b, num_nodes) for a, b in zip(edges[:-1], edges[1:])]
    t = torch.cat([r[0] for r in rules])
    m1, m2 = exact_integrand_moments(denoiser_fn, x0, n, schedule.sigma_bar(t))
    sig = schedule.sigma(t).to(torch.float64)[:, None]
    out = torch.zeros(m1.shape[1], dtype=torch.float64)
    start = 0
    for tj, wj in rules:
        rows = slice(start, start + len(tj))
        start += len(tj)
        second = K * (1 - t_min) * (wj[:, None] * sig[rows] ** 2 * m2[rows]).sum(0)
        mean = K * (wj[:, None] * sig[rows] * m1[rows]).sum(0)
        out += second - mean ** 2
    return (out / K ** 2).clamp_min(0)


__all__ += ["masking_patterns", "exact_integrand_moments", "exact_mdlm_bound",
            "mdlm_bound_variance"]
