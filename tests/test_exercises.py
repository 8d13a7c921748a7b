"""The build-it exercises of lessons 1-8, 10 and 11: for each, the hidden solution passes the
lesson's own check cell, the untouched stub reports "not attempted yet", deliberately wrong versions
fail, and the committed stub cell runs without raising.

Each test takes the solution from the lesson's ``<details>`` block and the check cell from the
lesson itself (parsed from the .ipynb JSON), so the tests follow the notebooks as they are edited.
Lesson 9's exercises have another shape (tests/test_exercises_09.py).
"""

from __future__ import annotations

import pytest

from tests.exercise_harness import _cells, _run_check, _solution, _source

# lesson: (function, check, the stub's arguments, [(solution text, wrong text), ...], prelude)
# The prelude holds what the lesson's setup cell imports and the check cell uses.
EXERCISES = {
    "01_ctmc.ipynb": ("my_gillespie_step", "check_gillespie_step", "(Q, x, generator)", [
        ("wait = -torch.log1p(-u) / q", "wait = -torch.log1p(-u) * q"),     # mean q, not 1/q
        ("rates = Q[:, x].clone()", "rates = Q[x, :].clone()"),            # rates into x
        ("rates[x] = 0.0", "rates[x] = -rates[x]"),                        # jumps to itself
    ], ""),
    "02_reversal.ipynb": ("my_reverse_rates", "check_reverse_rates", "(Q, p)", [
        ("* Q.T", "* Q"),                                                   # no transpose
        ("(p[:, None] / p[None, :])", "(p[None, :] / p[:, None])"),         # inverted ratio
        ("torch.diag(Qbar.sum(0))", "torch.diag(Qbar.sum(1))"),             # diagonal from rows
    ], ""),
    "03_score_entropy.ipynb": ("my_expected_dse", "check_expected_dse",
                               "(Q, log_s, p0, sigma_bar)", [
        ("terms = s - r * L + K", "terms = s - r * L"),                     # K(r) dropped
        ("W = Q.clone().fill_diagonal_(0.0)", "W = Q.T.clone().fill_diagonal_(0.0)"),  # x -> y
        ("W = Q.clone().fill_diagonal_(0.0)", "W = Q.clone()"),             # y = x kept
    ], "from ddlab import losses\n"),
    "04_learning_ratios.ipynb": ("my_dwdse", "check_dwdse",
                                 "(Q, log_score_fn, x0, x_t, sigma_bar, weight)", [
        ("terms = log_s.exp() - r * log_s + K", "terms = log_s.exp() - r * log_s"),   # K(r) dropped
        ("col = P[b, :, x0]", "col = P[b, x0, :]"),                                  # row for column
        ("return weight * (rates * terms).sum(-1)", "return (rates * terms).sum(-1)"),  # no weight
    ], ""),
    "05_sampling.ipynb": ("my_tweedie_step", "check_tweedie_step", "(Q, x, s, dsigma)", [
        ("matrix_exp(-dsigma * Q) @ s", "matrix_exp(dsigma * Q) @ s"),      # noises the score
        ("matrix_exp(dsigma * Q)[x, :]", "matrix_exp(dsigma * Q)[:, x]"),  # column for row
        ("return p / p.sum()", "return p"),                               # not normalised
    ], ""),
    "06_likelihood.ipynb": ("my_bound_limit", "check_bound_limit", "(rm, p0, x0, sigma_bar)", [
        ("q = q[..., None] * P[:, xi]", "q = q[..., None] * P[xi, :]"),            # row for column
        ("return S.kl_divergence(q, p_t)", "return S.kl_divergence(p_t, q)"),      # reversed KL
        ("return S.kl_divergence(q, p_t)", "return S.kl_divergence(q, p0)"),       # data, not p_t
    ], ""),
    "07_sequences.ipynb": ("my_factorisation_kl", "check_factorisation_kl", "(kernel)", [
        ("(kernel[keep] * (kernel[keep] / prod[keep]).log()).sum()",
         "(prod[keep] * (prod[keep] / kernel[keep]).log()).sum()"),                # reversed KL
        ("prod = prod[..., None] * marg", "prod = prod[None, ...] * marg"),       # axis order
        ("marg = kernel.sum(dim=others)", "marg = kernel.mean(dim=others)"),      # not normalised
    ], ""),
    "08_masked_diffusion.ipynb": ("my_mdlm_step", "check_mdlm_step",
                                  "(probs, sigma_bar_t, sigma_bar_s)", [
        ("out = (a_s - a_t) / (1 - a_t) * probs", "out = (a_t - a_s) / (1 - a_t) * probs"),
        ("a_t = torch.exp(-torch", "a_t = torch.exp(torch"),                       # e^{+sigma_bar}
        ("out[-1] = (1 - a_s) / (1 - a_t)", "pass"),                               # MASK left at 0
    ], ""),
    "10_masked_diffusion_done_right.ipynb": ("my_sigma", "check_sigma", "(t, eps)", [
        ("return -d_alpha / alpha", "return -d_alpha"),                  # -alpha', not sigma
        ("math.pi / 2 * torch.sin(math.pi * t)", "math.pi * torch.sin(math.pi * t)"),   # factor 2
        ("return -d_alpha / alpha", "return d_alpha / alpha"),           # the sign
    ], ""),
    "11_samplers_in_practice.ipynb": ("my_drawn_confidence_law", "check_drawn_confidence_law",
                                      "(p)", [
        ("keep_first = p1[:, None] >= p2[None, :]", "keep_first = p1[:, None] <= p2[None, :]"),
        ("law += w0[:, None] * p / p.sum(1, keepdim=True)",
         "law += w0[:, None] * p / p.sum(0, keepdim=True)"),                       # wrong axis
        ("w0 = (p1[:, None] * p2[None, :] * keep_first).sum(1)",
         "w0 = (p1[:, None] * keep_first).sum(1)"),                                # other draw lost
    ], ""),
}
LESSONS = sorted(EXERCISES)


