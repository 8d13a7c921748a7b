"""Lesson 11's samplers (ddlab.sampling, ddlab.mdlm): every exact law against Monte Carlo and
against an independent computation where one exists; the caching sampler; the float32 trap.

Monte Carlo checks are chi-square tests of 20000 draws at a fixed seed (p > 1e-4, as in
tests/test_sampling.py). Independent computations: the chain rule (confidence by max
probability, one token per step, is exact), ReMDM's marginal identity (one token: exact),
p0^(1/T) for one masked token, the nucleus of p0, a hand-written two-position confidence
sampler, a hand-built corrector kernel, and brute-force enumeration of Gumbel-max.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ddlab
from ddlab import mdlm
from ddlab.exact import kl_divergence
from ddlab.sampling import (EvaluationCache, entropy, exact_sampler_distribution, expected_evaluations,
                            gumbel_max_law, gumbel_max_sample, remask_probability, sample, temper)
from tests.conftest import random_joint, toy_sequence_process, with_mask

toy = toy_sequence_process


def chi2_ok(x, law, n, d):
    flat = x @ torch.tensor([n ** (d - 1 - i) for i in range(d)])
    counts = torch.bincount(flat, minlength=n ** d).double()
    expected = law.reshape(-1) * x.shape[0]
    assert counts[expected == 0].sum() == 0, "drew a sequence of probability zero"
    big = expected >= 5
    stat = (((counts - expected) ** 2)[big] / expected[big]).sum().item()
    dof = int(big.sum()) - 1
    assert dof >= 3
    return scipy.stats.chi2.sf(stat, dof)


# ------------------------------------------------------------------ exact law vs Monte Carlo
CASES = [
    ("absorbing", "mdlm", {}),
    ("absorbing", "mdlm", {"remask": ("cap", 0.1)}),
    ("absorbing", "mdlm", {"remask": ("rescale", 0.7), "cache": True}),
    ("absorbing", "tweedie", {"cache": True}),
    ("absorbing", "tweedie", {"corrector_steps": 2}),
    ("absorbing", "euler", {"temperature": 0.6, "top_p": 0.8}),
    ("absorbing", "confidence", {}),
    ("absorbing", "confidence", {"confidence": "drawn", "temperature": 1.5}),
    ("absorbing", "mdlm", {"gumbel_bits": 4}),
    ("absorbing", "confidence", {"confidence": "drawn", "gumbel_bits": 3}),
    ("uniform", "tweedie", {"corrector_steps": 1, "corrector_size": 0.5}),
    ("uniform", "euler", {"temperature": 0.5}),
    ("uniform", "tweedie", {"top_p": 0.6, "gumbel_bits": 5}),
]


@pytest.mark.parametrize("kind, method, options", CASES)
def test_exact_law_matches_monte_carlo(kind, method, options):
    rm, sch, p0, sf = toy(kind)
    steps, B = 3, 20000
    law = exact_sampler_distribution(rm, sch, sf, 2, steps, method, **options)
    assert law.sum().item() == pytest.approx(1.0, abs=1e-12)
    x = sample(rm, sch, sf, B, 2, steps, method, generator=torch.Generator().manual_seed(2),
               **options)
    assert chi2_ok(x, law, rm.n, 2) > 1e-4


def test_clamp_and_no_denoise_with_new_methods():
    rm, sch, p0, sf = toy("absorbing", n=3, d=3, seed=3)
    clamp = (torch.tensor([False, True, False]), torch.tensor([0, 2, 0]))
    for method, options in (("confidence", {"confidence": "drawn"}), ("mdlm", {"remask": ("cap", 0.2)}),
                            ("tweedie", {"corrector_steps": 1, "cache": True})):
        law = exact_sampler_distribution(rm, sch, sf, 3, 3, method, clamp=clamp, **options)
        assert law[:, 2, :].sum().item() == pytest.approx(1.0, abs=1e-12)
        x = sample(rm, sch, sf, 20000, 3, 3, method, clamp=clamp,
                   generator=torch.Generator().manual_seed(4), **options)
        assert (x[:, 1] == 2).all()
        assert chi2_ok(x, law, rm.n, 3) > 1e-4
    law = exact_sampler_distribution(rm, sch, sf, 3, 2, "mdlm", denoise=False, t_min=0.3)
    x = sample(rm, sch, sf, 20000, 3, 2, "mdlm", denoise=False, t_min=0.3,
               generator=torch.Generator().manual_seed(5))
    assert (x == rm.mask).any() and chi2_ok(x, law, rm.n, 3) > 1e-4


# ------------------------------------------------------------------ the caching sampler
@pytest.mark.parametrize("method, options", [("tweedie", {}), ("euler", {}), ("mdlm", {}),
                                             ("mdlm", {"remask": ("cap", 0.05)}),
                                             ("confidence", {"confidence": "drawn"}),
                                             ("tweedie", {"corrector_steps": 1})])
def test_cache_leaves_the_law_of_a_time_agnostic_denoiser_unchanged(method, options):
    """The exact denoiser of absorbing noise does not depend on t: caching is exact (1e-12)."""
    rm, sch, p0, sf = toy("absorbing", n=3, d=3, seed=1)
    for steps in (2, 7):
        plain = exact_sampler_distribution(rm, sch, sf, 3, steps, method, **options)
        cached = exact_sampler_distribution(rm, sch, sf, 3, steps, method, cache=True, **options)
        assert (plain - cached).abs().max().item() < 1e-12


def time_dependent_denoiser(sf, n):
    """The exact denoiser blended towards uniform by a weight that grows with sigma_bar."""
    exact = mdlm.denoiser_fn_from_score_fn(sf, n)
    flat = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
    flat[-1] = 0.0

    def denoiser(x, sb):
        w = (sb / (1 + sb)).to(torch.float64)[:, None, None]
        return (1 - w) * exact(x, sb) + w * flat
    return denoiser


def test_cache_changes_the_law_of_a_time_dependent_denoiser_and_mdlm_sample_follows_it():
    rm, sch, p0, sf = toy("absorbing", n=3, d=2, seed=2)
    den = time_dependent_denoiser(sf, rm.n)

    def score_fn(x, sb):
        return mdlm.score_from_denoiser(den(x, sb), x, sb)

    steps = 6
    plain = exact_sampler_distribution(rm, sch, score_fn, 2, steps, "mdlm")
    cached = exact_sampler_distribution(rm, sch, score_fn, 2, steps, "mdlm", cache=True)
    assert (plain - cached).abs().max().item() > 1e-3
    for cache, law in ((False, plain), (True, cached)):
        x = mdlm.mdlm_sample(sch, den, 20000, 2, rm.n, steps, cache=cache,
                             generator=torch.Generator().manual_seed(6))
        assert chi2_ok(x, law, rm.n, 2) > 1e-4
    # ... and the score-based samplers agree with MDLM's step under the cache
    tw = exact_sampler_distribution(rm, sch, score_fn, 2, steps, "tweedie", cache=True)
    assert (tw - cached).abs().max().item() < 1e-12


def test_cached_evaluations_count_and_their_expectation():
    """The cached sampler evaluates each sequence at most min(steps, d) + 1 times; its mean
    count matches expected_evaluations (4000 sequences, within 4 standard errors)."""
    rm, sch, p0, sf = toy("absorbing", n=3, d=3, seed=1)
    den = mdlm.denoiser_fn_from_score_fn(sf, rm.n)
    B, steps = 4000, 16
    x, stats = mdlm.mdlm_sample(sch, den, B, 3, rm.n, steps, cache=False, return_stats=True)
    assert stats == {"network_calls": steps + 1, "evaluations": B * (steps + 1), "steps": steps + 1}
    per_row = []

    def counting(x, sb):
        per_row.append(x.shape[0])
        return den(x, sb)

    # one sequence per call, so that each sequence's count is observed
    counts = []
    for seed in range(400):
        _, st1 = mdlm.mdlm_sample(sch, den, 1, 3, rm.n, steps, cache=True, return_stats=True,
                                  generator=torch.Generator().manual_seed(seed))
        counts.append(st1["evaluations"])
        assert 1 <= st1["evaluations"] <= min(steps, 3) + 1
    counts = torch.tensor(counts, dtype=torch.float64)
    want = expected_evaluations(sch, 3, steps)
    assert abs(counts.mean().item() - want) < 4 * counts.std().item() / math.sqrt(len(counts))
    _, stb = mdlm.mdlm_sample(sch, den, B, 3, rm.n, steps, cache=True, return_stats=True,
                              generator=torch.Generator().manual_seed(0))
    assert abs(stb["evaluations"] / B - want) < 0.1 and stb["network_calls"] <= steps + 1
    # the same count through sampling.sample with the denoiser's score
    _, sts = sample(rm, sch, sf, B, 3, steps, "mdlm", cache=True, return_stats=True,
                    generator=torch.Generator().manual_seed(0))
    assert abs(sts["evaluations"] / B - want) < 0.1
    # expectation by hand for one step: transition 0, then transition 1 iff something revealed
    a = torch.exp(-ddlab.sampling.time_grid(sch, 1)[1])
    q = (a[1] - a[0]) / (1 - a[0])
    assert expected_evaluations(sch, 3, 1) == pytest.approx(1 + 1 - (1 - q.item()) ** 3, abs=1e-14)
    assert expected_evaluations(sch, 128, 4096) < 129


def test_evaluation_cache_reevaluates_only_changed_rows():
    seen = []

    def fn(x, sb):
        seen.append(x.clone())
        return x.double() * 10 + sb[:, None]

    c = EvaluationCache(fn)
    x = torch.tensor([[0, 1], [2, 3]])
    out, used = c(x, torch.tensor([1.0, 1.0]))
    x2 = torch.tensor([[0, 1], [2, 4]])
    out2, used2 = c(x2, torch.tensor([0.5, 0.5]))
    assert torch.equal(seen[1], torch.tensor([[2, 4]]))
    assert out2[0].tolist() == [1.0, 11.0] and used2.tolist() == [1.0, 0.5]
    assert c.stats() == {"network_calls": 2, "evaluations": 3}
    off = EvaluationCache(fn, enabled=False)
    off(x, torch.ones(2))
    off(x, torch.ones(2))
    assert off.stats() == {"network_calls": 2, "evaluations": 4}


# ------------------------------------------------------------------ confidence-ordered unmasking
def test_confidence_by_max_probability_one_token_per_step_is_exact():
    """Chain rule with an adaptive order: revealing one token per step from the exact
    conditionals, in any order that depends only on what is visible, samples p0 exactly."""
    rm, sch, p0, sf = toy("absorbing", n=3, d=3, seed=5)
    for steps in (3, 9):
        law = exact_sampler_distribution(rm, sch, sf, 3, steps, "confidence")
        assert (law - p0).abs().max().item() < 1e-12
    fewer = exact_sampler_distribution(rm, sch, sf, 3, 1, "confidence")   # all at once
    assert kl_divergence(p0, fewer) > 1e-3


def hand_drawn_confidence(p0):
    """confidence="drawn" with two positions and two steps, written from the definition: both
    positions draw from their marginals, the one whose draw is more probable is kept (position 0
    on a tie), the other is then drawn from its exact conditional."""
    p = p0[:-1, :-1].numpy()
    p1, p2 = p.sum(1), p.sum(0)
    law = np.zeros_like(p)
    for a, b in itertools.product(range(p.shape[0]), repeat=2):
        w = p1[a] * p2[b]
        if p1[a] >= p2[b]:
            law[a] += w * p[a] / p[a].sum()
        else:
            law[:, b] += w * p[:, b] / p[:, b].sum()
    return law


def test_confidence_by_drawn_probability_against_a_hand_written_sampler():
    rm, sch, p0, sf = toy("absorbing", n=3, d=2, seed=3)
    law = exact_sampler_distribution(rm, sch, sf, 2, 2, "confidence", confidence="drawn")
    np.testing.assert_allclose(law[:-1, :-1].numpy(), hand_drawn_confidence(p0), atol=1e-12)
    assert kl_divergence(p0, law) > 0.01                        # not the data distribution
    assert entropy(law) < entropy(p0)                           # it favours the modes


# ------------------------------------------------------------------ ReMDM and predictor-corrector
@pytest.mark.parametrize("remask", [("cap", 0.05), ("cap", 1.0), ("rescale", 0.3), ("rescale", 1.0)])
def test_remdm_one_token_is_exact_and_keeps_the_masked_fraction(remask):
    """ReMDM keeps P(masked at s) = 1 - alpha_s: one token with the exact denoiser samples p0.
    (LogLinear(1e-9): the all-MASK start is then the forward marginal at t = 1 to 1e-9.)"""
    p0 = with_mask(random_joint(4, 1, seed=1))
    rm, sch = ddlab.Absorbing(5), ddlab.LogLinear(1e-9)
    sf = ddlab.exact_score_fn(p0, rm)
    for steps in (1, 5):
        law = exact_sampler_distribution(rm, sch, sf, 1, steps, "mdlm", remask=remask)
        assert (law - p0).abs().max().item() < 1e-12
        before = exact_sampler_distribution(rm, sch, sf, 1, steps, "mdlm", remask=remask,
                                            denoise=False)
        alpha = math.exp(-sch.sigma_bar(1e-5).item())
        assert before[-1].item() == pytest.approx(1 - alpha, abs=1e-8)


def test_remask_probability_and_its_bound():
    sbt, sbs = torch.tensor([2.0, 0.1]), torch.tensor([1.0, 0.05])
    bound = torch.clamp((1 - torch.exp(-sbs)) / torch.exp(-sbt), max=1.0).double()
    assert torch.allclose(remask_probability("rescale", 1.0, sbt, sbs), bound)
    assert torch.allclose(remask_probability("cap", 0.02, sbt, sbs), torch.clamp(bound, max=0.02))
    x = torch.tensor([[3, 0]])
    probs = torch.tensor([[[0.5, 0.3, 0.2, 0.0], [1.0, 0, 0, 0]]], dtype=torch.float64)
    step = mdlm.mdlm_step_probs(probs, x, 2.0, 1.0, remask=bound[0].item())
    assert step[0, 1, 3].item() == pytest.approx(bound[0].item())        # clean token re-masked
    a_t, a_s = math.exp(-2.0), math.exp(-1.0)
    # the masked fraction after the step is 1 - alpha_s for a token masked w.p. 1 - alpha_t
    masked = (1 - a_t) * step[0, 0, 3].item() + a_t * bound[0].item()
    assert masked == pytest.approx(1 - a_s, abs=1e-14)
    with pytest.raises(ValueError, match="remask must lie"):
        mdlm.mdlm_step_probs(probs, x, 2.0, 1.0, remask=1.5 * bound[0].item())
    with pytest.raises(ValueError, match="kind"):
        remask_probability("loop", 0.1, 1.0, 0.5)


def test_corrector_step_by_hand_and_one_token_stays_exact():
    """One uniform token: Tweedie steps are exact and the corrector Q + Qbar has p_t as its
    stationary law, so while its tau-leaping step needs no clipping predictor-corrector still
    gives p0 (it even removes the start mismatch); the corrector kernel is checked against
    I + dsigma (Q + Qbar) built densely."""
    n = 4
    p0 = random_joint(n, 1, seed=2)
    rm, sch = ddlab.Uniform(n), ddlab.Geometric(1e-3, 3.0)
    sf = ddlab.exact_score_fn(p0, rm)
    law = exact_sampler_distribution(rm, sch, sf, 1, 32, "tweedie", corrector_steps=2,
                                     corrector_size=0.5)
    assert torch.allclose(law, p0, atol=1e-10)
    clipped = exact_sampler_distribution(rm, sch, sf, 1, 8, "tweedie", corrector_steps=2)
    assert (clipped - p0).abs().max().item() > 1e-4          # a step too long for the rates
    # by hand: three Tweedie steps without denoising, a corrector step after the first two
    sch = ddlab.Geometric(1e-3, 1.0)
    sf = ddlab.exact_score_fn(p0, rm)
    law3 = exact_sampler_distribution(rm, sch, sf, 1, 3, "tweedie", corrector_steps=1,
                                      corrector_size=0.05, denoise=False).numpy()
    t, sb = ddlab.sampling.time_grid(sch, 3)
    sb = sb.tolist()
    Q = rm.Q.numpy()
    import scipy.linalg

    def bayes_step(law, hi, lo):                  # the exact reverse transition of one token
        pt, ps = [ddlab.marginal(rm, p0, s).numpy() for s in (hi, lo)]
        P = scipy.linalg.expm((hi - lo) * Q)       # P[y, x] = p(x_hi = y | x_lo = x)
        return (ps[None, :] * P.T / pt[:, None]).T @ law

    a = np.full(n, 1.0 / n)
    for k in range(3):
        a = bayes_step(a, sb[k], sb[k + 1])
        if k < 2:
            pt = ddlab.marginal(rm, p0, sb[k + 1])
            Qbar = ddlab.reverse_rate_matrix(rm.Q, pt).numpy()
            C = np.eye(n) + 0.05 * (sb[k] - sb[k + 1]) * (Q + Qbar)
            assert (C >= 0).all()
            a = C @ a
    np.testing.assert_allclose(law3, a, atol=1e-12)


def test_corrector_helps_a_factorised_sampler_on_a_sequence():
    """Two uniform tokens: a corrector step after each predictor step lowers the KL of Euler."""
    rm, sch, p0, sf = toy("uniform", n=3, d=2, seed=7)
    plain = kl_divergence(p0, exact_sampler_distribution(rm, sch, sf, 2, 8, "euler"))
    pc = kl_divergence(p0, exact_sampler_distribution(rm, sch, sf, 2, 8, "euler", corrector_steps=1))
    assert pc < plain


# ------------------------------------------------------------------ temperature and nucleus
@pytest.mark.parametrize("method", ["euler", "tweedie", "mdlm", "confidence"])
@pytest.mark.parametrize("T", [0.5, 1.0, 2.5])
def test_temperature_on_one_masked_token_is_p0_to_the_one_over_T(method, T):
    p0 = with_mask(random_joint(4, 1, seed=3))
    rm, sch = ddlab.Absorbing(5), ddlab.LogLinear(1e-3)
    law = exact_sampler_distribution(rm, sch, ddlab.exact_score_fn(p0, rm), 1, 3, method,
                                     temperature=T)
    want = p0 ** (1 / T)
    assert torch.allclose(law, want / want.sum(), atol=1e-12)


def test_top_p_on_one_masked_token_is_the_nucleus_of_p0():
    p0 = with_mask(random_joint(5, 1, seed=4))
    rm, sch = ddlab.Absorbing(6), ddlab.LogLinear(1e-3)
    sf = ddlab.exact_score_fn(p0, rm)
    for top_p in (0.3, 0.6, 0.95):
        law = exact_sampler_distribution(rm, sch, sf, 1, 2, "mdlm", top_p=top_p).numpy()
        p = p0.numpy()
        order = np.argsort(-p, kind="stable")
        keep = np.zeros_like(p, dtype=bool)
        mass = 0.0
        for j in order:                                    # add tokens until top_p is reached
            if mass >= top_p:
                break
            keep[j], mass = True, mass + p[j]
        want = np.where(keep, p, 0) / p[keep].sum()
        np.testing.assert_allclose(law, want, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.floats(0.1, 4.0), st.floats(0.05, 1.0), st.integers(0, 10 ** 6))
def test_temper_keeps_the_stay_probability_and_normalisation(n, T, top_p, seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(3, n, generator=g, dtype=torch.float64)
    probs = probs / probs.sum(-1, keepdim=True)
    x = torch.randint(n, (3,), generator=g)
    out = temper(probs, x, T, top_p)
    assert torch.allclose(out.sum(-1), torch.ones(3, dtype=torch.float64))
    assert torch.equal(out.gather(-1, x[:, None]), probs.gather(-1, x[:, None]))
    assert (out >= 0).all()
    if T == 1.0 and top_p == 1.0:
        assert torch.allclose(out, probs)
    onehot = torch.nn.functional.one_hot(x, n).double()
    assert torch.equal(temper(onehot, x, T, top_p), onehot)        # cannot move: unchanged


def test_temperature_lowers_entropy_of_the_sampler_law():
    rm, sch, p0, sf = toy("absorbing", n=3, d=3, seed=1)
    H = [entropy(exact_sampler_distribution(rm, sch, sf, 3, 8, "mdlm", temperature=T)).item()
         for T in (0.5, 0.8, 1.0, 1.25)]
    assert H[0] < H[1] < H[2] < H[3]


# ------------------------------------------------------------------ Gumbel-max and the float32 trap
def brute_force_gumbel_law(p, bits):
    """Every joint value of the n uniforms enumerated; argmax with ties to the lower index."""
    M = 2 ** bits
    n = len(p)
    g = np.full(M, -np.inf)
    g[1:] = -np.log(-np.log(np.arange(1, M) / M))
    law = np.zeros(n)
    with np.errstate(divide="ignore"):
        logp = np.log(p)
    for ks in itertools.product(range(M), repeat=n):
        score = np.where(p > 0, logp + g[list(ks)], -np.inf)
        i = int(np.argmax(score)) if np.isfinite(score.max()) else int(np.argmax(p > 0))
        law[i] += M ** -n
    return law


@pytest.mark.parametrize("p", [[0.6, 0.3, 0.1], [0.25, 0.25, 0.5], [0.98, 0.01, 0.01],
                               [0.0, 0.7, 0.3], [1.0, 0.0, 0.0]])
def test_gumbel_law_against_brute_force(p):
    p = np.array(p)
    law = gumbel_max_law(torch.tensor(p), bits=4).numpy()
    np.testing.assert_allclose(law, brute_force_gumbel_law(p, 4), atol=1e-13)
    assert law.sum() == pytest.approx(1.0, abs=1e-13)


def test_gumbel_sample_matches_its_law_and_float64_bits_match_p():
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.04, 0.01], dtype=torch.float64)
    law = gumbel_max_law(p, bits=3)
    x = gumbel_max_sample(p.expand(20000, 6), 3, torch.Generator().manual_seed(0))
    counts = torch.bincount(x, minlength=6).double()
    stat = ((counts - 20000 * law) ** 2 / (20000 * law)).sum().item()
    assert scipy.stats.chi2.sf(stat, 5) > 1e-4
    assert kl_divergence(p, law) > 0.01                         # 3 bits: visibly not p
    x53 = gumbel_max_sample(p.expand(20000, 6), 53, torch.Generator().manual_seed(1))
    counts = torch.bincount(x53, minlength=6).double()
    stat = ((counts - 20000 * p) ** 2 / (20000 * p)).sum().item()
    assert scipy.stats.chi2.sf(stat, 5) > 1e-4


def test_float32_uniforms_lie_on_the_24_bit_grid():
    """What makes gumbel_bits=24 the float32 case: torch.rand in float32 is k 2^-24 < 1, so the
    float32 Gumbel -log(-log u) is at most -log(-log(1 - 2^-24)) = 16.64."""
    u = torch.rand(2 ** 20, generator=torch.Generator().manual_seed(0)).double() * 2 ** 24
    assert torch.equal(u, u.round()) and u.max().item() < 2 ** 24
    top = -torch.log(-torch.log(torch.tensor(1 - 2 ** -24, dtype=torch.float32)))
    assert top.item() == pytest.approx(16.6355, abs=1e-3)
    u64 = torch.rand(2 ** 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert not torch.equal(u64 * 2 ** 24, (u64 * 2 ** 24).round())   # float64: a finer grid


def inverse_cdf_law(p, bits, dtype):
    """The exact law of an inverse-CDF draw u = k / 2^bits, index = #{cdf <= u * total}, with
    the cumulative sum in ``dtype`` (float64: ddlab's draw; float32: what ddlab avoids)."""
    cdf = torch.as_tensor(p, dtype=dtype).cumsum(-1).double()
    M = 2.0 ** bits
    # k counts with k / M * total < cdf_y, i.e. the draw lands at or before y
    below = torch.ceil(cdf / cdf[-1] * M).clamp(0, M)
    return torch.diff(below, prepend=torch.zeros(1, dtype=torch.float64)) / M


def tail_distribution():
    """A head of mass 1 - T and 2^12 tail tokens of 2^-26 each (T = 2^-14), on both sides."""
    tail = 2 ** 12
    p = torch.full((tail + 1,), 2.0 ** -26, dtype=torch.float64)
    p[tail // 2] = 1 - tail * 2.0 ** -26
    is_tail = torch.ones(tail + 1, dtype=torch.bool)
    is_tail[tail // 2] = False
    return p, is_tail


def tail_mass_is_right(law, p, is_tail, rtol=0.01):
    """The check every draw of the library must pass: the tail's total mass within 1%."""
    want = p[is_tail].sum().item()
    return abs(law[is_tail].sum().item() - want) <= rtol * want


def test_library_draws_sample_a_tail_of_tiny_probabilities_and_float32_draws_do_not():
    """ddlab's draw is an inverse CDF in float64 (a 53-bit uniform): its exact law gives the tail
    its mass, and every tail token its probability. A float32 Gumbel-max draw (24-bit uniforms)
    gives the tail 7.5% of its mass (each tail token is 2^-26 / (1 - 2^-14) times as likely as the
    head, beyond what a float32 Gumbel, at most 16.64, can make up). A float32 inverse CDF keeps
    the total (torch accumulates the sum in double) but lumps the tokens after the head into
    steps of 2^-24: three in four get probability 0."""
    p, is_tail = tail_distribution()
    assert tail_mass_is_right(inverse_cdf_law(p, 53, torch.float64), p, is_tail)
    g32 = gumbel_max_law(p, bits=24)
    assert not tail_mass_is_right(g32, p, is_tail)
    assert g32[is_tail].sum().item() / p[is_tail].sum().item() == pytest.approx(
        1 / (0.25 * (math.exp(4) - 1)), rel=0.02)          # phi(a) = 1 / (a (e^(1/a) - 1)), a = 1/4
    assert tail_mass_is_right(gumbel_max_law(p, bits=None), p, is_tail)
    law64, law32 = inverse_cdf_law(p, 53, torch.float64), inverse_cdf_law(p, 24, torch.float32)
    assert torch.equal(law64, p)                                    # exactly, token by token
    after = torch.arange(len(p)) > len(p) // 2
    assert (law32[after] == 0).double().mean().item() == pytest.approx(0.75, abs=0.01)


def test_every_sampler_draws_by_float64_inverse_cdf(monkeypatch):
    """Whatever the score's dtype (a float32 network), every draw of every sampler goes through
    sample_categorical on float64 probabilities, never through a Gumbel-max, unless asked."""
    seen = []
    real = ddlab.sampling.sample_categorical

    def spy(probs, generator=None):
        seen.append(probs.dtype)
        return real(probs, generator)

    def no_gumbel(*a, **k):
        raise AssertionError("a default sampler drew by Gumbel-max")

    monkeypatch.setattr(ddlab.sampling, "sample_categorical", spy)
    monkeypatch.setattr(ddlab.sampling, "gumbel_max_sample", no_gumbel)
    for kind in ("absorbing", "uniform"):
        rm, sch, p0, sf = toy(kind)
        sf32 = lambda x, sb, sf=sf: sf(x, sb).float()          # noqa: E731
        methods = ddlab.sampling.ALL_METHODS if kind == "absorbing" else ddlab.sampling.METHODS
        for method in methods:
            extra = {"corrector_steps": 1} if method in ("euler", "tweedie", "mdlm") else {}
            sample(rm, sch, sf32, 8, 2, 3, method, generator=torch.Generator().manual_seed(0),
                   **extra)
    assert seen and all(dt == torch.float64 for dt in seen)


def test_low_precision_gumbel_lowers_the_entropy_of_a_sampler_and_more_steps_make_it_worse():
    """The trap on a toy, exactly: MDLM with 6-bit Gumbel draws loses entropy, more with more
    steps, while the float64 sampler converges to p0."""
    rm, sch, p0, sf = toy("absorbing", n=3, d=2, seed=1)
    H0 = entropy(p0).item()
    H = {k: entropy(exact_sampler_distribution(rm, sch, sf, 2, k, "mdlm", gumbel_bits=6)).item()
         for k in (4, 32)}
    exact = exact_sampler_distribution(rm, sch, sf, 2, 32, "mdlm")
    assert H[32] < H[4] < H0 + 0.05
    assert H0 - H[32] > 0.1 and kl_divergence(p0, exact) < 1e-3


# ------------------------------------------------------------------ refusals
def test_refusals_name_the_bad_option():
    rm, sch, p0, sf = toy("absorbing")
    ru, schu, p0u, sfu = toy("uniform")
    for kwargs, match in (({"temperature": 0}, "temperature"), ({"top_p": 1.5}, "top_p"),
                          ({"corrector_steps": -1}, "corrector_steps"),
                          ({"remask": ("cap", 0.1)}, "method='mdlm'"),
                          ({"confidence": "drawn"}, "method='confidence'"),
                          ({"gumbel_bits": 60}, "gumbel_bits"), ({"cache": 1}, "cache")):
        with pytest.raises(ValueError, match=match):
            sample(rm, sch, sf, 2, 2, 2, "tweedie", **kwargs)
    with pytest.raises(ValueError, match="absorbing"):
        sample(ru, schu, sfu, 2, 2, 2, "mdlm")
    with pytest.raises(ValueError, match="absorbing"):
        exact_sampler_distribution(ru, schu, sfu, 2, 2, "tweedie", cache=True)
    with pytest.raises(ValueError, match="none of"):
        sample(rm, sch, sf, 2, 2, 2, "exact", temperature=0.5)
    with pytest.raises(ValueError, match="corrector"):
        sample(rm, sch, sf, 2, 2, 2, "confidence", corrector_steps=1)
    with pytest.raises(ValueError, match="remask must be a pair"):
        sample(rm, sch, sf, 2, 2, 2, "mdlm", remask=0.1)
    with pytest.raises(ValueError, match="at most"):
        gumbel_max_law(torch.tensor([0.5, 0.5]), bits=30)
    with pytest.raises(ValueError, match="sums to 0"):
        gumbel_max_sample(torch.zeros(2, 3))
