"""Lesson 9's exercises: the hidden solutions pass the lesson's own checks and wrong versions fail.

The check functions and the solution cells are read from the .ipynb (so the test follows the
notebook); the lesson's globals they use (configs, the noise process, the unigram entropy) are
rebuilt here at a tiny size.
"""

from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch

from tests.exercise_harness import _cells, _source

LESSON = "09_sedd_text8.ipynb"


def _code_defining(name, *, solution=False):
    for cell in _cells(LESSON):
        src = _source(cell)
        if cell["cell_type"] == "code" and f"def {name}(" in src \
                and src.lstrip().startswith("# Solution") == solution:
            return src
    raise AssertionError(f"no {'solution' if solution else 'check'} cell defining {name}")


def _namespace():
    import ddlab
    from ddlab.text import checkpoint, evaluate
    from ddlab.text.config import make_config
    small = {"n_layer": 1, "d_model": 32, "n_head": 2, "cond_dim": 16, "seq_len": 32}
    configs = {"SEDD denoiser": make_config("tiny-cpu", {**small, "param": "denoiser"})}
    rm, schedule = checkpoint.build_process(configs["SEDD denoiser"])
    return {"torch": torch, "math": math, "ddlab": ddlab, "checkpoint": checkpoint,
            "evaluate": evaluate, "configs": configs, "rm": rm, "schedule": schedule}


def _run(source, ns):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(source, ns)
    return out.getvalue().strip()


def _check_denoiser(func_source):
    ns = _namespace()
    check = _code_defining("check_denoiser_head").split("\ntry:")[0]   # the stub and the check
    exec(check, ns)
    exec(func_source, ns)                                               # the reader's version
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ok = ns["check_denoiser_head"](ns["denoiser_log_score"])
    return ok, out.getvalue().strip()


SOLUTION = _code_defining("denoiser_log_score", solution=True).split("\ncheck_denoiser_head")[0]
WRONG = [
    ("torch.log_softmax(z[..., :27], -1)", "z[..., :27]"),                       # not normalised
    ("- torch.log(torch.expm1(sigma_bar))", "- sigma_bar"),                       # wrong time factor
    ("(x_t == 27)[..., None]", "(x_t != 27)[..., None]"),                         # wrong positions
]


def test_denoiser_solution_passes():
    assert _check_denoiser(SOLUTION) == (True, "correct")


@pytest.mark.parametrize("k", range(len(WRONG)))
def test_wrong_denoiser_heads_fail(k):
    old, new = WRONG[k]
    assert old in SOLUTION
    ok, said = _check_denoiser(SOLUTION.replace(old, new))
    assert not ok and said.startswith("not yet")


def test_prediction_check_names_the_truth():
    ns = _namespace()
    exec(_code_defining("check_prediction").split("\nif prediction")[0], ns)
    check = ns["check_prediction"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert check("above", 5.0, 4.1) and not check("near", 5.0, 4.1)
        assert check("near", 4.15, 4.1) and check("below", 3.0, 4.1)
        assert not check(None, 5.0, 4.1)