def check(lesson, func_source):
    func, checker, _, _, prelude = EXERCISES[lesson]
    return _run_check(lesson, checker, prelude + func_source)


@pytest.mark.parametrize("lesson", LESSONS)
def test_solution_passes(lesson):
    result = check(lesson, _solution(lesson, EXERCISES[lesson][0]))
    assert result.startswith("PASS"), result


@pytest.mark.parametrize("lesson", LESSONS)
def test_stub_is_not_attempted(lesson):
    func, _, args, _, _ = EXERCISES[lesson]
    assert check(lesson, f"def {func}{args}:\n    raise NotImplementedError\n") == "not attempted yet"


@pytest.mark.parametrize("lesson, k", [(name, k) for name in LESSONS
                                       for k in range(len(EXERCISES[name][3]))])
def test_wrong_versions_fail(lesson, k):
    good = _solution(lesson, EXERCISES[lesson][0])
    old, new = EXERCISES[lesson][3][k]
    assert old in good, f"{old!r} is not in the solution of {lesson}"
    result = check(lesson, good.replace(old, new))
    assert result.startswith("FAIL"), result


@pytest.mark.parametrize("lesson", LESSONS)
def test_the_stub_cell_does_not_raise(lesson):
    """The committed lesson runs top to bottom: the stub only defines the function."""
    func = EXERCISES[lesson][0]
    stubs = [_source(c) for c in _cells(lesson) if c["cell_type"] == "code"
             and f"def {func}(" in _source(c) and "NotImplementedError" in _source(c)
             and "def check_" not in _source(c)]
    assert len(stubs) == 1, f"{lesson}: expected one stub cell for {func}"
    exec(stubs[0], {})


def test_a_sigma_right_only_in_the_middle_fails_in_the_bound():
    """Lesson 10: a sigma correct on the finite-difference grid [0.02, 0.98] but wrong near t = 1
    is caught by the second half of the check, the bound on the schedule's own clock."""
    lesson = "10_masked_diffusion_done_right.ipynb"
    bent = _solution(lesson, "my_sigma") + (
        "\n_right = my_sigma\n"
        "def my_sigma(t, eps):\n"
        "    return _right(t, eps) * torch.where(t > 0.99, 2.0, 1.0)\n")
    result = check(lesson, bent)
    assert result.startswith("FAIL: with your sigma the bound"), result
