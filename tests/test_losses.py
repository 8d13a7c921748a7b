"""Losses: every exact expectation against a naive loop over x0, x_t and y with scipy's expm;
the score-independent gaps SE - DSE, SE - ISE and CSM - DCSM; floors (closed forms, Bayes by
hand); DSE gradients at the true ratios by finite differences; DWDSE against scipy quadrature
and against Monte Carlo with a fixed seed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.integrate import quad
from scipy.linalg import expm

import ddlab
from ddlab import losses
from tests.conftest import random_generator


# ------------------------------------------------------------------------- references
def naive_loss(kind, S, Q, p0, sb):
    """The definitions of the losses, written as loops over states (numpy, float64)."""
    n = Q.shape[0]
    P = expm(sb * Q)                      # P[y, x0]
    pt = P @ p0
    Kf = lambda a: a * math.log(a) - a if a > 0 else 0.0      # noqa: E731
    total = 0.0
    for x in range(n):
        for y in range(n):
            if y == x:
                continue
            if kind in ("se", "csm", "ise") and pt[x] > 0:
                rho = pt[y] / pt[x]
                if kind == "se" and Q[x, y] > 0:
                    rl = rho * math.log(S[x, y]) if rho > 0 else 0.0
                    total += pt[x] * Q[x, y] * (S[x, y] - rl + Kf(rho))
                elif kind == "csm" and Q[x, y] > 0:
                    total += pt[x] * Q[x, y] * (S[x, y] - rho) ** 2
                elif kind == "ise":
                    if Q[x, y] > 0:
                        total += pt[x] * Q[x, y] * S[x, y]
                    if Q[y, x] > 0:
                        total -= pt[x] * Q[y, x] * math.log(S[y, x])
            if kind in ("dse", "dcsm") and Q[x, y] > 0:
                for x0 in range(n):
                    if P[x, x0] <= 0 or p0[x0] <= 0:
                        continue
                    r = P[y, x0] / P[x, x0]
                    if kind == "dse":
                        rl = r * math.log(S[x, y]) if r > 0 else 0.0
                        term = S[x, y] - rl + Kf(r)
                    else:
                        term = (S[x, y] - r) ** 2
                    total += p0[x0] * P[x, x0] * Q[x, y] * term
    return total


def random_p0(n, rng, mask_zero=False):
    p = rng.random(n) + 0.05
    if mask_zero:
        p[-1] = 0.0
    return p / p.sum()


CASES = [("uniform", False), ("absorbing", True), ("absorbing", False), ("dense", False),
         ("sparse", False)]


def make_rm(name, n, rng):
    if name == "uniform":
        return ddlab.Uniform(n)
    if name == "absorbing":
        return ddlab.Absorbing(n)
    if name == "dense":
        return ddlab.RateMatrix(random_generator(n, rng))
    return ddlab.RateMatrix(random_generator(n, rng, zero_frac=0.4))


# ------------------------------------------------------------------ exact expectations
@pytest.mark.parametrize("name,mask_zero", CASES)
@pytest.mark.parametrize("kind", losses.KINDS)
def test_expected_loss_matches_naive_loop(kind, name, mask_zero, rng):
    n = 4
    rm = make_rm(name, n, rng)
    p0 = random_p0(n, rng, mask_zero)
    sbs = np.array([0.05, 0.6, 2.5])
    S = np.exp(rng.normal(size=(3, n, n)))
    got = losses.expected_loss(rm, kind, torch.tensor(S), p0, torch.tensor(sbs))
    Q = rm.Q.numpy()
    want = [naive_loss(kind, S[k], Q, p0, sbs[k]) for k in range(3)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    # one sigma_bar at a time, and a log table, give the same numbers
    one = losses.expected_loss(rm, kind, torch.tensor(np.log(S[1])), p0, sbs[1], log=True)
    assert abs(one.item() - want[1]) <= 1e-10 * max(1.0, abs(want[1]))


def test_dse_expectation_matches_per_token_score_entropy(rng):
    """expected_loss("dse") = sum over (x0, x) of joint * rm.score_entropy at that pair."""
    n, sb = 5, 0.4
    for rm in (ddlab.Uniform(n), ddlab.Absorbing(n), ddlab.RateMatrix(random_generator(n, rng))):
        p0 = random_p0(n, rng, isinstance(rm, ddlab.Absorbing))
        logS = torch.tensor(rng.normal(size=(n, n)))
        P = expm(sb * rm.Q.numpy())
        x0, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        keep = (P[x, x0] > 0) & (p0[x0] > 0)
        x0, x = torch.tensor(x0[keep]), torch.tensor(x[keep])
        per = rm.score_entropy(logS[x], x, x0, sb)
        want = (torch.tensor(p0)[x0] * torch.tensor(P)[x, x0] * per).sum()
        got = losses.expected_loss(rm, "dse", logS, p0, sb, log=True)
        assert abs(got.item() - want.item()) < 1e-11


def test_score_function_and_table_agree(rng):
    n = 5
    rm = ddlab.Absorbing(n)
    p0 = random_p0(n, rng, mask_zero=True)
    sbs = torch.tensor([0.1, 1.0])
    fn = ddlab.exact_score_fn(p0, rm)
    table = losses.score_table(rm, fn, sbs)
    np.testing.assert_allclose(table.numpy(), losses.true_score_table(rm, p0, sbs).numpy(),
                               rtol=1e-12)
    for kind in losses.KINDS:
        a = losses.expected_loss(rm, kind, fn, p0, sbs)
        b = losses.loss_floor(rm, kind, p0, sbs)
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ constant differences
@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(["uniform", "absorbing", "dense"]),
       sb=st.floats(0.02, 4.0))
def test_gaps_do_not_depend_on_the_score(seed, name, sb):
    """SE - DSE, SE - ISE and CSM - DCSM at three random tables agree to 1e-10, and equal
    loss_constants (minus the floors)."""
    rng = np.random.default_rng(seed)
    n = 5
    rm = make_rm(name, n, rng)
    p0 = random_p0(n, rng, name == "absorbing")
    gaps = []
    for _ in range(3):
        logS = torch.tensor(rng.normal(scale=2.0, size=(n, n)))
        v = {k: losses.expected_loss(rm, k, logS, p0, sb, log=True).item() for k in losses.KINDS}
        gaps.append((v["se"] - v["dse"], v["se"] - v["ise"], v["csm"] - v["dcsm"]))
    gaps = np.array(gaps)
    assert np.ptp(gaps, axis=0).max() < 1e-10 * max(1.0, np.abs(gaps).max())
    c = losses.loss_constants(rm, p0, sb)
    np.testing.assert_allclose(gaps[0], [c["se-dse"], c["se-ise"], c["csm-dcsm"]],
                               rtol=1e-9, atol=1e-11)


def test_floors_by_hand(rng):
    """SE and CSM vanish at the truth; the ISE floor is -E[sum w K(rho)] computed by hand;
    the DSE floor is positive and, for absorbing noise, e^{-sigma_bar} H(p0)."""
    n, sb = 6, 0.7
    rm = ddlab.Absorbing(n)
    p0 = random_p0(n, rng, mask_zero=True)
    assert abs(losses.loss_floor(rm, "se", p0, sb).item()) < 1e-13
    assert abs(losses.loss_floor(rm, "csm", p0, sb).item()) < 1e-13
    H = -(p0[:-1] * np.log(p0[:-1])).sum()
    assert abs(losses.loss_floor(rm, "dse", p0, sb).item() - math.exp(-sb) * H) < 1e-12
    # ISE floor: only x = MASK has outgoing reverse rates (w = 1 to each clean y)
    pt = expm(sb * rm.Q.numpy()) @ p0
    rho = pt[:-1] / pt[-1]
    want = -pt[-1] * (rho * np.log(rho) - rho).sum()
    assert abs(losses.loss_floor(rm, "ise", p0, sb).item() - want) < 1e-12
    # Uniform: DSE floor positive, and the true table beats perturbed ones
    rmu = ddlab.Uniform(n)
    p0u = random_p0(n, rng)
    floor = losses.loss_floor(rmu, "dse", p0u, sb).item()
    assert floor > 0
    T = losses.true_score_table(rmu, p0u, sb)
    for _ in range(5):
        worse = T * torch.exp(0.1 * torch.tensor(rng.normal(size=(n, n))))
        assert losses.expected_loss(rmu, "dse", worse, p0u, sb).item() > floor


# ----------------------------------------------------------------------------- gradients
def test_dse_gradient_zero_at_conditional_ratio(rng):
    """Per token: d DSE / d log s = 0 at log s = log r (central differences), and nonzero away."""
    n, sb, h = 6, 0.3, 1e-5
    for rm in (ddlab.Uniform(n), ddlab.Absorbing(n), ddlab.RateMatrix(random_generator(n, rng))):
        x0 = torch.tensor([0, 2])
        x = torch.tensor([n - 1, 2])
        r = rm.conditional_ratios(x, x0, sb)
        # r_y = 0 (absorbing: a masked token never came from another clean y) has its optimum
        # at log s = -inf; keep those entries finite and check only where r > 0
        L = torch.where(r > 0, torch.log(r), torch.zeros_like(r))
        w = rm.rates_into(x).scatter(-1, x[..., None], 0.0)
        for b in range(2):
            for y in range(n):
                if y == x[b] or w[b, y] == 0 or r[b, y] == 0:
                    continue
                e = torch.zeros_like(L)
                e[b, y] = h
                fd = (rm.score_entropy(L + e, x, x0, sb) - rm.score_entropy(L - e, x, x0, sb))[b] / (2 * h)
                assert abs(fd.item()) < 1e-7
                # away from the truth the derivative is w (s - r)
                L2 = L + 0.5
                fd2 = (rm.score_entropy(L2 + e, x, x0, sb) - rm.score_entropy(L2 - e, x, x0, sb))[b] / (2 * h)
                want = w[b, y] * (math.exp(L2[b, y]) - r[b, y])
                assert abs(fd2.item() - want.item()) < 1e-6 * max(1.0, abs(want.item()))


@pytest.mark.parametrize("kind", ["dse", "se", "ise", "dcsm"])
def test_expected_gradient_zero_at_marginal_score(kind, rng):
    """The exact expected losses are stationary at the true marginal score (central differences
    along random directions), and autograd agrees with differences away from it."""
    n, sb, h = 5, 0.5, 1e-5
    rm = ddlab.Uniform(n)
    p0 = random_p0(n, rng)
    L = torch.log(losses.true_score_table(rm, p0, sb))
    for _ in range(3):
        V = torch.tensor(rng.normal(size=(n, n)))
        f = lambda M: losses.expected_loss(rm, kind, M, p0, sb, log=True).item()   # noqa: E731
        assert abs((f(L + h * V) - f(L - h * V)) / (2 * h)) < 1e-7
        L2 = (L + 0.3 * V).requires_grad_(True)
        losses.expected_loss(rm, kind, L2, p0, sb, log=True).backward()
        fd = (f(L2.detach() + h * V) - f(L2.detach() - h * V)) / (2 * h)
        assert abs((L2.grad * V).sum().item() - fd) < 1e-6 * max(1.0, abs(fd))


def test_csm_gradient_vanishes_faster_at_small_ratios():
    """In log s, d SE/d log s = s - r but d CSM/d log s = 2 s (s - r): at a 10x overestimate of
    a ratio r the score-entropy pull is 9 r and the l2 pull 180 r^2 (lesson 3)."""
    for r in (1e-1, 1e-3, 1e-5):
        L = torch.tensor(math.log(10 * r), dtype=torch.float64, requires_grad=True)
        losses.score_entropy_term(torch.exp(L), r).backward()
        g_se = L.grad.item()
        L.grad = None
        losses.csm_term(torch.exp(L), r).backward()
        g_csm = L.grad.item()
        assert abs(g_se - 9 * r) < 1e-12 and abs(g_csm - 180 * r * r) < 1e-12


# ------------------------------------------------------------------- scalar identities
@given(s=st.floats(1e-6, 1e3), r=st.floats(1e-6, 1e3))
def test_score_entropy_term_is_a_bregman_divergence(s, r):
    term = losses.score_entropy_term(s, r).item()
    assert term >= -1e-9 * max(1.0, r)
    # D_F(r, s) for F(u) = u log u, written out by hand
    F = lambda u: u * math.log(u)                       # noqa: E731
    bregman = F(r) - F(s) - (math.log(s) + 1) * (r - s)
    assert abs(term - bregman) <= 1e-9 * max(1.0, abs(bregman), r, s)
    assert abs(term - r * losses.neg_log_bregman(s, r).item()) <= 1e-9 * max(1.0, r, s)
    assert losses.score_entropy_term(r, r).item() == pytest.approx(0.0, abs=1e-9 * max(1.0, r))


def test_K_at_zero_and_one():
    assert losses.K(0.0).item() == 0.0
    assert losses.K(1.0).item() == -1.0
    assert losses.K(math.e).item() == pytest.approx(0.0, abs=1e-15)


# ---------------------------------------------------------------------------- DWDSE
def test_dwdse_floor_absorbing_closed_form(rng):
    n, eps = 7, 1e-3
    p0 = random_p0(n, rng, mask_zero=True)
    H = -(p0[:-1] * np.log(p0[:-1])).sum()
    got = losses.dwdse_floor(ddlab.Absorbing(n), ddlab.LogLinear(eps), p0, num_t=16,
                             t_min=1e-4, t_max=0.9).item()
    assert abs(got - (1 - eps) * (0.9 - 1e-4) * H) < 1e-12


def test_dwdse_floor_uniform_against_scipy_quad(rng):
    """Gauss-Legendre on the enumeration vs scipy.quad on the floor written out in numpy."""
    n = 4
    rm = ddlab.Uniform(n)
    sch = ddlab.Geometric(1e-2, 2.0)
    p0 = random_p0(n, rng)
    Q = rm.Q.numpy()

    def integrand(t):
        # floor = E_{x0, x} sum_y Q[x, y] K(r_y) - E_x sum_y Q[x, y] K(rho_y), from the definitions
        sb = float(sch.sigma_bar(t))
        P = expm(sb * Q)                                   # P[y, x0]
        pt = P @ p0
        W = Q - np.diag(np.diag(Q))                        # W[x, y] = Q[x, y], y != x
        Kf = lambda a: a * np.log(a) - a                   # noqa: E731  (all ratios > 0 here)
        r = P.T[:, None, :] / P.T[:, :, None]              # r[x0, x, y] = P[y, x0] / P[x, x0]
        cond = (p0[:, None] * P.T * (W[None] * Kf(r)).sum(-1)).sum()
        rho = pt[None, :] / pt[:, None]
        marg = (pt * (W * Kf(rho)).sum(-1)).sum()
        return float(sch.sigma(t)) * (cond - marg)

    want, _ = quad(integrand, 0.0, 1.0, epsabs=1e-10, epsrel=1e-10, limit=100)
    got = losses.dwdse_floor(rm, sch, p0, num_t=64, t_min=0.0).item()
    assert abs(got - want) < 1e-7 * want


def test_dwdse_per_sequence_by_hand(rng):
    """dwdse per sequence = sigma(t) sum_i sum_{y != x_i} Q[x_i, y] (s_y - r_y log s_y + K(r_y)),
    with the schedule written out and r_y from scipy's expm, one time per sequence, at a given x_t."""
    n, smin, smax = 5, 1e-3, 1.0
    rm, sch = ddlab.Uniform(n), ddlab.Geometric(smin, smax)
    x0 = torch.tensor([[0, 1], [2, 3]])
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)
    x = torch.tensor([[0, 4], [1, 3]])
    L = torch.tensor(rng.normal(size=(2, 2, n)))
    got = losses.dwdse(rm, lambda x_t, sb: L, x0, sch.sigma_bar(t), sch.sigma(t), x_t=x)
    assert got.shape == (2,)
    Q = rm.Q.numpy()
    for b in range(2):
        tb = t[b].item()
        sb = smin ** (1 - tb) * smax ** tb
        sig = sb * math.log(smax / smin)
        P = expm(sb * Q)
        want = 0.0
        for i in range(2):
            xi, ai = x[b, i].item(), x0[b, i].item()
            for y in range(n):
                if y == xi:
                    continue
                s, r = math.exp(L[b, i, y].item()), P[y, ai] / P[xi, ai]
                want += Q[xi, y] * (s - r * math.log(s) + r * math.log(r) - r)
        assert got[b].item() == pytest.approx(sig * want, rel=1e-12)


