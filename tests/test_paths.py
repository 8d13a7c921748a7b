"""Exact forward paths (Gillespie): the state at t_end has the exact marginal law (chi-square
against scipy's expm), jump times lie in [0, t_end], and states change only at jumps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import expm

import ddlab
from tests.conftest import chi2_pvalue

P_MIN = 1e-3
N_PATHS = 2000


def _end_states(rm, x0, schedule, t_end, seed):
    gen = torch.Generator().manual_seed(seed)
    return np.array([ddlab.gillespie(rm, x0, schedule, t_end, generator=gen).state_at(t_end)
                     for _ in range(N_PATHS)])


@pytest.mark.parametrize("case", ["uniform-unit", "general-unit", "absorbing-loglinear",
                                  "general-geometric"])
def test_end_state_has_exact_marginal(case, rng, make_generator):
    n = 3
    kind, clock = case.split("-")
    rm = {"uniform": ddlab.Uniform(n), "absorbing": ddlab.Absorbing(n),
          "general": ddlab.RateMatrix(make_generator(n, rng, zero_frac=0.2))}[kind]
    schedule, t_end = {"unit": (None, 0.4), "loglinear": (ddlab.LogLinear(0.05), 0.6),
                       "geometric": (ddlab.Geometric(0.2, 2.0), 0.7)}[clock]
    if schedule is None:
        total = t_end                                  # unit speed: sigma_bar(t) = t
    else:
        # the path starts at x0 at t = 0, so the noise it accrues is sigma_bar(t_end) - sigma_bar(0)
        # (nonzero at t = 0 for Geometric)
        total = float(schedule.sigma_bar(t_end)) - float(schedule.sigma_bar(0.0))
    x0 = 0
    law = expm(total * rm.Q.numpy())[:, x0]
    pval = chi2_pvalue(_end_states(rm, x0, schedule, t_end, seed=3), law)
    assert pval > P_MIN, f"{case}: chi-square p = {pval:.2e}, law {law}"


def test_path_structure():
    rm, sched = ddlab.Uniform(4), ddlab.LogLinear(1e-3)
    gen = torch.Generator().manual_seed(0)
    total_jumps = 0
    for _ in range(200):
        path = ddlab.gillespie(rm, 2, sched, t_end=0.8, generator=gen)
        times, states = path.times, path.states
        assert times[0] == 0.0 and states[0] == 2 and len(times) == len(states)
        assert ((times >= 0) & (times <= 0.8)).all()
        assert (np.diff(times) > 0).all()                 # strictly increasing jump times
        assert (np.diff(states) != 0).all()               # every recorded jump changes state
        assert ((states >= 0) & (states < 4)).all()
        # piecewise constant: constant between jumps, new value exactly at a jump
        for k in range(len(times)):
            hi = times[k + 1] if k + 1 < len(times) else 0.8
            for t in (times[k], 0.5 * (times[k] + hi)):
                assert path.state_at(t) == states[k]
        total_jumps += len(times) - 1
    # mean number of jumps = sigma_bar(0.8) * (n - 1) for uniform: 3 * 1.608 ~ 4.8 per path
    expected = 3 * float(sched.sigma_bar(0.8))
    assert abs(total_jumps / 200 - expected) < 5 * np.sqrt(expected / 200)


def test_absorbing_path_stops_at_mask():
    rm = ddlab.Absorbing(5)
    gen = torch.Generator().manual_seed(1)
    for _ in range(100):
        path = ddlab.gillespie(rm, 1, None, t_end=5.0, generator=gen)
        assert len(path.states) <= 2                      # at most one jump: 1 -> MASK
        if len(path.states) == 2:
            assert path.states[1] == 4
    path = ddlab.gillespie(rm, 4, None, t_end=5.0, generator=gen)
    assert list(path.states) == [4] and list(path.times) == [0.0]   # MASK never leaves


def test_gillespie_reproducible():
    a = ddlab.gillespie(ddlab.Uniform(3), 0, None, 2.0, generator=torch.Generator().manual_seed(9))
    b = ddlab.gillespie(ddlab.Uniform(3), 0, None, 2.0, generator=torch.Generator().manual_seed(9))
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.states, b.states)


def test_gillespie_bad_inputs():
    with pytest.raises(ValueError, match="t_end must be > 0"):
        ddlab.gillespie(ddlab.Uniform(3), 0, None, t_end=0.0)
    with pytest.raises(ValueError, match=r"t_end must lie in \[0, 1\]"):
        ddlab.gillespie(ddlab.Uniform(3), 0, ddlab.LogLinear(), t_end=1.5)
    with pytest.raises(ValueError, match="x0 holds token id 3"):
        ddlab.gillespie(ddlab.Uniform(3), 3, None, t_end=1.0)


def test_frequencies_match_accepts_true_draws_and_rejects_biased_ones():
    p = np.array([0.5, 0.3, 0.2, 0.0])
    rng = np.random.default_rng(0)
    good = rng.choice(4, size=20000, p=p)
    assert ddlab.paths.frequencies_match(good, p)
    biased = rng.choice(4, size=20000, p=[0.47, 0.33, 0.2, 0.0])   # off by ~6.7 s.e. in state 0
    assert not ddlab.paths.frequencies_match(biased, p)
    with_impossible = np.concatenate([good, [3]])                  # a p = 0 state was drawn
    assert not ddlab.paths.frequencies_match(with_impossible, p)
