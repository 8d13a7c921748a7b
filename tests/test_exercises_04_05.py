"""The build-it exercises of lessons 4 and 5: the hidden solution passes the lesson's own check
cell, and deliberately wrong versions fail it.

Each test takes the solution from the lesson's ``<details>`` block and the check cell from the
lesson itself (parsed from the .ipynb JSON), so the test follows the notebook as it is edited.
"""

from __future__ import annotations

import pytest

from tests.exercise_harness import _run_check, _solution


# ------------------------------------------------------------------ lesson 4: the DWDSE of a batch
L4 = "04_learning_ratios.ipynb"


def test_lesson4_solution_passes():
    assert _run_check(L4, "check_dwdse", _solution(L4, "my_dwdse")) == "PASS"


def test_lesson4_stub_is_not_attempted():
    stub = "def my_dwdse(Q, log_score_fn, x0, x_t, sigma_bar, weight):\n    raise NotImplementedError\n"
    assert _run_check(L4, "check_dwdse", stub) == "not attempted yet"


@pytest.mark.parametrize("wrong", [
    ("terms = log_s.exp() - r * log_s + K", "terms = log_s.exp() - r * log_s"),   # K(r) dropped
    ("col = P[b, :, x0]", "col = P[b, x0, :]"),                                  # row for column
    ("return weight * (rates * terms).sum(-1)", "return (rates * terms).sum(-1)"),  # no weight
])
def test_lesson4_wrong_versions_fail(wrong):
    good = _solution(L4, "my_dwdse")
    assert wrong[0] in good
    result = _run_check(L4, "check_dwdse", good.replace(wrong[0], wrong[1]))
    assert result.startswith("FAIL"), result


# ------------------------------------------------------------------ lesson 5: the Tweedie step
L5 = "05_sampling.ipynb"


def test_lesson5_solution_passes():
    assert _run_check(L5, "check_tweedie_step", _solution(L5, "my_tweedie_step")) == "PASS"


def test_lesson5_stub_is_not_attempted():
    stub = "def my_tweedie_step(Q, x, s, dsigma):\n    raise NotImplementedError\n"
    assert _run_check(L5, "check_tweedie_step", stub) == "not attempted yet"


@pytest.mark.parametrize("wrong", [
    ("matrix_exp(-dsigma * Q) @ s", "matrix_exp(dsigma * Q) @ s"),            # noises the score
    ("matrix_exp(dsigma * Q)[x, :]", "matrix_exp(dsigma * Q)[:, x]"),        # column for row
    ("return p / p.sum()", "return p"),                                     # not normalised
])
def test_lesson5_wrong_versions_fail(wrong):
    good = _solution(L5, "my_tweedie_step")
    assert wrong[0] in good
    result = _run_check(L5, "check_tweedie_step", good.replace(wrong[0], wrong[1]))
    assert result.startswith("FAIL"), result
