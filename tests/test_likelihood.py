"""The likelihood bound (ddlab.likelihood) against exact NLLs, quadrature and Monte Carlo."""

import itertools

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

import ddlab
from ddlab.likelihood import LOG_FLOOR, bound_limit, exact_nll, nll_bound, prior_kl
from tests.conftest import random_joint, toy_sequence_process


joint = random_joint


toy = toy_sequence_process


# ----------------------------------------------------- an independent numpy computation
def dwdse_by_quadrature(p0, x0, Q, lo, hi):
    """int_lo^hi E_{x ~ p(.|x0)} sum_i DSE_i(x) d sigma_bar, by brute force over all sequences
    (scipy expm, explicit loops over states, positions and y) and scipy quad."""
    n, d = p0.shape[0], p0.ndim
    states = list(itertools.product(range(n), repeat=d))

    def integrand(sb):
        P = scipy.linalg.expm(sb * Q)
        pt = p0.copy()
        for axis in range(d):
            pt = np.moveaxis(np.tensordot(P, pt, axes=([1], [axis])), 0, axis)
        total = 0.0
        for x in states:
            q = np.prod([P[x[i], x0[i]] for i in range(d)])
            if q == 0:
                continue
            for i in range(d):
                for y in range(n):
                    if y == x[i] or Q[x[i], y] == 0:
                        continue
                    z = list(x)
                    z[i] = y
                    s = pt[tuple(z)] / pt[x]
                    r = P[y, x0[i]] / P[x[i], x0[i]]
                    k = r * np.log(r) - r if r > 0 else 0.0
                    total += q * Q[x[i], y] * (s - r * np.log(s) + k)
        return total

    value, _ = scipy.integrate.quad(integrand, lo, hi, limit=200, epsabs=1e-8, epsrel=1e-7)
    return value


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_bound_limit_equals_the_dwdse_integral_by_quadrature(kind):
    """The exact-score DWDSE + prior, integrated by quad from scratch, equals bound_limit: the
    path-KL identity that makes DWDSE a likelihood bound."""
    rm, sch, p0, _ = toy(kind, n=2, d=2, seed=1)
    Q = rm.Q.numpy()
    eps = 1e-3
    lo = float(sch.sigma_bar(eps))
    x0 = torch.tensor([[0, 1], [1, 1]])
    limit = bound_limit(rm, sch, p0, x0, t_min=eps)
    for b in range(2):
        if kind == "absorbing":      # prior 0: the process is continued to sigma_bar = inf
            # beyond sigma_bar = 40 the integrand is below e^-40: the tail is negligible
            value = dwdse_by_quadrature(p0.numpy(), x0[b].tolist(), Q, lo, 40.0)
        else:
            hi = float(sch.sigma_bar(1.0))
            value = dwdse_by_quadrature(p0.numpy(), x0[b].tolist(), Q, lo, hi)
            P = scipy.linalg.expm(hi * Q)
            value += sum(np.sum(P[:, a] * np.log(P[:, a] * 2)) for a in x0[b].tolist())
        assert value == pytest.approx(limit[b].item(), abs=1e-5)


def test_bound_limit_tends_to_the_exact_nll():
    """Absorbing: the gap to -log p0(x0) is O(d eps) and vanishes with eps. Uniform under
    Geometric: a gap set by sigma_min stays at eps -> 0 and shrinks with sigma_min."""
    rm, sch, p0, _ = toy("absorbing", n=3, d=2, seed=2)
    x0 = torch.tensor([[0, 1], [2, 2], [1, 0]])
    nll = exact_nll(p0, x0)
    gaps = [(bound_limit(rm, sch, p0, x0, t_min=e) - nll).abs().max().item() for e in (1e-2, 1e-4)]
    assert gaps[1] < 2e-3 and gaps[1] < gaps[0] / 10
    p = joint(3, 2, seed=2)
    rmu = ddlab.Uniform(3)
    gap_u = [(bound_limit(rmu, ddlab.Geometric(s_min, 3.0), p, x0, t_min=1e-6)
              - exact_nll(p, x0)).abs().max().item() for s_min in (1e-2, 1e-4)]
    assert gap_u[0] > 1e-2 and gap_u[1] < gap_u[0] / 10


