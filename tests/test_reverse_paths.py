"""The exact reverse-time tools of lesson 2: reverse_kernel, reverse_paths, reverse_ode.

Everything is held against independent computations: scipy's expm, Bayes' rule by brute-force
enumeration of the joint law of (x_0, x_s, x_t), chi-square tests of Monte Carlo histograms with
fixed seeds, and scipy's adaptive ODE solver for the reverse ODE.
"""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import ddlab
from ddlab.paths import (SIGMA_BAR_FLOOR, reverse_gillespie, reverse_kernel,
                         reverse_ode, reverse_paths)
from tests.conftest import chi2_pvalue, random_generator, reverse_by_definition

P0 = np.array([0.5, 0.3, 0.2])
CUSTOM_Q = np.array([[-2.0, 1, 0], [2, -2, 2], [0, 1, -2]])

CHAINS = {
    "uniform": (ddlab.Uniform(3), P0),
    "absorbing": (ddlab.Absorbing(4), np.r_[P0, 0.0]),
    "custom": (ddlab.RateMatrix(CUSTOM_Q), P0),
}
SCHEDULES = {"loglinear": ddlab.LogLinear(1e-3), "geometric": ddlab.Geometric(1e-4, 20.0)}


def dense_Q(rm) -> np.ndarray:
    return rm.Q.numpy()


def scipy_marginal(Q, p0, sb) -> np.ndarray:
    return expm(sb * Q) @ p0


# --------------------------------------------------------------------------- reverse_kernel
def brute_force_reverse(Q, p0, ss, st_):
    """p(x_s = y | x_t = x) by enumerating every (x_0, x_s, x_t) and conditioning by hand."""
    n = len(p0)
    P0s, Pst = expm(ss * Q), expm((st_ - ss) * Q)
    joint = np.zeros((n, n))                       # joint[y, x] = p(x_s = y, x_t = x)
    for x0, y, x in itertools.product(range(n), repeat=3):
        joint[y, x] += p0[x0] * P0s[y, x0] * Pst[x, y]
    pt = joint.sum(0)
    K = np.zeros((n, n))
    for x in range(n):
        if pt[x] > 0:
            K[:, x] = joint[:, x] / pt[x]
    return K


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 5),
       ss=st.floats(0.0, 2.0), gap=st.floats(0.0, 2.0))
def test_reverse_kernel_is_brute_force_bayes(seed, n, ss, gap):
    rng = np.random.default_rng(seed)
    Q = random_generator(n, rng, zero_frac=0.3)
    p0 = rng.dirichlet(np.ones(n))
    K = reverse_kernel(Q, p0, ss, ss + gap).numpy()
    np.testing.assert_allclose(K, brute_force_reverse(Q, p0, ss, ss + gap), atol=1e-10)


