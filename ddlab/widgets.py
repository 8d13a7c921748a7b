"""The logic behind the interactive views of the lessons (1-8).

A lesson's slider cell only builds the ipywidgets and forwards their values to a function here.
Each function draws on the matplotlib axes it is given (or on a new figure in the course style)
and returns the numbers it plotted, so a plain Python process can drive every view over its range
and hold those numbers against independent computations (tests/test_widgets_logic.py).

The toy chains shared by the views (``toy_chain(kind)``), all started from p0 = (0.5, 0.3, 0.2):

* ``"uniform"``: ddlab.Uniform(3), Q = 1 - 3 I;
* ``"absorbing"``: ddlab.Absorbing(4), MASK = 3, p0 = (0.5, 0.3, 0.2, 0);
* ``"custom"``: the birth-death chain 0 <-> 1 <-> 2 of lesson 1,
  ``Q = [[-2, 1, 0], [2, -2, 2], [0, 1, -2]]``, eigenvalues 0, -2, -4, stationary (1, 2, 1) / 4.

``WIDGETS`` lists every view with the ranges of its parameters: a tuple (lo, hi) is a slider, a
list is a dropdown.
"""

from __future__ import annotations

import numpy as np
import torch

from ._checks import check_time
from .exact import marginal
from .paths import reverse_ode
from .plotting import PALETTE, figure
from .rate_matrices import Absorbing, RateMatrix, Uniform
from .sampling import METHODS
from .schedules import Geometric, LogLinear

KINDS = ("uniform", "absorbing", "custom")
SCHEDULES = ("loglinear", "geometric")
P0 = (0.5, 0.3, 0.2)
CUSTOM_Q = ((-2.0, 1.0, 0.0),
            (2.0, -2.0, 2.0),
            (0.0, 1.0, -2.0))


def toy_chain(kind: str):
    """``(rm, p0)`` for one of the toy chains of lessons 1 and 2 (see the module docstring)."""
    if kind == "uniform":
        return Uniform(3), torch.tensor(P0, dtype=torch.float64)
    if kind == "absorbing":
        return Absorbing(4), torch.tensor(P0 + (0.0,), dtype=torch.float64)
    if kind == "custom":
        return (RateMatrix(torch.tensor(CUSTOM_Q, dtype=torch.float64)),
                torch.tensor(P0, dtype=torch.float64))
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def toy_schedule(name: str):
    """The schedule a view runs under: LogLinear(1e-3) or Geometric(1e-4, 20), SEDD's defaults."""
    if name == "loglinear":
        return LogLinear(1e-3)
    if name == "geometric":
        return Geometric(1e-4, 20.0)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")


def _axes_pair(ax_a, ax_b):
    """Both axes given, or neither (then a new course figure with two panels)."""
    if (ax_a is None) != (ax_b is None):
        raise ValueError("give both axes or neither (a new figure is made when neither is given)")
    if ax_a is None:
        fig, (ax_a, ax_b) = figure(1, 2)
        return fig, ax_a, ax_b
    return None, ax_a, ax_b


def _state_labels(rm) -> list[str]:
    labels = [str(i) for i in range(rm.n)]
    if isinstance(rm, Absorbing):
        labels[-1] = "M"
    return labels


def marginal_view(kind: str = "uniform", t: float = 0.5, schedule: str = "loglinear",
                  ax_bars=None, ax_heat=None) -> dict:
    """Lesson 1's slider: p_t as bars beside the heat map of ``P = expm(sigma_bar(t) Q)``.

    Returns ``dict(t, sigma_bar, p_t, P, fig)`` with ``p_t = P @ p0`` (float64 tensors; ``fig``
    is the new figure, or None when axes were given).
    """
    rm, p0 = toy_chain(kind)
    sched = toy_schedule(schedule)
    t = float(check_time(t))
    sb = sched.sigma_bar(t)
    P = rm.transition(sb)
    p_t = marginal(rm, p0, sb)
    limit = rm.stationary()          # where p_t is headed (all MASK for absorbing)
    tv = 0.5 * (p_t - limit).abs().sum().item()

    fig, ax_bars, ax_heat = _axes_pair(ax_bars, ax_heat)
    states = np.arange(rm.n)
    labels = _state_labels(rm)
    ax_bars.bar(states, p_t.numpy(), color=PALETTE[0], label=r"$p_t$")
    ax_bars.step(np.r_[states - 0.5, rm.n - 0.5], np.r_[p0.numpy(), p0[-1].item()], where="post",
                 color=PALETTE[1], lw=1.5, label=r"$p_0$")
    ax_bars.plot(states, limit.numpy(), "_", color=PALETTE[3], ms=25, mew=2, label="limit")
    ax_bars.set(xticks=states, xticklabels=labels, ylim=(0, 1.2), xlabel="state $x$",
                ylabel=r"$p_t(x)$", yticks=np.linspace(0, 1, 6))
    ax_bars.legend(loc="upper center", ncol=3)
    ax_bars.set_title(f"{kind}, t = {t:.2f}: TV to the limit {tv:.2f}")

    ax_heat.imshow(P.numpy(), vmin=0, vmax=1, cmap="viridis")
    for y in range(rm.n):
        for x in range(rm.n):
            v = P[y, x].item()
            ax_heat.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=8,
                         color="white" if v < 0.6 else "black")
    ax_heat.set(xticks=states, yticks=states, xticklabels=labels, yticklabels=labels,
                xlabel=r"from $x_0$", ylabel=r"to $x_t$")
    ax_heat.grid(False)
    ax_heat.set_title(rf"$P = \exp(\bar\sigma Q)$, $\bar\sigma$ = {sb.item():.3g}")
    return {"t": t, "sigma_bar": sb, "p_t": p_t, "P": P, "fig": fig}