@given(st.integers(0, 10_000), st.sampled_from([1e-1, 1e-2]))
def test_averaged_bound_is_at_least_the_entropy_with_reconstruction(seed, eps):
    """Averaged over x0 ~ p0, the eps-limit alone is the mutual information I(x0; x_eps), which
    is at most H(p0); adding the reconstruction term gives a true bound, >= H(p0)."""
    for kind in ("absorbing", "uniform"):
        rm, sch, p0, _ = toy(kind, n=2, d=2, seed=seed)
        x0 = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
        w = p0[x0[:, 0], x0[:, 1]]
        entropy = (w * exact_nll(p0, x0)).sum().item()
        plain = (w * bound_limit(rm, sch, p0, x0, t_min=eps)).sum().item()
        full = (w * bound_limit(rm, sch, p0, x0, t_min=eps, reconstruction=True)).sum().item()
        assert full >= entropy - 1e-12
        assert full >= plain
        if kind == "absorbing":                      # no prior mismatch: exactly I <= H
            assert plain <= entropy + 1e-12


# --------------------------------------------------------------- the Monte Carlo bound
@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_nll_bound_matches_its_limit_within_monte_carlo_error(kind):
    rm, sch, p0, sf = toy(kind, n=3, d=2, seed=3)
    x0 = torch.tensor([[0, 1], [2, 2], [1, 0], [2, 0]])
    g = torch.Generator().manual_seed(0)
    est, se = nll_bound(sf, x0, rm, sch, num_t=512, generator=g, return_stderr=True,
                        shared_t=True)
    limit = bound_limit(rm, sch, p0, x0)
    z = ((est - limit) / se).abs()
    assert (z < 4).all(), (est, limit, se)
    assert (se < 0.4).all()


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_reconstruction_term_matches_bayes(kind):
    """With a large eps the reconstruction term is big; nll_bound's estimate of it (Tweedie
    denoiser from the score) matches the exact one (posteriors by Bayes on the joint)."""
    rm, sch, p0, sf = toy(kind, n=3, d=2, seed=9)
    x0 = torch.tensor([[0, 2], [1, 1]])
    eps = 0.1
    g = torch.Generator().manual_seed(4)
    est, se = nll_bound(sf, x0, rm, sch, num_t=512, generator=g, t_min=eps, return_stderr=True,
                        shared_t=True, reconstruction=True)
    limit = bound_limit(rm, sch, p0, x0, t_min=eps, reconstruction=True)
    plain = bound_limit(rm, sch, p0, x0, t_min=eps)
    assert ((limit - plain) > 0.05).all()
    assert ((est - limit).abs() < 4 * se).all() and (se < 0.25).all(), (est, limit, se)


def test_absorbing_tail_beyond_t1_is_accounted_for():
    """With LogLinear(0.2) a fifth of the tokens is still clean at t = 1; the bound integrates
    on to sigma_bar = inf, so it still converges to the same limit (which ignores sigma_bar(1))."""
    rm, sch, p0, sf = toy("absorbing", n=3, d=2, seed=4, eps_sched=0.2)
    x0 = torch.tensor([[1, 2], [0, 0]])
    g = torch.Generator().manual_seed(1)
    est, se = nll_bound(sf, x0, rm, sch, num_t=512, generator=g, return_stderr=True,
                        shared_t=True)
    limit = bound_limit(rm, sch, p0, x0)
    assert ((est - limit).abs() < 4 * se).all() and (se < 0.35).all(), (est, limit, se)
    assert torch.allclose(limit, exact_nll(p0, x0), atol=1e-3)


def test_stderr_is_honest():
    """Over 30 independent runs the spread of the estimates matches the reported stderr."""
    rm, sch, p0, sf = toy("absorbing", n=3, d=2, seed=5)
    x0 = torch.tensor([[2, 1]])
    g = torch.Generator().manual_seed(2)
    runs = [nll_bound(sf, x0, rm, sch, num_t=32, generator=g, return_stderr=True, shared_t=True)
            for _ in range(30)]
    est = torch.stack([r[0][0] for r in runs])
    se = torch.stack([r[1][0] for r in runs])
    ratio = (se.mean() / est.std()).item()
    assert 0.6 < ratio < 2.0, ratio
    limit = bound_limit(rm, sch, p0, x0)[0]
    assert abs(est.mean().item() - limit.item()) < 4 * est.std().item() / np.sqrt(30)


