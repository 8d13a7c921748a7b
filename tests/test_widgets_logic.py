"""Drive every interactive view of ddlab.widgets over its whole range, without a browser.

marginal_view and reverse_view are called at 11 points of their t slider for every dropdown
value, with the Agg backend; the numbers it returns are held against scipy's expm, the schedules' formulas written out
by hand, and an independent integration of the reverse ODE; the bars it drew must be those numbers.
"""

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import pytest  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402
from scipy.linalg import expm  # noqa: E402

from ddlab import widgets  # noqa: E402
from tests.conftest import reverse_by_definition  # noqa: E402

P0 = np.array([0.5, 0.3, 0.2])
DENSE = {
    "uniform": (np.ones((3, 3)) - 3 * np.eye(3), P0),
    "absorbing": (np.array([[-1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0], [1, 1, 1, 0]]),
                  np.r_[P0, 0.0]),
    "custom": (np.array([[-2.0, 1, 0], [2, -2, 2], [0, 1, -2]]), P0),
}


def sigma_bar_by_hand(schedule: str, t: float) -> float:
    if schedule == "loglinear":
        return -np.log(1 - (1 - 1e-3) * t)
    return 1e-4 ** (1 - t) * 20.0 ** t


def dropdown_combos(name):
    _, ranges = widgets.WIDGETS[name]
    drop = {k: v for k, v in ranges.items() if isinstance(v, list)}
    return [dict(zip(drop, c)) for c in itertools.product(*drop.values())]


def test_registry_lists_callables_and_ranges():
    assert set(widgets.WIDGETS) == {"marginal_view", "reverse_view", "learned_ratios_view",
                                    "sampler_view", "score_entropy_view", "bound_view",
                                    "clamp_view", "mdlm_weight_view", "masking_schedule_view",
                                    "temperature_view", "unmasking_view"}
    for name, (fn, ranges) in widgets.WIDGETS.items():
        assert callable(fn)
        for key, r in ranges.items():
            is_slider = isinstance(r, tuple) and len(r) == 2 and r[0] < r[1]
            assert (isinstance(r, list) and r) or is_slider, f"{name}: bad range {key} = {r!r}"
    for name in ("marginal_view", "reverse_view"):
        assert widgets.WIDGETS[name][1] == {"kind": ["uniform", "absorbing", "custom"],
                                            "t": (0.0, 1.0), "schedule": ["loglinear", "geometric"]}


def sweep_t(name, combo, other_axes):
    """Call a two-panel view at 11 points of its t slider on axes it is given; yield
    (t, its output, the heights of the bars it drew on the left panel)."""
    fn, ranges = widgets.WIDGETS[name]
    fig, (ax_bars, ax_other) = plt.subplots(1, 2)
    try:
        for t in np.linspace(*ranges["t"], 11):
            ax_bars.cla()
            out = fn(**combo, t=t, ax_bars=ax_bars, **{other_axes: ax_other})
            assert out["fig"] is None                  # axes given: no new figure
            yield t, out, np.array([p.get_height() for p in ax_bars.patches])
    finally:
        plt.close(fig)


@pytest.mark.parametrize("combo", dropdown_combos("marginal_view"), ids=str)
def test_marginal_view_over_its_range(combo):
    Q, p0 = DENSE[combo["kind"]]
    for t, out, heights in sweep_t("marginal_view", combo, "ax_heat"):
        sb = sigma_bar_by_hand(combo["schedule"], t)
        assert out["sigma_bar"].item() == pytest.approx(sb, rel=1e-12, abs=1e-15)
        P = expm(sb * Q)
        np.testing.assert_allclose(out["P"].numpy(), P, atol=1e-12)
        np.testing.assert_allclose(out["p_t"].numpy(), P @ p0, atol=1e-12)
        np.testing.assert_allclose(heights, P @ p0, atol=1e-12)


def marginals_by_eig(Q, p0, levels):
    """p at each noise level from an eigendecomposition of Q (all the toy Q are diagonalisable)."""
    lam, V = np.linalg.eig(Q)
    coef = np.linalg.solve(V, p0)
    return np.real(np.stack([V @ (np.exp(lam * s) * coef) for s in levels]))