def reverse_view(t: float = 0.5, kind: str = "uniform", schedule: str = "loglinear",
                 ax_bars=None, ax_traj=None, num_points: int = 41) -> dict:
    """Lesson 2's slider: run the reverse process for a time t from T = 1 and compare with p_{1-t}.

    The reverse ODE (ddlab.paths.reverse_ode) is integrated from ``q_1 = p_1`` back to time
    ``s = 1 - t`` on a grid of ``num_points`` times; the left panel shows ``q_s`` beside the exact
    forward marginal ``p_s``, the right panel the reverse trajectory over the exact forward curves.

    Returns ``dict(t, t_forward, sigma_bar, p_exact, p_reverse, times, trajectory, fig)`` with
    ``trajectory[k]`` the reverse-ODE distribution at ``times[k]`` (times ascending from s to 1).
    """
    rm, p0 = toy_chain(kind)
    sched = toy_schedule(schedule)
    t = float(check_time(t))
    s = 1.0 - t
    times = torch.linspace(s, 1.0, num_points, dtype=torch.float64)
    times[-1] = 1.0                                # exact end point despite rounding in linspace
    traj = reverse_ode(rm, sched, p0, times)
    sb = sched.sigma_bar(s)
    p_exact = marginal(rm, p0, sb)
    p_reverse = traj[0]
    err = (p_reverse - p_exact).abs().max().item()

    fig, ax_bars, ax_traj = _axes_pair(ax_bars, ax_traj)
    states = np.arange(rm.n)
    labels = _state_labels(rm)
    w = 0.4
    ax_bars.bar(states - w / 2, p_exact.numpy(), w, color=PALETTE[0], label=r"exact $p_s$")
    ax_bars.bar(states + w / 2, p_reverse.numpy(), w, color=PALETTE[1], label=r"reverse ODE $q_s$")
    ax_bars.set(xticks=states, xticklabels=labels, ylim=(0, 1.2), xlabel="state $x$",
                ylabel="probability", yticks=np.linspace(0, 1, 6))
    ax_bars.legend(loc="upper center", ncol=2)
    ax_bars.set_title(f"{kind}: reverse time {t:.2f} reaches s = {1 - t:.2f}, where $q_s = p_s$")
    ax_bars.text(0.98, 0.72, f"max error {err:.0e}", transform=ax_bars.transAxes, ha="right",
                 fontsize=9)

    grid = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    exact_curves = marginal(rm, p0, sched.sigma_bar(grid))
    for x in range(rm.n):
        c = PALETTE[x % len(PALETTE)]
        ax_traj.plot(grid.numpy(), exact_curves[:, x].numpy(), color=c, lw=1, alpha=0.5)
        ax_traj.plot(times.numpy(), traj[:, x].numpy(), color=c, lw=2.5, label=f"$x$ = {labels[x]}")
    ax_traj.axvline(s, color="0.3", lw=1, ls="--")
    ax_traj.set(xlim=(0, 1), ylim=(0, 1.35), xlabel="forward time $t$ (reverse runs right to left)",
                ylabel=r"$q_t(x)$ thick, $p_t(x)$ thin", yticks=np.linspace(0, 1, 6))
    ax_traj.legend(loc="upper center", ncol=rm.n, fontsize=8, handlelength=1.2, columnspacing=0.8)
    ax_traj.set_title("the reverse ODE retraces $p_t$")
    return {"t": t, "t_forward": s, "sigma_bar": sb, "p_exact": p_exact, "p_reverse": p_reverse,
            "times": times, "trajectory": traj, "fig": fig}


def score_entropy_view(log10_r: float = -2.0, log10_s_over_r: float = 1.0, ax_loss=None,
                       ax_grad=None) -> dict:
    """Lesson 3's slider: score entropy and the squared error for one true ratio r.

    Left: ``l_SE(s; r) / r`` and ``l_CSM(s; r) / r`` against s / r (log axis), with the chosen s
    marked. Right: the size of the pull on the network's output ``log s``, i.e. of the gradients
    ``s - r`` (score entropy) and ``2 s (s - r)`` (squared error): for small r the squared error's
    pull fades like r^2, score entropy's like r. Returns ``dict(r, s, se, csm, grad_se, grad_csm, s_over_r, se_curve,
    csm_curve, fig)``; the curves are per r, over the grid ``s_over_r``.
    """
    from .losses import csm_term, score_entropy_term
    r = 10.0 ** float(log10_r)
    ratio = 10.0 ** float(log10_s_over_r)
    if not (np.isfinite(r) and np.isfinite(ratio) and r > 0 and ratio > 0):
        raise ValueError(f"log10_r and log10_s_over_r must be finite numbers, got "
                         f"{log10_r!r} and {log10_s_over_r!r}")
    s = ratio * r
    grid = torch.logspace(-2, 2, 201, dtype=torch.float64)
    se_curve = (score_entropy_term(grid * r, r) / r).numpy()
    csm_curve = (csm_term(grid * r, r) / r).numpy()
    se, csm = float(score_entropy_term(s, r)), float(csm_term(s, r))
    grad_se, grad_csm = s - r, 2 * s * (s - r)

    fig, ax_loss, ax_grad = _axes_pair(ax_loss, ax_grad)
    floor = 1e-12                           # both losses are exactly 0 at s = r: keep it on the plot
    ax_loss.loglog(grid.numpy(), np.maximum(se_curve, floor), color=PALETTE[0],
                   label="score entropy / r")
    ax_loss.loglog(grid.numpy(), np.maximum(csm_curve, floor), color=PALETTE[1],
                   label="squared error / r")
    ax_loss.plot([ratio], [max(se / r, floor)], "o", color=PALETTE[0])
    ax_loss.plot([ratio], [max(csm / r, floor)], "s", color=PALETTE[1])
    ax_loss.axvline(1.0, color="0.6", lw=0.8)
    ax_loss.set(xlabel="s / r", ylabel="loss / r", ylim=(1e-6, 1e6))
    ax_loss.legend(loc="upper center")
    ax_loss.set_title(f"r = {r:.1e}: both vanish only at s = r")
    names = ["score entropy\n$|s - r|$", "squared error\n$|2s(s - r)|$"]
    ax_grad.bar(names, [max(abs(grad_se), floor), max(abs(grad_csm), floor)], color=PALETTE[:2])
    ax_grad.set(yscale="log", ylabel="size of the pull on log s", ylim=(1e-12, 1e4))
    ax_grad.set_title(f"at s = {ratio:.2g} r: SE {grad_se:+.1e}, squared {grad_csm:+.1e}")
    return {"r": r, "s": s, "se": se, "csm": csm, "grad_se": grad_se, "grad_csm": grad_csm,
            "s_over_r": grid, "se_curve": se_curve, "csm_curve": csm_curve, "fig": fig}


