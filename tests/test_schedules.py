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
def test_sigma_is_derivative_of_sigma_bar(sched):
    t = np.linspace(0.01, 0.99, 25)
    h = 1e-6
    fd = (sched.sigma_bar(t + h).numpy() - sched.sigma_bar(t - h).numpy()) / (2 * h)
    np.testing.assert_allclose(sched.sigma(t).numpy(), fd, rtol=1e-6)


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
