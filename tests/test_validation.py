"""Every bad input at the public boundary raises ValueError with a message naming the bad value
and what was expected (no RuntimeError from deep inside torch, no silent NaN)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddlab

RMS = [ddlab.Uniform(3), ddlab.Absorbing(3), ddlab.RateMatrix(ddlab.Uniform(3).Q)]
IDS = ["uniform", "absorbing", "general"]


# ------------------------------------------------------------------- generators
def test_q_not_square():
    with pytest.raises(ValueError, match=r"Q must be a square \(n, n\) matrix, got shape \(2, 3\)"):
        ddlab.RateMatrix(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"got shape \(3,\)"):
        ddlab.RateMatrix(np.zeros(3))


def test_q_negative_off_diagonal():
    Q = np.array([[-1.0, -0.5], [1.0, 0.5]])
    with pytest.raises(ValueError, match=r"Q\[0, 1\] = -0.5 is a negative off-diagonal rate"):
        ddlab.RateMatrix(Q)


def test_q_columns_must_sum_to_zero_within_documented_tolerance():
    # The tolerance is atol * (1 + max|Q|) with atol = 1e-8: for this Q (max|Q| = 2), 3e-8.
    Q = ddlab.Uniform(3).Q.numpy().copy()
    Q[0, 1] += 1e-6
    with pytest.raises(ValueError, match=r"column 1 of Q sums to 1e-06, expected 0 \(tolerance 3"):
        ddlab.RateMatrix(Q)
    Q = ddlab.Uniform(3).Q.numpy().copy()
    Q[0, 1] += 1e-9                                      # rounding-level error: accepted
    ddlab.RateMatrix(Q)
    Q[0, 1] += 1e-6
    ddlab.RateMatrix(Q, atol=1e-5)                       # a looser tolerance on request


def test_q_not_finite():
    Q = ddlab.Uniform(2).Q.numpy().copy()
    Q[0, 0] = np.nan
    with pytest.raises(ValueError, match="Q must be finite"):
        ddlab.RateMatrix(Q)


def test_too_few_states():
    with pytest.raises(ValueError, match="at least one state, got n = 0"):
        ddlab.RateMatrix(np.zeros((0, 0)))
    with pytest.raises(ValueError, match=r"Uniform\(n\) needs n >= 1.*got n = 0"):
        ddlab.Uniform(0)
    with pytest.raises(ValueError, match=r"Absorbing\(n\) needs n >= 2.*MASK.*got n = 1"):
        ddlab.Absorbing(1)
    with pytest.raises(ValueError, match=r"integer number of states, got 2.5"):
        ddlab.Uniform(2.5)
    with pytest.raises(ValueError, match=r"integer number of states, got True"):
        ddlab.Absorbing(True)
    ddlab.Uniform(1)                                      # one state is a (dull) valid chain
    ddlab.Uniform(np.int64(4))


# -------------------------------------------------------------------- sigma_bar
@pytest.mark.parametrize("rm", RMS, ids=IDS)
def test_negative_or_nan_sigma_bar(rm):
    with pytest.raises(ValueError, match=r"sigma_bar must be >= 0.*got -0.1"):
        rm.transition(-0.1)
    with pytest.raises(ValueError, match=r"sigma_bar must be >= 0.*got -2.0 at index \(1,\)"):
        rm.transition(torch.tensor([0.5, -2.0]))
    with pytest.raises(ValueError, match="sigma_bar must be finite, got nan"):
        rm.transition(float("nan"))
    with pytest.raises(ValueError, match=r"scalar or of shape \(B,\), got shape \(2, 2\)"):
        rm.transition(torch.ones(2, 2))
    x = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="sigma_bar must be >= 0"):
        rm.transition_from(x, -1.0)
    with pytest.raises(ValueError, match="sigma_bar must be >= 0"):
        rm.transition_to(x, -1.0)
    with pytest.raises(ValueError, match="sigma_bar must be >= 0"):
        rm.sample_transition(x, torch.tensor([0.1, -0.1]))
    with pytest.raises(ValueError, match="dsigma must be >= 0"):
        rm.apply_inverse_transition(torch.ones(2, 3), -0.1)
    with pytest.raises(ValueError, match="dsigma must be >= 0"):
        rm.euler_probs(x, torch.ones(2, 3), -0.1)
    with pytest.raises(ValueError, match="dsigma must be >= 0"):
        rm.tweedie_probs(x, torch.ones(2, 3), -0.1)
    with pytest.raises(ValueError, match="sigma_bar must be >= 0"):
        rm.score_entropy(torch.zeros(2, 3), x, x, -0.5)
    with pytest.raises(ValueError, match="sigma_bar must be > 0 for the score entropy"):
        rm.score_entropy(torch.zeros(2, 3), x, x, 0.0)
    with pytest.raises(ValueError, match="sigma_bar must be >= 0"):
        ddlab.marginal(rm, [0.2, 0.3, 0.5], -1.0)
    with pytest.raises(ValueError, match="sigma_bar must be >= 0"):
        ddlab.posterior(rm, [0.2, 0.3, 0.5], -1.0)
    with pytest.raises(ValueError, match="sigma_bar must be >= 0"):
        ddlab.tweedie_denoiser(rm, -1.0, torch.ones(3), 0)


@pytest.mark.parametrize("rm", RMS, ids=IDS)
def test_sigma_bar_shape_mismatch(rm):
    x = torch.zeros(4, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"sigma_bar of shape \(3,\) does not broadcast to the "
                                         r"token shape \(4, 5\)"):
        rm.transition_from(x, torch.ones(3))
    with pytest.raises(ValueError, match=r"sigma_bar of shape \(3,\) does not broadcast"):
        rm.transition_to(x, torch.ones(3))
    with pytest.raises(ValueError, match=r"sigma_bar of shape \(3,\) does not broadcast"):
        rm.sample_transition(x, torch.ones(3))
    with pytest.raises(ValueError, match=r"sigma_bar of shape \(3,\) does not broadcast"):
        rm.score_entropy(torch.zeros(4, 5, 3), x, x, torch.ones(3))
    with pytest.raises(ValueError, match=r"dsigma of shape \(3,\) does not broadcast"):
        rm.apply_inverse_transition(torch.ones(4, 5, 3), torch.ones(3))
    with pytest.raises(ValueError, match=r"dsigma of shape \(3,\) does not broadcast"):
        rm.tweedie_probs(x, torch.ones(4, 5, 3), torch.ones(3))
    with pytest.raises(ValueError, match=r"dsigma of shape \(3,\) does not broadcast"):
        rm.euler_probs(x, torch.ones(4, 5, 3), torch.ones(3))


def test_time_outside_unit_interval():
    for sched in (ddlab.LogLinear(), ddlab.Geometric()):
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got 1.5"):
            sched.sigma_bar(1.5)
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got -0.25 at index \(2,\)"):
            sched.sigma_bar(np.array([0.0, 0.5, -0.25]))


# ---------------------------------------------------------------- distributions
@pytest.mark.parametrize("fn", ["marginal", "posterior"])
def test_bad_p0(fn):
    f = getattr(ddlab, fn)
    rm = ddlab.Uniform(3)
    with pytest.raises(ValueError, match=r"p0 must be non-negative, got -0.2 at index \(1,\)"):
        f(rm, [1.2, -0.2, 0.0], 0.5)
    with pytest.raises(ValueError, match="p0 must sum to 1 along dim -1, but sums to 0.9"):
        f(rm, [0.5, 0.3, 0.1], 0.5)
    with pytest.raises(ValueError, match="p0 has 2 states along dim -1, expected n = 3"):
        f(rm, [0.5, 0.5], 0.5)
    with pytest.raises(ValueError, match="p0 must be finite, got nan"):
        f(rm, [np.nan, 0.5, 0.5], 0.5)
    with pytest.raises(ValueError, match=r"p0 must be a vector of shape \(3,\), got shape \(2, 3\)"):
        f(rm, np.full((2, 3), 1 / 3), 0.5)
    with pytest.raises(ValueError, match="p0 must be a vector of probabilities, got the scalar"):
        f(rm, 1.0, 0.5)
    f(rm, [0.5, 0.3, 0.2 + 1e-9], 0.5)                   # rounding-level error is accepted


def test_bad_p_for_reverse_and_score():
    Q = ddlab.Uniform(3).Q
    with pytest.raises(ValueError, match="p must be non-negative, got -0.1"):
        ddlab.reverse_rate_matrix(Q, [0.6, 0.5, -0.1])
    with pytest.raises(ValueError, match="p must sum to 1 along dim -1, but sums to 1.2"):
        ddlab.reverse_rate_matrix(Q, [0.6, 0.4, 0.2])
    with pytest.raises(ValueError, match="p has 2 states"):
        ddlab.reverse_rate_matrix(Q, [0.6, 0.4])
    with pytest.raises(ValueError, match="p must sum to 1"):
        ddlab.concrete_score([0.6, 0.6])
    with pytest.raises(ValueError, match=r"Q\[0, 1\] = -1 is a negative off-diagonal"):
        ddlab.reverse_rate_matrix(np.array([[1.0, -1.0], [-1.0, 1.0]]), [0.5, 0.5])


def test_ratio_at_zero_probability_state_names_the_state():
    with pytest.raises(ValueError, match=r"concrete score at state 1 is undefined: p\[1\] = 0"):
        ddlab.concrete_score([0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match=r"concrete score at state 2 is undefined: p\[2\] = 0"):
        ddlab.concrete_score([0.5, 0.5, 0.0], x=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"the reverse rates out of state 1 overflow"):
        ddlab.reverse_rate_matrix(ddlab.Uniform(2).Q, torch.tensor([1.0, 1e-310], dtype=torch.float64))


# ----------------------------------------------------------------------- tokens
@pytest.mark.parametrize("rm", RMS, ids=IDS)
def test_token_ids_out_of_range(rm):
    sb = 0.5
    with pytest.raises(ValueError, match=r"x0 holds token id 3, expected ids in 0..2 \(n = 3\)"):
        rm.transition_from(torch.tensor([0, 3]), sb)
    with pytest.raises(ValueError, match="x0 holds token id -1"):
        rm.sample_transition(torch.tensor([-1, 0]), sb)
    with pytest.raises(ValueError, match="x holds token id 5"):
        rm.transition_to([5], sb)
    with pytest.raises(ValueError, match="x holds token id 3"):
        rm.rates_into(3)
    with pytest.raises(ValueError, match="x holds token id 3"):
        rm.reverse_rates(torch.tensor([3]), torch.ones(1, 3))
    with pytest.raises(ValueError, match="x0 holds token id 7"):
        rm.score_entropy(torch.zeros(1, 3), torch.tensor([0]), torch.tensor([7]), sb)
    with pytest.raises(ValueError, match="x holds token id 9"):
        ddlab.tweedie_denoiser(rm, sb, torch.ones(3), 9)
    with pytest.raises(ValueError, match=r"x0 must hold integer token ids, got a tensor of dtype "
                                         r"torch.float32"):
        rm.transition_from(torch.tensor([0.0, 1.0]), sb)
    with pytest.raises(ValueError, match="x0 must hold integer token ids"):
        rm.transition_from([0.5], sb)


# ------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("rm", RMS, ids=IDS)
def test_score_and_token_shape_mismatch(rm):
    x = torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"score has shape \(4, 4\), expected a last axis of size "
                                         r"n = 3"):
        rm.reverse_rates(x, torch.ones(4, 4))
    with pytest.raises(ValueError, match=r"score has shape \(3, 3\), expected \(4, 3\)"):
        rm.reverse_rates(x, torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"score has shape \(3, 3\), expected \(4, 3\)"):
        rm.euler_probs(x, torch.ones(3, 3), 0.1)
    with pytest.raises(ValueError, match=r"score has shape \(3, 3\), expected \(4, 3\)"):
        rm.tweedie_probs(x, torch.ones(3, 3), 0.1)
    with pytest.raises(ValueError, match=r"log_score has shape \(4, 2\), expected \(4, 3\)"):
        rm.score_entropy(torch.zeros(4, 2), x, x, 0.5)
    with pytest.raises(ValueError, match=r"x has shape \(4,\) but x0 has shape \(2,\)"):
        rm.score_entropy(torch.zeros(4, 3), x, x[:2], 0.5)
    with pytest.raises(ValueError, match=r"v has shape \(4, 2\), expected a last axis of size n = 3"):
        rm.apply_inverse_transition(torch.ones(4, 2), 0.1)
    with pytest.raises(ValueError, match=r"score has shape \(2,\), expected \(3,\)"):
        ddlab.tweedie_denoiser(rm, 0.5, torch.ones(2), 0)


@pytest.mark.parametrize("rm", RMS, ids=IDS)
def test_non_finite_scores_refused(rm):
    x = torch.tensor([0, 1])
    bad = torch.tensor([[1.0, float("nan"), 1.0], [1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="score must be finite"):
        rm.reverse_rates(x, bad)
    with pytest.raises(ValueError, match="score must be finite"):
        rm.euler_probs(x, bad, 0.1)
    with pytest.raises(ValueError, match="score must be finite"):
        rm.tweedie_probs(x, bad, 0.1)
    with pytest.raises(ValueError, match="log_score must be finite"):
        rm.score_entropy(torch.log(torch.zeros(2, 3)), x, x, 0.5)
    with pytest.raises(ValueError, match="score must be finite"):
        ddlab.tweedie_denoiser(rm, 0.5, torch.tensor([1.0, float("inf"), 1.0]), 0)
    # a negative "score" is no ratio of probabilities: refused by every step, not clipped away
    for step in (lambda s: rm.reverse_rates(x, s), lambda s: rm.euler_probs(x, s, 0.1),
                 lambda s: rm.tweedie_probs(x, s, 0.1)):
        with pytest.raises(ValueError, match="score must be >= 0"):
            step(-torch.ones(2, 3))
    # an all-zero score is a valid ratio vector, but leaves a step no distribution
    with pytest.raises(ValueError, match="all-zero or non-finite distribution over next states"):
        rm.tweedie_probs(x, torch.zeros(2, 3), 0.1)


def test_score_entropy_unreachable_x_t():
    a = ddlab.Absorbing(4)
    with pytest.raises(ValueError, match="cannot be reached from its x0"):
        a.score_entropy(torch.zeros(1, 4), torch.tensor([1]), torch.tensor([0]), 0.5)
    # the dense path finds the same through p(x_t | x0) = 0
    with pytest.raises(ValueError, match="cannot be reached from its x0"):
        ddlab.RateMatrix(a.Q).score_entropy(torch.zeros(1, 4), torch.tensor([1]),
                                            torch.tensor([0]), 0.5)


def test_sample_categorical_bad_probs():
    with pytest.raises(ValueError, match="probs must be finite and non-negative"):
        ddlab.sample_categorical(torch.tensor([0.5, -0.1, 0.6]))
    with pytest.raises(ValueError, match="probs must be finite and non-negative"):
        ddlab.sample_categorical(torch.tensor([0.5, float("nan"), 0.5]))


def test_exact_score_fn_shape_mismatch():
    p0 = torch.full((3, 3), 1 / 9, dtype=torch.float64)
    fn = ddlab.exact_score_fn(p0, ddlab.Uniform(3))
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 2\), got \(4, 3\)"):
        fn(torch.zeros(4, 3, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="x_t holds token id 3"):
        fn(torch.tensor([[0, 3]]), 0.5)


def test_skip_value_checks_skips_only_the_value_checks():
    """Inside skip_value_checks the checks that read values are off (no GPU sync), the shape
    checks stay, and everything is back on afterwards, also after an exception in the block."""
    rm = ddlab.Uniform(5)
    bad_tokens = torch.tensor([[0, 7]])
    with ddlab.skip_value_checks():
        rm.sample_transition(bad_tokens, 0.1)                 # not checked: the caller's promise
        ddlab.LogLinear().sigma_bar(torch.tensor([1.5]))      # t outside [0, 1] not checked
        with pytest.raises(ValueError, match="shape"):
            rm.score_entropy(torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.long),
                             torch.zeros(1, 2, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="token id 7"):
        rm.sample_transition(bad_tokens, 0.1)
    with pytest.raises(RuntimeError):
        with ddlab.skip_value_checks():
            raise RuntimeError("inside")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ddlab.LogLinear().sigma_bar(torch.tensor([1.5]))


@pytest.mark.parametrize("schedule", [None, ddlab.LogLinear()], ids=["unit", "loglinear"])
def test_gillespie_needs_a_positive_t_end(schedule):
    with pytest.raises(ValueError, match="t_end must"):
        ddlab.gillespie(ddlab.Uniform(3), 0, schedule, t_end=0.0)