SAMPLER_GRID = (1, 2, 4, 8, 16, 32, 64)


def sampler_toy():
    """``(rm, schedule, p0)`` of lesson 5's view: one token, Uniform(8), Geometric(1e-3, 2), bimodal p0."""
    from .toy import bimodal
    return Uniform(8), Geometric(1e-3, 2.0), bimodal(8)


def sampler_view(method: str = "euler", steps: int = 4, ax_bars=None, ax_kl=None) -> dict:
    """Lesson 5's slider: the exact law of one token drawn by a sampler with ``steps`` steps.

    The left panel shows that law (``ddlab.sampling.exact_sampler_distribution`` with the exact
    score) beside the data p0; the right panel shows KL(p0 || law) at 1, 2, 4, ..., 64 steps, with
    the chosen step count marked.

    Returns ``dict(method, steps, p0, law, kl, grid, curve, fig)``; ``curve[j]`` is the KL at
    ``grid[j]`` steps.
    """
    from .exact import kl_divergence
    from .sampling import exact_sampler_distribution, kl_vs_steps
    from .sequences import exact_score_fn
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    steps = int(steps)
    rm, sched, p0 = sampler_toy()
    score_fn = exact_score_fn(p0, rm)

    law = exact_sampler_distribution(rm, sched, score_fn, 1, steps, method)
    kl = float(kl_divergence(p0, law))
    curve = kl_vs_steps(rm, sched, score_fn, 1, p0, SAMPLER_GRID, [method])[method]

    fig, ax_bars, ax_kl = _axes_pair(ax_bars, ax_kl)
    states = np.arange(rm.n)
    w = 0.4
    ax_bars.bar(states - w / 2, p0.numpy(), w, color=PALETTE[0], label="data $p_0$")
    ax_bars.bar(states + w / 2, law.numpy(), w, color=PALETTE[1], label=f"{method}, {steps} steps")
    ax_bars.set(xticks=states, xlabel="state $x$", ylabel="probability",
                ylim=(0, 1.3 * max(float(p0.max()), float(law.max()))))
    ax_bars.legend(loc="upper center", ncol=2)
    ax_bars.set_title(f"KL(p0 || sampler) = {max(kl, 0.0):.1e} nats")
    floor = 1e-16                                 # Tweedie is exact here: plot its zeros on the floor
    ax_kl.loglog(SAMPLER_GRID, [max(v, floor) for v in curve], "o-", color=PALETTE[1])
    ax_kl.loglog([steps], [max(kl, floor)], "o", ms=12, mfc="none", color="0.2")
    ax_kl.set(xlabel="number of steps $k$", ylabel="KL [nats]", ylim=(floor / 2, 10))
    ax_kl.set_title(f"{method}: KL against steps (circle: {steps})")
    return {"method": method, "steps": steps, "p0": p0, "law": law, "kl": kl,
            "grid": list(SAMPLER_GRID), "curve": curve, "fig": fig}


# Every view and the ranges of its parameters: (lo, hi) is a slider, a list is a dropdown.
_RATIO_MODELS: dict = {}


def _untrained_ratio_models(n: int = 8) -> dict:
    """Small untrained toy models, one per noise: what learned_ratios_view draws by default."""
    if not _RATIO_MODELS:
        from . import toy
        torch.manual_seed(0)
        _RATIO_MODELS["absorbing"] = (toy.MLPScore(Absorbing(n), LogLinear(1e-3), hidden=16),
                                      toy.bimodal(n, absorbing=True))
        _RATIO_MODELS["uniform"] = (toy.MLPScore(Uniform(n), Geometric(1e-3, 1.0), hidden=16),
                                    toy.bimodal(n))
    return _RATIO_MODELS


def learned_ratios_view(noise: str, t: float, models: dict | None = None, ax=None) -> dict:
    """Lesson 4's slider: exact ratios (lines) and a model's learned ones (dots) at time t.

    ``models`` maps "absorbing"/"uniform" to ``(model, p0)``; the lesson passes its trained
    models, and without it small untrained ones are drawn (so the view can be tested alone).
    """
    models = _untrained_ratio_models() if models is None else models
    if noise not in models:
        raise ValueError(f"noise must be one of {sorted(models)}, got {noise!r}")
    model, p0 = models[noise]
    from .toy import plot_ratios
    if ax is None:
        fig, ax = figure()
    exact, learned = plot_ratios(model, p0, [t], ax=ax)
    return {"exact": exact, "learned": learned, "fig": ax.figure}


WIDGETS = {
    "marginal_view": (marginal_view, {"kind": list(KINDS), "t": (0.0, 1.0),
                                      "schedule": list(SCHEDULES)}),
    "reverse_view": (reverse_view, {"kind": list(KINDS), "t": (0.0, 1.0),
                                    "schedule": list(SCHEDULES)}),
    "learned_ratios_view": (learned_ratios_view, {"noise": ["absorbing", "uniform"],
                                                  "t": (0.02, 0.98)}),
    "sampler_view": (sampler_view, {"method": list(METHODS), "steps": (1, 64)}),
    "score_entropy_view": (score_entropy_view, {"log10_r": (-4.0, 1.0),
                                                "log10_s_over_r": (-2.0, 2.0)}),
}

