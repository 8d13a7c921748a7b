"""Sampling from a score function: exact reverse simulation, Euler and Tweedie tau-leaping (lesson 5).

Every sampler here takes a *score function* ``score_fn(x_t, sigma_bar) -> (B, d, n)`` returning
the Hamming-1 ratios ``s[b, i, y] = p_t(x with x_i = y) / p_t(x)``, so the exact oracle
``ddlab.exact_score_fn(p0, rm)`` and a trained network are interchangeable.

Time runs backward on the grid ``t_k = 1 - k (1 - eps) / steps`` (k = 0..steps, linear in t), with
total noise ``sigma_bar_k = schedule.sigma_bar(t_k)`` and step ``dsigma_k = sigma_bar_k -
sigma_bar_{k+1}``. On the clock of sigma_bar the reverse chain of one token has rates
``Q[x, y] s_y`` out of x (``rm.reverse_rates``). The three methods differ in how they cross an
interval:

``"euler"``   tau-leaping: every position moves independently with
              ``p(y) = dsigma Q[x, y] s_y`` for y != x and ``p(x) = 1 - dsigma sum_{y != x}
              Q[x, y] s_y`` (the column x of ``I + dsigma Qbar``; ``rm.euler_probs``, which clips
              a negative p(x) to 0 and renormalises), scores taken at t_k.
``"tweedie"`` every position moves independently with the Tweedie step
              ``p(y) ∝ (expm(-dsigma Q) s)_y expm(dsigma Q)[x, y]`` (``rm.tweedie_probs``), scores
              at t_k. For d = 1 and the exact score this is the exact reverse transition.
``"exact"``   the reverse CTMC of the whole sequence, one token jump at a time: on each interval
              the rates are frozen at the midpoint time ``(t_k + t_{k+1}) / 2`` and the chain with
              those rates is simulated exactly (Gillespie: an exponential holding time, one jump,
              the score re-evaluated at the new sequence). What is exact: inside the intervals
              no factorisation error (positions never jump together on stale scores) and no
              time-stepping error for the frozen rates. What is not: the true rates change with t
              inside an interval; the midpoint rule makes that error O(1/steps^2) where the rates
              are smooth, but under absorbing noise the unmasking hazard ~ 1/sigma_bar is
              singular at t = 0 and the midpoint sums converge slowly (lesson 5 measures it); and
              the final denoising step below is factorised, as for every method. The name says
              what is simulated exactly (the frozen-rate chain), not that its law is exact.

After the last interval, ``denoise=True`` takes one Tweedie step from ``sigma_bar(t_min)`` all the
way to 0 and draws each still-noisy token from it, with MASK removed (its probability is zero
for the exact score, and dropping it guarantees a clean sample from an imperfect one).

:func:`exact_sampler_distribution` propagates the full law over all n^d sequences through the same
step kernels (the Kronecker product of the per-position step distributions for Euler and
Tweedie, ``expm(dsigma Qbar)`` of the frozen whole-sequence reverse generator for "exact"), so
the law a sampler produces with k steps is known exactly on a toy, with no Monte Carlo error.
"""

from __future__ import annotations

import math

import torch

from ._checks import (as_int, as_rate_matrix, as_real, as_tokens, check_clamp, check_schedule,
                      check_time)
from .exact import kl_divergence
from .rate_matrices import Absorbing, sample_categorical
from .sequences import all_sequences, flat_strides

METHODS = ("euler", "tweedie", "exact")
# exact_sampler_distribution holds an (n^d, n^d) matrix: refuse toys larger than this many states.
MAX_STATES = 4096


# ------------------------------------------------------------------------------ validation
def check_scores(score, x_t, n) -> torch.Tensor:
    """Validate a score function's output and return it as a floating tensor (lesson 5).

    ``score`` must have shape ``(B, d, n)`` for ``x_t`` of shape ``(B, d)``, be finite and be
    non-negative (ratios of probabilities). Otherwise ValueError names the first bad position
    ``(b, i, y)``, its value and the token ``x_t[b, i]`` it was computed at.
    """
    if not isinstance(score, torch.Tensor):
        raise ValueError(f"a score function must return a torch tensor, got {type(score).__name__}")
    expected = tuple(x_t.shape) + (n,)
    if tuple(score.shape) != expected:
        raise ValueError(f"score_fn returned shape {tuple(score.shape)}, expected {expected} "
                         f"(B, d, n) for x_t of shape {tuple(x_t.shape)}")
    if not score.is_floating_point():
        score = score.double()
    bad = ~torch.isfinite(score) | (score < 0)
    if bad.any():
        b, i, y = bad.nonzero()[0].tolist()
        value = score[b, i, y].item()
        what = "finite" if not math.isfinite(value) else "non-negative"
        raise ValueError(f"score_fn returned {value!r} at position (b, i, y) = ({b}, {i}, {y}) "
                         f"(x_t[{b}, {i}] = {int(x_t[b, i])}); ratios must be {what}")
    return score


