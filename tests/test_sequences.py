"""Product spaces, whole-sequence posteriors, conditioning and toys (ddlab.sequences, lesson 7).

Every number is held against an independent computation: Kronecker products of scipy's expm,
explicit loops of Bayes' rule over all sequences, or Monte Carlo with a stated tolerance.
"""

import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings, strategies as st

import ddlab
from ddlab import sequences as S


def random_Q(n, seed):
    rng = np.random.default_rng(seed)
    Q = rng.uniform(0.1, 1.0, (n, n))
    np.fill_diagonal(Q, 0.0)
    Q -= np.diag(Q.sum(0))
    return Q


def random_joint(n, d, seed, zeros=False):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand((n,) * d, generator=g, dtype=torch.float64)
    if zeros:
        p = p * (torch.rand((n,) * d, generator=g, dtype=torch.float64) > 0.5)
    return p / p.sum()


def kron_transition(Q, sigma_bar, d):
    P = scipy.linalg.expm(sigma_bar * np.asarray(Q))
    K = np.ones((1, 1))
    for _ in range(d):
        K = np.kron(K, P)
    return K            # K[y_flat, x_flat] in the row-major order of reshape


# ----------------------------------------------------------------------------- marginals


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 4), d=st.integers(1, 4), sb=st.floats(0.0, 3.0), seed=st.integers(0, 99))
def test_product_marginal_matches_kron_of_expm(n, d, sb, seed):
    Q = random_Q(n, seed)
    p0 = random_joint(n, d, seed)
    pt = S.product_marginal(ddlab.RateMatrix(Q), p0, sb)
    ref = kron_transition(Q, sb, d) @ p0.reshape(-1).numpy()
    np.testing.assert_allclose(pt.reshape(-1).numpy(), ref, rtol=0, atol=1e-13)


@pytest.mark.parametrize("rm", [ddlab.Uniform(3), ddlab.Absorbing(3)])
def test_product_marginal_structured_matches_dense(rm):
    p0 = random_joint(3, 5, 1)          # d = 5 exercises grouping of 3 axes into blocks
    a = S.product_marginal(rm, p0, 0.7)
    b = S.product_marginal(ddlab.RateMatrix(rm.Q), p0, 0.7)
    assert torch.allclose(a, b, atol=1e-14, rtol=0)
    assert torch.equal(p0, random_joint(3, 5, 1))          # input left untouched


def test_memory_error_names_the_size():
    with pytest.raises(ValueError, match=r"needs .*KiB.*max_bytes = 1000"):
        S.product_marginal(ddlab.Uniform(4), random_joint(4, 6, 0), 0.3, max_bytes=1000)
    with pytest.raises(ValueError, match=r"30\^20"):
        S.check_memory(30, 20)                             # 3.5e29 bytes: never fits
    with pytest.raises(ValueError, match=r"27\^256 = about 10\^366 sequences"):
        S.check_memory(27, 256)                            # text8 with a 256 context
    assert S.memory_needed(5, 8) == 8 * 5 ** 8


# ----------------------------------------------------------------------------- Hamming-1 ratios


def test_hamming1_ratios_brute_force():
    n, d = 3, 3
    Q = random_Q(n, 3)
    p0 = random_joint(n, d, 3)
    pt = (kron_transition(Q, 0.4, d) @ p0.reshape(-1).numpy()).reshape((n,) * d)
    x = torch.tensor([[0, 1, 2], [2, 2, 0]])
    s = S.exact_score_fn(p0, ddlab.RateMatrix(Q))(x, 0.4)
    for b in range(2):
        for i in range(d):
            for y in range(n):
                z = x[b].clone()
                z[i] = y
                assert s[b, i, y].item() == pytest.approx(pt[tuple(z)] / pt[tuple(x[b])], rel=1e-12)
    assert torch.all(s.gather(-1, x[..., None]) == 1)