# ------------------------------------------------------------------ lessons 6 to 8


def likelihood_toy():
    """``(rm, schedule, p0, x0)`` of lesson 6: d = 2 tokens over 3 letters, absorbing noise.

    The correlated p0 of lesson 6 (``rand ** 3 + 0.02`` from seed 0, normalised, MASK = 3 added
    with no mass), ``Absorbing(4)``, ``LogLinear(1e-3)``, and the 9 clean sequences.
    """
    from .sequences import add_mask_state, all_sequences
    g = torch.Generator().manual_seed(0)
    pj = torch.rand((3, 3), generator=g, dtype=torch.float64) ** 3 + 0.02
    return Absorbing(4), LogLinear(1e-3), add_mask_state(pj / pj.sum()), all_sequences(3, 2)


def bound_view(log10_t_min: float = -3.0, num_t: int = 64, ax=None) -> dict:
    """Lesson 6's slider: ``nll_bound`` with the exact score at t_min and num_t, per sequence.

    For the 9 sequences of :func:`likelihood_toy`: the Monte Carlo bound (``shared_t=True``,
    generator seeded 0, so a redraw is reproducible) with +-2 standard errors, the exact
    ``-log p0(x0)`` and the exact limit ``bound_limit`` at that t_min (what the bound converges to
    as num_t grows; below -log p0 on average by about t_min * sum_i H(x_i | x_other)).
    Returns ``dict(t_min, num_t, bound, stderr, exact, limit, avg_bound, avg_stderr, entropy,
    fig)`` (averages weighted by p0).
    """
    from .likelihood import bound_limit, exact_nll, nll_bound
    from .sequences import exact_score_fn
    t_min = 10.0 ** float(log10_t_min)
    if not (np.isfinite(t_min) and 0 < t_min < 1):
        raise ValueError(f"log10_t_min must give 0 < t_min < 1, got {log10_t_min!r}")
    if isinstance(num_t, bool) or int(num_t) != num_t or num_t < 2:
        raise ValueError(f"num_t must be an integer >= 2, got {num_t!r}")
    num_t = int(num_t)
    rm, sched, p0, x0 = likelihood_toy()
    g = torch.Generator().manual_seed(0)
    bound, se = nll_bound(exact_score_fn(p0, rm), x0, rm, sched, num_t=num_t, generator=g,
                          t_min=t_min, return_stderr=True, shared_t=True)
    exact = exact_nll(p0, x0)
    limit = bound_limit(rm, sched, p0, x0, t_min=t_min)
    w = p0[tuple(x0.T)]
    avg, entropy = float((w * bound).sum()), float((w * exact).sum())
    avg_se = float(((w * se) ** 2).sum().sqrt())       # shared_t correlates them: indicative

    if ax is None:
        fig, ax = figure()
    else:
        fig = None
    order = torch.argsort(exact)
    pos = np.arange(len(x0))
    ax.plot(pos, exact[order].numpy(), "o", color=PALETTE[0], label=r"$-\log p_0(x_0)$")
    ax.plot(pos, limit[order].numpy(), "_", ms=16, mew=2, color=PALETTE[3],
            label="limit as num_t grows (bound_limit)")
    ax.errorbar(pos, bound[order].numpy(), yerr=2 * se[order].numpy(), fmt="s", mfc="none",
                capsize=3, color=PALETTE[2], label=r"nll_bound $\pm$ 2 stderr")
    ax.set_xticks(pos, ["".join("abc"[v] for v in x0[b].tolist()) for b in order])
    ax.set(xlabel="sequence $x_0$, most to least likely", ylabel="nats", ylim=(-2, 12))
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"t_min = {t_min:.0e}, num_t = {num_t}: average bound {avg:.2f} ± {avg_se:.2f}, "
                 f"H(p0) = {entropy:.2f} nats")
    return {"t_min": t_min, "num_t": num_t, "bound": bound, "stderr": se, "exact": exact,
            "limit": limit, "avg_bound": avg, "avg_stderr": avg_se, "entropy": entropy,
            "fig": fig}


CLAMP_PATTERNS = ("?a?", "??b", "b??", "?ab", "???")
CLAMP_NOISES = ("absorbing", "uniform", "uniform, conditional score")
_CLAMP_CACHE: dict = {}


def clamp_toy(noise: str, pattern: str):
    """``(rm, schedule, score_fn, target, clamp, alphabet)`` of lesson 7's infilling slider.

    The five words of lesson 7 ("cab", "bad", "dab", "abc", "bca"); ``pattern`` holds the
    positions with a letter and leaves those with "?" free. "absorbing": Absorbing(5),
    LogLinear(1e-3) and the unconditional exact score; "uniform": Uniform(4), Geometric(1e-3, 5)
    and the unconditional score; "uniform, conditional score": the exact score of the conditional
    itself. ``target`` is the exact conditional ``sequences.condition(p0, clamp)``.
    """
    from .sequences import condition, exact_score_fn, words_toy
    if noise not in CLAMP_NOISES:
        raise ValueError(f"noise must be one of {CLAMP_NOISES}, got {noise!r}")
    if pattern not in CLAMP_PATTERNS:
        raise ValueError(f"pattern must be one of {CLAMP_PATTERNS}, got {pattern!r}")
    key = (noise, pattern)
    if key not in _CLAMP_CACHE:
        words = ["cab", "bad", "dab", "abc", "bca"]
        absorbing = noise == "absorbing"
        p0, abc = words_toy(words, mask=absorbing)
        held = torch.tensor([c != "?" for c in pattern])
        values = torch.tensor([abc.index(c) if c != "?" else 0 for c in pattern])
        clamp = (held, values)
        target = condition(p0, clamp)
        if absorbing:
            rm, sched = Absorbing(5), LogLinear(1e-3)
            score_fn = exact_score_fn(p0, rm, sched, off_support="conditional")
        else:
            rm, sched = Uniform(4), Geometric(1e-3, 5.0)
            score_fn = exact_score_fn(target if noise.endswith("conditional score") else p0, rm)
        _CLAMP_CACHE[key] = (rm, sched, score_fn, target, clamp, abc)
    return _CLAMP_CACHE[key]


