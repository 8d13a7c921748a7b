"""Samplers (ddlab.sampling): exact laws against Monte Carlo, hand-built kernels and theory."""

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

import ddlab
from ddlab.exact import kl_divergence
from ddlab.sampling import check_scores, exact_sampler_distribution, sample, time_grid
from ddlab.sequences import all_sequences
from tests.conftest import random_joint, toy_sequence_process, with_mask


joint = random_joint


toy = toy_sequence_process


# ----------------------------------------------------------------------- check_scores
def test_check_scores_accepts_valid_and_names_bad_positions():
    x = torch.tensor([[0, 1], [2, 0]])
    good = torch.rand(2, 2, 3, dtype=torch.float64)
    assert check_scores(good, x, 3) is good
    with pytest.raises(ValueError, match=r"shape \(2, 2, 4\), expected \(2, 2, 3\)"):
        check_scores(torch.ones(2, 2, 4), x, 3)
    for value, word in ((float("nan"), "finite"), (float("inf"), "finite"), (-0.5, "non-negative")):
        bad = good.clone()
        bad[1, 0, 2] = value
        with pytest.raises(ValueError, match=r"\(b, i, y\) = \(1, 0, 2\).*" + word):
            check_scores(bad, x, 3)
    with pytest.raises(ValueError, match="torch tensor"):
        check_scores(np.ones((2, 2, 3)), x, 3)


def test_sample_refuses_a_bad_score_function_and_bad_arguments():
    rm, sch = ddlab.Uniform(3), ddlab.Geometric(1e-3, 3.0)

    def negative(x, sb):
        s = torch.ones(*x.shape, 3, dtype=torch.float64)
        s[0, 1, 2] = -1.0
        return s

    with pytest.raises(ValueError, match=r"\(0, 1, 2\)"):
        sample(rm, sch, negative, 4, 2, 2, "euler")
    ok = lambda x, sb: torch.ones(*x.shape, 3, dtype=torch.float64)   # noqa: E731
    with pytest.raises(ValueError, match="method"):
        sample(rm, sch, ok, 4, 2, 2, "heun")
    with pytest.raises(ValueError, match="steps"):
        sample(rm, sch, ok, 4, 2, 0)
    with pytest.raises(ValueError, match="t_min"):
        sample(rm, sch, ok, 4, 2, 2, t_min=0.0)
    with pytest.raises(ValueError, match="x_T has shape"):
        sample(rm, sch, ok, 4, 2, 2, x_T=torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="clamp"):
        sample(rm, sch, ok, 4, 2, 2, clamp=(torch.tensor([True, False, True]), torch.zeros(3)))
    with pytest.raises(ValueError, match="too many"):
        exact_sampler_distribution(ddlab.Uniform(9), sch, ok, 4, 2, "euler")


# --------------------------------------------------------- exact law vs Monte Carlo
@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
@pytest.mark.parametrize("method", ["euler", "tweedie", "exact"])
def test_exact_law_matches_monte_carlo(kind, method):
    """Chi-square of 20000 samples against exact_sampler_distribution (fixed seed, p > 1e-4)."""
    rm, sch, p0, sf = toy(kind)
    steps, B = 3, 20000
    denoise = not (kind == "absorbing" and method == "exact")   # also cover denoise=False
    law = exact_sampler_distribution(rm, sch, sf, 2, steps, method, denoise=denoise).reshape(-1)
    g = torch.Generator().manual_seed(1)
    x = sample(rm, sch, sf, B, 2, steps, method, denoise=denoise, generator=g)
    assert x.shape == (B, 2) and x.dtype == torch.int64
    counts = torch.bincount(x[:, 0] * rm.n + x[:, 1], minlength=rm.n ** 2).double()
    expected = law * B
    assert counts[expected == 0].sum() == 0          # nothing where the exact law is zero
    big = expected >= 5
    stat = (((counts - expected) ** 2)[big] / expected[big]).sum().item()
    dof = int(big.sum()) - 1
    assert dof >= 3
    assert scipy.stats.chi2.sf(stat, dof) > 1e-4, (stat, dof)