def reverse_ode_by_scipy(Q, p0, sb_from, sb_to):
    """q at sigma_bar = sb_to from q = p at sb_from, solving dq/d(-sigma_bar) = Qbar q with scipy.

    Independent of ddlab: p_s from an eigendecomposition of Q, Qbar written out from its
    definition Qbar[y, x] = p(y) / p(x) Q[x, y], and scipy's adaptive DOP853 integrator."""
    def rhs(s, q):
        return -(reverse_by_definition(Q, marginals_by_eig(Q, p0, [s])[0]) @ q)

    start = expm(sb_from * Q) @ p0
    return solve_ivp(rhs, (sb_from, sb_to), start, method="DOP853", rtol=1e-10, atol=1e-12).y[:, -1]


@pytest.mark.parametrize("combo", dropdown_combos("reverse_view"), ids=str)
def test_reverse_view_over_its_range(combo):
    Q, p0 = DENSE[combo["kind"]]
    for t, out, heights in sweep_t("reverse_view", combo, "ax_traj"):
        s = 1.0 - t
        sb = sigma_bar_by_hand(combo["schedule"], s)
        assert out["t_forward"] == pytest.approx(s)
        exact = expm(sb * Q) @ p0
        np.testing.assert_allclose(out["p_exact"].numpy(), exact, atol=1e-12)
        np.testing.assert_allclose(out["p_reverse"].numpy(), exact, atol=1e-7)
        np.testing.assert_allclose(heights, np.r_[exact, out["p_reverse"].numpy()], atol=1e-7)
        traj_sb = np.array([sigma_bar_by_hand(combo["schedule"], u) for u in out["times"].numpy()])
        rows = [0, 10, 20, 30, 40]
        traj_exact = marginals_by_eig(Q, p0, np.maximum(traj_sb[rows], 1e-10))
        np.testing.assert_allclose(out["trajectory"].numpy()[rows], traj_exact, atol=1e-7)


@pytest.mark.parametrize("kind", widgets.KINDS)
def test_reverse_view_matches_an_independent_ode_solve(kind):
    """Midway (reverse time 0.5, LogLinear) against scipy's DOP853 on Qbar written out from its
    definition, with marginals from an eigendecomposition of Q (no ddlab in the reference)."""
    Q, p0 = DENSE[kind]
    out = widgets.reverse_view(0.5, kind, "loglinear")
    plt.close(out["fig"])
    ref = reverse_ode_by_scipy(Q, p0, sigma_bar_by_hand("loglinear", 1.0),
                               sigma_bar_by_hand("loglinear", 0.5))
    np.testing.assert_allclose(out["p_reverse"].numpy(), ref, atol=1e-7)


def test_views_make_their_own_figure_when_no_axes_are_given():
    for fn in (widgets.marginal_view, widgets.reverse_view):
        out = fn(kind="absorbing", t=0.3)
        assert out["fig"] is not None and len(out["fig"].axes) == 2
        plt.close(out["fig"])


@pytest.mark.parametrize("noise", ["absorbing", "uniform"])
def test_learned_ratios_view_draws_the_exact_ratios(noise):
    out = widgets.learned_ratios_view(noise, 0.4)
    model, p0 = widgets._untrained_ratio_models()[noise]
    # independent: p_t = expm(sigma_bar Q) p0 with scipy, ratios out of the state the view shows
    P = expm(float(model.schedule.sigma_bar(0.4)) * model.rm.Q.numpy())
    p_t = P @ p0.numpy()
    x = model.rm.mask if noise == "absorbing" else int(p0.argmax())
    exact = out["exact"][0].numpy()
    keep = slice(0, model.n - 1) if noise == "absorbing" else slice(None)
    np.testing.assert_allclose(exact[keep], (p_t / p_t[x])[keep], rtol=1e-8)
    assert np.isfinite(out["learned"].detach().numpy()).all()
    plt.close(out["fig"])