def _score(score_fn, x, sigma_bar: float, n: int) -> torch.Tensor:
    """Call score_fn at one noise level, validate, and set the entry at the current token to 1.

    The ratio p(x)/p(x) is 1 by definition; Euler ignores that entry but Tweedie mixes it in, so
    it is fixed here rather than trusted to every network.
    """
    sb = torch.full((x.shape[0],), float(sigma_bar), dtype=torch.float64, device=x.device)
    s = check_scores(score_fn(x, sb), x, n)
    return s.scatter(-1, x[..., None], 1.0)


def _check_common(rm, schedule, d, steps, method, t_min):
    rm = as_rate_matrix(rm)
    as_int(d, "d", 1)
    as_int(steps, "steps", 1)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    as_real(t_min, "t_min (the last time of the grid)", 0.0, 1.0)
    check_schedule(schedule)
    return rm


def time_grid(schedule, steps: int, t_min: float = 1e-5):
    """``(t, sigma_bar)`` on the grid ``t_k = 1 - k (1 - t_min) / steps``, k = 0..steps, float64."""
    t = torch.linspace(1.0, t_min, steps + 1, dtype=torch.float64)
    check_time(t)
    return t, schedule.sigma_bar(t).to(torch.float64)


def _apply_clamp(x, clamp):
    return x if clamp is None else torch.where(clamp[0], clamp[1], x)


# ------------------------------------------------------------------------------ one step
def _step_probs(score_fn, rm, x, sb_now, dsigma, method):
    """Per-position distribution of the next tokens, (B, d, n), for Euler or Tweedie."""
    s = _score(score_fn, x, sb_now, rm.n)
    # a tensor on the tokens' device: a Python float would become a CPU tensor inside rm
    ds = torch.tensor(float(dsigma), dtype=torch.float64, device=x.device)
    if method == "euler":
        return rm.euler_probs(x, s, ds)
    return rm.tweedie_probs(x, s, ds)


def denoise_probs(rm, score_fn, x, sb_last):
    """The final Tweedie step from sigma_bar(t_min) to 0, MASK removed, (B, d, n)."""
    probs = _step_probs(score_fn, rm, x, sb_last, sb_last, "tweedie")
    if isinstance(rm, Absorbing):
        probs = probs.clone()
        probs[..., rm.mask] = 0.0
        total = probs.sum(-1, keepdim=True)
        if (total <= 0).any():
            b, i = (total[..., 0] <= 0).nonzero()[0].tolist()
            raise ValueError(f"the final denoising step gives no clean token at position "
                             f"(b, i) = ({b}, {i}): the score puts zero weight on every token")
        probs = probs / total
    return probs


def _jump_rates(score_fn, rm, x, sb_mid, frozen=None):
    """Off-diagonal reverse rates of every single-token jump, (B, d, n), >= 0.

    ``frozen`` (B, d) bool marks clamped positions, which never jump.
    """
    s = _score(score_fn, x, sb_mid, rm.n)
    rates = rm.reverse_rates(x, s).scatter(-1, x[..., None], 0.0).clamp_min(0)
    if frozen is not None:
        rates = rates.masked_fill(frozen[..., None], 0.0)
    return rates


