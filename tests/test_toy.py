"""Toy score models: the interface contract (shapes, the fixed zero at the current token, the
baseline against exact uniform-p0 ratios), and short trainings that must approach the exact
DWDSE floor computed by enumeration.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ddlab
from ddlab import losses, toy


def setups(n):
    return [(ddlab.Absorbing(n), ddlab.LogLinear(1e-3), toy.bimodal(n, absorbing=True)),
            (ddlab.Uniform(n), ddlab.Geometric(1e-3, 1.0), toy.bimodal(n))]


@pytest.mark.parametrize("model_cls", [toy.TableScore, toy.MLPScore])
@pytest.mark.parametrize("which", [0, 1])
def test_interface_shapes_and_fixed_entry(model_cls, which):
    n = 7
    rm, sch, _ = setups(n)[which]
    torch.manual_seed(0)
    m = model_cls(rm, sch, d=3)
    # make the outputs nonzero so the fixed entry is a real check
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.normal_()
    x = torch.randint(0, n, (5, 3))
    sb = torch.rand(5, dtype=torch.float64) + 0.1
    L = m.log_score(x, sb)
    assert L.shape == (5, 3, n) and L.dtype == torch.float32
    assert (torch.gather(L, -1, x[..., None]) == 0).all()
    assert torch.equal(m.score_fn(x, sb), torch.exp(L))
    # a scalar sigma_bar broadcasts over the batch
    assert torch.equal(m.log_score(x, 0.5), m.log_score(x, torch.full((5,), 0.5)))
    if isinstance(rm, ddlab.Absorbing):
        clean = x != rm.mask
        assert (L[clean] == 0).all()       # ratios out of unmasked tokens are not learned


@pytest.mark.parametrize("which", [0, 1])
def test_untrained_model_is_exact_for_uniform_p0(which):
    """The baseline is the exact log-ratio under a uniform p0 (on the clean states), checked
    against true_score_table on every row that carries weight."""
    n = 6
    rm, sch, _ = setups(n)[which]
    m = toy.MLPScore(rm, sch, dtype=torch.float64)
    absorbing = isinstance(rm, ddlab.Absorbing)
    p0 = torch.ones(n, dtype=torch.float64)
    if absorbing:
        p0[-1] = 0
    p0 /= p0.sum()
    sbs = torch.tensor([1e-3, 0.2, 3.0], dtype=torch.float64)
    got = losses.score_table(rm, m.score_fn, sbs)
    want = losses.true_score_table(rm, p0, sbs)
    rows = [n - 1] if absorbing else list(range(n))
    np.testing.assert_allclose(got[:, rows].detach().numpy(), want[:, rows].numpy(), rtol=1e-12, atol=0)
    # ... so its SE is zero and its expected DSE is the floor
    for k, sb in enumerate(sbs):
        assert abs(losses.expected_loss(rm, "se", got[k], p0, sb).item()) < 1e-12


def test_table_interpolates_linearly_in_t():
    rm, sch = ddlab.Uniform(4), ddlab.Geometric(1e-3, 1.0)
    m = toy.TableScore(rm, sch, knots=3, dtype=torch.float64)
    with torch.no_grad():
        m.table[0, 0, 1, 2] = 1.0
        m.table[1, 0, 1, 2] = 3.0
    t = torch.tensor([0.0, 0.25, 0.5, 0.75], dtype=torch.float64)
    L = m.log_score(torch.ones(4, 1, dtype=torch.long), sch.sigma_bar(t))
    np.testing.assert_allclose(L[:, 0, 2].detach().numpy(), [1.0, 2.0, 3.0, 1.5], rtol=1e-12)


def test_bimodal():
    p = toy.bimodal(16, absorbing=True)
    assert p.shape == (16,) and p[-1] == 0 and abs(p.sum().item() - 1) < 1e-15
    modes = [i for i in range(1, 14) if p[i] > p[i - 1] and p[i] > p[i + 1]]
    assert len(modes) == 2
    with pytest.raises(ValueError, match="at least 2 real states"):
        toy.bimodal(2, absorbing=True)


@pytest.mark.parametrize("which", [0, 1])
def test_table_training_approaches_the_floor(which):
    """300 Adam steps on a table model (n = 8) reach the exact DWDSE floor within 3%, and
    the learned ratios at t = 0.7 are within 15% of the exact ones between well-visited
    states (p_t >= 0.05 at both ends; rare states get few samples in 300 steps, and at
    small t uniform noise makes the DSE gradient very noisy)."""
    n = 8
    rm, sch, p0 = setups(n)[which]
    torch.manual_seed(0)
    m = toy.TableScore(rm, sch, knots=8)
    g = torch.Generator().manual_seed(0)
    h = toy.train_toy(rm, sch, m, p0, steps=300, batch=256, lr=0.1, generator=g,
                      progress=False, num_t=32, eval_every=300)
    floor, first, last = h["floor"], h["eval_loss"][0], h["eval_loss"][-1]
    assert floor > 0 and last >= floor - 1e-6
    assert last < 1.03 * floor, (last, floor, first)
    assert first > 1.1 * floor            # the untrained baseline was well off
    assert len(h["loss"]) == 300 and all(math.isfinite(v) for v in h["loss"])
    sb = sch.sigma_bar(0.7)
    with torch.no_grad():
        learned = losses.score_table(rm, m.score_fn, sb).double()
    exact = losses.true_score_table(rm, p0, sb)
    pt = ddlab.marginal(rm, p0, sb)
    often = (pt[:, None] >= 0.05) & (pt[None, :] >= 0.05)
    if isinstance(rm, ddlab.Absorbing):
        often[: n - 1] = False                   # only ratios out of MASK carry weight
        often[n - 1, :] = pt >= 0.05
    assert often.sum() >= 4
    rel = (learned / exact - 1)[often].abs().max().item()
    assert rel < 0.15, rel


def test_training_with_d_greater_than_one_runs():
    n, d = 4, 2
    rm, sch = ddlab.Absorbing(n), ddlab.LogLinear(1e-3)
    p0 = torch.outer(toy.bimodal(n, absorbing=True), toy.bimodal(n, absorbing=True))
    torch.manual_seed(0)
    m = toy.MLPScore(rm, sch, d=d, hidden=16)
    h = toy.train_toy(rm, sch, m, p0, steps=60, batch=128, lr=1e-2,
                      generator=torch.Generator().manual_seed(0), progress=False)
    assert h["floor"] is None and len(h["loss"]) == 60
    # the loss went down from the baseline: by 20-35% over seeds 0-5, so 10% is a real margin
    assert np.mean(h["loss"][-10:]) < 0.9 * np.mean(h["loss"][:10])


def test_errors():
    rm, sch = ddlab.Uniform(4), ddlab.Geometric(1e-3, 1.0)
    m = toy.TableScore(rm, sch)
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 1\)"):
        m.log_score(torch.zeros(2, 3, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="token id 4"):
        m.log_score(torch.tensor([[4]]), 0.1)
    with pytest.raises(ValueError, match="sigma_bar must be >= 0"):
        m.log_score(torch.tensor([[1]]), -0.1)
    with pytest.raises(ValueError, match="loss must be"):
        toy.train_toy(rm, sch, m, toy.bimodal(4), 1, 1, 0.1, loss="kl")
    with pytest.raises(ValueError, match="p0 must have shape"):
        toy.train_toy(rm, sch, m, toy.bimodal(5), 1, 1, 0.1)
    with pytest.raises(ValueError, match="n = 4 states but rm has n = 5"):
        toy.train_toy(ddlab.Uniform(5), sch, m, toy.bimodal(5), 1, 1, 0.1)
    with pytest.raises(ValueError, match="sigma_bar must be > 0"):
        toy.TableScore(ddlab.Absorbing(4), ddlab.LogLinear()).log_score(torch.tensor([[3]]), 0.0)


@pytest.mark.parametrize("which", [0, 1])
def test_ratios_at_and_plot_ratios(which):
    """ratios_at reads the model at the default state (MASK / the mode of p0) and the exact
    ratio p_t(y)/p_t(x) computed here by hand from scipy's expm; plot_ratios returns the same."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.linalg import expm

    n = 6
    rm, sch, p0 = setups(n)[which]
    m = toy.MLPScore(rm, sch, dtype=torch.float64)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    t = 0.4
    exact, learned = toy.ratios_at(m, p0, t)
    x = n - 1 if isinstance(rm, ddlab.Absorbing) else int(p0.argmax())
    pt = expm(float(sch.sigma_bar(t)) * rm.Q.numpy()) @ p0.numpy()
    np.testing.assert_allclose(exact.numpy(), pt / pt[x], rtol=1e-10)
    with torch.no_grad():
        want = m.score_fn(torch.tensor([[x]]), sch.sigma_bar(t))[0, 0]
    np.testing.assert_allclose(learned.numpy(), want.numpy(), rtol=1e-12)
    E, L = toy.plot_ratios(m, p0, [0.2, t])
    assert E.shape == L.shape == (2, n)
    np.testing.assert_allclose(E[1].numpy(), exact.numpy(), rtol=1e-12)
    plt.close("all")
    with pytest.raises(ValueError, match="single time"):
        toy.ratios_at(m, p0, [0.1, 0.2])