def test_views_refuse_bad_parameters():
    fig, ax = plt.subplots()
    try:
        with pytest.raises(ValueError, match="kind must be one of"):
            widgets.marginal_view("gaussian", 0.5)
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
            widgets.marginal_view("uniform", 1.5)
        with pytest.raises(ValueError, match="schedule must be one of"):
            widgets.reverse_view(0.5, "uniform", "cosine")
        with pytest.raises(ValueError, match="both axes or neither"):
            widgets.reverse_view(0.5, ax_bars=ax)
    finally:
        plt.close("all")


def test_toy_chains_are_the_documented_ones():
    for kind, (Q, p0) in DENSE.items():
        rm, p = widgets.toy_chain(kind)
        np.testing.assert_array_equal(rm.Q.numpy(), Q)
        np.testing.assert_array_equal(p.numpy(), p0)
    # the custom chain's stationary law, by detailed balance: pi_1 = 2 pi_0, pi_2 = pi_1 / 2
    np.testing.assert_allclose(widgets.toy_chain("custom")[0].stationary().numpy(),
                               [0.25, 0.5, 0.25], atol=1e-12)


# ------------------------------------------------------------------ lesson 5: sampler_view
def _bar_heights(ax, which):
    """Heights of the first (data) or second (sampler) series of bars on a two-series bar plot."""
    heights = np.array([p.get_height() for p in ax.patches])
    half = len(heights) // 2
    return heights[:half] if which == 0 else heights[half:]


@pytest.mark.parametrize("steps", [1, 3, 64])
def test_sampler_view_tweedie_is_exact_for_one_token(steps):
    """With the exact score, one token's Tweedie step is Bayes' rule: the law is p0 at any steps."""
    fig, (a, b) = plt.subplots(1, 2)
    try:
        out = widgets.sampler_view("tweedie", steps, ax_bars=a, ax_kl=b)
        p0 = out["p0"].numpy()
        assert np.allclose(out["law"].numpy(), p0, atol=1e-10)
        assert abs(out["kl"]) < 1e-12 and all(abs(v) < 1e-12 for v in out["curve"])
        assert np.allclose(_bar_heights(a, 0), p0) and np.allclose(_bar_heights(a, 1), p0)
    finally:
        plt.close(fig)


def test_sampler_view_euler_is_first_order_and_its_kl_is_the_plotted_law():
    """Euler's total variation falls like 1/k, so its KL like 1/k^2: doubling k divides it by ~4."""
    out = widgets.sampler_view("euler", 16)
    try:
        law, p0 = out["law"].numpy(), out["p0"].numpy()
        assert abs(law.sum() - 1) < 1e-12 and (law > 0).all()
        assert np.isclose(out["kl"], np.sum(p0 * np.log(p0 / law)), rtol=1e-10)
        kl = dict(zip(out["grid"], out["curve"]))
        assert kl[16] == pytest.approx(out["kl"], rel=1e-12)
        for k in (16, 32):
            assert 3.5 < kl[k] / kl[2 * k] < 4.5, (k, kl[k], kl[2 * k])
        assert all(a > b for a, b in zip(out["curve"], out["curve"][1:]))
    finally:
        plt.close(out["fig"])


def test_sampler_view_refuses_bad_parameters():
    with pytest.raises(ValueError, match="method must be one of"):
        widgets.sampler_view("heun", 4)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="steps must be a positive integer"):
            widgets.sampler_view("euler", bad)


# ------------------------------------------------------------------ lesson 3: score_entropy_view
def _se_by_hand(s, r):
    return s - r * np.log(s) + r * (np.log(r) - 1)