def test_a_wrong_score_gives_a_larger_bound():
    """A score that believes p0 is uniform pays: averaged over x0 ~ p0 its bound exceeds the
    exact one and the entropy H(p0) by far more than the Monte Carlo error."""
    rm, sch, p0, sf = toy("uniform", n=3, d=2, seed=6)
    ones = lambda x, sb: torch.ones(*x.shape, 3, dtype=torch.float64)   # noqa: E731
    x0 = ddlab.sampling.all_sequences(3, 2)
    w = p0.reshape(-1)
    g = torch.Generator().manual_seed(3)
    wrong, se_w = nll_bound(ones, x0, rm, sch, num_t=512, generator=g, return_stderr=True)
    right, se_r = nll_bound(sf, x0, rm, sch, num_t=512, generator=g, return_stderr=True,
                            shared_t=True)
    entropy = (w * exact_nll(p0, x0)).sum()
    err = (((w * se_w) ** 2).sum() + ((w * se_r) ** 2).sum()).sqrt()
    assert (w * wrong).sum() - (w * right).sum() > 4 * err
    assert (w * wrong).sum() > entropy + 0.1


def test_float32_network_like_score_on_long_sequences():
    """A batched float32 score on (B, 64) sequences (no oracle): finite (B,) float64 output;
    zero ratios are clamped at LOG_FLOOR instead of giving inf or NaN."""
    n, d, B = 6, 64, 5
    rm, sch = ddlab.Absorbing(n), ddlab.LogLinear(1e-3)
    calls = []

    def net(x, sb):
        calls.append(x.shape[0])
        s = torch.full((*x.shape, n), 0.2, dtype=torch.float32) / torch.expm1(sb.float())[:, None, None]
        s[..., 0] = 0.0                                      # a ratio of exactly zero
        return s.scatter(-1, x[..., None], 1.0)

    x0 = torch.randint(0, n - 1, (B, d), generator=torch.Generator().manual_seed(4))
    est, se = nll_bound(net, x0, rm, sch, num_t=8, generator=torch.Generator().manual_seed(5),
                        return_stderr=True)
    assert est.shape == se.shape == (B,) and est.dtype == torch.float64
    assert torch.isfinite(est).all() and (est > 0).all()
    assert calls == [B] * 8                                  # one batched call per stratum
    # tokens 0 carry the floor penalty -LOG_FLOOR per occurrence (in expectation)
    zeros = (x0 == 0).sum(-1).double()
    assert zeros.max() - zeros.min() >= 5                    # the seed gives distinct counts
    assert est[zeros.argmax()] > est[zeros.argmin()]
    assert LOG_FLOOR == -50.0


def test_prior_kl_by_hand():
    n = 4
    rm = ddlab.Uniform(n)
    x0 = torch.tensor([[0, 3, 3]])
    sb = 0.3
    P = scipy.linalg.expm(sb * rm.Q.numpy())
    by_hand = sum(np.sum(P[:, a] * np.log(P[:, a] * n)) for a in (0, 3, 3))
    assert prior_kl(rm, x0, sb).item() == pytest.approx(by_hand, rel=1e-12)
    with pytest.raises(ValueError, match="all-MASK"):
        prior_kl(ddlab.Absorbing(3), x0.clamp_max(1), sb)


def test_exact_nll_and_validation():
    p0 = joint(3, 2, seed=7)
    x0 = torch.tensor([[0, 2], [1, 1]])
    assert torch.allclose(exact_nll(p0, x0), -torch.log(torch.stack([p0[0, 2], p0[1, 1]])))
    rm, sch, _, sf = toy("uniform", n=3, d=2)
    with pytest.raises(ValueError, match=r"\(B, d\)"):
        nll_bound(sf, torch.tensor([0, 1]), rm, sch)
    with pytest.raises(ValueError, match="num_t"):
        nll_bound(sf, x0, rm, sch, num_t=0)
    with pytest.raises(ValueError, match="t_min"):
        nll_bound(sf, x0, rm, sch, t_min=0.0)
    nan = lambda x, sb: torch.full((*x.shape, 3), float("nan"))     # noqa: E731
    with pytest.raises(ValueError, match=r"\(b, i, y\) = \(0, 0, 0\)"):
        nll_bound(nan, x0, rm, sch, num_t=2)
    with pytest.raises(ValueError, match="d = 2"):
        exact_nll(p0, torch.tensor([[0, 1, 2]]))