def _exact_interval(score_fn, rm, x, sb_mid, dsigma, clamp, generator):
    """Gillespie simulation over one interval of length dsigma with rates frozen at sb_mid."""
    B, d = x.shape
    n = rm.n
    x = x.clone()
    remaining = torch.full((B,), float(dsigma), dtype=torch.float64, device=x.device)
    active = torch.arange(B, device=x.device)
    while active.numel():
        xa = x[active]
        rates = _jump_rates(score_fn, rm, xa, sb_mid, None if clamp is None else clamp[0][active])
        total = rates.sum((1, 2)).to(torch.float64)
        u = torch.rand(active.shape, generator=generator, dtype=torch.float64, device=x.device)
        hold = -torch.log1p(-u) / total                 # Exp(total); inf when nothing can jump
        jumps = hold < remaining[active]
        if not jumps.any():
            break
        active = active[jumps]
        remaining[active] -= hold[jumps]
        flat = rates[jumps].reshape(active.numel(), d * n)
        pick = sample_categorical(flat / flat.sum(-1, keepdim=True), generator)
        x[active, pick // n] = pick % n
    return x


# ------------------------------------------------------------------------------ samplers
def sample(rm, schedule, score_fn, batch, d, steps, method="tweedie", *, x_T=None, clamp=None,
           denoise=True, t_min=1e-5, generator=None, progress=False, device=None) -> torch.Tensor:
    """Draw ``batch`` sequences of ``d`` tokens by running the reverse process (lesson 5).

    ``method`` is "euler", "tweedie" or "exact" (see the module docstring); ``steps`` intervals on
    the grid ``t_k = 1 - k (1 - t_min) / steps``. The chain starts at ``x_T`` (B, d), by default a
    draw from the base law: all-MASK for :class:`Absorbing`, the stationary law otherwise.
    ``clamp = (positions_mask, values)``, each of shape (d,) or (B, d), fixes tokens at the start
    and after every step (conditioning, infilling); under "exact" clamped positions never jump.
    ``denoise`` takes the final Tweedie step from ``sigma_bar(t_min)`` to 0. ``device`` (default:
    that of ``x_T``, else of ``generator``, else CPU) is where the tokens live. Returns (batch,
    d) int64.
    """
    rm = _check_common(rm, schedule, d, steps, method, t_min)
    as_int(batch, "batch", 1)
    if device is None:
        device = x_T.device if isinstance(x_T, torch.Tensor) else (
            generator.device if generator is not None else torch.device("cpu"))
    device = torch.device(device)
    clamp = check_clamp(clamp, batch, d, rm.n, device)
    if x_T is None:
        base = rm.stationary().to(torch.float64).to(device)
        x = sample_categorical(base.expand(batch, d, rm.n), generator)
    else:
        x = as_tokens(x_T, rm.n, "x_T").to(device)
        if tuple(x.shape) != (batch, d):
            raise ValueError(f"x_T has shape {tuple(x.shape)}, expected ({batch}, {d})")
    x = _apply_clamp(x, clamp)
    t, sb = time_grid(schedule, steps, t_min)
    if method == "exact":
        sb_mid = schedule.sigma_bar((t[:-1] + t[1:]) / 2).to(torch.float64)
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc=f"sample {method}", leave=False)
    for k in iterator:
        dsigma = (sb[k] - sb[k + 1]).item()
        if method == "exact":
            x = _exact_interval(score_fn, rm, x, sb_mid[k].item(), dsigma, clamp, generator)
        else:
            probs = _step_probs(score_fn, rm, x, sb[k].item(), dsigma, method)
            x = sample_categorical(probs, generator)
        x = _apply_clamp(x, clamp)
    if denoise:
        x = sample_categorical(denoise_probs(rm, score_fn, x, sb[-1].item()), generator)
        x = _apply_clamp(x, clamp)
    return x


def _kernel(probs, states):
    """K[a, b] = prod_i probs[a, i, states[b, i]]: the factorised step from each row's sequence."""
    K = torch.ones(probs.shape[0], states.shape[0], dtype=probs.dtype)
    for i in range(states.shape[1]):
        K = K * probs[:, i, states[:, i]]
    return K


def _reverse_generator(score_fn, rm, states, support, sb_mid, frozen):
    """The whole-sequence reverse generator Qbar (N, N) with rates at sb_mid, on the states
    reachable from ``support`` (other columns are zero: those sequences carry no mass)."""
    N, d = states.shape
    n = rm.n
    strides = flat_strides(n, d)
    Qbar = torch.zeros(N, N, dtype=torch.float64)
    done = torch.zeros(N, dtype=torch.bool)
    frontier = support.nonzero()[:, 0]
    y = torch.arange(n)
    while frontier.numel():
        done[frontier] = True
        xs = states[frontier]
        fr = None if frozen is None else frozen.expand(frontier.numel(), d)
        rates = _jump_rates(score_fn, rm, xs, sb_mid, fr).to(torch.float64)        # (F, d, n)
        target = frontier[:, None, None] + (y[None, None, :] - xs[:, :, None]) * strides[None, :, None]
        src = frontier[:, None, None].expand_as(target)
        Qbar.index_put_((target.reshape(-1), src.reshape(-1)), rates.reshape(-1), accumulate=True)
        Qbar[frontier, frontier] -= rates.sum((1, 2))
        reached = torch.zeros(N, dtype=torch.bool)
        reached[target[rates > 0]] = True
        frontier = (reached & ~done).nonzero()[:, 0]
    return Qbar