@pytest.mark.parametrize("log10_r, log10_ratio", [(-4.0, 1.0), (-2.0, -1.5), (0.5, 2.0), (1.0, 0.3)])
def test_score_entropy_view_numbers_against_the_formulas(log10_r, log10_ratio):
    out = widgets.score_entropy_view(log10_r, log10_ratio)
    try:
        r, s = 10.0 ** log10_r, 10.0 ** (log10_r + log10_ratio)
        assert out["r"] == pytest.approx(r) and out["s"] == pytest.approx(s)
        assert out["se"] == pytest.approx(_se_by_hand(s, r), rel=1e-10)
        assert out["csm"] == pytest.approx((s - r) ** 2, rel=1e-10)
        # the plotted pulls are derivatives in log s: central differences of the formulas
        h = 1e-6
        for key, f in (("grad_se", _se_by_hand), ("grad_csm", lambda s_, r_: (s_ - r_) ** 2)):
            fd = (f(s * np.exp(h), r) - f(s * np.exp(-h), r)) / (2 * h)
            assert out[key] == pytest.approx(fd, rel=1e-6, abs=1e-14)
        grid = out["s_over_r"].numpy()
        assert np.allclose(out["se_curve"], _se_by_hand(grid * r, r) / r, rtol=1e-9, atol=1e-12)
    finally:
        plt.close(out["fig"])


def test_score_entropy_view_zero_at_the_truth_and_refuses_nan():
    out = widgets.score_entropy_view(-3.0, 0.0)
    plt.close(out["fig"])
    assert out["se"] == pytest.approx(0, abs=1e-15) and out["csm"] == 0 and out["grad_se"] == 0
    with pytest.raises(ValueError, match="finite"):
        widgets.score_entropy_view(float("nan"), 0.0)



# ------------------------------------------------------------------ lessons 6 to 8


def test_bound_view_is_nll_bound_and_the_exact_nll():
    import torch
    from ddlab.likelihood import nll_bound
    from ddlab.sequences import exact_score_fn
    rm, sched, p0, x0 = widgets.likelihood_toy()
    # p0 by hand: lesson 6's rand ** 3 + 0.02 from seed 0, MASK column and row empty
    g = torch.Generator().manual_seed(0)
    pj = (torch.rand((3, 3), generator=g, dtype=torch.float64) ** 3 + 0.02).numpy()
    pj = pj / pj.sum()
    for log10_t_min, num_t in [(-5.0, 4), (-3.0, 64), (-1.0, 200)]:
        out = widgets.bound_view(log10_t_min, num_t)
        plt.close("all")
        want = -np.log(pj[x0[:, 0].numpy(), x0[:, 1].numpy()])
        np.testing.assert_allclose(out["exact"].numpy(), want, rtol=1e-12)
        bound, se = nll_bound(exact_score_fn(p0, rm), x0, rm, sched, num_t=num_t,
                              generator=torch.Generator().manual_seed(0), t_min=10 ** log10_t_min,
                              return_stderr=True, shared_t=True)
        np.testing.assert_allclose(out["bound"].numpy(), bound.numpy(), rtol=1e-12)
        np.testing.assert_allclose(out["stderr"].numpy(), se.numpy(), rtol=1e-12)
        # the limit by enumeration: KL(prod_i P[:, x0_i] || p_t) with P = expm(sb Q), numpy only
        sb = -np.log(1 - (1 - 1e-3) * 10 ** log10_t_min)
        Q = np.array([[-1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0], [1, 1, 1, 0]])
        P = expm(sb * Q)
        p0n = np.zeros((4, 4))
        p0n[:3, :3] = pj
        p_t = P @ p0n @ P.T
        for b, (a, c) in enumerate(x0.tolist()):
            q = np.outer(P[:, a], P[:, c])
            kl = (q[q > 0] * np.log(q[q > 0] / p_t[q > 0])).sum()
            assert out["limit"][b].item() == pytest.approx(kl, rel=1e-9, abs=1e-12)
        assert out["entropy"] == pytest.approx(-(pj * np.log(pj)).sum(), rel=1e-12)


