"""Noise schedules: sigma is the derivative of sigma_bar (central finite differences), t_of
inverts sigma_bar, endpoints are the documented ones, and t outside [0, 1] is refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ddlab

SCHEDULES = [ddlab.LogLinear(), ddlab.LogLinear(1e-2), ddlab.Geometric(),
             ddlab.Geometric(1e-3, 5.0)]
IDS = [repr(s) for s in SCHEDULES]


@pytest.mark.parametrize("sched", SCHEDULES, ids=IDS)
def test_sigma_bar_increasing_and_positive_rate(sched):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    sb = sched.sigma_bar(t)
    assert (sb.diff() > 0).all()
    assert (sched.sigma(t) > 0).all()


@pytest.mark.parametrize("sched", SCHEDULES, ids=IDS)
def test_t_of_inverts_sigma_bar(sched):
    t = torch.linspace(0, 1, 57, dtype=torch.float64)
    np.testing.assert_allclose(sched.t_of(sched.sigma_bar(t)).numpy(), t.numpy(), atol=1e-12)
    sb = torch.linspace(float(sched.sigma_bar(0.0)), float(sched.sigma_bar(1.0)), 31,
                        dtype=torch.float64)
    np.testing.assert_allclose(sched.sigma_bar(sched.t_of(sb)).numpy(), sb.numpy(), rtol=1e-11)


@given(t=st.floats(0, 1))
def test_t_of_inverts_sigma_bar_property(t):
    for sched in SCHEDULES:
        assert abs(float(sched.t_of(sched.sigma_bar(t))) - t) < 1e-11


def test_loglinear_endpoints_and_masking_is_linear():
    for eps in (1e-3, 1e-2, 0.3):
        s = ddlab.LogLinear(eps)
        assert float(s.sigma_bar(0.0)) == 0.0
        assert float(s.sigma_bar(1.0)) == pytest.approx(-math.log(eps), rel=1e-13)
        # absorbing survival e^{-sigma_bar(t)} = 1 - (1 - eps) t
        t = np.linspace(0, 1, 11)
        np.testing.assert_allclose(np.exp(-s.sigma_bar(t).numpy()), 1 - (1 - eps) * t, rtol=1e-13)
        assert float(s.sigma(0.0)) == pytest.approx(1 - eps, rel=1e-14)
        assert float(s.sigma(1.0)) == pytest.approx((1 - eps) / eps, rel=1e-12)


def test_geometric_endpoints():
    s = ddlab.Geometric(1e-4, 20.0)
    assert float(s.sigma_bar(0.0)) == pytest.approx(1e-4, rel=1e-14)
    assert float(s.sigma_bar(1.0)) == pytest.approx(20.0, rel=1e-14)
    assert float(s.sigma_bar(0.5)) == pytest.approx(math.sqrt(1e-4 * 20.0), rel=1e-13)
    assert float(s.sigma(1.0)) == pytest.approx(20.0 * math.log(20.0 / 1e-4), rel=1e-13)


def test_input_types_and_dtypes():
    s = ddlab.LogLinear()
    ref = -math.log(1 - (1 - 1e-3) * 0.25)
    for t in (0.25, np.float64(0.25), np.array([0.25]), torch.tensor([0.25], dtype=torch.float64)):
        out = s.sigma_bar(t)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
        assert float(out.reshape(-1)[0]) == pytest.approx(ref, rel=1e-14)
    assert s.sigma_bar(torch.tensor([0.25])).dtype == torch.float32   # floating tensors keep dtype


@pytest.mark.parametrize("sched", SCHEDULES, ids=IDS)
@pytest.mark.parametrize("bad", [-0.1, 1.0001, float("nan"), float("inf")])
def test_time_outside_unit_interval_raises(sched, bad):
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        sched.sigma_bar(bad)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        sched.sigma(torch.tensor([0.5, bad]))


def test_t_of_outside_range_raises():
    with pytest.raises(ValueError, match="exceeds this schedule's sigma_bar"):
        ddlab.LogLinear(1e-2).t_of(5.0)                    # sigma_bar(1) = log 100 = 4.6
    with pytest.raises(ValueError, match=r"sigma_bar must lie in \[0.001, 5\]"):
        ddlab.Geometric(1e-3, 5.0).t_of(1e-4)
    with pytest.raises(ValueError, match="sigma_bar must be >= 0"):
        ddlab.LogLinear().t_of(-1.0)


@pytest.mark.parametrize("args", [(0.0,), (1.0,), (-0.5,), ("0.1",)])
def test_loglinear_bad_eps(args):
    with pytest.raises(ValueError, match="LogLinear\\(eps\\): eps must"):
        ddlab.LogLinear(*args)


@pytest.mark.parametrize("args", [(1.0, 0.5), (0.0, 1.0), (1e-3, float("inf")), (-1.0, 2.0)])
def test_geometric_bad_bounds(args):
    with pytest.raises(ValueError, match="Geometric.*sigma_m(in|ax)"):
        ddlab.Geometric(*args)


# ----------------------------------------------------------------- masking schedules (lesson 10)

from ddlab.schedules import (MASKING_SCHEDULES, Cosine, LogLinear, Polynomial,  # noqa: E402
                             make_schedule)

MASKING = [LogLinear(1e-3), Polynomial(2.0), Polynomial(0.5, 1e-2), Polynomial(3.7, 0.2),
           Cosine(1e-3), Cosine(0.2), make_schedule("geometric", 1e-3)]
MIDS = [repr(s) for s in MASKING]


def alpha_by_hand(sched, t):
    """MD4's formulas for alpha_t, written out (numpy), with the eps floor."""
    t = np.asarray(t, dtype=np.float64)
    if isinstance(sched, Polynomial):
        return 1 - (1 - sched.eps) * t ** sched.k
    if isinstance(sched, Cosine):
        return 1 - (1 - sched.eps) * np.cos(np.pi / 2 * (1 - t))
    if isinstance(sched, LogLinear):
        return 1 - (1 - sched.eps) * t
    return np.exp(-sched.sigma_min ** (1 - t) * sched.sigma_max ** t)


