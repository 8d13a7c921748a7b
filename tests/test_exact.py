"""Exact quantities: marginals, concrete scores, reverse generators, posteriors, Tweedie.

References: scipy.linalg.expm, Bayes' rule in explicit numpy loops, the seed talk's numbers
worked out by hand, and the reverse chain integrated backward in time with scipy's solve_ivp.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import ddlab
from tests.conftest import reverse_by_definition


def rate_matrices(rng, make_generator, n=5):
    return [ddlab.Uniform(n), ddlab.Absorbing(n), ddlab.RateMatrix(make_generator(n, rng, 0.3))]


# -------------------------------------------------------------------- marginal
def test_marginal_matches_scipy(rng, make_generator):
    for rm in rate_matrices(rng, make_generator):
        p0 = rng.dirichlet(np.ones(rm.n))
        for sb in (0.0, 1e-5, 0.3, 2.0, 25.0):
            pt = ddlab.marginal(rm, p0, sb)
            assert pt.dtype == torch.float64 and pt.shape == (rm.n,)
            np.testing.assert_allclose(pt.numpy(), expm(sb * rm.Q.numpy()) @ p0, rtol=1e-10,
                                       atol=1e-14)
        sbs = np.array([0.1, 0.7, 3.0])
        batch = ddlab.marginal(rm, p0, torch.as_tensor(sbs))
        assert batch.shape == (3, rm.n)
        for b, sb in enumerate(sbs):
            np.testing.assert_allclose(batch[b].numpy(), expm(sb * rm.Q.numpy()) @ p0, rtol=1e-10)


def test_marginal_accepts_numpy_lists_and_float32_sigma_bar():
    Q = ddlab.Uniform(3).Q.numpy()
    p0 = [0.5, 0.3, 0.2]
    ref = expm(0.5 * Q) @ np.array(p0)
    for rm in (Q, Q.tolist(), ddlab.Uniform(3)):
        for sb in (0.5, np.float64(0.5), torch.tensor(0.5, dtype=torch.float32)):
            pt = ddlab.marginal(rm, p0, sb)
            assert pt.dtype == torch.float64         # exact computations are float64
            np.testing.assert_allclose(pt.numpy(), ref, rtol=1e-7)


# --------------------------------------------------------- the seed talk's numbers
def test_talk_forward_rate_times_p():
    p = np.array([0.5, 0.3, 0.2])
    Qp = ddlab.Uniform(3).Q @ torch.as_tensor(p)
    np.testing.assert_allclose(Qp.numpy(), [-0.5, 0.1, 0.4], atol=1e-15)


def test_talk_reverse_matrix():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    Qbar = ddlab.reverse_rate_matrix(ddlab.Uniform(3).Q, p)
    expected = np.array([[-1, 5 / 3, 5 / 2], [3 / 5, -7 / 3, 3 / 2], [2 / 5, 2 / 3, -4]])
    np.testing.assert_allclose(Qbar.numpy(), expected, rtol=1e-14)
    np.testing.assert_allclose((Qbar @ p).numpy(), [0.5, -0.1, -0.4], atol=1e-14)


def test_talk_concrete_score():
    S = ddlab.concrete_score([0.5, 0.3, 0.2])
    expected = np.array([[1, 3 / 5, 2 / 5], [5 / 3, 1, 2 / 3], [5 / 2, 3 / 2, 1]])  # S[x, y]
    np.testing.assert_allclose(S.numpy(), expected, rtol=1e-14)
    np.testing.assert_allclose(ddlab.concrete_score([0.5, 0.3, 0.2], x=1).numpy(), expected[1])
    rows = ddlab.concrete_score([0.5, 0.0, 0.5], x=torch.tensor([0, 2]))   # rows at p > 0 only
    np.testing.assert_allclose(rows.numpy(), [[1, 0, 1], [1, 0, 1]])


# ------------------------------------------------------------ reverse generator
def test_reverse_rate_matrix_against_definition(rng, make_generator):
    for rm in rate_matrices(rng, make_generator, n=6):
        Q = rm.Q.numpy()
        p = rng.dirichlet(np.ones(6))
        Qbar = ddlab.reverse_rate_matrix(rm.Q, p).numpy()
        np.testing.assert_allclose(Qbar, reverse_by_definition(Q, p), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(Qbar @ p, -(Q @ p), rtol=1e-12, atol=1e-14)


def test_reverse_rate_matrix_zero_probability_columns():
    # a state of probability zero: the reverse chain never sits there (zero column) and never
    # jumps there (zero row); the rest is the definition on the support
    Q = ddlab.Uniform(3).Q
    Qbar = ddlab.reverse_rate_matrix(Q, [0.6, 0.4, 0.0]).numpy()
    np.testing.assert_array_equal(Qbar[:, 2], 0.0)
    np.testing.assert_array_equal(Qbar[2, :], 0.0)
    np.testing.assert_allclose(Qbar[:2, :2], [[-2 / 3, 1.5], [2 / 3, -1.5]], rtol=1e-14)


def _reverse_ode_check(rm, schedule, p0, T, s_checks):
    """Integrate dq/ds = sigma(T - s) Qbar(Q, p_{T-s}) q from q(0) = p_T with solve_ivp,
    recomputing the exact p_{T-s} (scipy expm) and Qbar (ddlab) at every evaluation."""
    Q = rm.Q.numpy()

    def p_at(t):
        return expm(float(schedule.sigma_bar(t)) * Q) @ p0

    def rhs(s, q):
        t = min(max(T - s, 0.0), 1.0)
        Qbar = ddlab.reverse_rate_matrix(rm.Q, torch.as_tensor(p_at(t))).numpy()
        return float(schedule.sigma(t)) * (Qbar @ q)

    sol = solve_ivp(rhs, (0.0, T), p_at(T), method="DOP853", rtol=1e-8, atol=1e-10,
                    dense_output=True)
    assert sol.success
    for s in s_checks:
        np.testing.assert_allclose(sol.sol(s), p_at(T - s), atol=1e-6, err_msg=f"s = {s}")
    return sol.y[:, -1]


@pytest.mark.parametrize("kind, schedule", [("uniform", ddlab.LogLinear(1e-2)),
                                            ("general", ddlab.Geometric(1e-3, 4.0))],
                         ids=["uniform-loglinear", "general-geometric"])
def test_reverse_chain_ode_reproduces_p0(kind, schedule, rng, make_generator):
    n = 4
    rm = ddlab.Uniform(n) if kind == "uniform" else ddlab.RateMatrix(make_generator(n, rng, 0.0))
    p0 = rng.dirichlet(np.ones(n) * 2)
    T = 0.9
    q_end = _reverse_ode_check(rm, schedule, p0, T, s_checks=[0.2, 0.5, 0.8])
    p_start = expm(float(schedule.sigma_bar(0.0)) * rm.Q.numpy()) @ p0   # Geometric: sb(0) > 0
    np.testing.assert_allclose(q_end, p_start, atol=1e-6)
    # and it really went somewhere: p_T is far from p_0
    assert np.abs(expm(float(schedule.sigma_bar(T)) * rm.Q.numpy()) @ p0 - p0).max() > 0.05


# ------------------------------------------------------------------- posterior
def _bayes_loops(Q, p0, sb):
    P = expm(sb * Q)
    n = len(p0)
    D = np.zeros((n, n))
    for x in range(n):
        evidence = sum(P[x, z] * p0[z] for z in range(n))
        for x0 in range(n):
            if evidence > 0:
                D[x0, x] = P[x, x0] * p0[x0] / evidence
    return D


def test_posterior_is_bayes(rng, make_generator):
    for rm in rate_matrices(rng, make_generator, n=5):
        p0 = rng.dirichlet(np.ones(5))
        p0[1] = 0.0                                    # a state the data never visits
        p0 /= p0.sum()
        for sb in (0.05, 0.8, 4.0):
            D = ddlab.posterior(rm, p0, sb)
            np.testing.assert_allclose(D.numpy(), _bayes_loops(rm.Q.numpy(), p0, sb),
                                       rtol=1e-10, atol=1e-14)
        Db = ddlab.posterior(rm, p0, torch.tensor([0.05, 4.0], dtype=torch.float64))
        assert Db.shape == (2, 5, 5)
        np.testing.assert_allclose(Db[1].numpy(), _bayes_loops(rm.Q.numpy(), p0, 4.0),
                                   rtol=1e-10, atol=1e-14)


def test_posterior_unreachable_columns_are_zero():
    # absorbing, no data on token 2: at small sigma_bar, x_t = 2 is unreachable
    p0 = [0.5, 0.5, 0.0, 0.0]
    D = ddlab.posterior(ddlab.Absorbing(4), p0, 0.3).numpy()
    np.testing.assert_array_equal(D[:, 2], 0.0)
    np.testing.assert_allclose(D[:, [0, 1, 3]].sum(0), 1.0, rtol=1e-14)
    np.testing.assert_allclose(D[:, 3], [0.5, 0.5, 0, 0], rtol=1e-14)   # MASK tells nothing


# -------------------------------------------------------------------- Tweedie
@pytest.mark.parametrize("sb", [0.05, 0.6, 2.0])
def test_tweedie_denoiser_with_exact_score_is_posterior(sb, rng, make_generator):
    for rm in rate_matrices(rng, make_generator, n=5):
        p0 = rng.dirichlet(np.ones(5))
        pt = expm(sb * rm.Q.numpy()) @ p0
        D = _bayes_loops(rm.Q.numpy(), p0, sb)
        for x in range(5):
            score = torch.as_tensor(pt / pt[x])            # exact s(x)_y = p_t(y) / p_t(x)
            den = ddlab.tweedie_denoiser(rm, sb, score, x).numpy()
            np.testing.assert_allclose(den, D[:, x], rtol=1e-8, atol=1e-10,
                                       err_msg=f"{rm}, x={x}")
        # batched over x, with the library's own concrete score
        xs = torch.arange(5)
        den = ddlab.tweedie_denoiser(rm, sb, ddlab.concrete_score(torch.as_tensor(pt), xs), xs)
        np.testing.assert_allclose(den.numpy(), D.T, rtol=1e-8, atol=1e-10)