# --------------------------------------------------------- theory and hand-built kernels
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_tweedie_is_exact_for_one_token(steps):
    """d = 1: the Tweedie step with the exact score is the exact reverse transition, so the law
    is p0 up to the start mismatch (uniform instead of p_1, of order e^{-n sigma_max} = 6e-6)."""
    n = 4
    p0 = joint(n, 1, seed=3)
    rm, sch = ddlab.Uniform(n), ddlab.Geometric(1e-3, 3.0)
    law = exact_sampler_distribution(rm, sch, ddlab.exact_score_fn(p0, rm), 1, steps, "tweedie")
    assert torch.allclose(law, p0, atol=2e-5)
    # ... while Euler with the same steps is visibly off
    euler = exact_sampler_distribution(rm, sch, ddlab.exact_score_fn(p0, rm), 1, steps, "euler")
    assert (euler - p0).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["euler", "tweedie", "exact"])
def test_absorbing_one_token_every_method_recovers_p0(method):
    """From all-MASK a single token can only be unmasked once, to a draw from p0: any sampler
    with the exact score gives p0 exactly (the start at all-MASK is not an approximation)."""
    p0 = with_mask(joint(5, 1, seed=4))
    rm, sch = ddlab.Absorbing(6), ddlab.LogLinear(1e-3)
    law = exact_sampler_distribution(rm, sch, ddlab.exact_score_fn(p0, rm), 1, 2, method)
    assert torch.allclose(law, p0, atol=1e-12)


def test_euler_one_step_by_hand():
    """One Euler step from the uniform law, built with scipy expm and numpy, no denoising."""
    n = 3
    p0 = joint(n, 1, seed=5).numpy()
    rm, sch = ddlab.Uniform(n), ddlab.Geometric(1e-3, 2.0)
    law = exact_sampler_distribution(rm, sch, ddlab.exact_score_fn(p0, rm), 1, 1, "euler",
                                     denoise=False, t_min=0.2).numpy()
    Q = np.ones((n, n)) - n * np.eye(n)
    sb_hi, sb_lo = 2.0, 1e-3 ** 0.8 * 2.0 ** 0.2
    pt = scipy.linalg.expm(sb_hi * Q) @ p0
    out = np.zeros(n)
    for x in range(n):
        step = np.array([(x == y) + (sb_hi - sb_lo) * Q[x, y] * pt[y] / pt[x] for y in range(n)])
        step[x] = 1 - sum(step[y] for y in range(n) if y != x)
        step = np.clip(step, 0, None)
        out += step / step.sum() / n
    np.testing.assert_allclose(law, out, atol=1e-12)


def test_exact_method_one_interval_by_hand():
    """The "exact" kernel is expm(dsigma Qbar) with the whole-sequence reverse generator at the
    midpoint time, built here by hand on (2,)*2 from the true marginal."""
    n, d = 2, 2
    p0 = joint(n, d, seed=6).numpy()
    rm, sch = ddlab.Uniform(n), ddlab.Geometric(1e-2, 2.0)
    eps = 0.5
    law = exact_sampler_distribution(rm, sch, ddlab.exact_score_fn(p0, rm), d, 1, "exact",
                                     denoise=False, t_min=eps).numpy().reshape(-1)
    Q = np.ones((n, n)) - n * np.eye(n)
    sb = lambda t: 1e-2 ** (1 - t) * 2.0 ** t                # noqa: E731
    mid = sb((1 + eps) / 2)
    P = scipy.linalg.expm(mid * Q)
    pt = np.kron(P, P) @ p0.reshape(-1)                     # row-major (x1, x2) -> 2 x1 + x2
    states = [(a, b) for a in range(n) for b in range(n)]
    Qbar = np.zeros((4, 4))
    for j, x in enumerate(states):
        for k, y in enumerate(states):
            if sum(u != v for u, v in zip(x, y)) == 1:
                i = 0 if x[0] != y[0] else 1
                Qbar[k, j] = Q[x[i], y[i]] * pt[k] / pt[j]
        Qbar[j, j] = -Qbar[:, j].sum()
    expected = scipy.linalg.expm((sb(1.0) - sb(eps)) * Qbar) @ np.full(4, 0.25)
    np.testing.assert_allclose(law, expected, atol=1e-12)


