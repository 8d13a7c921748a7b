"""Exact functions refuse instead of returning garbage; valid input is accepted; every refusal
names the argument (the bad-input campaign of the exact core, one test per case).

The reference for every accepted answer is an independent computation: ``ddlab.posterior``
(Bayes on scipy-free float64 marginals) for Tweedie, scipy's ``expm`` for the inverse transition.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import expm

import ddlab
from tests.conftest import random_generator

P0 = torch.softmax(torch.arange(27, dtype=torch.float64) / 5, 0)


def dense_random(n=6, seed=0):
    return ddlab.RateMatrix(random_generator(n, np.random.default_rng(seed)))


def chains():
    p28 = torch.cat([torch.softmax(torch.arange(27, dtype=torch.float64) / 5, 0),
                     torch.zeros(1, dtype=torch.float64)])
    rng = np.random.default_rng(1)
    pd = torch.tensor(rng.dirichlet(np.ones(6)))
    return {"uniform27": (ddlab.Uniform(27), P0), "absorbing28": (ddlab.Absorbing(28), p28),
            "dense6": (dense_random(), pd)}


@pytest.mark.parametrize("name", list(chains()))
@settings(max_examples=25)
@given(log10_sb=st.floats(-8, math.log10(50)))
def test_tweedie_denoiser_matches_posterior_or_raises(name, log10_sb):
    rm, p0 = chains()[name]
    sb = 10.0 ** log10_sb
    pt = ddlab.marginal(rm, p0, sb)
    for x in (0, rm.n - 1):
        if pt[x] == 0:
            continue
        try:
            got = ddlab.tweedie_denoiser(rm, sb, ddlab.concrete_score(pt, x), x)
        except ValueError as err:
            assert "cannot recover" in str(err) or "overflow" in str(err), err
            continue
        want = ddlab.posterior(rm, p0, sb)[:, x]
        assert (got - want).abs().max().item() < 1e-10, (sb, x)


def test_tweedie_denoiser_cases_of_the_campaign():
    rm = ddlab.Uniform(27)
    for sb in (1.5, 2.0, 30.0):           # zeros, a sum of -3.4e7 and NaN before
        pt = ddlab.marginal(rm, P0, sb)
        with pytest.raises(ValueError, match="cannot recover p_0|t from a score"):
            ddlab.tweedie_denoiser(rm, sb, ddlab.concrete_score(pt, 3), 3)
    with pytest.raises(ValueError, match=r"precision is lost from about sigma_bar = 0\.\d"):
        ddlab.tweedie_denoiser(rm, 1.0, ddlab.concrete_score(ddlab.marginal(rm, P0, 1.0), 3), 3)
    a = ddlab.Absorbing(5)
    p5 = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="cannot recover"):                # NaN before
        ddlab.tweedie_denoiser(a, 1e3, ddlab.concrete_score(ddlab.marginal(a, p5, 1e3), 4), 4)
    # at sigma_bar = 50 the absorbing chain is still exact: clean entries do not cancel
    got = ddlab.tweedie_denoiser(a, 50.0, ddlab.concrete_score(ddlab.marginal(a, p5, 50.0), 4), 4)
    assert torch.allclose(got, ddlab.posterior(a, p5, 50.0)[:, 4], atol=1e-12)
    with pytest.raises(ValueError, match="score must be >= 0"):
        ddlab.tweedie_denoiser(ddlab.Uniform(3), 0.5, [-1.0, 1.0, 1.0], 1)


def test_apply_inverse_transition_matches_expm_or_raises():
    for rm, ds in ((ddlab.Uniform(27), 30.0), (ddlab.Absorbing(5), 1e3)):
        v = torch.ones(2, rm.n, dtype=torch.float64)
        with pytest.raises(ValueError, match="overflows"):
            rm.apply_inverse_transition(v, ds)
        w = torch.tensor(np.random.default_rng(0).random(rm.n))
        want = expm(-0.3 * rm.Q.numpy()) @ w.numpy()
        np.testing.assert_allclose(rm.apply_inverse_transition(w, 0.3).numpy(), want, rtol=1e-9)


@pytest.mark.parametrize("rm", [ddlab.Uniform(3), ddlab.Absorbing(3),
                                ddlab.RateMatrix(ddlab.Uniform(3).Q)])
def test_negative_scores_refused_by_every_step(rm):
    x = torch.tensor([0, 2])
    for step in (lambda s: rm.reverse_rates(x, s), lambda s: rm.euler_probs(x, s, 0.1),
                 lambda s: rm.tweedie_probs(x, s, 0.1)):
        with pytest.raises(ValueError, match="score must be >= 0"):
            step(-torch.ones(2, 3))


def test_sample_categorical_refusals():
    with pytest.raises(ValueError, match="row that sums to 0"):
        ddlab.sample_categorical(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="probs must be an array"):
        ddlab.sample_categorical(0.5)
    with pytest.raises(ValueError, match="non-negative"):
        ddlab.sample_categorical(torch.tensor([0.5, -0.1, 0.6]))
    with ddlab.skip_value_checks():         # the hot-loop path reads no values
        assert ddlab.sample_categorical(torch.tensor([[0.0, 1.0]])).item() == 1


def test_concrete_score_refuses_an_overflowing_ratio():
    with pytest.raises(ValueError, match="overflows"):
        ddlab.concrete_score(torch.tensor([1 - 1e-310, 1e-310], dtype=torch.float64))


def test_float32_score_entropy_at_tiny_sigma_bar_refuses_and_float64_is_finite():
    for rm in (ddlab.Uniform(5), ddlab.Absorbing(5), ddlab.RateMatrix(ddlab.Uniform(5).Q)):
        x0, x = torch.tensor([0, 1]), torch.tensor([0, 4])
        with pytest.raises(ValueError, match="overflows torch.float32"):
            rm.score_entropy(torch.zeros(2, 5), x, x0, torch.tensor(1e-40, dtype=torch.float32))
        assert torch.isfinite(rm.score_entropy(torch.zeros(2, 5, dtype=torch.float64), x, x0,
                                               1e-40)).all()


def test_float32_generator_of_fifty_states_is_accepted():
    rng = np.random.default_rng(0)
    off = rng.random((50, 50)).astype(np.float32)
    np.fill_diagonal(off, 0)
    Q = torch.tensor(off - np.diag(off.sum(0)))          # column sums rounded in float32
    assert ddlab.RateMatrix(Q).n == 50
    with pytest.raises(ValueError, match="atol"):
        ddlab.RateMatrix(Q.double() + 1e-3 * torch.eye(50, dtype=torch.float64))


@pytest.mark.parametrize("make", [lambda: ddlab.LogLinear(np.float32(0.01)),
                                  lambda: ddlab.LogLinear(torch.tensor(0.01)),
                                  lambda: ddlab.Geometric(np.float64(1e-3), np.int64(2))])
def test_numpy_and_tensor_scalars_are_numbers(make):
    make()


def test_nll_bound_takes_numpy_integers_and_names_a_missing_schedule():
    rm, sch = ddlab.Uniform(3), ddlab.Geometric(1e-3, 3.0)
    f = ddlab.exact_score_fn(torch.full((3, 3), 1 / 9, dtype=torch.float64), rm)
    x0 = torch.tensor([[0, 1]])
    ddlab.nll_bound(f, x0, rm, sch, num_t=np.int64(4))
    with pytest.raises(ValueError, match="schedule must be a noise schedule"):
        ddlab.nll_bound(f, x0, rm, None)
    with pytest.raises(ValueError, match="num_t must be an integer >= 1"):
        ddlab.nll_bound(f, x0, rm, sch, num_t=0)


@pytest.mark.parametrize("call, name", [
    (lambda: ddlab.RateMatrix("abc"), "Q must be numeric"),
    (lambda: ddlab.RateMatrix(ddlab.Uniform(3).Q, atol=float("nan")), "atol"),
    (lambda: ddlab.Uniform(3).sample_transition(["a", "b"], 0.1), "x0 must hold integer"),
])
def test_refusals_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_exact_score_fn_memory_guard_sees_a_broadcast_p0():
    p0 = torch.full((), 1 / 50 ** 8, dtype=torch.float64).expand((50,) * 8)
    with pytest.raises(ValueError, match="TiB"):
        ddlab.exact_score_fn(p0, ddlab.Uniform(50))