def test_exact_score_fn_batches_of_sigma_bar():
    rm = ddlab.Uniform(3)
    p0 = random_joint(3, 3, 4)
    f = S.exact_score_fn(p0, rm)
    x = torch.tensor([[0, 1, 2], [1, 1, 1], [2, 0, 0]])
    sb = torch.tensor([0.1, 0.5, 0.1], dtype=torch.float64)
    mixed = f(x, sb)
    for b in range(3):
        assert torch.allclose(mixed[b], f(x[b:b + 1], sb[b].item())[0], rtol=1e-14, atol=0)
    assert torch.allclose(f(x, sb[:, None]), mixed)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        f(x, torch.ones(2))
    with pytest.raises(ValueError, match=r"shape \(B, 3\)"):
        f(torch.zeros(2, 4, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match=">= 0"):
        f(x, -0.1)


def test_exact_score_fn_zero_probability_sequence():
    rm = ddlab.Absorbing(3)
    p0 = S.add_mask_state(torch.tensor([[0.5, 0.0], [0.0, 0.5]], dtype=torch.float64))
    f = S.exact_score_fn(p0, rm)
    with pytest.raises(ValueError, match=r"\[0, 1\].*probability 0"):
        f(torch.tensor([[0, 1]]), 0.3)
    # off_support="conditional": on the support the same numbers; off it, finite and of the
    # form q(y) / (e^sb - 1) at masked positions, q a distribution over clean tokens.
    g = S.exact_score_fn(p0, rm, off_support="conditional")
    on = torch.tensor([[0, 2], [2, 2], [1, 1]])
    assert torch.equal(f(on, 0.3), g(on, 0.3))
    off = g(torch.tensor([[0, 1], [1, 2]]), 0.3)      # [1, 2] is on the support; [0, 1] is not
    assert torch.isfinite(off).all()
    assert torch.equal(off[0], torch.ones(2, 3, dtype=torch.float64))  # both clean: ratios 1
    assert off[1, 1, :2].sum().item() == pytest.approx(1 / math.expm1(0.3), rel=1e-12)
    # the batched path (several sigma_bar in one call) gives the same numbers, off-support too
    xs = torch.tensor([[0, 1], [1, 2], [2, 2], [0, 1]])
    sbs = torch.tensor([0.3, 0.3, 1.2, 1.2], dtype=torch.float64)
    both = g(xs, sbs)
    for b in range(4):
        assert torch.allclose(both[b], g(xs[b:b + 1], sbs[b].item())[0], rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match="probability 0"):
        f(xs, sbs)
    with pytest.raises(ValueError, match="Absorbing chains only"):
        S.exact_score_fn(random_joint(3, 2, 0), ddlab.Uniform(3), off_support="conditional")


# ----------------------------------------------------------------------------- posteriors


def test_joint_posterior_is_bayes_by_hand():
    n, d = 3, 3
    Q = random_Q(n, 5)
    p0 = random_joint(n, d, 5, zeros=True)
    K = kron_transition(Q, 0.8, d)
    x_t = torch.tensor([[0, 2, 1], [1, 1, 1]])
    post = S.joint_posterior(ddlab.RateMatrix(Q), p0, 0.8, x_t)
    flat_p0 = p0.reshape(-1).numpy()
    for b in range(2):
        j = int(np.ravel_multi_index(x_t[b].numpy(), (n,) * d))
        ref = K[j, :] * flat_p0
        np.testing.assert_allclose(post[b].reshape(-1).numpy(), ref / ref.sum(), atol=1e-14)
    marg = S.token_posteriors(post)
    assert marg.shape == (2, d, n)
    assert torch.allclose(marg.sum(-1), torch.ones(2, d, dtype=torch.float64))


@pytest.mark.parametrize("rm", [ddlab.Uniform(3), ddlab.Absorbing(3), ddlab.RateMatrix(random_Q(3, 6))])
def test_exact_reverse_kernel_brute_force_and_tweedie_marginals(rm):
    n, d, sb, ds = 3, 3, 1.1, 0.35
    p0 = random_joint(n, d, 7)
    if isinstance(rm, ddlab.Absorbing):
        p0 = S.add_mask_state(random_joint(2, d, 7))
    Q = rm.Q.numpy()
    ps = kron_transition(Q, sb - ds, d) @ p0.reshape(-1).numpy()
    Kd = kron_transition(Q, ds, d)
    x_t = torch.tensor([[0, 1, 2], [2, 2, 2], [1, 0, 2]])
    kern = S.exact_reverse_kernel(rm, p0, sb, ds, x_t)
    for b in range(3):
        j = int(np.ravel_multi_index(x_t[b].numpy(), (n,) * d))
        ref = ps * Kd[j, :]
        np.testing.assert_allclose(kern[b].reshape(-1).numpy(), ref / ref.sum(), atol=1e-13)
    # per-token Tweedie with the exact Hamming-1 ratios gives exactly the kernel's marginals
    score = S.exact_score_fn(p0, rm)(x_t, sb)
    tw = rm.tweedie_probs(x_t, score, ds)
    assert torch.allclose(tw, S.token_posteriors(kern), atol=1e-12, rtol=0)
    # a step all the way to sigma_bar = 0 is the joint posterior
    assert torch.allclose(S.exact_reverse_kernel(rm, p0, sb, sb, x_t),
                          S.joint_posterior(rm, p0, sb, x_t), atol=1e-13)


def test_factorisation_kl_zero_for_independent_tokens_and_quadratic_in_step():
    rm = ddlab.Uniform(2)
    a = torch.tensor([0.2, 0.8], dtype=torch.float64)
    indep = a[:, None, None] * a[None, :, None] * a[None, None, :]
    assert S.factorisation_kl(rm, indep, 0.9, 0.5).item() == pytest.approx(0.0, abs=1e-14)
    p0 = S.parity_toy(3)
    kls = [S.factorisation_kl(rm, p0, 0.5, ds).item() for ds in (0.004, 0.002)]
    assert kls[0] > 0 and kls[0] / kls[1] == pytest.approx(4.0, rel=0.05)
    # the full jump to sigma_bar = 0 costs the total correlation of the posterior: independent
    # check by Bayes over the Kronecker transition and numpy marginals for one x_t
    x = torch.tensor([[0, 1, 1]])
    K = kron_transition(rm.Q, 0.5, 3)
    post = K[int(np.ravel_multi_index((0, 1, 1), (2,) * 3)), :] * p0.reshape(-1).numpy()
    post = (post / post.sum()).reshape(2, 2, 2)
    m0, m1, m2 = post.sum((1, 2)), post.sum((0, 2)), post.sum((0, 1))
    prod = m0[:, None, None] * m1[None, :, None] * m2[None, None, :]
    keep = post > 0
    ref = (post[keep] * np.log(post[keep] / prod[keep])).sum()
    assert S.factorisation_kl(rm, p0, 0.5, 0.5, x)[0].item() == pytest.approx(ref, rel=1e-10)


def test_kl_divergence_edges():
    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    q = torch.tensor([0.25, 0.75, 0.0], dtype=torch.float64)
    ref = 0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75)
    assert ddlab.kl_divergence(p, q).item() == pytest.approx(ref, rel=1e-14)
    assert ddlab.kl_divergence(q, torch.tensor([0.0, 1.0, 0.0])).item() == math.inf


