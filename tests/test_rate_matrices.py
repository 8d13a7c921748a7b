"""Rate matrices: transitions against scipy/mpmath, structured fast paths against the dense path,
the score entropy against a brute-force loop, samplers against their laws (chi-square), and
hypothesis properties of random generators.

Every reference here is computed independently of ddlab: scipy.linalg.expm, mpmath at 40 digits,
explicit numpy loops over the formulas of docs/design.md.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.linalg import expm

import ddlab
from tests.conftest import chi2_pvalue

SIGMAS = [1e-6, 1e-3, 0.1, 1.0, 5.0, 30.0]
P_MIN = 1e-3          # chi-square tests reject at p-values below this


def structured(n):
    return [ddlab.Uniform(n), ddlab.Absorbing(n)]


KINDS = ["general", "uniform", "absorbing"]


def rate_matrix(kind, n, rng, make_generator, zero_frac=0.3):
    """Uniform(n), Absorbing(n), or a dense RateMatrix with random rates (a fraction zero)."""
    if kind == "uniform":
        return ddlab.Uniform(n)
    if kind == "absorbing":
        return ddlab.Absorbing(n)
    return ddlab.RateMatrix(make_generator(n, rng, zero_frac=zero_frac))


# ----------------------------------------------------------------- dense transitions
@pytest.mark.parametrize("n", [1, 2, 3, 8, 64])
def test_general_transition_matches_scipy_expm(n, rng, make_generator):
    Q = make_generator(n, rng, zero_frac=0.3)
    rm = ddlab.RateMatrix(Q)
    for sb in SIGMAS:
        P = rm.transition(sb)
        assert P.dtype == torch.float64 and P.shape == (n, n)
        np.testing.assert_allclose(P.numpy(), expm(sb * Q), rtol=1e-9, atol=1e-11,
                                   err_msg=f"n={n}, sigma_bar={sb}")


@pytest.mark.parametrize("n", [2, 3, 27, 64])
def test_structured_transition_matches_scipy_expm(n):
    for rm in structured(n):
        Q = rm.Q.numpy()
        for sb in SIGMAS:
            np.testing.assert_allclose(rm.transition(sb).numpy(), expm(sb * Q), rtol=1e-9,
                                       atol=1e-12, err_msg=f"{rm}, sigma_bar={sb}")


def _mp_expm(Q: np.ndarray, sb: float) -> np.ndarray:
    """expm(sb Q) at 40 significant digits, as float64."""
    with mpmath.workdps(40):
        E = mpmath.expm(mpmath.mpf(sb) * mpmath.matrix(Q.tolist()))
        return np.array([[float(E[i, j]) for j in range(Q.shape[1])] for i in range(Q.shape[0])])


@pytest.mark.parametrize("n", [2, 3, 5])
def test_structured_closed_forms_accurate_at_extreme_sigma_bar(n):
    # 1e-8 .. 50: no NaN, and every entry to ~1e-12 RELATIVE accuracy (the tiny off-diagonals
    # 1 - exp(-n sigma_bar) included, which a naive 1 - exp(.) gets wrong by ~1e-8 relative).
    for rm in structured(n):
        Q = rm.Q.numpy()
        for sb in np.geomspace(1e-8, 50, 9):
            ref = _mp_expm(Q, sb)
            P = rm.transition(float(sb)).numpy()
            assert np.isfinite(P).all()
            np.testing.assert_allclose(P, ref, rtol=1e-12, atol=1e-300, err_msg=f"{rm}, {sb}")
            # the per-token rows go through different code: hold them to the same standard
            cols = rm.transition_from(torch.arange(n), torch.full((n,), sb, dtype=torch.float64))
            np.testing.assert_allclose(cols.numpy(), ref.T, rtol=1e-12, atol=1e-300)
            rows = rm.transition_to(torch.arange(n), torch.full((n,), sb, dtype=torch.float64))
            np.testing.assert_allclose(rows.numpy(), ref, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("n", [2, 64])
def test_no_nan_from_1e8_to_50_float64_and_float32(n):
    for rm in structured(n) + [ddlab.RateMatrix(structured(n)[0].Q)]:
        for dtype in (torch.float64, torch.float32):
            sb = torch.tensor(np.geomspace(1e-8, 50, 12), dtype=dtype)
            P = rm.transition(sb)
            assert P.dtype == dtype and P.shape == (12, n, n)
            assert torch.isfinite(P).all()
            assert (P >= -1e-6).all() and (P <= 1 + 1e-6).all()
            # closed forms are good to rounding; the dense matrix_exp of 50 * Q (norm ~ 6400
            # at n = 64) to ~1e-11
            atol = 1e-5 if dtype == torch.float32 else (1e-12 if rm.__class__ is not
                                                         ddlab.RateMatrix else 1e-10)
            torch.testing.assert_close(P.sum(-2), torch.ones(12, n, dtype=dtype), rtol=0, atol=atol)


def test_batched_transition_is_stack_of_scalar_ones(rng, make_generator):
    sb = torch.tensor([0.0, 1e-4, 0.3, 2.0, 17.0], dtype=torch.float64)
    for rm in structured(6) + [ddlab.RateMatrix(make_generator(6, rng))]:
        P = rm.transition(sb)
        assert P.shape == (5, 6, 6)
        for b in range(5):
            np.testing.assert_allclose(P[b].numpy(), expm(float(sb[b]) * rm.Q.numpy()),
                                       rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(P[0].numpy(), np.eye(6), atol=0)   # sigma_bar = 0 is I


def test_talk_matrices_and_exponentials():
    # The seed talk's explicit matrices, written out by hand.
    U = np.array([[-2, 1, 1], [1, -2, 1], [1, 1, -2]], dtype=float)
    A = np.array([[-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0], [1, 1, 1, 0]], dtype=float)
    np.testing.assert_array_equal(ddlab.Uniform(3).Q.numpy(), U)
    np.testing.assert_array_equal(ddlab.Absorbing(4).Q.numpy(), A)
    s = 0.7
    e3, e1 = math.exp(-3 * s), math.exp(-s)
    PU = e3 * np.eye(3) + (1 - e3) / 3 * np.ones((3, 3))
    PA = np.diag([e1, e1, e1, 1.0])
    PA[3, :3] = 1 - e1
    np.testing.assert_allclose(ddlab.Uniform(3).transition(s).numpy(), PU, rtol=1e-14)
    np.testing.assert_allclose(ddlab.Absorbing(4).transition(s).numpy(), PA, rtol=1e-14)
    np.testing.assert_allclose(expm(s * U), PU, rtol=1e-12)      # the closed forms are right
    np.testing.assert_allclose(expm(s * A), PA, rtol=1e-12)


# ------------------------------------------------------------------ stationary
@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_stationary_is_null_vector_and_limit(n, rng, make_generator):
    Q = make_generator(n, rng)                         # all rates > 0: irreducible
    pi = ddlab.RateMatrix(Q).stationary().numpy()
    assert pi.shape == (n,) and (pi >= 0).all()
    np.testing.assert_allclose(pi.sum(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(Q @ pi, 0.0, atol=1e-12)
    p0 = rng.dirichlet(np.ones(n))
    np.testing.assert_allclose(expm(200.0 * Q) @ p0, pi, atol=1e-10)


def test_stationary_of_structured_and_single_closed_class():
    for n in (2, 5):
        u, a = ddlab.Uniform(n), ddlab.Absorbing(n)
        for rm in (u, a, ddlab.RateMatrix(u.Q), ddlab.RateMatrix(a.Q)):
            p0 = np.full(n, 1.0 / n)
            np.testing.assert_allclose(rm.stationary().numpy(), expm(80 * rm.Q.numpy()) @ p0,
                                       atol=1e-12)


def test_stationary_reducible_chain_raises():
    # two closed classes {0, 1} and {2, 3}: the limit depends on p0
    Q = np.zeros((4, 4))
    Q[1, 0] = Q[0, 1] = Q[3, 2] = Q[2, 3] = 1.0
    np.fill_diagonal(Q, -Q.sum(0))
    with pytest.raises(ValueError, match="2 independent stationary distributions"):
        ddlab.RateMatrix(Q).stationary()


# ----------------------------------------------- per-token: structured == dense
def _inputs(rm, gen, shape=(4, 7), dtype=torch.float64):
    n = rm.n
    x0 = torch.randint(0, n, shape, generator=gen)
    sb = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2.0 + 0.02).to(dtype)
    x = rm.sample_transition(x0, sb.double(), generator=gen)
    score = torch.exp(torch.randn(*shape, n, generator=gen, dtype=torch.float64)).to(dtype)
    ds = (torch.rand(shape, generator=gen, dtype=torch.float64) * 0.3).to(dtype)
    return x0, x, sb, score, ds


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
@pytest.mark.parametrize("n", [2, 7, 30])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_structured_primitives_equal_dense(kind, n, dtype):
    rm = ddlab.Uniform(n) if kind == "uniform" else ddlab.Absorbing(n)
    dense = ddlab.RateMatrix(rm.Q)
    gen = torch.Generator().manual_seed(n)
    x0, x, sb, score, ds = _inputs(rm, gen, dtype=dtype)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-4, atol=1e-5)

    def same(a, b, what):
        assert a.shape == b.shape, what
        torch.testing.assert_close(a.double(), b.double(), **tol, msg=lambda m: f"{what}: {m}")

    same(rm.transition_from(x0, sb), dense.transition_from(x0, sb), "transition_from")
    same(rm.transition_to(x, sb), dense.transition_to(x, sb), "transition_to")
    same(rm.rates_into(x), dense.rates_into(x), "rates_into")
    inv, inv_dense = rm.apply_inverse_transition(score, ds), dense.apply_inverse_transition(score, ds)
    if dtype == torch.float64:
        same(inv, inv_dense, "apply_inverse_transition")
    else:
        # expm(-ds Q) has entries up to e^{n ds} that cancel: float32 rounding is relative to them
        big = math.exp(n * float(ds.max())) * float(score.abs().max())
        torch.testing.assert_close(inv.double(), inv_dense.double(), rtol=0, atol=1e-6 * big)
    same(rm.reverse_rates(x, score), dense.reverse_rates(x, score), "reverse_rates")
    same(rm.euler_probs(x, score, ds), dense.euler_probs(x, score, ds), "euler_probs")
    same(rm.tweedie_probs(x, score, ds), dense.tweedie_probs(x, score, ds), "tweedie_probs")
    log_score = torch.log(score)
    se, se_dense = rm.score_entropy(log_score, x, x0, sb), dense.score_entropy(log_score, x, x0, sb)
    assert se.dtype == dtype and se.shape == x.shape
    # the loss is a sum of O(1/sigma_bar) terms that cancel: float32 is held to a looser standard
    torch.testing.assert_close(se.double(), se_dense.double(),
                               **(tol if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-3)))
    # output dtypes follow the input dtype
    assert rm.transition_from(x0, sb).dtype == dtype
    assert rm.apply_inverse_transition(score, ds).dtype == dtype
    assert rm.tweedie_probs(x, score, ds).dtype == dtype


@pytest.mark.parametrize("n", [3, 6])
def test_dense_per_token_primitives_against_scipy(n, rng, make_generator):
    # The dense path itself, entry by entry from scipy's expm.
    Q = make_generator(n, rng, zero_frac=0.2)
    rm = ddlab.RateMatrix(Q)
    x0 = torch.as_tensor(rng.integers(0, n, (3, 5)))
    x = torch.as_tensor(rng.integers(0, n, (3, 5)))
    sb = torch.as_tensor(rng.uniform(0.01, 3, (3, 5)))
    ds = torch.as_tensor(rng.uniform(0, 0.5, (3, 5)))
    v = torch.as_tensor(rng.normal(size=(3, 5, n)))
    score = torch.as_tensor(rng.exponential(size=(3, 5, n)))
    frm, to = rm.transition_from(x0, sb), rm.transition_to(x, sb)
    inv, rates = rm.apply_inverse_transition(v, ds), rm.reverse_rates(x, score)
    eul, twd = rm.euler_probs(x, score, ds), rm.tweedie_probs(x, score, ds)
    for i in range(3):
        for j in range(5):
            P = expm(float(sb[i, j]) * Q)
            np.testing.assert_allclose(frm[i, j].numpy(), P[:, x0[i, j]], rtol=1e-10, atol=1e-13)
            np.testing.assert_allclose(to[i, j].numpy(), P[x[i, j], :], rtol=1e-10, atol=1e-13)
            d = float(ds[i, j])
            np.testing.assert_allclose(inv[i, j].numpy(), expm(-d * Q) @ v[i, j].numpy(),
                                       rtol=1e-10, atol=1e-12)
            xi = int(x[i, j])
            r = Q[xi, :] * score[i, j].numpy()                # rate x -> y is Q[x, y] s_y
            r[xi] = 0.0
            r[xi] = -r.sum()
            np.testing.assert_allclose(rates[i, j].numpy(), r, rtol=1e-12, atol=1e-14)
            e = np.eye(n)[xi] + d * r
            e = np.clip(e, 0, None)
            np.testing.assert_allclose(eul[i, j].numpy(), e / e.sum(), rtol=1e-12, atol=1e-14)
            t = (expm(-d * Q) @ score[i, j].numpy()) * expm(d * Q)[xi, :]
            t = np.clip(t, 0, None)
            np.testing.assert_allclose(twd[i, j].numpy(), t / t.sum(), rtol=1e-9, atol=1e-12)
    # rates_into is the row Q[x, :]
    np.testing.assert_array_equal(rm.rates_into(x).numpy(), Q[x.numpy()])


def test_tweedie_probs_with_exact_score_is_exact_reverse_step():
    # With the true score of p_t, the Tweedie step from sigma_bar to sigma_bar - ds is the
    # exact reverse transition p(x_s = y | x_t = x) = P_ds[x, y] p_s(y) / p_t(x), by Bayes.
    rng = np.random.default_rng(3)
    for rm in structured(5):
        Q = rm.Q.numpy()
        p0 = rng.dirichlet(np.ones(5))
        sb, ds = 0.8, 0.25
        ps, pt = expm((sb - ds) * Q) @ p0, expm(sb * Q) @ p0
        x = torch.arange(5)
        score = torch.as_tensor(pt[None, :] / pt[:, None])     # s(x)_y = pt[y] / pt[x]
        probs = rm.tweedie_probs(x, score, ds).numpy()
        ref = expm(ds * Q)[np.arange(5), :] * ps[None, :] / pt[:, None]
        np.testing.assert_allclose(probs, ref, rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------------ score entropy
def _score_entropy_loop(Q, log_score, x, x0, sb):
    """The formula of docs/design.md, term by term, with the transition from scipy."""
    out = np.zeros(x.shape)
    n = Q.shape[0]
    for idx in np.ndindex(x.shape):
        p = expm(sb[idx] * Q)[:, x0[idx]]
        xi = x[idx]
        total = 0.0
        for y in range(n):
            if y == xi or Q[xi, y] == 0:
                continue
            r = p[y] / p[xi]
            K = r * math.log(r) - r if r > 0 else 0.0
            s = math.exp(log_score[idx + (y,)])
            total += Q[xi, y] * (s - r * log_score[idx + (y,)] + K)
        out[idx] = total
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_score_entropy_equals_brute_force_loop(kind, rng, make_generator):
    n = 5
    rm = rate_matrix(kind, n, rng, make_generator)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, n, (3, 4), generator=gen)
    sb = torch.as_tensor(rng.uniform(0.05, 2.5, (3, 4)))
    x = rm.sample_transition(x0, sb, generator=gen)
    log_score = torch.as_tensor(rng.normal(size=(3, 4, n)))
    got = rm.score_entropy(log_score, x, x0, sb).numpy()
    ref = _score_entropy_loop(rm.Q.numpy(), log_score.numpy(), x.numpy(), x0.numpy(), sb.numpy())
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_score_entropy_zero_at_true_ratio(kind, rng, make_generator):
    n = 6
    rm = rate_matrix(kind, n, rng, make_generator, zero_frac=0.0)   # general: all rates > 0
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randint(0, n, (50,), generator=gen)
    sb = torch.as_tensor(rng.uniform(0.05, 3, 50))
    x = rm.sample_transition(x0, sb, generator=gen)
    P = np.stack([expm(s * rm.Q.numpy()) for s in sb.numpy()])
    p = P[np.arange(50), :, x0.numpy()]                     # p(. | x0) per token
    r = p / p[np.arange(50), x.numpy()][:, None]
    # a true ratio of 0 (absorbing) has no finite log: use 1e-30, whose term e^{log s} ~ 1e-30
    log_r = torch.as_tensor(np.log(np.maximum(r, 1e-30)))
    loss = rm.score_entropy(log_r, x, x0, sb)
    np.testing.assert_allclose(loss.numpy(), 0.0, atol=1e-10)
    # and strictly positive away from it
    bumped = log_r + torch.as_tensor(rng.normal(scale=0.3, size=log_r.shape))
    moved = (rm.Q.numpy()[x.numpy()] > 0).any(-1)          # tokens that have reverse moves
    assert (rm.score_entropy(bumped, x, x0, sb)[torch.as_tensor(moved)] > 0).all()


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 6),
       scale=st.floats(0.01, 5.0), sb=st.floats(1e-4, 10.0))
def test_score_entropy_nonnegative(seed, n, scale, sb):
    g = torch.Generator().manual_seed(seed)
    for rm in structured(n):
        x0 = torch.randint(0, n, (20,), generator=g)
        x = rm.sample_transition(x0, sb, generator=g)
        log_score = torch.randn(20, n, generator=g, dtype=torch.float64) * scale
        loss = rm.score_entropy(log_score, x, x0, sb)
        assert torch.isfinite(loss).all()
        assert (loss >= -1e-9 * (1 + loss.abs())).all()


def test_score_entropy_float32_tiny_sigma_bar_is_finite():
    n = 27
    for rm in structured(n):
        x0 = torch.arange(n - 1).repeat(4)
        sb = torch.full(x0.shape, 1e-6, dtype=torch.float32)
        mask = torch.full_like(x0, n - 1)
        x = mask if isinstance(rm, ddlab.Absorbing) else (x0 + 1) % n   # the rare moved tokens
        log_score = torch.zeros(*x0.shape, n, dtype=torch.float32)
        loss = rm.score_entropy(log_score, x, x0, sb)
        assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
        # the true ratio for the clean token is ~1/sigma_bar = 1e6 (1 + n/expm1(n sb) for
        # uniform): the loss there is large but finite and matches float64 to float32 precision
        ref = rm.score_entropy(log_score.double(), x, x0, sb.double())
        torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-3)


# --------------------------------------------------------------------- samplers
@pytest.mark.parametrize("kind", KINDS)
def test_sample_transition_law_chi_square(kind, rng, make_generator):
    n, draws = 5, 6000
    rm = rate_matrix(kind, n, rng, make_generator)
    gen = torch.Generator().manual_seed(7)
    # two groups of tokens with different x0 and sigma_bar in one call: per-token sigma_bar
    x0 = torch.tensor([1] * draws + [3] * draws)
    sb = torch.tensor([0.4] * draws + [1.3] * draws, dtype=torch.float64)
    xt = rm.sample_transition(x0, sb, generator=gen)
    assert xt.shape == x0.shape and xt.dtype == torch.int64
    for g, (start, s) in enumerate([(1, 0.4), (3, 1.3)]):
        pval = chi2_pvalue(xt[g * draws:(g + 1) * draws].numpy(), expm(s * rm.Q.numpy())[:, start])
        assert pval > P_MIN, f"{kind}: x0={start}, sigma_bar={s}: p = {pval:.2e}"


def test_sample_transition_reproducible_with_generator():
    for rm in structured(9):
        x0 = torch.randint(0, 9, (100,), generator=torch.Generator().manual_seed(0))
        a = rm.sample_transition(x0, 0.5, generator=torch.Generator().manual_seed(5))
        b = rm.sample_transition(x0, 0.5, generator=torch.Generator().manual_seed(5))
        assert torch.equal(a, b)
        assert torch.equal(rm.sample_transition(x0, 0.0), x0)    # no noise, no move


def test_sample_categorical_law():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3], dtype=torch.float64).expand(20000, 4)
    draws = ddlab.sample_categorical(probs, generator=torch.Generator().manual_seed(11))
    assert chi2_pvalue(draws.numpy(), [0.1, 0.0, 0.6, 0.3]) > P_MIN


# ------------------------------------------------------------- hypothesis properties
@st.composite
def generators(draw, max_n=6):
    """A random valid rate matrix from random non-negative off-diagonal rates (some zero)."""
    n = draw(st.integers(1, max_n))
    rates = draw(st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 5.0)),
                          min_size=n * n, max_size=n * n))
    off = np.array(rates).reshape(n, n)
    np.fill_diagonal(off, 0.0)
    return off - np.diag(off.sum(0))


@st.composite
def distributions(draw, n, allow_zero=True):
    weight = st.floats(1e-3, 1.0)
    if allow_zero:
        weight = st.one_of(st.just(0.0), weight)
    w = np.array(draw(st.lists(weight, min_size=n, max_size=n)))
    if w.sum() == 0:
        w[0] = 1.0
    return w / w.sum()


@given(Q=generators(), a=st.floats(0, 5), b=st.floats(0, 5))
def test_transition_stochastic_and_semigroup(Q, a, b):
    rm = ddlab.RateMatrix(Q)
    Pa, Pb, Pab = rm.transition(a), rm.transition(b), rm.transition(a + b)
    for P in (Pa, Pb, Pab):
        assert (P >= -1e-12).all() and (P <= 1 + 1e-12).all()
        torch.testing.assert_close(P.sum(0), torch.ones(len(Q), dtype=torch.float64),
                                   rtol=0, atol=1e-10)
    torch.testing.assert_close(Pa @ Pb, Pab, rtol=1e-8, atol=1e-10)


@given(data=st.data(), Q=generators(), sb=st.one_of(st.just(0.0), st.floats(1e-9, 20)))
def test_marginal_preserves_mass_and_reverse_is_generator(data, Q, sb):
    n = len(Q)
    p0 = data.draw(distributions(n))          # may hold zeros
    pt = ddlab.marginal(Q, p0, sb)
    assert (pt >= -1e-12).all()
    assert abs(pt.sum().item() - 1) < 1e-10
    pt = pt.clamp_min(0)
    pt = pt / pt.sum()
    ddlab.RateMatrix(ddlab.reverse_rate_matrix(Q, pt))   # validates: a generator even with zeros
    # Qbar p = -Q p needs p > 0 (at a state of probability 0 the reversal is undefined):
    # a strictly positive p0 gives p_t >= diag(P) p0 > 0
    p0 = data.draw(distributions(n, allow_zero=False))
    pt = ddlab.marginal(Q, p0, sb)
    Qbar = ddlab.reverse_rate_matrix(Q, pt)
    ddlab.RateMatrix(Qbar)
    torch.testing.assert_close(Qbar @ pt, -(torch.as_tensor(Q) @ pt), rtol=1e-8, atol=1e-10)


@given(n=st.integers(2, 40), sb=st.floats(0, 50), kind=st.sampled_from(["u", "a"]))
def test_structured_transitions_stochastic(n, sb, kind):
    rm = ddlab.Uniform(n) if kind == "u" else ddlab.Absorbing(n)
    P = rm.transition(sb)
    assert (P >= 0).all() and (P <= 1).all()
    torch.testing.assert_close(P.sum(0), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-12)
    x0 = torch.arange(n)
    torch.testing.assert_close(rm.transition_from(x0, sb), P.T, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_per_token_primitives_on_cuda_match_cpu(kind, rng, make_generator):
    # The text8 model calls these on GPU batches: same numbers as on the CPU, outputs on the GPU.
    n = 7
    rm = rate_matrix(kind, n, rng, make_generator)
    x0, x, sb, score, ds = _inputs(rm, torch.Generator().manual_seed(0), dtype=torch.float32)
    dev = torch.device("cuda")
    g = [t.to(dev) for t in (x0, x, sb, score, ds)]
    calls = {
        "transition": lambda a, b, s, sc, d: rm.transition(s[0]),
        "transition_from": lambda a, b, s, sc, d: rm.transition_from(a, s),
        "transition_to": lambda a, b, s, sc, d: rm.transition_to(b, s),
        "rates_into": lambda a, b, s, sc, d: rm.rates_into(b),
        "apply_inverse_transition": lambda a, b, s, sc, d: rm.apply_inverse_transition(sc, d),
        "reverse_rates": lambda a, b, s, sc, d: rm.reverse_rates(b, sc),
        "euler_probs": lambda a, b, s, sc, d: rm.euler_probs(b, sc, d),
        "tweedie_probs": lambda a, b, s, sc, d: rm.tweedie_probs(b, sc, d),
        "score_entropy": lambda a, b, s, sc, d: rm.score_entropy(torch.log(sc), b, a, s),
    }
    for name, f in calls.items():
        cpu, gpu = f(x0, x, sb, score, ds), f(*g)
        assert gpu.device.type == "cuda", name
        torch.testing.assert_close(gpu.cpu().double(), cpu.double(), rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"{name}: {m}")
    # sampling on the GPU, with a CUDA generator: the law of x_t given x0 = 1 at sigma_bar = 0.5
    draws = 200_000
    xt = rm.sample_transition(torch.ones(draws, dtype=torch.long, device=dev), 0.5,
                              generator=torch.Generator(device=dev).manual_seed(1))
    assert xt.device.type == "cuda"
    assert chi2_pvalue(xt.cpu().numpy(), expm(0.5 * rm.Q.numpy())[:, 1]) > P_MIN


@pytest.mark.parametrize("kind", KINDS)
def test_score_entropy_gradient(kind, rng, make_generator):
    # d/d(log s_y) of the loss is Q[x, y] (s_y - r_y) for y != x, and 0 at y = x: training
    # pushes s toward the conditional ratio r. Checked against the formula, from scipy's expm.
    n = 5
    rm = rate_matrix(kind, n, rng, make_generator)
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randint(0, n, (12,), generator=gen)
    sb = torch.as_tensor(rng.uniform(0.1, 2.0, 12))
    x = rm.sample_transition(x0, sb, generator=gen)
    log_score = torch.as_tensor(rng.normal(size=(12, n))).requires_grad_(True)
    rm.score_entropy(log_score, x, x0, sb).sum().backward()
    Q = rm.Q.numpy()
    for i in range(12):
        p = expm(float(sb[i]) * Q)[:, x0[i]]
        xi = int(x[i])
        g = Q[xi, :] * (np.exp(log_score[i].detach().numpy()) - p / p[xi])
        g[xi] = 0.0
        np.testing.assert_allclose(log_score.grad[i].numpy(), g, rtol=1e-9, atol=1e-12)