def clamp_view(pattern: str = "?a?", steps: int = 16, noise: str = "uniform", ax=None) -> dict:
    """Lesson 7's slider: the exact conditional against the exact law of the clamped sampler.

    ``exact_sampler_distribution(..., "tweedie", clamp=...)`` with ``steps`` steps, for the
    held pattern and noise of :func:`clamp_toy`; bars over the sequences either law gives at
    least 1 %, KL(exact conditional || clamped sampler) in the title. Returns ``dict(pattern,
    steps, noise, target, law, kl, fig)`` (``target`` and ``law`` of shape (n,)*3).
    """
    from .exact import kl_divergence
    from .sampling import exact_sampler_distribution
    from .sequences import all_sequences, to_strings
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    steps = int(steps)
    rm, sched, score_fn, target, clamp, abc = clamp_toy(noise, pattern)
    law = exact_sampler_distribution(rm, sched, score_fn, 3, steps, "tweedie", clamp=clamp)
    kl = float(kl_divergence(target, law))

    if ax is None:
        fig, ax = figure()
    else:
        fig = None
    flat_t, flat_l = target.reshape(-1), law.reshape(-1)
    show = ((flat_t > 0.01) | (flat_l > 0.01)).nonzero()[:, 0]
    show = show[torch.argsort(-(flat_t + flat_l)[show])][:10]
    names = to_strings(all_sequences(rm.n, 3)[show], abc)
    pos = np.arange(len(show))
    w = 0.4
    ax.bar(pos - w / 2, flat_t[show].numpy(), w, color=PALETTE[0], label="exact conditional")
    ax.bar(pos + w / 2, flat_l[show].numpy(), w, color=PALETTE[1],
           label=f"clamped Tweedie sampler, {steps} steps")
    ax.set_xticks(pos, names)
    ax.set(xlabel=f"sequence (held: {pattern})", ylabel="probability", ylim=(0, 1.15))
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{noise}: KL(exact conditional || clamped sampler) = {kl:.2e} nats")
    return {"pattern": pattern, "steps": steps, "noise": noise, "target": target, "law": law,
            "kl": kl, "fig": fig}


def weighted_words() -> torch.Tensor:
    """p0 (5, 5, 5) of lessons 8, 10 and 11: "cab", "bad", "dab", "abc", "bca" with weights
    4, 3, 2, 2, 1 over the letters a-d, MASK = 4 (``sequences.words_toy``)."""
    from .sequences import words_toy
    return words_toy(["cab", "bad", "dab", "abc", "bca"], weights=[4, 3, 2, 2, 1], mask=True)[0]


_MASKED_CACHE: dict = {}
MASKED_GRID = tuple(float(v) for v in np.linspace(0.02, 1.0, 50))


def masked_toy():
    """``(schedule, model, p0)`` of lesson 8: the weighted words, LogLinear(1e-4), and the exact
    denoiser smoothed towards uniform (``mdlm.smoothed_denoiser_fn``, mix 0.3)."""
    if not _MASKED_CACHE:
        from .mdlm import denoiser_fn_from_score_fn, smoothed_denoiser_fn
        from .sequences import exact_score_fn
        p0 = weighted_words()
        sched = LogLinear(1e-4)
        score_fn = exact_score_fn(p0, Absorbing(5), sched, off_support="conditional")
        _MASKED_CACHE["toy"] = (sched, smoothed_denoiser_fn(denoiser_fn_from_score_fn(score_fn, 5), 5), p0)
    return _MASKED_CACHE["toy"]


def mdlm_weight_view(t: float = 0.5, ax_weight=None, ax_loss=None) -> dict:
    """Lesson 8's slider: MDLM's weight w(t) above SEDD's (= MDLM's) expected loss integrand.

    Top: ``mdlm.mdlm_weight`` over t (1/t for LogLinear). Bottom: the three curves of
    ``mdlm.expected_integrands`` (exact averages over the data of lesson 8's smoothed model):
    SEDD's score-entropy integrand, MDLM's weighted cross-entropy (the same numbers) and the
    K-free SEDD loss. The chosen t is marked on both. Returns ``dict(t, weight, sedd, mdlm,
    sedd_without_K, grid, fig)``.
    """
    from .mdlm import expected_integrands
    t = float(check_time(t))
    if t <= 0:
        raise ValueError("t must be > 0: the MDLM weight is infinite at t = 0")
    sched, model, p0 = masked_toy()
    if "grid" not in _MASKED_CACHE:
        _MASKED_CACHE["grid"] = expected_integrands(
            sched, model, p0, torch.tensor(MASKED_GRID, dtype=torch.float64))
    grid = _MASKED_CACHE["grid"]
    here = expected_integrands(sched, model, p0, t)

    if (ax_weight is None) != (ax_loss is None):
        raise ValueError("give both axes or neither (a new figure is made when neither is given)")
    if ax_weight is None:
        fig, (ax_weight, ax_loss) = figure(2, 1, height=5.5)
    else:
        fig = None
    tt = grid["t"].numpy()
    ax_weight.plot(tt, grid["weight"].numpy(), color=PALETTE[0], label=r"$w(t) = \sigma(t)\,r$")
    ax_weight.plot([t], [float(here["weight"])], "o", color="0.2")
    ax_weight.set(yscale="log", ylabel="MDLM weight $w(t)$")
    ax_weight.legend(loc="upper right")
    ax_weight.set_title(f"t = {t:.2f}: w = {float(here['weight']):.3g}; SEDD integrand "
                        f"{float(here['sedd']):.3f} = MDLM {float(here['mdlm']):.3f} nats")
    for key, label, style, c in (("sedd", "SEDD (score entropy)", "-", PALETTE[0]),
                                 ("mdlm", "MDLM (weighted CE)", "o", PALETTE[1]),
                                 ("sedd_without_K", "SEDD without K(r)", "--", PALETTE[2])):
        ax_loss.plot(tt, grid[key].numpy(), style, color=c, ms=3, label=label)
        ax_loss.plot([t], [float(here[key])], "D", color=c, ms=7, mec="0.2")
    ax_loss.axvline(t, color="0.5", lw=0.8)
    ax_loss.set_yscale("symlog", linthresh=1.0)
    ax_loss.set(xlabel="time $t$", ylabel=r"$\mathbb{E}$ integrand [nats / unit $t$]")
    ax_loss.legend(loc="lower right", fontsize=8)
    return {"t": t, "weight": here["weight"], "sedd": here["sedd"], "mdlm": here["mdlm"],
            "sedd_without_K": here["sedd_without_K"], "grid": grid["t"], "fig": fig}