def test_samplers_converge_and_tweedie_beats_euler():
    """The lesson-5 findings on a d = 2 uniform toy: the exact simulation reaches KL < 1e-6 with
    256 steps; at equal steps Tweedie's KL is below Euler's; both shrink with more steps."""
    rm, sch, p0, sf = toy("uniform", n=3, d=2, seed=7)
    kl = {m: [kl_divergence(p0, exact_sampler_distribution(rm, sch, sf, 2, k, m))
              for k in (4, 16)] for m in ("euler", "tweedie")}
    for m in kl:
        assert kl[m][1] < kl[m][0] / 4
    assert kl["tweedie"][0] < kl["euler"][0] and kl["tweedie"][1] < kl["euler"][1]
    assert kl_divergence(p0, exact_sampler_distribution(rm, sch, sf, 2, 256, "exact")) < 1e-6


# --------------------------------------------------------------------- clamp and start
def test_clamp_gives_the_conditional():
    """Clamping token 0 to 1 and running the exact sampler samples p0(x_1 | x_0 = 1)."""
    rm, sch, p0, sf = toy("absorbing", n=3, d=2, seed=8)
    clamp = (torch.tensor([True, False]), torch.tensor([1, 0]))
    law = exact_sampler_distribution(rm, sch, sf, 2, 64, "exact", clamp=clamp)
    assert law[1].sum().item() == pytest.approx(1.0, abs=1e-12)
    cond = p0[1] / p0[1].sum()
    assert torch.allclose(law[1], cond, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    per_row = (torch.tensor([[True, False], [False, True]]).repeat(50, 1),
               torch.tensor([[2, 0], [0, 1]]).repeat(50, 1))
    x = sample(rm, sch, sf, 100, 2, 8, "tweedie", clamp=per_row, generator=g)
    assert (x[0::2, 0] == 2).all() and (x[1::2, 1] == 1).all()
    assert (x < 3).all()                                     # denoised: no MASK left


@pytest.mark.parametrize("method", ["euler", "tweedie", "exact"])
def test_clean_start_stays_put_under_absorbing(method):
    """Out of a clean token an absorbing chain has no reverse moves: x_T is returned as is."""
    rm, sch, p0, sf = toy("absorbing", n=3, d=2, seed=9)
    x_T = torch.tensor([[0, 1], [2, 2], [1, 0]])
    assert torch.equal(sample(rm, sch, sf, 3, 2, 5, method, x_T=x_T), x_T)


def test_generator_makes_sampling_reproducible():
    rm, sch, p0, sf = toy("uniform")
    a = sample(rm, sch, sf, 64, 2, 4, "exact", generator=torch.Generator().manual_seed(5))
    b = sample(rm, sch, sf, 64, 2, 4, "exact", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_helpers():
    seqs = all_sequences(3, 2)
    assert seqs.shape == (9, 2) and seqs[5].tolist() == [1, 2]
    t, sb = time_grid(ddlab.LogLinear(1e-3), 4, t_min=1e-5)
    assert t[0] == 1 and t[-1] == pytest.approx(1e-5) and torch.all(sb[:-1] > sb[1:])
    p = torch.tensor([0.5, 0.5, 0.0])
    q = torch.tensor([0.25, 0.5, 0.25])
    assert kl_divergence(p, q) == pytest.approx(0.5 * np.log(2))
    assert kl_divergence(q, p) == float("inf")


def test_kl_vs_steps_one_token_tweedie_is_exact_and_euler_improves():
    # one uniform token: the Tweedie step is the exact reverse kernel (Bayes), so its law is p0 at
    # any step count; Euler's first-order error must shrink with more steps
    n = 5
    p0 = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=torch.float64)
    rm, sch = ddlab.Uniform(n), ddlab.Geometric(1e-3, 2.0)
    curves = ddlab.sampling.kl_vs_steps(rm, sch, ddlab.exact_score_fn(p0, rm), 1, p0, [1, 4, 16])
    assert max(curves["tweedie"]) < 1e-10
    assert curves["euler"][0] > curves["euler"][1] > curves["euler"][2] > 0
