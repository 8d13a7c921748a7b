"""The build-it exercise of lesson 10 (a new masking schedule's sigma): the hidden solution passes
the lesson's own check cell, the stub reports "not attempted yet", and deliberately wrong
versions fail. The solution and the check are read from the .ipynb, so the test follows the
notebook as it is edited."""

from __future__ import annotations

import pytest

from tests.exercise_harness import _cells, _run_check, _solution, _source

LESSON = "10_masked_diffusion_done_right.ipynb"
FUNC, CHECKER = "my_sigma", "check_sigma"
WRONG = [
    ("return -d_alpha / alpha", "return -d_alpha"),                  # -alpha', not sigma
    ("math.pi / 2 * torch.sin(math.pi * t)", "math.pi * torch.sin(math.pi * t)"),   # factor 2
    ("return -d_alpha / alpha", "return d_alpha / alpha"),           # the sign
]


def test_solution_passes():
    result = _run_check(LESSON, CHECKER, _solution(LESSON, FUNC))
    assert result.startswith("PASS"), result


def test_stub_is_not_attempted():
    stub = f"def {FUNC}(t, eps):\n    raise NotImplementedError\n"
    assert _run_check(LESSON, CHECKER, stub) == "not attempted yet"


@pytest.mark.parametrize("k", range(len(WRONG)))
def test_wrong_versions_fail(k):
    good = _solution(LESSON, FUNC)
    old, new = WRONG[k]
    assert old in good, f"{old!r} is not in the solution"
    result = _run_check(LESSON, CHECKER, good.replace(old, new))
    assert result.startswith("FAIL"), result


def test_a_sigma_right_only_in_the_middle_fails_in_the_bound():
    """sigma correct on the finite-difference grid [0.02, 0.98] but wrong near t = 1 is caught by
    the second half of the check, the bound on the schedule's own clock."""
    good = _solution(LESSON, FUNC)
    bent = good + ("\n_right = my_sigma\n"
                   "def my_sigma(t, eps):\n"
                   "    return _right(t, eps) * torch.where(t > 0.99, 2.0, 1.0)\n")
    result = _run_check(LESSON, CHECKER, bent)
    assert result.startswith("FAIL: with your sigma the bound"), result


def test_the_stub_cell_does_not_raise():
    stubs = [_source(c) for c in _cells(LESSON) if c["cell_type"] == "code"
             and f"def {FUNC}(" in _source(c) and "NotImplementedError" in _source(c)
             and "def check_" not in _source(c)]
    assert len(stubs) == 1
    exec(stubs[0], {})