WIDGETS.update({
    "bound_view": (bound_view, {"log10_t_min": (-5.0, -1.0), "num_t": (4, 256)}),
    "clamp_view": (clamp_view, {"pattern": list(CLAMP_PATTERNS), "steps": (1, 128),
                                "noise": list(CLAMP_NOISES)}),
    "mdlm_weight_view": (mdlm_weight_view, {"t": (0.02, 1.0)}),
})


__all__ = ["KINDS", "SCHEDULES", "P0", "CUSTOM_Q", "toy_chain", "toy_schedule", "marginal_view",
           "reverse_view", "learned_ratios_view", "sampler_toy", "sampler_view",
           "score_entropy_view",
           "WIDGETS"]

__all__ += ["likelihood_toy", "bound_view", "CLAMP_PATTERNS", "CLAMP_NOISES", "clamp_toy",
            "clamp_view", "weighted_words", "masked_toy", "mdlm_weight_view"]


# ------------------------------------------------------------------ lesson 10: masking schedules

SCHEDULE_SB_LO = 1e-3          # the common sigma_bar(t_min) of lesson 10's schedules
SCHEDULE_EPS = 1e-3            # and their common end sigma_bar(1) = -log eps
_SCHEDULE_CACHE: dict = {}


def schedule_toy():
    """``(p0, denoiser_fn, x0, w0)`` of lesson 10: lesson 8's five weighted words with the exact
    denoiser, the words as a (5, 3) batch ``x0`` and their probabilities ``w0``."""
    if not _SCHEDULE_CACHE:
        from .mdlm import denoiser_fn_from_score_fn
        from .sequences import all_sequences, exact_score_fn
        p0 = weighted_words()
        score_fn = exact_score_fn(p0, Absorbing(5), off_support="conditional")
        flat = p0.reshape(-1)
        _SCHEDULE_CACHE["toy"] = (p0, denoiser_fn_from_score_fn(score_fn, 5),
                                  all_sequences(5, 3)[flat > 0], flat[flat > 0])
    return _SCHEDULE_CACHE["toy"]


def schedule_summary(schedule, grid_points: int = 200) -> dict:
    """One schedule on lesson 10's toy, all exact and averaged over the five words.

    ``t_min = schedule.t_of(SCHEDULE_SB_LO)`` (the common lower end), the grid ``t`` from t_min
    to 1, ``alpha`` there, the expected integrand ``sigma(t) E[S_t]`` (nats per unit t), the
    bound (``mdlm.exact_mdlm_bound``) and the standard deviation of one draw of
    ``mdlm_nll_bound`` with num_t = 1 (the root of the p0-average of ``mdlm.mdlm_bound_variance``).
    """
    from .mdlm import exact_integrand_moments, exact_mdlm_bound, mdlm_bound_variance
    p0, den, x0, w0 = schedule_toy()
    t_min = float(schedule.t_of(SCHEDULE_SB_LO))
    t = torch.linspace(t_min, 1.0, grid_points, dtype=torch.float64)
    m1, _ = exact_integrand_moments(den, x0, 5, schedule.sigma_bar(t))
    integrand = schedule.sigma(t).to(torch.float64) * (m1 @ w0)
    bound = float(w0 @ exact_mdlm_bound(schedule, den, x0, 5, t_min=t_min))
    std = float(w0 @ mdlm_bound_variance(schedule, den, x0, 5, 1, t_min=t_min)) ** 0.5
    return {"t_min": t_min, "t": t, "alpha": schedule.alpha(t), "integrand": integrand,
            "bound": bound, "std": std}


