"""D3PM's discrete-time bound (ddlab.discrete_time, lesson 10): the exact per-step KL sum against a brute
force over whole sequences, its closed form as a Riemann sum of MDLM's integrand, and its
convergence to the continuous-time bound as T grows, with the 1/T constant predicted by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ddlab
from ddlab import discrete_time as DT, mdlm as M
from ddlab import sequences as S
from ddlab.schedules import Cosine, Polynomial

N, D = 5, 3


def toy():
    p0, _ = S.words_toy(["cab", "bad", "dab", "abc", "bca"], weights=[4, 3, 2, 2, 1], mask=True)
    f = S.exact_score_fn(p0, ddlab.Absorbing(N), off_support="conditional")
    x0 = S.all_sequences(N, D)[p0.reshape(-1) > 0]
    return p0, M.denoiser_fn_from_score_fn(f, N), x0


def smoothed(den):
    """An imperfect denoiser whose mixing weight depends on sigma_bar (not time-agnostic)."""
    flat = torch.tensor([0.25] * (N - 1) + [0.0], dtype=torch.float64)

    def f(x_t, sb):
        mix = 0.5 * torch.exp(-torch.as_tensor(sb, dtype=torch.float64)).reshape(-1, 1, 1)
        return (1 - mix) * den(x_t, sb) + mix * flat
    return f


def brute_force_bound(schedule, den, x0, T):
    """sum_k E KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k)) over all N^D sequences: the forward
    steps as whole-sequence matrices, the posterior by Bayes, the model's step from MDLM's
    formula written out here, every KL over whole sequences."""
    states = S.all_sequences(N, D)
    V = states.shape[0]
    alpha = [math.exp(-float(schedule.sigma_bar(k / T))) for k in range(T + 1)]
    mask = N - 1

    def token_step(a_prev, a_next):            # F[y, x] = q(x_k = y | x_{k-1} = x), one token
        F = torch.zeros(N, N, dtype=torch.float64)
        for x in range(N - 1):
            F[x, x] = a_next / a_prev
            F[mask, x] = 1 - a_next / a_prev
        F[mask, mask] = 1.0
        return F

    def seq_matrix(F):                         # M[j, i] = prod_pos F[states[j], states[i]]
        out = torch.ones(V, V, dtype=torch.float64)
        for pos in range(D):
            out = out * F[states[:, pos][:, None], states[:, pos][None, :]]
        return out

    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    for b, row in enumerate(x0):
        # step 0 is x0 noised to alpha_0 (alpha_0 < 1 for Geometric, whose sigma_bar(0) > 0)
        start = torch.ones(V, dtype=torch.float64)
        for pos in range(D):
            tok = torch.zeros(N, dtype=torch.float64)
            tok[row[pos]], tok[mask] = alpha[0], 1 - alpha[0]
            start = start * tok[states[:, pos]]
        laws = [start]                          # q(x_k | x0) over sequences
        steps = [None]
        for k in range(1, T + 1):
            steps.append(seq_matrix(token_step(alpha[k - 1], alpha[k])))
            laws.append(steps[k] @ laws[k - 1])
        for k in range(1, T + 1):
            for j in torch.nonzero(laws[k] > 0)[:, 0].tolist():
                post = steps[k][j] * laws[k - 1] / laws[k][j]              # over x_{k-1}
                xk = states[j]
                probs = den(xk[None], torch.tensor([-math.log(alpha[k])], dtype=torch.float64))[0]
                model = torch.ones(V, dtype=torch.float64)
                for pos in range(D):
                    if xk[pos] == mask:
                        stay = (1 - alpha[k - 1]) / (1 - alpha[k])
                        reveal = (alpha[k - 1] - alpha[k]) / (1 - alpha[k])
                        clean = probs[pos, : N - 1] / probs[pos, : N - 1].sum()
                        tok = torch.cat([reveal * clean, torch.tensor([stay], dtype=torch.float64)])
                    else:
                        tok = torch.nn.functional.one_hot(xk[pos], N).double()
                    model = model * tok[states[:, pos]]
                keep = post > 0
                kl = (post[keep] * (post[keep] / model[keep]).log()).sum()
                total[b] += laws[k][j] * kl
    return total


@pytest.mark.parametrize("schedule, T", [(ddlab.LogLinear(1e-3), 1), (ddlab.LogLinear(1e-3), 3),
                                         (Cosine(1e-2), 4), (ddlab.Geometric(1e-2, 4.0), 3)],
                         ids=lambda v: repr(v))
def test_discrete_bound_against_brute_force(schedule, T):
    p0, den, x0 = toy()
    den = smoothed(den)
    ours = DT.discrete_bound(schedule, den, x0, N, T)
    ref = brute_force_bound(schedule, den, x0, T)
    assert torch.allclose(ours, ref, rtol=1e-11, atol=1e-13), (ours, ref)


@pytest.mark.parametrize("schedule", [ddlab.LogLinear(1e-3), Polynomial(2.0), Cosine()], ids=repr)
def test_discrete_bound_is_a_riemann_sum_of_mdlms_integrand(schedule):
    """Closed form: L_T = sum_k (alpha_{k-1} - alpha_k) / alpha_k * E[S](alpha_k), the
    lower-alpha Riemann sum of int E[S] / alpha d alpha."""
    p0, den, x0 = toy()
    den = smoothed(den)
    T = 7
    alpha = DT.step_alphas(schedule, T)
    m1, _ = M.exact_integrand_moments(den, x0, N, -torch.log(alpha[1:]))
    closed = (((alpha[:-1] - alpha[1:]) / alpha[1:])[:, None] * m1).sum(0)
    assert torch.allclose(DT.discrete_bound(schedule, den, x0, N, T), closed, rtol=1e-12)


def test_d3pm_gap_shrinks_like_one_over_T_with_the_predicted_constant():
    """Exact denoiser, LogLinear: L_T decreases to the continuous bound; T (L_T - L_inf) tends to
    (1 - eps) / 2 (P(eps) - P(1)), P(alpha) = E[S] / alpha, the left-endpoint rule's error."""
    p0, den, x0 = toy()
    eps = 1e-3
    sched = ddlab.LogLinear(eps)
    L_inf = M.exact_mdlm_bound(sched, den, x0, N, t_min=0.0)
    Ts = [4, 16, 64, 256, 1024]
    L = [DT.discrete_bound(sched, den, x0, N, T) for T in Ts]
    for a, b in zip(L, L[1:]):
        assert torch.all(b < a)
    assert torch.all(L[-1] > L_inf)
    slope = np.polyfit(np.log(Ts[2:]), np.log([(l_ - L_inf).sum().item() for l_ in L[2:]]), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.02)
    def P(sb):
        return M.exact_integrand_moments(den, x0, N, sb)[0] / math.exp(-sb)
    predicted = (1 - eps) / 2 * (P(-math.log(eps)) - P(1e-7))
    assert torch.allclose(Ts[-1] * (L[-1] - L_inf), predicted, rtol=0.01)
    # T = 1: one step from clean to (almost) all-MASK; with eps -> 0 it is the sum of the
    # marginal cross-entropies -log p(x0_i), the bound of an independent-token model
    one = DT.discrete_bound(ddlab.LogLinear(1e-12), den, x0, N, 1)
    marg = torch.stack([S.marginalise(p0, [i]) for i in range(D)])          # (D, N)
    indep = -torch.log(marg[torch.arange(D), x0]).sum(-1)
    assert torch.allclose(one, indep, atol=1e-9)


def test_d3pm_validation():
    p0, den, x0 = toy()
    with pytest.raises(ValueError, match="T \\(the number of discrete steps\\) must be an integer >= 1"):
        DT.discrete_bound(ddlab.LogLinear(), den, x0, N, 0)
    with pytest.raises(ValueError, match="x0 holds the MASK token"):
        DT.discrete_bound(ddlab.LogLinear(), den, torch.tensor([[4, 0, 1]]), N, 2)
    with pytest.raises(ValueError, match="schedule must be a noise schedule"):
        DT.step_alphas(None, 4)
    a = DT.step_alphas(ddlab.LogLinear(1e-3), 4)
    assert torch.allclose(a, torch.tensor([1.0, 0.75025, 0.5005, 0.25075, 1e-3],
                                          dtype=torch.float64), rtol=1e-13)
    zero = lambda x, sb: torch.nn.functional.one_hot(torch.zeros_like(x), N).double()  # noqa: E731
    with pytest.raises(ValueError, match="probability 0 to a true token"):
        DT.discrete_bound(ddlab.LogLinear(), zero, torch.tensor([[1, 0, 1]]), N, 2)
