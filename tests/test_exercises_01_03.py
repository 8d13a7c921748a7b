"""The build-it exercises of lessons 1, 2 and 3: the hidden solution passes the lesson's own check
cell, the untouched stub reports "not attempted yet", and deliberately wrong versions fail.

Each test takes the solution from the lesson's ``<details>`` block and the check cell from the
lesson itself (parsed from the .ipynb JSON), so the test follows the notebook as it is edited.
"""

from __future__ import annotations

import pytest

from tests.exercise_harness import _run_check, _solution


def _wrong(name, checker, func, old, new):
    good = _solution(name, func)
    assert old in good, f"{old!r} is not in the solution of {name}"
    return _run_check(name, checker, good.replace(old, new))


# ------------------------------------------------------------------ lesson 1: one Gillespie step
L1 = "01_ctmc.ipynb"


def test_lesson1_solution_passes():
    assert _run_check(L1, "check_gillespie_step", _solution(L1, "my_gillespie_step")) == "PASS"


def test_lesson1_stub_is_not_attempted():
    stub = "def my_gillespie_step(Q, x, generator):\n    raise NotImplementedError\n"
    assert _run_check(L1, "check_gillespie_step", stub) == "not attempted yet"


@pytest.mark.parametrize("wrong", [
    ("wait = -torch.log1p(-u) / q", "wait = -torch.log1p(-u) * q"),     # mean q instead of 1/q
    ("rates = Q[:, x].clone()", "rates = Q[x, :].clone()"),            # row (rates into x)
    ("rates[x] = 0.0", "rates[x] = -rates[x]"),                        # jumps to itself
])
def test_lesson1_wrong_versions_fail(wrong):
    result = _wrong(L1, "check_gillespie_step", "my_gillespie_step", *wrong)
    assert result.startswith("FAIL"), result


# ------------------------------------------------------------------ lesson 2: the reverse rate matrix
L2 = "02_reversal.ipynb"


def test_lesson2_solution_passes():
    assert _run_check(L2, "check_reverse_rates", _solution(L2, "my_reverse_rates")) == "PASS"


def test_lesson2_stub_is_not_attempted():
    stub = "def my_reverse_rates(Q, p):\n    raise NotImplementedError\n"
    assert _run_check(L2, "check_reverse_rates", stub) == "not attempted yet"


@pytest.mark.parametrize("wrong", [
    ("* Q.T", "* Q"),                                                   # no transpose
    ("(p[:, None] / p[None, :])", "(p[None, :] / p[:, None])"),         # inverted ratio
    ("torch.diag(Qbar.sum(0))", "torch.diag(Qbar.sum(1))"),             # diagonal from row sums
])
def test_lesson2_wrong_versions_fail(wrong):
    result = _wrong(L2, "check_reverse_rates", "my_reverse_rates", *wrong)
    assert result.startswith("FAIL"), result


# ------------------------------------------------------------------ lesson 3: the exact expected DSE
L3 = "03_score_entropy.ipynb"


def _run_check3(func_source):
    # the lesson's check cell uses `losses`, imported by the lesson's setup cell
    return _run_check(L3, "check_expected_dse", "from ddlab import losses\n" + func_source)


def test_lesson3_solution_passes():
    assert _run_check3(_solution(L3, "my_expected_dse")) == "PASS"


def test_lesson3_stub_is_not_attempted():
    stub = "def my_expected_dse(Q, log_s, p0, sigma_bar):\n    raise NotImplementedError\n"
    assert _run_check3(stub) == "not attempted yet"


@pytest.mark.parametrize("wrong", [
    ("terms = s - r * L + K", "terms = s - r * L"),                           # K(r) dropped
    ("W = Q.clone().fill_diagonal_(0.0)", "W = Q.T.clone().fill_diagonal_(0.0)"),   # rate x -> y
    ("W = Q.clone().fill_diagonal_(0.0)", "W = Q.clone()"),                   # y = x kept
])
def test_lesson3_wrong_versions_fail(wrong):
    good = _solution(L3, "my_expected_dse")
    assert wrong[0] in good
    result = _run_check3(good.replace(wrong[0], wrong[1]))
    assert result.startswith("FAIL"), result
