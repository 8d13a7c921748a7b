"""Simulating paths of a CTMC exactly, forward (lesson 1) and backward in time (lesson 2).

Forward. Under a schedule the generator is ``sigma(t) Q``. Measured on the clock of the total
noise ``tau = sigma_bar(t)`` the chain is time-homogeneous with generator Q, so an exact (Gillespie)
path is drawn in tau, holding time Exp(-Q[x, x]) and the next state with probability
``Q[y, x] / -Q[x, x]``, and its jump times are mapped back to t with the schedule's inverse.

Backward. The time reversal of the chain started from ``p0`` is again a Markov chain. Between
two noise levels ``sigma_s <= sigma_t`` its kernel is Bayes' rule,
``p(x_s = y | x_t = x) = P_{s->t}[x, y] p_s(y) / p_t(x)`` with
``P_{s->t} = expm((sigma_t - sigma_s) Q)``, so paths drawn backward through any grid of times are
exact at the grid points (:func:`reverse_paths`). In continuous time its generator is ``Qbar_t``
(ddlab.reverse_rate_matrix), and the reverse ODE ``dq/d(-sigma_bar) = Qbar_t q`` carries p_T back
to p_0 (:func:`reverse_ode`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._checks import (as_float, as_int, as_real, as_tokens, check_distribution, check_p0,
                      check_sigma_bar, check_time)
from .exact import as_rate_matrix, marginal, posterior, reverse_rate_matrix
from .rate_matrices import sample_categorical


@dataclass
class Path:
    """One CTMC path: ``states[k]`` is held from ``times[k]`` until ``times[k+1]`` (or t_end)."""
    times: np.ndarray
    states: np.ndarray
    t_end: float

    def state_at(self, t: float) -> int:
        return int(self.states[np.searchsorted(self.times, t, side="right") - 1])


def gillespie(rm, x0: int, schedule=None, t_end: float = 1.0, generator=None) -> Path:
    """Draw one exact forward path from state ``x0`` over [0, t_end] (lesson 1).

    With ``schedule=None`` the chain runs at unit speed (sigma = 1, sigma_bar(t) = t) and
    ``t_end`` may be any positive number; with a schedule, time runs over [0, t_end] with
    0 < t_end <= 1. ``generator`` is a torch.Generator for reproducible paths.
    """
    rm = as_rate_matrix(rm)
    x = int(as_tokens(x0, rm.n, "x0"))
    if schedule is None:
        if not t_end > 0:
            raise ValueError(f"t_end must be > 0, got {t_end!r}")
        tau0, tau_end, to_t = 0.0, float(t_end), (lambda tau: tau)
    else:
        check_time(t_end, "t_end")
        if not float(t_end) > 0:
            raise ValueError(f"t_end must lie in (0, 1] with a schedule, got {t_end!r}")
        tau0 = float(schedule.sigma_bar(0.0))
        tau_end = float(schedule.sigma_bar(t_end))
        to_t = lambda tau: float(schedule.t_of(tau))   # noqa: E731
    Q = rm.Q
    tau, times, states = tau0, [0.0], [x]
    while True:
        out_rate = -Q[x, x].item()
        if out_rate <= 0:
            break                                        # absorbing state: no more jumps
        u = torch.rand(2, generator=generator, dtype=torch.float64)
        tau += -torch.log1p(-u[0]).item() / out_rate
        if tau >= tau_end:
            break
        jump = Q[:, x].clone()
        jump[x] = 0.0
        cdf = torch.cumsum(jump / out_rate, 0)
        x = int(torch.searchsorted(cdf, u[1] * cdf[-1], right=True).clamp_max(rm.n - 1))
        times.append(to_t(tau))
        states.append(x)
    return Path(np.array(times), np.array(states), float(t_end))


# ------------------------------------------------------------------- backward in time
# Below this total noise, reverse_ode stops: rates into states that p0 leaves empty (e.g. out of
# MASK) grow like 1 / sigma_bar, so sigma_bar = 0 itself is a singular point of the reverse ODE.
# Stopping at 1e-10 changes the result by about 1e-10, far below what any lesson prints.
SIGMA_BAR_FLOOR = 1e-10


def _grid_sigma_bar(schedule, times) -> tuple[torch.Tensor, torch.Tensor]:
    """(times, sigma_bar(times)) as float64 vectors, checking the grid is 1-D and non-decreasing.

    With ``schedule=None`` the chain runs at unit speed: sigma_bar(t) = t, and t may exceed 1.
    """
    t = as_float(times, torch.float64)
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"times must be a non-empty 1-D grid of times, got shape {tuple(t.shape)}")
    if (t[1:] < t[:-1]).any():
        k = int((t[1:] < t[:-1]).nonzero()[0]) + 1
        raise ValueError(f"times must be non-decreasing (the path is returned in time order), but "
                         f"times[{k}] = {t[k].item():.6g} < times[{k - 1}] = {t[k - 1].item():.6g}")
    if schedule is None:
        return t, check_sigma_bar(t, "times")
    return t, schedule.sigma_bar(check_time(t, "times")).to(torch.float64)


def reverse_kernel(rm, p0, sigma_bar_s, sigma_bar_t) -> torch.Tensor:
    """The exact reverse step ``K[y, x] = p(x_s = y | x_t = x)`` between noise levels (lesson 2).

    Bayes' rule on the forward step from ``sigma_bar_s`` to ``sigma_bar_t >= sigma_bar_s``:
    ``K[y, x] = P_{s->t}[x, y] p_s(y) / p_t(x)`` with ``P_{s->t} = expm((sigma_bar_t - sigma_bar_s) Q)``,
    ``p_s = expm(sigma_bar_s Q) p0`` and ``p_t = P_{s->t} p_s``. Each column x with p_t(x) > 0 sums to
    one; columns at states the forward chain cannot be in (p_t(x) = 0) are zero. With
    ``sigma_bar_s = 0`` this is ``ddlab.posterior(rm, p0, sigma_bar_t)``.
    """
    rm = as_rate_matrix(rm)
    p0 = check_p0(p0, rm.n)
    ss = check_sigma_bar(sigma_bar_s, "sigma_bar_s").to(torch.float64)
    st = check_sigma_bar(sigma_bar_t, "sigma_bar_t").to(torch.float64)
    if ss.dim() or st.dim():
        raise ValueError("sigma_bar_s and sigma_bar_t must be scalars")
    if ss > st:
        raise ValueError(f"sigma_bar_s = {ss.item():.6g} must be <= sigma_bar_t = {st.item():.6g}: the "
                         f"reverse kernel steps from the noisier level t back to s")
    return posterior(rm, marginal(rm, p0, ss), st - ss)


def reverse_paths(rm, schedule, p0, num_paths: int, times, generator=None) -> torch.Tensor:
    """Draw exact reverse-time paths on a grid of times (lesson 2).

    Starts from ``x_T ~ p_T`` at ``T = times[-1]`` and steps backward through the grid with the
    exact reverse kernel (:func:`reverse_kernel`) between neighbouring times. Because each step is
    Bayes' rule, the paths have the law of forward paths read backward: at every grid time the
    state has marginal ``p_t`` exactly and neighbouring states have the exact joint law, whatever
    the grid spacing. Between grid points nothing is simulated.

    ``times`` is a non-decreasing 1-D grid (in [0, 1] under a schedule; any times >= 0 with
    ``schedule=None``, which means sigma_bar(t) = t). Returns an int64 tensor of shape
    ``(num_paths, len(times))`` whose column k holds the states at ``times[k]``.
    """
    rm = as_rate_matrix(rm)
    p0 = check_p0(p0, rm.n)
    num_paths = as_int(num_paths, "num_paths", 1)
    _, sb = _grid_sigma_bar(schedule, times)
    K = sb.shape[0]
    out = torch.empty(num_paths, K, dtype=torch.long)
    p_T = marginal(rm, p0, sb[-1])
    x = sample_categorical(p_T.expand(num_paths, rm.n), generator)
    out[:, -1] = x
    # The marginals at the grid points, computed forward once: p_k = expm(sb_k Q) p0.
    p_grid = rm.transition(sb).to(torch.float64) @ p0                     # (K, n)
    for k in range(K - 2, -1, -1):
        kernel = posterior(rm, p_grid[k], sb[k + 1] - sb[k])               # kernel[y, x]
        x = sample_categorical(kernel[:, x].T, generator)
        out[:, k] = x
    return out


def reverse_gillespie(rm, p0, schedule=None, t_start: float = 1.0, t_end: float = 0.0,
                      generator=None) -> Path:
    """Draw one exact reverse path in continuous time, from ``x ~ p_{t_start}`` down to ``t_end``.

    On the clock of the total noise tau = sigma_bar(t) the reversed chain jumps x -> y at rate
    ``Qbar_tau[y, x] = Q[x, y] p_tau(y) / p_tau(x)``, which changes with tau, so the waiting time is
    drawn by **thinning** (lesson 2): on a window [tau_lo, tau] the total rate out of x is below

        Lambda = max_{y != x} Q[x, y] * exp(q_x (tau - tau_lo)) / p_{tau_lo}(x),   q_x = -Q[x, x],

    because p_tau'(x) >= exp(-q_x (tau' - tau_lo)) p_{tau_lo}(x) (staying put is one way to be
    at x) and the other p_tau'(y) sum to at most one. Candidate times come from a Poisson process of
    rate Lambda run backward; each is kept with probability (true rate) / Lambda, which makes the
    kept ones exactly the jumps of the reversed chain. Windows are at most min(1, 0.5 / q_x) long
    and halve towards tau = 0, where rates out of states that p0 leaves empty blow up like 1/tau.
    Each candidate costs one marginal, so this is for toy chains and a few thousand paths.

    Returns a :class:`Path` in *forward* time order: ``times[0] = t_end`` and the state held from
    each time until the next one, so ``path.state_at(t)`` works as for :func:`gillespie`;
    ``t_end`` of the Path is ``t_start``. With ``schedule=None``, sigma_bar(t) = t.
    """
    rm = as_rate_matrix(rm)
    p0 = check_p0(p0, rm.n)
    if not t_end <= t_start:
        raise ValueError(f"t_end = {t_end!r} must be <= t_start = {t_start!r}: the path runs "
                         f"backward in time")
    _, sb = _grid_sigma_bar(schedule, [t_end, t_start])
    tau_end, tau = sb[0].item(), sb[1].item()
    to_t = (lambda v: v) if schedule is None else (lambda v: float(schedule.t_of(v)))  # noqa: E731
    Q = rm.Q
    offdiag = Q - torch.diag(torch.diagonal(Q))
    def p_at(v: float) -> torch.Tensor:                   # p at sigma_bar = v, v >= 0 checked above
        return rm._transition(torch.tensor(v, dtype=torch.float64)) @ p0
    x = int(sample_categorical(p_at(tau), generator))
    jumps, states = [], [x]
    while tau > tau_end:
        rate_in = offdiag[x].max().item()                 # max_y Q[x, y]: rates into x forward
        if rate_in <= 0:
            break                                         # nothing flows into x: no reverse moves
        q_x = -Q[x, x].item()
        # A window short enough that the factor exp(q_x * width) stays below e^0.5.
        tau_lo = max(tau_end, tau - min(1.0, 0.5 / q_x if q_x > 0 else 1.0))
        p_lo = p_at(tau_lo)
        if p_lo[x] <= 0:                                  # x is unreachable at tau_lo: halve
            tau_lo = max(tau_end, tau / 2)
            p_lo = p_at(tau_lo)
            if p_lo[x] <= 0:
                raise ValueError(f"state {x} cannot be reached at sigma_bar = {tau_lo:.3g}; "
                                 f"the reverse path cannot continue")
        bound = rate_in * np.exp(-Q[x, x].item() * (tau - tau_lo)) / p_lo[x].item()
        while True:
            u = torch.rand(2, generator=generator, dtype=torch.float64)
            cand = tau + torch.log1p(-u[0]).item() / bound       # tau - Exp(bound)
            if cand <= tau_lo:
                tau = tau_lo                              # no jump in this window
                break
            p = p_at(cand)
            rates = offdiag[x] * p / p[x]                 # rates[y] = Q[x, y] p(y) / p(x)
            total = rates.sum().item()
            tau = cand
            if u[1].item() * bound < total:               # accept: a jump of the reversed chain
                x = int(sample_categorical(rates / total, generator))
                jumps.append(to_t(cand))
                states.append(x)
                break
    times = np.array([float(t_end)] + jumps[::-1])
    return Path(times, np.array(states[::-1]), float(t_start))


def _w_of(sb: np.ndarray) -> np.ndarray:
    """The integration variable of reverse_ode: ``w = log(expm1(sigma_bar))``.

    Reverse rates grow like 1/sigma_bar near 0 where p0 has empty states, so there the ODE is
    smooth in log(sigma_bar); for large sigma_bar the rates are bounded and sigma_bar itself is
    the right clock. ``w`` is both: w ~ log(sigma_bar) near 0 and w ~ sigma_bar for large values,
    with ``d sigma_bar / dw = 1 - exp(-sigma_bar)`` smooth in between.
    """
    sb = np.maximum(sb, SIGMA_BAR_FLOOR)
    # log(expm1(s)) = s + log(-expm1(-s)) avoids overflow for large s
    return sb + np.log(-np.expm1(-sb))


def _sb_of(w: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, w)                     # softplus, the inverse of _w_of


def reverse_ode(rm, schedule, p0, times, q_T=None, step: float = 0.05) -> torch.Tensor:
    """Integrate the reverse ODE from ``T = times[-1]`` back to ``times[0]`` (lesson 2).

    The reverse chain has generator ``Qbar_t[y, x] = p_t(y) / p_t(x) Q[x, y]`` on the clock of
    sigma_bar (ddlab.reverse_rate_matrix), so a distribution q carried backward obeys
    ``dq / d(-sigma_bar) = Qbar_t q``. Started at ``q_T = p_T`` (the default) it retraces the
    forward marginals, q = p_t at every t; started elsewhere, e.g. at the prior, it shows where
    the exact reverse dynamics take that start.

    Classical Runge-Kutta (RK4) with steps of ``step`` in the variable
    ``w = log(expm1(sigma_bar))``, which is log(sigma_bar) near 0 and sigma_bar far from it (see
    ``_w_of``). sigma_bar = 0 is a singular point when p0 has empty states, so a time with
    sigma_bar = 0 is integrated to ``SIGMA_BAR_FLOOR`` = 1e-10 instead. Returns float64 of shape
    ``(len(times), n)``: row k is q at ``times[k]`` (row -1 is q_T). With the default
    ``step = 0.05`` the error against the exact marginal is below 1e-8 on the course's toy chains
    (it falls as step**4).
    """
    rm = as_rate_matrix(rm)
    p0 = check_p0(p0, rm.n)
    step = as_real(step, "step", 0.0, 1.0, hi_closed=True)
    _, sb = _grid_sigma_bar(schedule, times)
    if q_T is None:
        q = marginal(rm, p0, sb[-1]).numpy().copy()
    else:
        q = check_distribution(q_T, rm.n, "q_T").to(torch.float64).numpy().copy()
    w_grid = _w_of(sb.numpy())
    # A uniform RK4 grid on each interval between requested times, walked from the end. Every
    # step uses three nodes (start, midpoint, end); consecutive steps share their end nodes.
    nodes, steps, ends = [], [], []
    for k in range(len(w_grid) - 1, 0, -1):
        m = int(np.ceil((w_grid[k] - w_grid[k - 1]) / step - 1e-9))
        if m:
            h = (w_grid[k - 1] - w_grid[k]) / m               # negative: w decreases
            first = sum(len(nd) for nd in nodes)
            nodes.append(w_grid[k] + h * np.arange(2 * m + 1) / 2)
            steps += [(first + 2 * i, h) for i in range(m)]
        ends.append(len(steps))                              # q after this many steps is row k-1
    out = np.empty((len(w_grid), rm.n))
    out[-1] = q
    if steps:
        sb_nodes = _sb_of(np.concatenate(nodes))
        # The right-hand side at every node, as a matrix: dq/dw = -(dsigma_bar/dw) Qbar q with
        # dsigma_bar/dw = 1 - exp(-sigma_bar). Marginals for all nodes in one batched call.
        p_nodes = rm.transition(torch.from_numpy(sb_nodes)).to(torch.float64) @ p0
        A = -(-np.expm1(-sb_nodes))[:, None, None] * reverse_rate_matrix(rm.Q, p_nodes).numpy()
    done = 0
    for row, n_steps in zip(range(len(w_grid) - 2, -1, -1), ends):
        for a, h in steps[done:n_steps]:
            k1 = A[a] @ q
            k2 = A[a + 1] @ (q + 0.5 * h * k1)
            k3 = A[a + 1] @ (q + 0.5 * h * k2)
            k4 = A[a + 2] @ (q + h * k3)
            q = q + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        done = n_steps
        out[row] = q
    if not np.isfinite(out).all():
        raise ValueError("the reverse ODE produced a non-finite value; try a smaller step")
    return torch.from_numpy(out)


def frequencies_match(states, p, n_se: float = 4.0) -> bool:
    """Do the empirical frequencies of ``states`` lie within ``n_se`` standard errors of ``p``?

    The Monte Carlo check of lessons 1 and 2: ``|freq_x - p_x| <= n_se sqrt(p_x (1 - p_x) / N)``
    for every state x, N = number of draws. A state with p_x = 0 must never be drawn.
    """
    p = np.asarray(torch.as_tensor(p, dtype=torch.float64))
    states = np.asarray(torch.as_tensor(states)).reshape(-1)
    if states.size == 0:
        raise ValueError("states is empty: there are no draws to compare with p")
    freq = np.bincount(states, minlength=len(p)) / states.size
    if len(freq) != len(p):
        raise ValueError(f"states holds ids up to {len(freq) - 1}, but p has {len(p)} states")
    se = np.sqrt(p * (1 - p) / states.size)
    return bool(np.all(np.abs(freq - p) <= n_se * se))


__all__ = ["frequencies_match", "Path", "gillespie", "reverse_kernel", "reverse_paths",
           "reverse_gillespie", "reverse_ode", "SIGMA_BAR_FLOOR"]
