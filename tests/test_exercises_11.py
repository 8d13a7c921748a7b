"""The build-it exercise of lesson 11: the hidden solution passes the lesson's own check cell, the
stub reports "not attempted yet", and deliberately wrong versions fail.

The solution comes from the lesson's ``<details>`` block and the check cell from the lesson itself
(parsed from the .ipynb JSON), so the test follows the notebook as it is edited.
"""

from __future__ import annotations

import pytest

from tests.exercise_harness import _cells, _run_check, _solution, _source

LESSON = "11_samplers_in_practice.ipynb"
FUNC, CHECKER = "my_drawn_confidence_law", "check_drawn_confidence_law"
WRONG = [
    ("keep_first = p1[:, None] >= p2[None, :]", "keep_first = p1[:, None] <= p2[None, :]"),  # less confident kept
    ("law += w0[:, None] * p / p.sum(1, keepdim=True)", "law += w0[:, None] * p / p.sum(0, keepdim=True)"),  # wrong axis
    ("w0 = (p1[:, None] * p2[None, :] * keep_first).sum(1)", "w0 = (p1[:, None] * keep_first).sum(1)"),  # other draw forgotten
]


def test_solution_passes():
    assert _run_check(LESSON, CHECKER, _solution(LESSON, FUNC)) == "PASS"


def test_stub_is_not_attempted():
    stub = f"def {FUNC}(p):\n    raise NotImplementedError\n"
    assert _run_check(LESSON, CHECKER, stub) == "not attempted yet"


@pytest.mark.parametrize("k", range(len(WRONG)))
def test_wrong_versions_fail(k):
    good = _solution(LESSON, FUNC)
    old, new = WRONG[k]
    assert old in good, f"{old!r} is not in the solution"
    result = _run_check(LESSON, CHECKER, good.replace(old, new))
    assert result.startswith("FAIL"), result


def test_the_stub_cell_does_not_raise():
    stubs = [_source(c) for c in _cells(LESSON) if c["cell_type"] == "code"
             and f"def {FUNC}(" in _source(c) and "NotImplementedError" in _source(c)
             and "def check_" not in _source(c)]
    assert len(stubs) == 1
    exec(stubs[0], {})