@pytest.mark.parametrize("sched", MASKING, ids=MIDS)
def test_masking_alpha_is_md4s_formula_and_exp_minus_sigma_bar(sched):
    t = np.linspace(0, 1, 41)
    np.testing.assert_allclose(sched.alpha(t).numpy(), alpha_by_hand(sched, t), rtol=1e-13)
    np.testing.assert_allclose(np.exp(-sched.sigma_bar(t).numpy()), alpha_by_hand(sched, t),
                               rtol=1e-12)


@pytest.mark.parametrize("sched", SCHEDULES + MASKING, ids=IDS + MIDS)
def test_sigma_is_derivative_of_sigma_bar(sched):
    t = np.linspace(0.01, 0.99, 49)
    h = 1e-6
    fd = (sched.sigma_bar(t + h).numpy() - sched.sigma_bar(t - h).numpy()) / (2 * h)
    np.testing.assert_allclose(sched.sigma(t).numpy(), fd, rtol=1e-6)


@pytest.mark.parametrize("sched", MASKING, ids=MIDS)
def test_masking_monotone_and_endpoints(sched):
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    sb = sched.sigma_bar(t)
    assert (sb.diff() > 0).all()
    sig = sched.sigma(t)
    assert (sig >= 0).all() and (sig[1:-1] > 0).all()
    eps = sched.eps if hasattr(sched, "eps") else math.exp(-sched.sigma_max)
    assert float(sched.sigma_bar(1.0)) == pytest.approx(-math.log(eps), rel=1e-13)
    if not isinstance(sched, ddlab.Geometric):
        assert float(sched.sigma_bar(0.0)) == 0.0
        assert float(sched.alpha(0.0)) == 1.0


def test_masking_rates_at_the_ends():
    """sigma(0) and sigma(1) as the formulas give them: (1 - eps) f'(0) and (1 - eps) f'(1) / eps."""
    eps = 1e-3
    assert float(Polynomial(2.0, eps).sigma(0.0)) == 0.0
    assert float(Polynomial(0.5, eps).sigma(0.0)) == math.inf          # integrable, not NaN
    assert float(Polynomial(2.0, eps).sigma(1.0)) == pytest.approx(2 * (1 - eps) / eps, rel=1e-12)
    assert float(Cosine(eps).sigma(0.0)) == pytest.approx((1 - eps) * math.pi / 2, rel=1e-14)
    assert float(Cosine(eps).sigma(1.0)) == 0.0
    # float32 keeps its dtype and its sign: cos(pi/2) is -4e-8 in float32
    s32 = Cosine(eps).sigma(torch.tensor([0.0, 0.5, 1.0]))
    assert s32.dtype == torch.float32 and (s32 >= 0).all()


@pytest.mark.parametrize("sched", MASKING, ids=MIDS)
def test_masking_t_of_inverts_sigma_bar(sched):
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    sb = sched.sigma_bar(t)
    back = sched.t_of(sb)
    np.testing.assert_allclose(sched.sigma_bar(back).numpy(), sb.numpy(), rtol=1e-12, atol=1e-15)
    inner = t <= 0.99                     # where sigma(t) is bounded away from 0
    np.testing.assert_allclose(back[inner].numpy(), t[inner].numpy(), atol=1e-11)
    # Cosine has sigma(1) = 0: sigma_bar is flat there, so t is determined by sigma_bar only to
    # ~sqrt(rounding of sigma_bar / curvature), about 1e-9; the others to 1e-11
    tol = 2e-9 if isinstance(sched, Cosine) else 1e-11
    assert (back - t).abs().max() < tol