def exact_sampler_distribution(rm, schedule, score_fn, d, steps, method, *, clamp=None,
                               denoise=True, t_min=1e-5) -> torch.Tensor:
    """The exact law, shape (n,)*d, of what ``sample`` produces with these settings (lesson 5).

    No Monte Carlo: the law over all n^d sequences starts at the base law (clamped) and is pushed
    through each step's kernel: the product over positions of the per-position step
    distributions for "euler" and "tweedie", ``expm(dsigma Qbar)`` of the whole-sequence
    reverse generator (rates frozen at the interval's midpoint) for "exact", then the
    denoising step. ``clamp = (positions_mask (d,), values (d,))``. The score function is only
    called at sequences the law can reach, so an oracle for a p0 with zeros is fine as long as
    the sampler stays on its support. Small n^d only (at most MAX_STATES sequences).
    """
    rm = _check_common(rm, schedule, d, steps, method, t_min)
    n = rm.n
    N = n ** d
    if N > MAX_STATES:
        raise ValueError(f"n^d = {n}^{d} = {N} sequences is too many for an exact law "
                         f"(at most {MAX_STATES}); use sample() and Monte Carlo instead")
    states = all_sequences(n, d)
    if clamp is not None:
        c = check_clamp(clamp, 1, d, n, torch.device("cpu"))
        frozen, cvalues = c[0][0], c[1][0]
        if not (tuple(torch.as_tensor(clamp[0]).shape) == (d,)):
            raise ValueError(f"exact_sampler_distribution takes a clamp of shape ({d},)")
    else:
        frozen = cvalues = None

    def pin(probs):
        """Clamped positions go to their value with probability one."""
        if frozen is None:
            return probs
        onehot = torch.nn.functional.one_hot(cvalues, n).to(probs.dtype)
        return torch.where(frozen[None, :, None], onehot[None], probs)

    # initial law: product of the per-token base law, clamped positions pinned
    base = pin(rm.stationary().to(torch.float64).expand(1, d, n))
    law = _kernel(base, states)[0]
    t, sb = time_grid(schedule, steps, t_min)
    if method == "exact":
        sb_mid = schedule.sigma_bar((t[:-1] + t[1:]) / 2).to(torch.float64)
    for k in range(steps):
        dsigma = (sb[k] - sb[k + 1]).item()
        support = law > 0
        if method == "exact":
            Qbar = _reverse_generator(score_fn, rm, states, support, sb_mid[k].item(),
                                      None if frozen is None else frozen[None])
            law = torch.linalg.matrix_exp(dsigma * Qbar) @ law
            law = law.clamp_min(0)
        else:
            probs = pin(_step_probs(score_fn, rm, states[support], sb[k].item(), dsigma, method))
            law = law[support].to(torch.float64) @ _kernel(probs.to(torch.float64), states)
        law = law / law.sum()
    if denoise:
        support = law > 0
        probs = pin(denoise_probs(rm, score_fn, states[support], sb[-1].item()))
        law = law[support] @ _kernel(probs.to(torch.float64), states)
        law = law / law.sum()
    return law.reshape((n,) * d)


def kl_vs_steps(rm, schedule, score_fn, d, p_data, steps, methods=("euler", "tweedie"),
                **kwargs) -> dict:
    """``{method: [KL(p_data || law of the sampler with k steps) for k in steps]}``, exactly.

    The curves of lessons 5 and 8: each law comes from :func:`exact_sampler_distribution` (no
    Monte Carlo); ``kwargs`` (clamp, denoise, eps) are passed on to it.
    """
    with torch.no_grad():
        return {m: [float(kl_divergence(p_data, exact_sampler_distribution(
            rm, schedule, score_fn, d, k, m, **kwargs))) for k in steps] for m in methods}


__all__ = ["METHODS", "check_scores", "sample", "exact_sampler_distribution", "time_grid", "kl_vs_steps"]