@pytest.mark.parametrize("noise", widgets.CLAMP_NOISES)
def test_clamp_view_is_the_exact_conditional_and_the_clamped_law(noise):
    from ddlab.sampling import exact_sampler_distribution
    words = ["cab", "bad", "dab", "abc", "bca"]
    for pattern in widgets.CLAMP_PATTERNS:
        for steps in (1, 7, 64):
            out = widgets.clamp_view(pattern, steps, noise)
            plt.close("all")
            n = 5 if noise == "absorbing" else 4
            # the exact conditional by hand: uniform over the words that match the pattern
            match = [w for w in words if all(p == "?" or p == ch for p, ch in zip(pattern, w))]
            want = np.zeros((n,) * 3)
            for w in match:
                want[tuple("abcd".index(ch) for ch in w)] = 1 / len(match)
            np.testing.assert_allclose(out["target"].numpy(), want, atol=1e-15)
            rm, sched, score_fn, target, clamp, _ = widgets.clamp_toy(noise, pattern)
            law = exact_sampler_distribution(rm, sched, score_fn, 3, steps, "tweedie", clamp=clamp)
            np.testing.assert_allclose(out["law"].numpy(), law.numpy(), atol=1e-14)
            lw = out["law"].numpy()
            keep = want > 0
            assert out["kl"] == pytest.approx((want[keep] * np.log(want[keep] / lw[keep])).sum(),
                                              rel=1e-9, abs=1e-12)
            held = [i for i, p in enumerate(pattern) if p != "?"]
            for i in held:                      # the clamped law never leaves the held letters
                other = np.moveaxis(lw, i, 0)
                assert other.sum(axis=(1, 2))["abcd".index(pattern[i])] == pytest.approx(1, abs=1e-12)


def test_mdlm_weight_view_against_one_over_t_and_the_cross_entropy_by_hand():
    import torch
    sched, model, p0 = widgets.masked_toy()
    words, wts = ["cab", "bad", "dab", "abc", "bca"], np.array([4, 3, 2, 2, 1]) / 12
    for t in (0.02, 0.3, 0.77, 1.0):
        out = widgets.mdlm_weight_view(t)
        plt.close("all")
        assert out["weight"].item() == pytest.approx(1 / t, rel=1e-12)
        # E w(t) sum_masked -log p(x0_i | x_t) by enumeration of the 2^3 mask patterns
        alpha = 1 - (1 - 1e-4) * t
        total = 0.0
        for w, pw in zip(words, wts):
            x0 = ["abcd".index(ch) for ch in w]
            for pattern in range(8):
                masked = [(pattern >> i) & 1 for i in range(3)]
                prob = np.prod([1 - alpha if m else alpha for m in masked])
                x_t = torch.tensor([[4 if m else v for m, v in zip(masked, x0)]])
                sb = torch.tensor([-np.log(alpha)], dtype=torch.float64)
                p = model(x_t, sb)[0].numpy()
                ce = sum(-np.log(p[i, x0[i]]) for i in range(3) if masked[i])
                total += pw * prob * ce / t
        assert out["mdlm"].item() == pytest.approx(total, rel=1e-10)
        assert out["sedd"].item() == pytest.approx(total, rel=1e-10)


