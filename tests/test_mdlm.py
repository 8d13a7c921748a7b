"""Masked diffusion as absorbing SEDD (ddlab.mdlm, lesson 8).

The MDLM quantities are computed from their own formulas (alphas, cross-entropies) and held
against the SEDD ones from the rate-matrix code (score entropy, Tweedie steps), the exact oracle
and brute-force Bayes.
"""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import ddlab
from ddlab import mdlm as M
from ddlab import sequences as S


def random_denoiser(B, d, n, seed, dtype=torch.float64):
    """log-probabilities over the n-1 clean tokens, -inf on MASK."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, d, n - 1, generator=g, dtype=dtype) * 2
    return torch.nn.functional.pad(torch.log_softmax(logits, -1), (0, 1), value=-math.inf)


def noisy_batch(B, d, n, sb, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, n - 1, (B, d), generator=g)
    x_t = ddlab.Absorbing(n).sample_transition(x0, sb, generator=g)
    return x0, x_t


# ----------------------------------------------------------------------------- weights


def test_mdlm_weight_loglinear_is_one_over_t():
    t = torch.tensor([1e-3, 0.1, 0.5, 0.999], dtype=torch.float64)
    w = M.mdlm_weight(ddlab.LogLinear(1e-3), t)
    assert torch.allclose(w, 1 / t, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="t = 0"):
        M.mdlm_weight(ddlab.LogLinear(), 0.0)


def test_mdlm_weight_is_minus_alpha_prime_over_one_minus_alpha():
    """Finite differences of alpha(t) = exp(-sigma_bar(t)), for a schedule that is not log-linear."""
    sch = ddlab.Geometric(1e-2, 5.0)
    h = 1e-6
    for t in (0.2, 0.5, 0.9):
        alpha = lambda u: math.exp(-float(sch.sigma_bar(u)))   # noqa: E731
        d_alpha = (alpha(t + h) - alpha(t - h)) / (2 * h)
        ref = -d_alpha / (1 - alpha(t))
        assert float(M.mdlm_weight(sch, t)) == pytest.approx(ref, rel=1e-7)


# ----------------------------------------------------------------------------- the loss


@settings(max_examples=20, deadline=None)
@given(sb=st.floats(1e-3, 8.0), seed=st.integers(0, 1000), n=st.integers(2, 6))
def test_sedd_loss_with_denoiser_score_equals_mdlm_loss(sb, seed, n):
    sch = ddlab.LogLinear(1e-3)
    sb = min(sb, float(sch.sigma_bar(1.0)))
    B, d = 6, 5
    x0, x_t = noisy_batch(B, d, n, sb, seed)
    lp = random_denoiser(B, d, n, seed)
    rm = ddlab.Absorbing(n)
    t = sch.t_of(torch.tensor(sb, dtype=torch.float64))
    sedd = sch.sigma(t) * rm.score_entropy(M.log_score_from_denoiser(lp, x_t, sb), x_t, x0, sb).sum(-1)
    mdlm = M.mdlm_loss(lp, x_t, x0, M.mdlm_weight(sch, t))
    assert torch.allclose(sedd, mdlm, rtol=1e-12, atol=1e-12)
    # and the MDLM loss itself, by a loop over positions
    w = float(M.mdlm_weight(sch, t))
    for b in range(B):
        ref = sum(-lp[b, i, x0[b, i]].item() for i in range(d) if x_t[b, i] == n - 1) * w
        assert mdlm[b].item() == pytest.approx(ref, rel=1e-12, abs=1e-12)


def test_constant_without_K_and_unnormalised_scores():
    n, B, d, sb = 5, 8, 4, 0.7
    x0, x_t = noisy_batch(B, d, n, sb, 3)
    lp = random_denoiser(B, d, n, 3)
    r = 1 / math.expm1(sb)
    ls = M.log_score_from_denoiser(lp, x_t, sb)
    # score entropy without K(r), written out: sum_{y clean} s_y - r log s_{x0}, masked positions
    s = ls.exp()[..., : n - 1].sum(-1) - r * ls.gather(-1, x0[..., None])[..., 0]
    no_K = torch.where(x_t == n - 1, s, torch.zeros_like(s)).sum(-1)
    ce = M.mdlm_loss(lp, x_t, x0, 1.0)
    n_masked = (x_t == n - 1).sum(-1)
    assert torch.allclose(no_K, r * ce + n_masked * M.score_entropy_offset(sb), rtol=1e-12)
    # an unnormalised "denoiser" (total mass Z at each position) costs r (Z - 1 - log Z) more than
    # MDLM with its normalised version: SEDD's loss is never below MDLM's
    Z = 1.7
    rm = ddlab.Absorbing(n)
    se_un = rm.score_entropy(M.log_score_from_denoiser(lp + math.log(Z), x_t, sb), x_t, x0, sb)
    se_n = rm.score_entropy(ls, x_t, x0, sb)
    gap = torch.where(x_t == n - 1, torch.full_like(se_n, r * (Z - 1 - math.log(Z))), torch.zeros_like(se_n))
    assert torch.allclose(se_un - se_n, gap, rtol=1e-10, atol=1e-13)


def test_mdlm_loss_validation():
    lp = random_denoiser(1, 2, 3, 0)
    with pytest.raises(ValueError, match="differs from x0"):
        M.mdlm_loss(lp, torch.tensor([[1, 2]]), torch.tensor([[0, 0]]), 1.0)
    with pytest.raises(ValueError, match="MASK"):
        M.mdlm_loss(lp, torch.tensor([[2, 2]]), torch.tensor([[2, 0]]), 1.0)
    bad = lp.clone()
    bad[0, 0, 0] = -math.inf
    with pytest.raises(ValueError, match="infinite"):
        M.mdlm_loss(bad, torch.tensor([[2, 2]]), torch.tensor([[0, 0]]), 1.0)
    with pytest.raises(ValueError, match="> 0"):
        M.log_score_from_denoiser(lp, torch.tensor([[2, 2]]), 0.0)


# ----------------------------------------------------------------------------- the sampler


@settings(max_examples=20, deadline=None)
@given(sbt=st.floats(1e-3, 7.0), frac=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_tweedie_step_equals_mdlm_ancestral_step(sbt, frac, seed):
    n, B, d = 6, 4, 5
    sbs = sbt * frac
    x0, x_t = noisy_batch(B, d, n, sbt, seed)
    probs = random_denoiser(B, d, n, seed).exp()
    rm = ddlab.Absorbing(n)
    tw = rm.tweedie_probs(x_t, M.score_from_denoiser(probs, x_t, sbt), sbt - sbs)
    anc = M.mdlm_step_probs(probs, x_t, sbt, sbs)
    assert torch.allclose(tw, anc, rtol=0, atol=1e-12)


def test_denoiser_from_exact_score_is_bayes():
    p0, _ = S.words_toy(["cab", "bad", "dab", "abc"], mask=True)
    rm = ddlab.Absorbing(5)
    x_t = torch.tensor([[4, 0, 4], [2, 4, 1], [4, 4, 4]])
    sb = 0.9
    den = M.denoiser_fn_from_score_fn(S.exact_score_fn(p0, rm), 5)(x_t, sb)
    # Bayes by hand: p0(x0) prod_i p(x_t,i | x0_i) over all x0, then per-position marginals
    P = rm.transition(sb)
    for b in range(3):
        post = torch.zeros(5, 5, 5, dtype=torch.float64)
        for x in S.all_sequences(5, 3):
            post[tuple(x)] = p0[tuple(x)] * P[x_t[b, 0], x[0]] * P[x_t[b, 1], x[1]] * P[x_t[b, 2], x[2]]
        post /= post.sum()
        for i in range(3):
            assert torch.allclose(den[b, i], S.marginalise(post, [i]), atol=1e-14)


def test_score_denoiser_round_trip():
    n, sb = 4, 1.3
    x0, x_t = noisy_batch(3, 6, n, sb, 11)
    probs = random_denoiser(3, 6, n, 11).exp()
    back = M.denoiser_from_score(M.score_from_denoiser(probs, x_t, sb), x_t, sb)
    masked = (x_t == n - 1)[..., None]
    assert torch.allclose(torch.where(masked, back, probs), probs, atol=1e-14)
    assert torch.all(back[~(x_t == n - 1)].argmax(-1) == x_t[x_t != n - 1])


def test_mdlm_sample_matches_exact_law_of_tweedie_sampler():
    """Monte Carlo: 6000 draws of mdlm_sample against ddlab.sampling's exact law of the Tweedie
    sampler with the denoiser's score (4 steps). Tolerance: total variation < 0.03 (its
    standard deviation at this size is about 0.01)."""
    from ddlab.sampling import exact_sampler_distribution
    p0, _ = S.words_toy(["ab", "ba", "bb", "ca"], weights=[4, 3, 2, 1], mask=True)
    n, d, steps = 4, 2, 4
    rm, sch = ddlab.Absorbing(n), ddlab.LogLinear(1e-3)
    f = S.exact_score_fn(p0, rm, off_support="conditional")
    law = exact_sampler_distribution(rm, sch, f, d, steps, "tweedie")
    g = torch.Generator().manual_seed(0)
    x = M.mdlm_sample(sch, M.denoiser_fn_from_score_fn(f, n), 6000, d, n, steps, generator=g)
    assert not (x == n - 1).any()
    emp = torch.bincount(x[:, 0] * n + x[:, 1], minlength=n * n).double() / x.shape[0]
    tv = 0.5 * (emp - law.reshape(-1)).abs().sum().item()
    assert tv < 0.03, tv
    # with many steps both approach p0 itself
    law64 = exact_sampler_distribution(rm, sch, f, d, 64, "tweedie")
    assert 0.5 * (law64 - p0).abs().sum().item() < 0.02


def test_mdlm_sample_clamp():
    p0, _ = S.words_toy(["ab", "ba", "bb", "ca"], mask=True)
    f = M.denoiser_fn_from_score_fn(S.exact_score_fn(p0, ddlab.Absorbing(4), off_support="conditional"), 4)
    x = M.mdlm_sample(ddlab.LogLinear(1e-3), f, 200, 2, 4, 8,
                      clamp=(torch.tensor([False, True]), torch.tensor([0, 0])),
                      generator=torch.Generator().manual_seed(1))
    assert torch.all(x[:, 1] == 0)
    assert set(x[:, 0].tolist()) == {1, 2}          # only "ba" and "ca" end in "a"


def test_mdlm_bound_equals_sedd_bound_and_exact_nll():
    """Both bounds with the exact oracle agree with -log p0(x0) within Monte Carlo error."""
    from ddlab.likelihood import exact_nll, nll_bound
    p0, _ = S.words_toy(["cab", "bad", "dab", "abc"], weights=[1, 2, 3, 4], mask=True)
    rm, sch = ddlab.Absorbing(5), ddlab.LogLinear(1e-4)
    f = S.exact_score_fn(p0, rm, off_support="conditional")
    x0 = torch.tensor([[2, 0, 1], [1, 0, 3], [3, 0, 1], [0, 1, 2]])
    g = torch.Generator().manual_seed(0)
    mb, me = M.mdlm_nll_bound(sch, M.denoiser_fn_from_score_fn(f, 5), x0, 5, num_t=300,
                              generator=g, return_stderr=True)
    exact = exact_nll(p0, x0)
    assert torch.all((mb - exact).abs() < 4 * me + 0.01), (mb, exact, me)
    sb, se = nll_bound(f, x0, rm, sch, num_t=300, generator=g, return_stderr=True)
    assert abs((mb - sb).mean().item()) < 4 * math.sqrt(((me ** 2 + se ** 2) / 4).mean().item()) + 0.01


# ------------------------------------------------- lesson 10: the exact bound and its variance

import itertools  # noqa: E402

from scipy import integrate, special  # noqa: E402

from ddlab.schedules import Cosine, Polynomial, make_schedule  # noqa: E402

WORDS10, WEIGHTS10 = ["cab", "bad", "dab", "abc", "bca"], [4, 3, 2, 2, 1]
SB_LO = 1e-3                       # the common lower end sigma_bar(t_min) of every schedule


def words10():
    p0, _ = S.words_toy(WORDS10, weights=WEIGHTS10, mask=True)
    f = S.exact_score_fn(p0, ddlab.Absorbing(5), off_support="conditional")
    x0 = S.all_sequences(5, 3)[p0.reshape(-1) > 0]
    return p0, M.denoiser_fn_from_score_fn(f, 5), x0


def time_dependent(denoiser_fn):
    """Not time-agnostic: the exact denoiser mixed with uniform by a weight that depends on
    sigma_bar (a stand-in for a network with a time input)."""
    flat = torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0], dtype=torch.float64)

    def f(x_t, sb):
        mix = 0.4 * torch.exp(-torch.as_tensor(sb, dtype=torch.float64)).reshape(-1, 1, 1)
        return (1 - mix) * denoiser_fn(x_t, sb) + mix * flat
    return f


def moments_by_brute_force(denoiser_fn, x0, n, sb):
    """E and E[^2] of sum_masked r (-log p(x0_i | x_t)) over all n^d sequences x_t, weighted by
    prod_i P[x_t,i, x0_i] from the dense transition matrix (not by masking patterns)."""
    d = x0.shape[1]
    states = S.all_sequences(n, d)
    P = ddlab.RateMatrix(ddlab.Absorbing(n).Q).transition(torch.tensor(sb, dtype=torch.float64))
    r = 1 / math.expm1(sb)
    probs = denoiser_fn(states, torch.full((states.shape[0],), sb, dtype=torch.float64))
    out = []
    for row in x0:
        w = torch.ones(states.shape[0], dtype=torch.float64)
        for i in range(d):
            w = w * P[states[:, i], row[i]]
        ce = -torch.log(probs[torch.arange(states.shape[0])[:, None], torch.arange(d), row[None]])
        S_ = r * torch.where(states == n - 1, ce, torch.zeros_like(ce)).sum(-1)
        keep = w > 0
        out.append(((w[keep] * S_[keep]).sum(), (w[keep] * S_[keep] ** 2).sum()))
    return torch.tensor([o[0] for o in out]), torch.tensor([o[1] for o in out])


def test_masking_patterns_are_all_subsets():
    m = M.masking_patterns(3)
    assert m.shape == (8, 3) and m.dtype == torch.bool
    assert {tuple(r) for r in m.tolist()} == set(itertools.product([False, True], repeat=3))


@pytest.mark.parametrize("sb", [0.01, 0.7, 4.0])
def test_exact_integrand_moments_against_brute_force(sb):
    p0, den, x0 = words10()
    den = time_dependent(M.smoothed_denoiser_fn(den, 5, 0.2))
    m1, m2 = M.exact_integrand_moments(den, x0, 5, sb)
    b1, b2 = moments_by_brute_force(den, x0, 5, sb)
    assert torch.allclose(m1, b1, rtol=1e-11) and torch.allclose(m2, b2, rtol=1e-11)
    # a vector of noise levels gives one row per level
    v1, _ = M.exact_integrand_moments(den, x0, 5, torch.tensor([sb, 2 * sb], dtype=torch.float64))
    assert v1.shape == (2, 5) and torch.allclose(v1[0], m1, rtol=1e-13)


def schedules10():
    return [make_schedule("linear"), make_schedule("cosine"), Polynomial(2.0), Polynomial(0.5),
            make_schedule("geometric")]


@pytest.mark.parametrize("model", ["exact", "time-dependent"])
def test_exact_bound_depends_on_the_schedule_only_through_its_endpoints(model):
    """Every schedule, with t_min placed so that sigma_bar(t_min) is the same: the integral in t
    (Gauss-Legendre in log t, and scipy's adaptive quad as an independent reference) equals the
    integral in alpha to 1e-10."""
    p0, den, x0 = words10()
    if model != "exact":
        den = time_dependent(den)
    ref = M.exact_mdlm_bound(ddlab.LogLinear(1e-3), den, x0, 5,
                             t_min=float(ddlab.LogLinear(1e-3).t_of(SB_LO)))
    for sched in schedules10():
        t_min = float(sched.t_of(SB_LO))
        a = M.exact_mdlm_bound(sched, den, x0, 5, t_min=t_min)
        t = M.exact_mdlm_bound(sched, den, x0, 5, t_min=t_min, variable="t")
        assert torch.allclose(a, ref, rtol=0, atol=1e-10), (sched, a - ref)
        assert torch.allclose(t, ref, rtol=0, atol=1e-10), (sched, t - ref)
    # scipy quad on the schedule's clock, for one sequence and two schedules
    for sched in (make_schedule("cosine"), Polynomial(2.0)):
        t_min = float(sched.t_of(SB_LO))
        f = lambda t: float(sched.sigma(t)) * float(M.exact_integrand_moments(  # noqa: E731
            den, x0[:1], 5, sched.sigma_bar(t))[0][0])
        val, _ = integrate.quad(f, t_min, 1, epsabs=1e-12, epsrel=1e-12, limit=200)
        assert abs(val - ref[0].item()) < 1e-9


def test_a_time_agnostic_bound_is_a_polynomial_integral_and_tight():
    """For the exact denoiser E[S] / alpha = sum_M c_M (1 - alpha)^(|M|-1) alpha^(d-|M|): two
    Gauss-Legendre nodes are exact (d = 3), the beta-function closed form agrees, and over the
    whole range alpha in (0, 1) the bound is -log p0(x0) (every masking order gives an exact
    autoregressive factorisation)."""
    p0, den, x0 = words10()
    sched = ddlab.LogLinear(1e-3)
    many = M.exact_mdlm_bound(sched, den, x0, 5, t_min=1e-4, num_nodes=64)
    two = M.exact_mdlm_bound(sched, den, x0, 5, t_min=1e-4, num_nodes=2)
    assert torch.allclose(many, two, rtol=0, atol=1e-13)
    # closed form: c_M = sum_{i in M} -log p(x0_i | x0 outside M), by Bayes on p0
    a_lo, a_hi = 1e-3, float(sched.alpha(1e-4))
    for b, row in enumerate(x0.tolist()):
        total = 0.0
        for mask in itertools.product([0, 1], repeat=3):
            m = sum(mask)
            if m == 0:
                continue
            cond = S.condition(p0, (torch.tensor([not v for v in mask]), torch.tensor(row)))
            c = -sum(math.log(S.marginalise(cond, [i])[row[i]].item()) for i in range(3) if mask[i])
            beta = special.beta(m, 3 - m + 1)
            total += c * beta * (special.betainc(3 - m + 1, m, a_hi) - special.betainc(3 - m + 1, m, a_lo))
        assert many[b].item() == pytest.approx(total, abs=1e-12)
    tight = M.exact_mdlm_bound(ddlab.LogLinear(1e-12), den, x0, 5, t_min=0.0, num_nodes=2)
    assert torch.allclose(tight, ddlab.exact_nll(p0, x0), rtol=0, atol=1e-10)


@pytest.mark.parametrize("sched", [make_schedule("linear"), Cosine(), Polynomial(2.0),
                                   make_schedule("geometric")], ids=repr)
def test_mdlm_nll_bound_converges_to_the_exact_bound_with_the_exact_variance(sched):
    """4000 independent estimates (num_t = 4) of the time-dependent model: their mean within 4
    standard errors of exact_mdlm_bound; for the schedules whose weight stays bounded near t = 0
    (Polynomial(2), Geometric) their variance within 25% of mdlm_bound_variance (the sample
    variance of 4000 such draws spreads by about 5%). Under LogLinear and Cosine the weight is
    ~1/t: the fourth moment is huge and a sample variance of 4000 draws is not a test."""
    p0, den, x0 = words10()
    den = time_dependent(den)
    t_min = float(sched.t_of(SB_LO))
    R = 4000
    est = M.mdlm_nll_bound(sched, den, x0.repeat(R, 1), 5, num_t=4, t_min=t_min,
                           generator=torch.Generator().manual_seed(0)).reshape(R, 5)
    exact = M.exact_mdlm_bound(sched, den, x0, 5, t_min=t_min)
    var = M.mdlm_bound_variance(sched, den, x0, 5, 4, t_min=t_min)
    assert torch.all((est.mean(0) - exact).abs() < 4 * (var / R).sqrt()), (est.mean(0), exact)
    if isinstance(sched, (Polynomial, ddlab.Geometric)):
        ratio = est.var(0) / var
        assert torch.all((ratio > 0.75) & (ratio < 1.25)), ratio


def test_mdlm_bound_variance_against_scipy_quad():
    """num_t = 1: Var = (1 - t_min) int sigma^2 E[S^2] dt - L^2, with scipy's quad; and K strata
    give at most the unstratified variance / K."""
    p0, den, x0 = words10()
    sched = Polynomial(2.0)
    t_min = float(sched.t_of(SB_LO))
    one = x0[3:4]
    L = M.exact_mdlm_bound(sched, den, one, 5, t_min=t_min)[0].item()
    f = lambda t: float(sched.sigma(t)) ** 2 * float(M.exact_integrand_moments(  # noqa: E731
        den, one, 5, sched.sigma_bar(t))[1][0])
    second, _ = integrate.quad(f, t_min, 1, epsabs=1e-11, epsrel=1e-11, limit=200)
    v1 = M.mdlm_bound_variance(sched, den, one, 5, 1, t_min=t_min)[0].item()
    assert v1 == pytest.approx((1 - t_min) * second - L ** 2, rel=1e-9)
    v8 = M.mdlm_bound_variance(sched, den, one, 5, 8, t_min=t_min)[0].item()
    assert 0 < v8 <= v1 / 8


def test_exact_bound_validation():
    p0, den, x0 = words10()
    sched = ddlab.LogLinear(1e-3)
    with pytest.raises(ValueError, match="variable must be 'alpha' or 't'"):
        M.exact_mdlm_bound(sched, den, x0, 5, variable="sigma")
    with pytest.raises(ValueError, match="variable='t' needs t_min > 0"):
        M.exact_mdlm_bound(sched, den, x0, 5, t_min=0.0, variable="t")
    with pytest.raises(ValueError, match="the variance needs t_min > 0"):
        M.mdlm_bound_variance(sched, den, x0, 5, t_min=0.0)
    with pytest.raises(ValueError, match="x0 holds the MASK token"):
        M.exact_integrand_moments(den, torch.tensor([[4, 0, 1]]), 5, 0.5)
    with pytest.raises(ValueError, match="sigma_bar must be > 0"):
        M.exact_integrand_moments(den, x0, 5, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="num_t must be an integer >= 1"):
        M.mdlm_bound_variance(sched, den, x0, 5, 0)
    with pytest.raises(ValueError, match="schedule must be a noise schedule"):
        M.exact_mdlm_bound("linear", den, x0, 5)
    zero = lambda x, sb: torch.nn.functional.one_hot(torch.zeros_like(x), 5).double()  # noqa: E731
    with pytest.raises(ValueError, match="probability 0 to a true token"):
        M.exact_mdlm_bound(sched, zero, torch.tensor([[1, 0, 1]]), 5)
