"""The build-it exercises of lessons 6, 7 and 8: the hidden solution passes the lesson's own check
cell, the stub reports "not attempted yet", and deliberately wrong versions fail.

Each test takes the solution from the lesson's ``<details>`` block and the check cell from the
lesson itself (parsed from the .ipynb JSON), so the test follows the notebook as it is edited.
"""

from __future__ import annotations

import pytest

from tests.exercise_harness import _cells, _run_check, _solution, _source


EXERCISES = {
    "06_likelihood.ipynb": ("my_bound_limit", "check_bound_limit", "(rm, p0, x0, sigma_bar)", [
        ("q = q[..., None] * P[:, xi]", "q = q[..., None] * P[xi, :]"),            # row for column
        ("return S.kl_divergence(q, p_t)", "return S.kl_divergence(p_t, q)"),      # reversed KL
        ("return S.kl_divergence(q, p_t)", "return S.kl_divergence(q, p0)"),       # data, not p_t
    ]),
    "07_sequences.ipynb": ("my_factorisation_kl", "check_factorisation_kl", "(kernel)", [
        ("(kernel[keep] * (kernel[keep] / prod[keep]).log()).sum()",
         "(prod[keep] * (prod[keep] / kernel[keep]).log()).sum()"),                # reversed KL
        ("prod = prod[..., None] * marg", "prod = prod[None, ...] * marg"),       # axis order
        ("marg = kernel.sum(dim=others)", "marg = kernel.mean(dim=others)"),      # not normalised
    ]),
    "08_masked_diffusion.ipynb": ("my_mdlm_step", "check_mdlm_step",
                                  "(probs, sigma_bar_t, sigma_bar_s)", [
        ("out = (a_s - a_t) / (1 - a_t) * probs", "out = (a_t - a_s) / (1 - a_t) * probs"),
        ("a_t = torch.exp(-torch", "a_t = torch.exp(torch"),                       # e^{+sigma_bar}
        ("out[-1] = (1 - a_s) / (1 - a_t)", "pass"),                               # MASK left at 0
    ]),
}


@pytest.mark.parametrize("lesson", sorted(EXERCISES))
def test_solution_passes(lesson):
    func, checker, _, _ = EXERCISES[lesson]
    assert _run_check(lesson, checker, _solution(lesson, func)) == "PASS"


@pytest.mark.parametrize("lesson", sorted(EXERCISES))
def test_stub_is_not_attempted(lesson):
    func, checker, args, _ = EXERCISES[lesson]
    stub = f"def {func}{args}:\n    raise NotImplementedError\n"
    assert _run_check(lesson, checker, stub) == "not attempted yet"


@pytest.mark.parametrize("lesson, k", [(name, k) for name in sorted(EXERCISES) for k in range(3)])
def test_wrong_versions_fail(lesson, k):
    func, checker, _, wrongs = EXERCISES[lesson]
    good = _solution(lesson, func)
    old, new = wrongs[k]
    assert old in good, f"{old!r} is not in the solution of {lesson}"
    result = _run_check(lesson, checker, good.replace(old, new))
    assert result.startswith("FAIL"), result


def test_the_stub_cell_in_each_lesson_does_not_raise():
    """The committed lesson runs top to bottom: the stub only defines the function."""
    for lesson, (func, _, _, _) in EXERCISES.items():
        stubs = [_source(c) for c in _cells(lesson) if c["cell_type"] == "code"
                 and f"def {func}(" in _source(c) and "NotImplementedError" in _source(c)
                 and "def check_" not in _source(c)]
        assert len(stubs) == 1, f"{lesson}: expected one stub cell for {func}"
        exec(stubs[0], {})