@pytest.mark.parametrize("kind", list(CHAINS))
def test_reverse_kernel_from_zero_is_the_posterior(kind):
    rm, p0 = CHAINS[kind]
    ref = brute_force_reverse(dense_Q(rm), p0, 0.0, 0.7)
    np.testing.assert_allclose(reverse_kernel(rm, p0, 0.0, 0.7).numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(ddlab.posterior(rm, p0, 0.7).numpy(), ref, atol=1e-12)


def test_reverse_kernel_columns_and_unreachable_states():
    rm, p0 = CHAINS["absorbing"]
    K = reverse_kernel(rm, p0, 0.3, 1.1).numpy()
    np.testing.assert_allclose(K.sum(0), np.ones(4), atol=1e-12)
    # MASK at the noisier level came from MASK with prob p_s(M) / p_t(M) = expm1(-.3) / expm1(-1.1)
    assert K[3, 3] == pytest.approx(np.expm1(-0.3) / np.expm1(-1.1), rel=1e-12)
    # with no noise at all MASK cannot be reached: its column is zero, the others are the identity
    K0 = reverse_kernel(rm, p0, 0.0, 0.0).numpy()
    np.testing.assert_allclose(K0, np.diag([1.0, 1.0, 1.0, 0.0]), atol=1e-15)


def test_reverse_kernel_validation():
    rm, p0 = CHAINS["uniform"]
    with pytest.raises(ValueError, match="sigma_bar_s = 0.5 must be <= sigma_bar_t = 0.2"):
        reverse_kernel(rm, p0, 0.5, 0.2)
    with pytest.raises(ValueError, match="sum to 1"):
        reverse_kernel(rm, [0.5, 0.3, 0.3], 0.1, 0.2)
    with pytest.raises(ValueError, match=">= 0"):
        reverse_kernel(rm, p0, -0.1, 0.2)


# ---------------------------------------------------------------------------- reverse_paths
@pytest.mark.parametrize("kind", list(CHAINS))
def test_reverse_paths_have_the_exact_marginals_and_pair_laws(kind):
    """At every grid time the states follow p_t, and neighbouring states follow the exact joint.

    The grid is uneven on purpose: the kernel is exact for any spacing. With 20000 paths and a
    fixed seed, every p-value is compared with 1e-3 (the test was checked to fail when the kernel
    is transposed or p_s is replaced by p_t).
    """
    rm, p0 = CHAINS[kind]
    Q = dense_Q(rm)
    sched = SCHEDULES["loglinear"]
    times = np.array([0.0, 0.05, 0.3, 0.31, 0.7, 1.0])
    g = torch.Generator().manual_seed(1)
    paths = reverse_paths(rm, sched, p0, 20_000, times, generator=g).numpy()
    assert paths.shape == (20_000, len(times))
    sb = sched.sigma_bar(times).numpy()
    for k in range(len(times)):
        assert chi2_pvalue(paths[:, k], scipy_marginal(Q, p0, sb[k])) > 1e-3
    n = rm.n
    for k in range(len(times) - 1):
        # exact pair law p(x_k = a, x_{k+1} = b) = expm(d Q)[b, a] p_k(a), flattened to n^2 cells
        pair = expm((sb[k + 1] - sb[k]) * Q).T * scipy_marginal(Q, p0, sb[k])[:, None]
        codes = paths[:, k] * n + paths[:, k + 1]
        assert chi2_pvalue(codes, pair.reshape(-1)) > 1e-3


def test_reverse_paths_end_where_the_data_is_and_are_reproducible():
    rm, p0 = CHAINS["absorbing"]
    times = np.linspace(0, 1, 11)
    a = reverse_paths(rm, SCHEDULES["loglinear"], p0, 500, times, torch.Generator().manual_seed(3))
    b = reverse_paths(rm, SCHEDULES["loglinear"], p0, 500, times, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # an absorbing path read backward never re-masks: once clean it stays at its clean token
    a = a.numpy()
    assert (a[:, 0] != 3).all()
    for k in range(len(times) - 1):
        clean_later = a[:, k + 1] != 3
        assert (a[clean_later, k] == a[clean_later, k + 1]).all()


def test_reverse_paths_without_schedule_use_sigma_bar_equal_t():
    rm, p0 = CHAINS["custom"]
    times = [0.0, 0.5, 2.0]
    paths = reverse_paths(rm, None, p0, 20_000, times, torch.Generator().manual_seed(5)).numpy()
    for k, t in enumerate(times):
        assert chi2_pvalue(paths[:, k], scipy_marginal(CUSTOM_Q, P0, t)) > 1e-3


def test_reverse_paths_validation():
    rm, p0 = CHAINS["uniform"]
    with pytest.raises(ValueError, match="non-decreasing"):
        reverse_paths(rm, SCHEDULES["loglinear"], p0, 10, [0.0, 0.5, 0.2])
    with pytest.raises(ValueError, match="num_paths"):
        reverse_paths(rm, SCHEDULES["loglinear"], p0, 0, [0.0, 1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reverse_paths(rm, SCHEDULES["loglinear"], p0, 10, [0.0, 1.5])
    with pytest.raises(ValueError, match="1-D"):
        reverse_paths(rm, SCHEDULES["loglinear"], p0, 10, [[0.0, 1.0]])


# ------------------------------------------------------------------------------ reverse_ode
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 5), zeros=st.booleans())
def test_batched_reverse_generators_match_the_definition(seed, n, zeros):
    rng = np.random.default_rng(seed)
    Q = random_generator(n, rng, zero_frac=0.3)
    p = rng.dirichlet(np.ones(n), size=3)
    if zeros:                                   # states of probability zero get zero columns
        p[:, 0] = 0.0
        p /= p.sum(1, keepdims=True)
    got = ddlab.reverse_rate_matrix(Q, p).numpy()                # p of shape (M, n): batched
    for m in range(3):
        np.testing.assert_allclose(got[m], reverse_by_definition(Q, p[m]), atol=1e-12)


@pytest.mark.parametrize("kind", list(CHAINS))
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_reverse_ode_retraces_the_forward_marginals(kind, schedule):
    rm, p0 = CHAINS[kind]
    sched = SCHEDULES[schedule]
    times = np.linspace(0, 1, 6)
    q = reverse_ode(rm, sched, p0, times).numpy()
    sb = np.maximum(sched.sigma_bar(times).numpy(), SIGMA_BAR_FLOOR)
    exact = np.stack([scipy_marginal(dense_Q(rm), p0, s) for s in sb])
    np.testing.assert_allclose(q, exact, atol=1e-8)


def test_reverse_ode_agrees_with_scipy_and_converges_at_fourth_order():
    """Against scipy's adaptive DOP853 on the same ODE, dq/d(-sigma_bar) = Qbar(p_t) q,
    started away from p_T so that the answer is not simply p_t."""
    Q = CUSTOM_Q
    q_T = np.array([0.6, 0.1, 0.3])
    lam, V = np.linalg.eig(Q)                  # p_s = V e^{s Lambda} V^-1 p0, independent of ddlab
    Vinv = np.linalg.inv(V)

    def rhs(sb, q):
        p = np.real(V @ (np.exp(lam * sb) * (Vinv @ P0)))
        return -(reverse_by_definition(Q, p) @ q)

    ref = solve_ivp(rhs, (3.0, 0.2), q_T, method="DOP853", rtol=1e-12, atol=1e-14).y[:, -1]
    errs = [np.abs(reverse_ode(Q, None, P0, [0.2, 3.0], q_T=q_T, step=h)[0].numpy() - ref).max()
            for h in (0.2, 0.1)]
    assert errs[1] < 1e-7
    assert errs[0] / errs[1] > 10          # RK4: halving the step divides the error by ~16


def test_reverse_ode_from_the_prior():
    """Started at the prior instead of p_T, the reverse ODE lands on sum_x p(x0 | x_T = x) pi(x).

    Absorbing: pi = all MASK and p(x0 | MASK) = p0, so it lands exactly on p0. Uniform: on the
    posterior average, computed here by brute-force Bayes."""
    sched = SCHEDULES["loglinear"]
    rm, p0 = CHAINS["absorbing"]
    q0 = reverse_ode(rm, sched, p0, [0.0, 1.0], q_T=[0, 0, 0, 1.0])[0].numpy()
    np.testing.assert_allclose(q0, p0, atol=1e-8)
    rm, p0 = CHAINS["custom"]
    pi = np.array([0.2, 0.2, 0.6])
    q0 = reverse_ode(rm, None, p0, [0.0, 0.8], q_T=pi)[0].numpy()
    np.testing.assert_allclose(q0, brute_force_reverse(CUSTOM_Q, p0, 0.0, 0.8) @ pi, atol=1e-8)


def test_reverse_ode_validation():
    rm, p0 = CHAINS["uniform"]
    with pytest.raises(ValueError, match="step"):
        reverse_ode(rm, None, p0, [0.0, 1.0], step=0.0)
    with pytest.raises(ValueError, match="q_T"):
        reverse_ode(rm, None, p0, [0.0, 1.0], q_T=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="non-decreasing"):
        reverse_ode(rm, None, p0, [1.0, 0.0])


# ------------------------------------------------------------------------ reverse_gillespie
def test_reverse_gillespie_unmasks_each_token_once_at_a_uniform_time():
    """Absorbing noise under LogLinear: a token is masked by t with probability (1 - eps) t, so
    read backward each path unmasks once, at a time uniform on [0, 1] (given that it was masked
    by t = 1), to a token drawn from p0. Kolmogorov-Smirnov and chi-square, fixed seed."""
    rm, p0 = CHAINS["absorbing"]
    g = torch.Generator().manual_seed(0)
    paths = [reverse_gillespie(rm, p0, SCHEDULES["loglinear"], generator=g) for _ in range(400)]
    jumps = [p for p in paths if len(p.times) > 1]
    assert all(len(p.times) == 2 and p.states[1] == 3 for p in jumps)      # clean, then MASK
    assert all(p.times[0] == 0.0 and p.t_end == 1.0 for p in paths)
    assert stats.kstest([p.times[1] for p in jumps], "uniform").pvalue > 1e-3
    assert chi2_pvalue(np.array([p.states[0] for p in paths]), np.r_[P0, 0.0]) > 1e-3


def test_reverse_gillespie_has_the_exact_marginals():
    rm, p0 = CHAINS["uniform"]
    g = torch.Generator().manual_seed(1)
    paths = [reverse_gillespie(rm, p0, None, t_start=0.6, generator=g) for _ in range(600)]
    for t in [0.0, 0.1, 0.3]:
        states = np.array([p.state_at(t) for p in paths])
        assert chi2_pvalue(states, scipy_marginal(dense_Q(rm), p0, t)) > 1e-3


def test_reverse_gillespie_validation():
    rm, p0 = CHAINS["uniform"]
    with pytest.raises(ValueError, match="must be <= t_start"):
        reverse_gillespie(rm, p0, None, t_start=0.2, t_end=0.5)