# ----------------------------------------------------------------------------- conditioning


def test_condition_is_bayes_by_loop():
    p0 = random_joint(3, 3, 8, zeros=True)
    pos = torch.tensor([True, False, True])
    val = torch.tensor([1, 0, 2])
    cond = S.condition(p0, (pos, val))
    ref = torch.zeros_like(p0)
    for x in itertools.product(range(3), repeat=3):
        if x[0] == 1 and x[2] == 2:
            ref[x] = p0[x]
    assert ref.sum() > 0                     # the seed gives the event positive mass
    assert torch.allclose(cond, ref / ref.sum(), atol=1e-15)
    words, _ = S.words_toy(["ab", "ba"])
    with pytest.raises(ValueError, match="probability 0"):
        S.condition(words, (torch.tensor([True, True]), torch.tensor([0, 0])))
    with pytest.raises(ValueError, match="clamp positions_mask must be a bool tensor"):
        S.condition(words, (torch.tensor([1, 0]), torch.tensor([0, 0])))


def test_clamped_sampling_exact_for_absorbing_biased_for_uniform():
    """Clamping the unconditional oracle: absorbing converges to the exact conditional, uniform
    stalls at a floor; the conditional oracle removes the floor (exact laws, no Monte Carlo)."""
    from ddlab.exact import kl_divergence
    from ddlab.sampling import exact_sampler_distribution
    words = ["cab", "bad", "dab", "abc", "bca"]
    clamp = (torch.tensor([False, True, False]), torch.tensor([0, 0, 0]))    # "_a_"
    p0m, _ = S.words_toy(words, mask=True)
    rm, sch = ddlab.Absorbing(5), ddlab.LogLinear(1e-3)
    f = S.exact_score_fn(p0m, rm, off_support="conditional")
    target = S.condition(p0m, clamp)
    kl = [kl_divergence(target, exact_sampler_distribution(rm, sch, f, 3, k, "tweedie",
                                                           clamp=clamp)) for k in (4, 32)]
    assert kl[0] > 0.05 and kl[1] < 0.02 and kl[1] < kl[0] / 4
    p0u, _ = S.words_toy(words)
    rmu, geo = ddlab.Uniform(4), ddlab.Geometric(1e-3, 5.0)
    target_u = S.condition(p0u, clamp)
    biased = kl_divergence(target_u, exact_sampler_distribution(
        rmu, geo, S.exact_score_fn(p0u, rmu), 3, 64, "tweedie", clamp=clamp))
    fixed = kl_divergence(target_u, exact_sampler_distribution(
        rmu, geo, S.exact_score_fn(target_u, rmu), 3, 64, "tweedie", clamp=clamp))
    assert biased > 0.02 and fixed < 0.005