def test_dwdse_monte_carlo_matches_exact(rng):
    """A fixed-seed Monte Carlo estimate of int sigma(t) E[DSE] dt, at an arbitrary (wrong)
    score, lies within 4 standard errors of the exact value."""
    n = 6
    rm, sch = ddlab.Absorbing(n), ddlab.LogLinear(1e-2)
    p0 = random_p0(n, rng, mask_zero=True)
    logS = torch.tensor(rng.normal(size=(n, n)))
    fixed = lambda xt, sb: logS[xt]                              # noqa: E731  (no t dependence)
    exact = losses.expected_dwdse(rm, sch, fixed, p0, num_t=64, t_min=1e-3, log=True).item()
    g = torch.Generator().manual_seed(0)
    B = 200_000
    x0 = torch.multinomial(torch.tensor(p0), B, replacement=True, generator=g)
    t = 1e-3 + (1 - 1e-3) * torch.rand(B, generator=g, dtype=torch.float64)
    vals = losses.dwdse(rm, fixed, x0[:, None], sch.sigma_bar(t), (1 - 1e-3) * sch.sigma(t),
                        generator=g)
    mean, se = vals.mean().item(), vals.std().item() / math.sqrt(B)
    assert abs(mean - exact) < 4 * se, (mean, exact, se)