@given(t=st.floats(0, 1), k=st.floats(0.2, 5.0), eps=st.floats(1e-6, 0.5))
def test_masking_t_of_round_trip_property(t, k, eps):
    for sched in (Polynomial(k, eps), Cosine(eps), LogLinear(eps)):
        sb = float(sched.sigma_bar(t))
        assert float(sched.sigma_bar(sched.t_of(sb))) == pytest.approx(sb, rel=1e-11, abs=1e-14)
        if t <= 0.99 or not isinstance(sched, Cosine):
            assert abs(float(sched.t_of(sb)) - t) < 1e-8 + 1e-10 / max(k, 1e-3)


def test_make_schedule_names_parameters_and_errors():
    assert MASKING_SCHEDULES == ("linear", "cosine", "polynomial", "geometric")
    eps = 1e-3
    built = {name: make_schedule(name, eps) for name in MASKING_SCHEDULES}
    assert repr(built["linear"]) == "LogLinear(eps=0.001)"
    assert repr(built["cosine"]) == "Cosine(eps=0.001)"
    assert repr(built["polynomial"]) == "Polynomial(k=2, eps=0.001)"
    assert repr(built["geometric"]) == "Geometric(sigma_min=0.0001, sigma_max=6.90776)"
    for sched in built.values():     # one eps floor: every schedule ends at sigma_bar(1) = -log eps
        assert float(sched.sigma_bar(1.0)) == pytest.approx(-math.log(eps), rel=1e-13)
    assert repr(make_schedule("loglinear", 0.01)) == "LogLinear(eps=0.01)"
    assert make_schedule("polynomial", eps, k=3.0).k == 3.0
    assert make_schedule("geometric", eps, sigma_min=1e-2).sigma_min == 1e-2
    with pytest.raises(ValueError, match="unknown masking schedule 'cos'.*linear, cosine"):
        make_schedule("cos")
    with pytest.raises(ValueError, match="schedule 'linear' takes no parameter 'k'"):
        make_schedule("linear", eps, k=2.0)
    with pytest.raises(ValueError, match=r"make_schedule\('cosine'\): eps must lie in \(0, 1\)"):
        make_schedule("cosine", 0.0)
    with pytest.raises(ValueError, match="Geometric needs 0 < sigma_min < sigma_max"):
        make_schedule("geometric", 0.5, sigma_min=1.0)           # -log 0.5 = 0.69 < 1


@pytest.mark.parametrize("args, match", [((0.0,), r"Polynomial\(k\): the exponent k must lie"),
                                         ((-1.0,), r"Polynomial\(k\): the exponent k must lie"),
                                         ((2.0, 1.0), r"Polynomial\(eps\): eps must lie"),
                                         ((float("nan"),), "finite real number")])
def test_polynomial_bad_parameters(args, match):
    with pytest.raises(ValueError, match=match):
        Polynomial(*args)


@pytest.mark.parametrize("sched", [Polynomial(2.0), Cosine()], ids=repr)
def test_masking_bad_times_and_sigma_bars(sched):
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        sched.sigma(1.5)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        sched.alpha(-0.1)
    with pytest.raises(ValueError, match="exceeds this schedule's sigma_bar"):
        sched.t_of(7.0)                                         # sigma_bar(1) = -log 1e-3 = 6.9
    with pytest.raises(ValueError, match="sigma_bar must be >= 0"):
        sched.t_of(-0.5)


def test_masking_schedules_drive_the_toy_world():
    """Each new schedule runs through toy training, the exact sampler law and nll_bound: the
    trained table's exact DWDSE improves, the sampler law is a distribution close to p0, and the
    bound of the exact score is -log p0 within its Monte Carlo error."""
    from ddlab import sampling, sequences as S, toy
    p0, _ = S.words_toy(["ab", "ba", "bb"], weights=[3, 2, 1], mask=True)
    rm = ddlab.Absorbing(3)
    f = ddlab.exact_score_fn(p0, rm, off_support="conditional")
    x0 = torch.tensor([[0, 1], [1, 0], [1, 1]])
    for sched in (Polynomial(2.0), Cosine(), make_schedule("geometric", 1e-3)):
        model = toy.TableScore(rm, sched)
        hist = toy.train_toy(rm, sched, model, torch.tensor([0.8, 0.2, 0.0], dtype=torch.float64),
                             steps=60, batch=64, lr=5e-2, progress=False,
                             generator=torch.Generator().manual_seed(0))
        assert hist["eval_loss"][-1] < hist["eval_loss"][0]
        law = sampling.exact_sampler_distribution(rm, sched, f, 2, 32, "tweedie")
        assert abs(law.sum().item() - 1) < 1e-12 and ddlab.kl_divergence(p0, law) < 0.1
        b, se = ddlab.nll_bound(f, x0, rm, sched, num_t=200, return_stderr=True,
                                generator=torch.Generator().manual_seed(1))
        assert torch.all((b - ddlab.exact_nll(p0, x0)).abs() < 4 * se + 1e-3), (sched, b)