def masking_schedule_view(k: float = 2.0, ax_alpha=None, ax_integrand=None) -> dict:
    """Lesson 10's slider: the polynomial schedule ``alpha_t = 1 - (1 - eps) t^k`` against linear.

    Left: alpha_t. Right: the expected integrand ``sigma(t) E[S_t]`` of the bound on the clock of
    t, whose area (the bound, the same for every k) and the standard deviation of a one-draw
    estimate (which changes with k) are in the title. Returns ``dict(k, t, alpha, integrand,
    bound, std, bound_linear, std_linear, fig)`` from :func:`schedule_summary`.
    """
    from .schedules import Polynomial
    if isinstance(k, bool) or not np.isfinite(k) or not 0.25 <= float(k) <= 8.0:
        raise ValueError(f"k must be a number in [0.25, 8], got {k!r}")
    k = float(k)
    here = schedule_summary(Polynomial(k, SCHEDULE_EPS))
    if "linear" not in _SCHEDULE_CACHE:
        _SCHEDULE_CACHE["linear"] = schedule_summary(LogLinear(SCHEDULE_EPS))
    lin = _SCHEDULE_CACHE["linear"]
    fig, ax_alpha, ax_integrand = _axes_pair(ax_alpha, ax_integrand)
    for s, label, style, c in ((lin, "linear (k = 1)", "--", "0.5"),
                               (here, f"polynomial, k = {k:.2f}", "-", PALETTE[0])):
        ax_alpha.plot(s["t"].numpy(), s["alpha"].numpy(), style, color=c, label=label)
        ax_integrand.plot(s["t"].numpy(), s["integrand"].numpy(), style, color=c, label=label)
        ax_integrand.fill_between(s["t"].numpy(), s["integrand"].numpy(), color=c, alpha=0.15)
    ax_alpha.set(xlabel="time $t$", ylabel=r"$\alpha_t$ (probability still clean)",
                 title=r"$\alpha_t = 1 - (1-\epsilon)\,t^k$")
    ax_alpha.legend(loc="lower left")
    top = float(max(lin["integrand"].max(), here["integrand"].max()))
    ax_integrand.set(xlabel="time $t$", ylabel=r"$\sigma(t)\,\mathbb{E}[S_t]$ [nats / unit $t$]",
                     ylim=(0, min(1.05 * top, 15.0)))
    ax_integrand.set_title(f"area {here['bound']:.4f} nats for every k; one-draw std "
                           f"{here['std']:.2f} (linear {lin['std']:.2f})", fontsize=10)
    ax_integrand.legend(loc="upper left")
    return {"k": k, "t": here["t"], "alpha": here["alpha"], "integrand": here["integrand"],
            "bound": here["bound"], "std": here["std"], "bound_linear": lin["bound"],
            "std_linear": lin["std"], "fig": fig}


WIDGETS["masking_schedule_view"] = (masking_schedule_view, {"k": (0.5, 4.0)})
__all__ += ["SCHEDULE_SB_LO", "SCHEDULE_EPS", "schedule_toy", "schedule_summary",
            "masking_schedule_view"]


# ------------------------------------------------------------------ lesson 11: sampler knobs

KNOB_STEPS = 8                  # the MDLM sampler of lesson 11's slider: 8 steps on the words toy
KNOB_GRID = tuple(float(v) for v in np.round(np.geomspace(0.25, 2.0, 13), 4))
KNOB_TOP = 3.0                  # nats: the top of the right panel (an infinite KL is drawn there)
_KNOB_CACHE: dict = {}


def words_sampler_toy():
    """``(rm, schedule, score_fn, p0, judge)`` of lesson 11: lesson 8's five weighted words
    ("cab", "bad", "dab", "abc", "bca" with weights 4, 3, 2, 2, 1; Absorbing(5), MASK = 4),
    LogLinear(1e-3), the exact score (``off_support="conditional"``, so factorised steps may
    leave the words), and the judge: p0 mixed with 1% of the uniform law on the 64 clean
    sequences (a judge that has never seen a non-word still gives it a finite cost)."""
    if "toy" not in _KNOB_CACHE:
        from .sequences import exact_score_fn
        p0 = weighted_words()
        rm, sched = Absorbing(5), LogLinear(1e-3)
        clean = torch.zeros_like(p0)
        clean[:4, :4, :4] = 1.0 / 64
        _KNOB_CACHE["toy"] = (rm, sched, exact_score_fn(p0, rm, sched, off_support="conditional"),
                              p0, 0.99 * p0 + 0.01 * clean)
    return _KNOB_CACHE["toy"]


def knob_law(temperature: float = 1.0, top_p: float = 1.0):
    """The exact law (5, 5, 5) of lesson 11's MDLM sampler (KNOB_STEPS steps) on the words toy
    with this temperature and nucleus (``ddlab.sampling.exact_sampler_distribution``)."""
    from .sampling import exact_sampler_distribution
    rm, sched, score_fn, _, _ = words_sampler_toy()
    return exact_sampler_distribution(rm, sched, score_fn, 3, KNOB_STEPS, "mdlm",
                                      temperature=temperature, top_p=top_p)


