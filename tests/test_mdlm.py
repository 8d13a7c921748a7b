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
