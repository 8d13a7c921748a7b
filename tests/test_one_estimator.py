"""One DWDSE and one time sampler: every path that estimates the DWDSE runs the same code.

docs/design.md promises that the Monte Carlo DWDSE (``ddlab.losses.dwdse``) and its stratified
time sampler (``ddlab.losses.stratified_times``) exist once and are called by toy training, text
training, ``nll_bound`` and the MDLM bound. A profiler hook counts the calls of those two code
objects while each path runs, so a path with a private copy of the estimator (or one that imports
a renamed copy) is caught whatever name it binds. The values of each path are held against
independent references in test_toy, test_train, test_likelihood and test_mdlm.
"""

from __future__ import annotations

import sys

import pytest
import torch

import ddlab
from ddlab import losses, mdlm


class Spy:
    """Counts calls of given functions' code objects while active (sys.setprofile)."""

    def __init__(self, *funcs):
        self.codes = {f.__code__: f.__name__ for f in funcs}
        self.calls = {name: 0 for name in self.codes.values()}

    def _hook(self, frame, event, arg):
        if event == "call" and frame.f_code in self.codes:
            self.calls[self.codes[frame.f_code]] += 1

    def __enter__(self):
        self._old = sys.getprofile()
        sys.setprofile(self._hook)
        return self

    def __exit__(self, *exc):
        sys.setprofile(self._old)


def run_toy_training():
    rm, sch = ddlab.Absorbing(5), ddlab.LogLinear(1e-3)
    model = ddlab.toy.TableScore(rm, sch)
    p0 = ddlab.toy.bimodal(5, absorbing=True)
    ddlab.toy.train_toy(rm, sch, model, p0, steps=3, batch=8, lr=1e-2, progress=False,
                        eval_every=10)


def run_toy_training_dcsm():
    rm, sch = ddlab.Uniform(4), ddlab.Geometric(1e-3, 2.0)
    model = ddlab.toy.TableScore(rm, sch)
    ddlab.toy.train_toy(rm, sch, model, torch.full((4,), 0.25, dtype=torch.float64), steps=2,
                        batch=8, lr=1e-2, progress=False, loss="dcsm", eval_every=10)


def run_text_training_loss():
    from ddlab.text import train
    from ddlab.text.model import DiffusionTransformer, ModelConfig
    torch.manual_seed(0)
    cfg = ModelConfig(n_chars=27, objective="absorb", seq_len=8, n_layer=1, n_head=2, d_model=16,
                      cond_dim=8)
    model = DiffusionTransformer(cfg)
    rm, sch = ddlab.Absorbing(28), ddlab.LogLinear(1e-3)
    objective = train.Objective(rm, sch, model, 1e-3)
    x0 = torch.randint(0, 27, (4, 8))
    loss = objective(x0, torch.Generator().manual_seed(0))
    loss.mean().backward()


def run_nll_bound():
    for rm, sch in ((ddlab.Uniform(3), ddlab.Geometric(1e-3, 3.0)),
                    (ddlab.Absorbing(3), ddlab.LogLinear(1e-3))):
        p0 = torch.tensor([[0.4, 0.1, 0.0], [0.2, 0.3, 0.0], [0.0, 0.0, 0.0]],
                          dtype=torch.float64)
        if not isinstance(rm, ddlab.Absorbing):
            p0 = torch.full((3, 3), 1 / 9, dtype=torch.float64)
        score_fn = ddlab.exact_score_fn(p0, rm)
        ddlab.nll_bound(score_fn, torch.tensor([[0, 0], [1, 0]]), rm, sch, num_t=4,
                        generator=torch.Generator().manual_seed(0))


def run_mdlm_bound():
    p0 = torch.zeros(3, 3, dtype=torch.float64)
    p0[:2, :2] = torch.tensor([[0.4, 0.1], [0.2, 0.3]])
    denoiser = mdlm.denoiser_fn_from_score_fn(ddlab.exact_score_fn(p0, ddlab.Absorbing(3)), 3)
    mdlm.mdlm_nll_bound(ddlab.LogLinear(1e-3), denoiser, torch.tensor([[0, 1], [1, 1]]), 3,
                        num_t=4, generator=torch.Generator().manual_seed(0))


PATHS = {"toy training": (run_toy_training, 3), "toy training, l2 baseline": (run_toy_training_dcsm, 2),
         "text training": (run_text_training_loss, 1), "nll_bound": (run_nll_bound, 8),
         "MDLM bound": (run_mdlm_bound, 4)}


@pytest.mark.parametrize("name", list(PATHS))
def test_every_path_runs_the_one_dwdse_and_time_sampler(name):
    run, dwdse_calls = PATHS[name]
    with Spy(losses.dwdse, losses.stratified_times) as spy:
        run()
    assert spy.calls["dwdse"] == dwdse_calls, spy.calls
    assert spy.calls["stratified_times"] >= 1, spy.calls


def test_the_spy_sees_a_private_copy_as_no_call():
    """The check can fail: the same source compiled elsewhere (a private copy) is not counted."""
    import inspect
    import textwrap
    namespace = dict(losses.__dict__)
    exec(compile(textwrap.dedent(inspect.getsource(losses.dwdse)), "<a private copy>", "exec"),
         namespace)
    copy = namespace["dwdse"]
    rm = ddlab.Uniform(3)
    args = (rm, lambda x, sb: torch.zeros(*x.shape, 3, dtype=torch.float64), torch.tensor([[0, 1]]),
            torch.tensor([0.5], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))
    with Spy(losses.dwdse) as spy:
        value = copy(*args, x_t=torch.tensor([[2, 1]]))
    assert spy.calls["dwdse"] == 0
    assert torch.equal(value, losses.dwdse(*args, x_t=torch.tensor([[2, 1]])))