def test_dcsm_per_token_averages_to_expected(rng):
    n, sb = 5, 0.3
    rm = ddlab.Uniform(n)
    p0 = random_p0(n, rng)
    L = torch.tensor(rng.normal(size=(n, n)))
    P = torch.tensor(expm(sb * rm.Q.numpy()))
    x0, x = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    per = losses.dcsm(rm, L[x.reshape(-1)], x.reshape(-1), x0.reshape(-1), sb)
    want = (torch.tensor(p0)[x0.reshape(-1)] * P[x.reshape(-1), x0.reshape(-1)] * per).sum()
    assert abs(losses.expected_loss(rm, "dcsm", L, p0, sb, log=True).item() - want.item()) < 1e-11


# ------------------------------------------------------------------------ validation
def test_errors_name_the_problem():
    rm = ddlab.Uniform(3)
    p0 = np.ones(3) / 3
    S = torch.ones(3, 3)
    with pytest.raises(ValueError, match="kind must be one of"):
        losses.expected_loss(rm, "kl", S, p0, 0.5)
    with pytest.raises(ValueError, match=r"shape \(2, 3\), expected \(3, 3\)"):
        losses.expected_loss(rm, "se", torch.ones(2, 3), p0, 0.5)
    with pytest.raises(ValueError, match="ratios must be finite and >= 0, got -1.0"):
        losses.expected_loss(rm, "se", -S, p0, 0.5)
    with pytest.raises(ValueError, match="sigma_bar must be > 0"):
        losses.expected_loss(rm, "dse", S, p0, 0.0)
    with pytest.raises(ValueError, match="sum to 1"):
        losses.expected_loss(rm, "dse", S, [0.5, 0.5, 0.5], 0.5)
    with pytest.raises(ValueError, match="cannot be reached"):
        ddlab.Absorbing(3).conditional_ratios(torch.tensor([1]), torch.tensor([0]), 0.5)
    with pytest.raises(ValueError, match="num_t"):
        losses.dwdse_floor(rm, ddlab.LogLinear(), p0, num_t=0)