# ----------------------------------------------------------------------------- toys


def test_markov_toy_by_formula():
    T = torch.tensor([[0.9, 0.3], [0.1, 0.7]], dtype=torch.float64)
    init = torch.tensor([0.4, 0.6], dtype=torch.float64)
    p0 = S.markov_toy(T, init, 4)
    for x in itertools.product(range(2), repeat=4):
        ref = init[x[0]] * T[x[1], x[0]] * T[x[2], x[1]] * T[x[3], x[2]]
        assert p0[x].item() == pytest.approx(ref.item(), rel=1e-14)
    pm = S.markov_toy(T, init, 3, mask=True)
    assert pm.shape == (3, 3, 3) and pm[2].sum() == 0 and pm.sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="columns summing to 1"):
        S.markov_toy(T.T * 2, init, 3)


def test_parity_and_words_toys():
    p0 = S.parity_toy(4, n=3)
    seqs = S.all_sequences(3, 4)
    flat = p0.reshape(-1)
    assert torch.all((flat > 0) == (seqs.sum(-1) % 3 == 0))
    for i in range(4):                       # each position on its own is exactly uniform
        assert torch.allclose(S.marginalise(p0, [i]), torch.full((3,), 1 / 3, dtype=torch.float64))
    p, abc = S.words_toy(["cab", "bad", "cab"], mask=True)
    assert abc == "abcd" and p.shape == (5, 5, 5)
    assert p[2, 0, 1].item() == pytest.approx(2 / 3) and p[1, 0, 3].item() == pytest.approx(1 / 3)
    assert S.to_strings(torch.tensor([[2, 0, 4]]), abc) == ["ca_"]
    with pytest.raises(ValueError, match="same length"):
        S.words_toy(["ab", "abc"])


def test_all_sequences_order_matches_reshape():
    p = torch.arange(2 * 2 * 2).reshape(2, 2, 2)
    seqs = S.all_sequences(2, 3)
    assert [p[tuple(s)].item() for s in seqs] == list(range(8))


# ----------------------------------------------------------------------------- likelihood


def test_nll_bound_of_exact_score_matches_exact_nll():
    """The DWDSE bound with the exact oracle equals -log p0(x0) up to Monte Carlo error and the
    O(d eps) schedule gap (LogLinear(1e-3), eps = 1e-5 here, so the gap is < 0.01 nats)."""
    from ddlab.likelihood import exact_nll, nll_bound
    T = torch.tensor([[0.8, 0.3], [0.2, 0.7]], dtype=torch.float64)
    p0 = S.markov_toy(T, torch.tensor([0.5, 0.5], dtype=torch.float64), 3, mask=True)
    rm, sch = ddlab.Absorbing(3), ddlab.LogLinear(1e-3)
    x0 = S.all_sequences(2, 3)                                 # every clean sequence
    g = torch.Generator().manual_seed(0)
    est, err = nll_bound(S.exact_score_fn(p0, rm), x0, rm, sch, num_t=200, generator=g,
                         return_stderr=True)
    exact = exact_nll(p0, x0)
    # the average over the 8 sequences: its standard error is ~ err / sqrt(8)
    gap = (est - exact).mean().item()
    se = (err ** 2).mean().sqrt().item() / math.sqrt(8)
    assert abs(gap) < 4 * se + 0.01, (gap, se)