def test_masking_schedule_view_area_is_fixed_and_matches_an_independent_quadrature():
    """Lesson 10's slider. The area under the plotted integrand (the bound) is the same at every k
    to 1e-10 and equals scipy's quad in t of lesson 8's brute-force expected integrand
    (mdlm.expected_integrands, an enumeration over all n^d sequences); the plotted curve is that
    integrand; the printed std is the root of (1 - t_min) int sigma^2 E[S^2] dt - L^2 averaged
    over the words, with E[S^2] by an enumeration written out here."""
    import torch
    from scipy import integrate

    from ddlab import mdlm
    from ddlab.schedules import Polynomial
    p0, den, x0, w0 = widgets.schedule_toy()
    outs = {}
    for k in (0.5, 1.0, 2.0, 4.0):
        outs[k] = widgets.masking_schedule_view(k)
        plt.close("all")
    bounds = [o["bound"] for o in outs.values()]
    assert max(bounds) - min(bounds) < 1e-10
    assert outs[1.0]["std"] == pytest.approx(outs[1.0]["std_linear"], rel=1e-12)
    k = 2.0
    sched = Polynomial(k, widgets.SCHEDULE_EPS)
    t_min = float(sched.t_of(widgets.SCHEDULE_SB_LO))

    def brute(t):
        return float(mdlm.expected_integrands(sched, den, p0, t)["mdlm"])
    area, _ = integrate.quad(brute, t_min, 1, epsabs=1e-11, epsrel=1e-11, limit=200)
    assert outs[k]["bound"] == pytest.approx(area, abs=1e-9)
    for j in (0, 57, 199):
        assert outs[k]["integrand"][j].item() == pytest.approx(brute(outs[k]["t"][j].item()),
                                                               rel=1e-11)
    # the std: E[S^2] by the 2^3 masking patterns, S = r sum_masked -log p(x0_i | x_t)
    words = x0.tolist()

    def second(t):
        sb = float(sched.sigma_bar(t))
        alpha, r = np.exp(-sb), 1 / np.expm1(sb)
        total = 0.0
        for wb, row in zip(w0.tolist(), words):
            for pattern in range(8):
                masked = [(pattern >> i) & 1 for i in range(3)]
                prob = np.prod([1 - alpha if m else alpha for m in masked])
                x_t = torch.tensor([[4 if m else v for m, v in zip(masked, row)]])
                p = den(x_t, torch.tensor([sb], dtype=torch.float64))[0].numpy()
                S_ = r * sum(-np.log(p[i, row[i]]) for i in range(3) if masked[i])
                total += wb * prob * S_ ** 2
        return float(sched.sigma(t)) ** 2 * total

    sq, _ = integrate.quad(second, t_min, 1, epsrel=1e-9, limit=200)
    per_word = mdlm.exact_mdlm_bound(sched, den, x0, 5, t_min=t_min)
    var = (1 - t_min) * sq - float(w0 @ per_word ** 2)
    assert outs[k]["std"] == pytest.approx(var ** 0.5, rel=1e-7)
    with pytest.raises(ValueError, match=r"k must be a number in \[0.25, 8\]"):
        widgets.masking_schedule_view(0.0)


# ------------------------------------------------------------------ lesson 11: temperature_view

def brute_force_knob_law(T, top_p, steps=8, eps=1e-3):
    """Lesson 11's sampler written from scratch on the words toy: MDLM steps whose revealed
    values come from the exact denoiser (the conditional of p0 given the visible letters,
    uniform where that is empty), tempered and cut to its nucleus."""
    words, weights = ["cab", "bad", "dab", "abc", "bca"], [4, 3, 2, 2, 1]
    p0 = {tuple("abcd".index(c) for c in w): wt / 12 for w, wt in zip(words, weights)}
    M = 4

    def denoiser(x, i):
        q = np.array([sum(p for x0, p in p0.items() if x0[i] == y and
                          all(x0[j] == x[j] for j in range(3) if x[j] != M)) for y in range(4)])
        q = np.full(4, 0.25) if q.sum() == 0 else q / q.sum()
        q = q ** (1 / T)
        q = q / q.sum()
        order = sorted(range(4), key=lambda y: -q[y])            # stable: ties by index
        keep, mass = set(), 0.0
        for y in order:
            if mass >= top_p:
                break
            keep.add(y)
            mass += q[y]
        q = np.array([q[y] if y in keep else 0.0 for y in range(4)])
        return q / q.sum()

    t = np.linspace(1.0, 1e-5, steps + 1)
    alpha = list(1 - (1 - eps) * t) + [1.0]
    law = {(M, M, M): 1.0}
    for k in range(steps + 1):
        a_t, a_s = alpha[k], alpha[k + 1]
        reveal = (a_s - a_t) / (1 - a_t)
        new = {}
        for x, px in law.items():
            options = []
            for i in range(3):
                if x[i] != M:
                    options.append([(x[i], 1.0)])
                else:
                    q = denoiser(x, i)
                    options.append([(M, 1 - reveal)] + [(y, reveal * q[y]) for y in range(4)])
            for combo in itertools.product(*options):
                w = px * np.prod([c[1] for c in combo])
                if w > 0:
                    y = tuple(c[0] for c in combo)
                    new[y] = new.get(y, 0.0) + w
        law = new
    return law, p0