def temperature_view(temperature: float = 1.0, top_p: float = 1.0, ax_bars=None,
                     ax_curves=None) -> dict:
    """Lesson 11's slider: temperature and nucleus of the denoiser, exactly, on the words toy.

    Left: the sampler's law on the five words and on everything else (non-words), beside p0.
    Right: over temperatures from 0.25 to 2 (at this top_p), ``KL(p0 || q)``, the entropy H(q)
    and the judge's cross-entropy (``ddlab.sampling.law_scores``), the chosen temperature marked.
    Returns ``dict(temperature, top_p, law, p0, words, bars, scores, grid, curves, fig)``;
    ``bars`` are the plotted heights (five words, then "other"), ``curves[key][j]`` the score at
    ``grid[j]``; a KL that is infinite (the nucleus cut a word) is None.
    """
    from .sampling import law_scores
    from .sequences import all_sequences
    if isinstance(temperature, bool) or not 0.05 <= float(temperature) <= 10:
        raise ValueError(f"temperature must be a number in [0.05, 10], got {temperature!r}")
    if isinstance(top_p, bool) or not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
    temperature, top_p = float(temperature), float(top_p)
    rm, sched, score_fn, p0, judge = words_sampler_toy()
    law = knob_law(temperature, top_p)
    scores = law_scores(law, p0, judge)
    key = round(top_p, 6)
    if key not in _KNOB_CACHE:
        per = [law_scores(knob_law(T, top_p), p0, judge) for T in KNOB_GRID]
        _KNOB_CACHE[key] = {k: [s[k] for s in per] for k in ("kl", "entropy", "judge")}
    curves = _KNOB_CACHE[key]
    states = all_sequences(5, 3)
    flat = p0.reshape(-1)
    idx = (flat > 0).nonzero()[:, 0]
    words = ["".join("abcd"[int(c)] for c in states[i]) for i in idx]
    bars = torch.cat([law.reshape(-1)[idx], 1 - law.reshape(-1)[idx].sum(0, keepdim=True)])
    data = torch.cat([flat[idx], torch.zeros(1, dtype=torch.float64)])

    fig, ax_bars, ax_curves = _axes_pair(ax_bars, ax_curves)
    xs = np.arange(len(words) + 1)
    w = 0.4
    ax_bars.bar(xs - w / 2, data.numpy(), w, color=PALETTE[0], label="data $p_0$")
    ax_bars.bar(xs + w / 2, bars.numpy(), w, color=PALETTE[1],
                label=f"sampler, T = {temperature:.2f}, top-p = {top_p:.2f}")
    ax_bars.set(xticks=xs, xticklabels=words + ["other"], ylim=(0, 0.75), ylabel="probability")
    ax_bars.legend(loc="upper right", fontsize=8)
    shown = "inf (words lost)" if np.isinf(scores["kl"]) else f"{scores['kl']:.3f}"
    ax_bars.set_title(f"KL(p0 || q) = {shown}, H(q) = {scores['entropy']:.2f} "
                      f"(data {law_scores(p0, p0, judge)['entropy']:.2f}) nats", fontsize=9)
    for k, label, c in (("kl", r"KL$(p_0\,\|\,q)$", PALETTE[3]), ("entropy", "entropy $H(q)$",
                        PALETTE[2]), ("judge", "judge cross-entropy", PALETTE[4])):
        # an infinite KL (the nucleus cut a word) is drawn at the top of the axes
        ax_curves.plot(KNOB_GRID, [min(v, KNOB_TOP) for v in curves[k]], "-", color=c, label=label)
        ax_curves.plot([temperature], [min(scores[k], KNOB_TOP)], "o", color=c, mec="0.2")
    ax_curves.set(xscale="log", xlabel="temperature $T$", ylabel="nats", ylim=(0, KNOB_TOP * 1.3))
    ax_curves.set_xticks([0.25, 0.5, 1.0, 2.0], ["0.25", "0.5", "1", "2"])
    ax_curves.minorticks_off()
    ax_curves.axvline(1.0, color="0.6", lw=0.8)
    ax_curves.legend(loc="upper center", fontsize=7, ncol=3)
    ax_curves.set_title("low T: the judge's score falls, KL rises", fontsize=9)
    def finite(v):                                  # an infinite KL is returned as None
        return None if np.isinf(v) else v
    return {"temperature": temperature, "top_p": top_p, "law": law, "p0": p0, "words": words,
            "bars": bars, "scores": {**scores, "kl": finite(scores["kl"])},
            "grid": list(KNOB_GRID), "curves": {k: [finite(v) for v in vals]
                                                for k, vals in curves.items()}, "fig": fig}


WIDGETS["temperature_view"] = (temperature_view, {"temperature": (0.25, 2.0), "top_p": (0.3, 1.0)})
__all__ += ["KNOB_STEPS", "KNOB_GRID", "KNOB_TOP", "words_sampler_toy", "knob_law", "temperature_view"]


# ------------------------------------------------------------------ lesson 9: the reverse chain on text

# A stand-in chain for the registry's sweep (the lesson passes the frames of a trained model): four
# tokens over "ab " unmasking one at a time, MASK = 3.
DEMO_FRAMES = torch.tensor([[3, 3, 3, 3], [3, 0, 3, 3], [3, 0, 3, 1], [2, 0, 3, 1], [2, 0, 0, 1]])


def frame_summary(step: int, frames=None, alphabet: str = "ab ", width: int = 64) -> dict:
    """Frame ``step`` of a reverse chain as text (lesson 9): ``{"text"}`` with MASK (the last
    state, id ``len(alphabet)``) shown as ``_`` and wrapped at ``width`` characters, ``{"masked"}``
    (the fraction still masked) and ``{"changed"}`` (positions that moved in this step).

    ``frames`` is a (K, d) tensor of token ids, one row per step, as
    ``ddlab.text.generate.reverse_frames`` records them; by default a four-token demonstration.
    """
    frames = DEMO_FRAMES if frames is None else torch.as_tensor(frames)
    step = int(step)
    if not 0 <= step < len(frames):
        raise ValueError(f"frame k must be in 0..{len(frames) - 1}, got {step}")
    mask = len(alphabet)
    x = frames[step]
    if int(x.max()) > mask or int(x.min()) < 0:
        raise ValueError(f"frames hold ids outside 0..{mask} (the alphabet {alphabet!r} and MASK)")
    text = "".join("_" if int(v) == mask else alphabet[int(v)] for v in x)
    lines = [text[i:i + width] for i in range(0, len(text), width)]
    changed = int((frames[step] != frames[step - 1]).sum()) if step else 0
    return {"text": "\n".join(lines), "masked": float((x == mask).double().mean()),
            "changed": changed}


def unmasking_view(step: int = 0, frames=None, alphabet: str = "ab ", width: int = 64,
                   ax=None) -> dict:
    """Lesson 9's slider: :func:`frame_summary` of frame ``step`` and, in ``fig``, the whole chain
    as an image (rows: steps; columns: positions; dark = still masked) with the row ``step``
    marked, beside the fraction masked against the step."""
    out = frame_summary(step, frames, alphabet, width)
    frames = DEMO_FRAMES if frames is None else torch.as_tensor(frames)
    masked = (frames == len(alphabet)).double()
    if ax is None:
        fig, ax = figure()
    else:
        fig = ax.figure
    ax.imshow(masked.numpy(), aspect="auto", cmap="Greys", vmin=0, vmax=1.5,
              interpolation="nearest")
    ax.axhline(int(step), color=PALETTE[1], lw=2)
    ax.set_xlabel("position i")
    ax.set_ylabel("reverse step (0 = all MASK)")
    ax.set_title(f"step {int(step)}: {out['masked']:.0%} masked, {out['changed']} positions "
                 f"revealed in this step", fontsize=9)
    return {**out, "fig": fig}


WIDGETS["unmasking_view"] = (unmasking_view, {"step": (0, len(DEMO_FRAMES) - 1)})
__all__ += ["DEMO_FRAMES", "frame_summary", "unmasking_view"]
