"""Shared test setup for the whole suite.

* The repository root goes first on sys.path, so the tests import the working tree's ddlab even
  when the editable install is stale or pytest is started from another directory.
* torch uses one thread per process: the suite runs under pytest-xdist on a small machine, and
  two workers each spawning several BLAS threads only slows everything down.
* One hypothesis profile for everyone: no per-example deadline (timings on a shared CPU are
  noisy) and derandomised, so a run that passed on CI passes again. `HYPOTHESIS_PROFILE=explore`
  draws fresh random examples, more of them, when hunting for bugs locally.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from scipy.stats import chisquare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ddlab.course import notebook_cells, without_magics  # noqa: E402,F401  (test modules use them)

torch.set_num_threads(1)

settings.register_profile("ddlab", deadline=None, max_examples=30, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ddlab"))


def random_generator(n: int, rng: np.random.Generator, zero_frac: float = 0.0,
                     scale: float = 1.0) -> np.ndarray:
    """A random valid rate matrix (float64 numpy), built the way the convention defines one:
    non-negative off-diagonal rates Q[y, x] (x -> y), diagonal = minus the column sum.
    A fraction `zero_frac` of the off-diagonal rates is set to zero."""
    off = rng.exponential(scale, size=(n, n))
    off[rng.random((n, n)) < zero_frac] = 0.0
    np.fill_diagonal(off, 0.0)
    return off - np.diag(off.sum(0))


@pytest.fixture
def rng() -> np.random.Generator:
    """A fixed-seed numpy generator, fresh for every test."""
    return np.random.default_rng(20240527)


@pytest.fixture
def make_generator():
    """The `random_generator(n, rng, zero_frac=0, scale=1)` helper, as a fixture."""
    return random_generator


def reverse_by_definition(Q, p) -> np.ndarray:
    """The reverse generator written out entry by entry from docs/design.md, in numpy:
    Qbar[y, x] = p[y] / p[x] * Q[x, y] for y != x, a zero column where p[x] = 0 (the reverse chain
    is never there), diagonal minus the column sum."""
    n = len(p)
    Qbar = np.zeros((n, n))
    for x in range(n):
        for y in range(n):
            if y != x and p[x] > 0:
                Qbar[y, x] = p[y] / p[x] * Q[x, y]
    return Qbar - np.diag(Qbar.sum(0))


def chi2_pvalue(samples, law) -> float:
    """Chi-square goodness-of-fit p-value of integer samples against `law` (non-negative weights
    over the states, normalised here). A sample at a state of probability zero fails at once."""
    law = np.asarray(law, dtype=np.float64)
    counts = np.bincount(np.asarray(samples), minlength=len(law))
    support = law > 1e-12
    assert counts[~support].sum() == 0, f"drew a state of probability zero: counts {counts}"
    return chisquare(counts[support], law[support] / law[support].sum() * counts.sum()).pvalue


def random_joint(n: int, d: int, seed: int = 0, power: float = 3.0) -> torch.Tensor:
    """A full-support, strongly correlated joint on (n,)*d (float64), for sampler and bound tests."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand((n,) * d, generator=g, dtype=torch.float64) ** power + 0.02
    return p / p.sum()


def with_mask(p0: torch.Tensor) -> torch.Tensor:
    """Embed a joint on (n,)*d into (n+1,)*d with zero mass on MASK = n."""
    n, d = p0.shape[0], p0.dim()
    out = torch.zeros((n + 1,) * d, dtype=torch.float64)
    out[(slice(0, n),) * d] = p0
    return out


def toy_sequence_process(kind: str, n: int = 3, d: int = 2, seed: int = 0, eps_sched: float = 1e-3):
    """(rm, schedule, p0, exact score_fn) for a correlated toy joint on d tokens of n letters;
    "absorbing" adds MASK as state n (with no data mass), anything else uses uniform noise."""
    import ddlab
    p0 = random_joint(n, d, seed)
    if kind == "absorbing":
        rm, sch, p0 = ddlab.Absorbing(n + 1), ddlab.LogLinear(eps_sched), with_mask(p0)
    else:
        rm, sch = ddlab.Uniform(n), ddlab.Geometric(1e-3, 3.0)
    return rm, sch, p0, ddlab.exact_score_fn(p0, rm)


# ------------------------------------------------------------------ tiny text8-format runs
TINY_RUN = ["--n_layer", "1", "--n_head", "2", "--d_model", "32", "--cond_dim", "16", "--seq_len",
            "32", "--batch_size", "8", "--threads", "1", "--progress", "false",
            "--eval_batches", "1", "--warmup", "20", "--min_lr", "-1"]


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Run folders of ``python -m ddlab.text.train`` on 40K characters of the fallback corpus:
    ``zero`` (untrained absorb), ``absorb`` (30 steps) and ``ar`` (untrained baseline)."""
    from ddlab.text import data, train
    root = tmp_path_factory.mktemp("runs")
    corpus = root / "small.txt"
    corpus.write_text(data.fallback_text()[:40_000])
    out = {}
    for name, extra in [("zero", ["--max_steps", "0"]), ("absorb", ["--max_steps", "30"]),
                        ("ar", ["--max_steps", "0", "--objective", "ar"])]:
        out[name] = root / name
        train.main(["--preset", "tiny-cpu", *TINY_RUN, "--data", str(corpus), "--out",
                    str(out[name]), *extra])
    return out


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    """A small text8-format corpus (40K characters of the offline fallback) for training tests."""
    from ddlab.text import data
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(data.fallback_text()[:40_000])
    return str(path)