@pytest.mark.parametrize("T, top_p", [(1.0, 1.0), (0.5, 1.0), (1.7, 0.75), (0.8, 0.4)])
def test_temperature_view_against_a_sampler_written_from_scratch(T, top_p):
    out = widgets.temperature_view(T, top_p)
    plt.close("all")
    brute, p0 = brute_force_knob_law(T, top_p)
    law = out["law"].numpy()
    assert law.sum() == pytest.approx(1.0, abs=1e-12)
    for x in itertools.product(range(5), repeat=3):
        assert law[x] == pytest.approx(brute.get(x, 0.0), abs=1e-12), x
    words = [tuple("abcd".index(c) for c in w) for w in out["words"]]
    np.testing.assert_allclose(out["bars"][:-1].numpy(), [brute.get(w, 0.0) for w in words],
                               atol=1e-12)
    assert out["bars"][-1].item() == pytest.approx(1 - sum(brute.get(w, 0.0) for w in words),
                                                   abs=1e-12)
    # the scores, by hand from the brute-force law
    q = np.array([brute.get(x, 0.0) for x in itertools.product(range(5), repeat=3)])
    p = np.array([p0.get(x, 0.0) for x in itertools.product(range(5), repeat=3)])
    clean = np.array([all(c < 4 for c in x) for x in itertools.product(range(5), repeat=3)])
    judge = 0.99 * p + 0.01 * clean / 64
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.inf if (q[p > 0] == 0).any() else float((p[p > 0] * np.log(p[p > 0] / q[p > 0])).sum())
        H = -float(np.sum(np.where(q > 0, q * np.log(q), 0.0)))
        cross = -float(np.sum(np.where(q > 0, q * np.log(judge), 0.0)))
        reverse_kl = float(np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1) / judge), 0.0)))
    s = out["scores"]
    assert s["kl"] == pytest.approx(kl, abs=1e-10) if np.isfinite(kl) else s["kl"] is None
    assert s["entropy"] == pytest.approx(H, abs=1e-10)
    assert s["judge"] == pytest.approx(cross, abs=1e-10)
    assert s["support"] == pytest.approx(float(q[p > 0].sum()), abs=1e-12)
    assert s["judge"] == pytest.approx(s["entropy"] + reverse_kl, abs=1e-10)   # H + KL(q||judge)


def test_temperature_view_curves_and_refusals():
    out = widgets.temperature_view(1.0, 1.0)
    plt.close("all")
    j = widgets.KNOB_GRID.index(1.0)
    assert out["curves"]["kl"][j] == pytest.approx(out["scores"]["kl"], abs=1e-12)
    judge = out["curves"]["judge"]
    assert all(a < b for a, b in zip(judge, judge[1:]))          # lower T, lower judge score
    for bad in ({"temperature": 0.0}, {"temperature": True}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError):
            widgets.temperature_view(**{"temperature": 1.0, "top_p": 1.0, **bad})


def test_unmasking_view_shows_masks_and_moves_by_hand():
    from ddlab.widgets import DEMO_FRAMES, frame_summary, unmasking_view
    first = frame_summary(0)
    assert first == {"text": "____", "masked": 1.0, "changed": 0}
    assert frame_summary(2) == {"text": "_a_b", "masked": 0.5, "changed": 1}
    assert frame_summary(len(DEMO_FRAMES) - 1, width=2)["text"] == " a\nab"
    frames = torch.tensor([[2, 2], [0, 2], [0, 1]])
    assert frame_summary(2, frames, alphabet="xy")["text"] == "xy"
    with pytest.raises(ValueError, match="frame k must be in 0..4"):
        frame_summary(5)
    with pytest.raises(ValueError, match="outside 0..2"):
        frame_summary(0, torch.tensor([[5, 0]]), alphabet="xy")
    view = unmasking_view(2)                        # the slider: the same summary and the chain
    assert {k: view[k] for k in first} == frame_summary(2)
    image = view["fig"].axes[0].images[0].get_array()
    assert image.tolist() == (DEMO_FRAMES == 3).double().tolist()
    plt.close("all")
