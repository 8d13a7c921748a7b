"""Simulating forward paths of a CTMC exactly (lesson 1).

Under a schedule the generator is ``sigma(t) Q``. Measured on the clock of the total noise
``tau = sigma_bar(t)`` the chain is time-homogeneous with generator Q, so an exact (Gillespie)
path is drawn in tau, holding time Exp(-Q[x, x]) and the next state with probability
``Q[y, x] / -Q[x, x]``, and its jump times are mapped back to t with the schedule's inverse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._checks import as_tokens, check_time
from .exact import as_rate_matrix


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


def sample_forward(rm, x0, schedule, t, generator=None) -> torch.Tensor:
    """Vectorised draw of x_t given x_0 for token tensors at time(s) t under a schedule."""
    return rm.sample_transition(x0, schedule.sigma_bar(t), generator=generator)


__all__ = ["Path", "gillespie", "sample_forward"]
