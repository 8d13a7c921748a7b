"""Toy score networks on n states, trained with denoising score entropy (lesson 4).

Two parametrisations of the log concrete score ``log s_theta(x, t)_y``:

* :class:`TableScore`, a free table of log-ratios on a grid of times (linear in t between
  knots), the most flexible model there is on a toy;
* :class:`MLPScore`, a small time-conditioned MLP on one-hot tokens, the shape of the real
  network of lesson 9 in miniature.

Both expose the agreed interface: ``log_score(x_t, sigma_bar) -> (B, d, n)`` and
``score_fn(x_t, sigma_bar)`` (ratios), with x_t an int64 tensor (B, d) and sigma_bar of shape
(B,) or a scalar. Two things are built in rather than learned:

* the entry at the current token is fixed to log 1 = 0 (it is a ratio p(x)/p(x)); and
* a *baseline* is added to the network output: the exact log-ratios of a uniform p0
  (``baseline_log_score``). For absorbing noise it is ``-log(expm1(sigma_bar)) - log(n - 1)`` at
  a masked token, which carries the whole time dependence of the true ratio
  ``p_t(y) / p_t(MASK) = p0(y) / expm1(sigma_bar)``; the network only has to learn the
  time-free ``log((n - 1) p0(y))``. For uniform noise the baseline is 0. Out of an unmasked
  token under absorbing noise nothing is learned: those ratios carry zero weight in every loss
  and are set to 1.

``train_toy`` fits either model by Adam on Monte Carlo DWDSE (or, for lesson 3's comparison,
the l2 loss DCSM) and reports the exact expected DWDSE of the model against the exact floor.
"""

from __future__ import annotations

import math
import time
from functools import partial

import torch
from torch import nn

from ._checks import (as_float, as_rate_matrix, as_tokens, check_distribution,
                      check_sigma_bar)
from ._numerics import log_expm1
from .losses import dcsm, dwdse, dwdse_floor, expected_dwdse, stratified_times
from .rate_matrices import Absorbing


def baseline_log_score(rm, x_t, sigma_bar) -> torch.Tensor:
    """Exact log-ratios under a uniform p0: the part of log s_theta the toy models do not learn.

    Shape ``x_t.shape + (n,)``, dtype of ``sigma_bar`` if floating (else float64). For
    Absorbing: ``-log(expm1(sigma_bar)) - log(n - 1)`` at masked tokens, 0 elsewhere; for any
    other rate matrix: 0 (exact for Uniform, whose uniform-p0 ratios are all 1). Lesson 4.
    """
    rm = as_rate_matrix(rm)
    x_t = as_tokens(x_t, rm.n, "x_t")
    sb = check_sigma_bar(sigma_bar)
    out = torch.zeros(*x_t.shape, rm.n, dtype=sb.dtype)
    if isinstance(rm, Absorbing):
        sb = torch.broadcast_to(sb, x_t.shape)
        masked_value = -log_expm1(sb) - math.log(rm.n - 1)
        out = torch.where((x_t == rm.mask)[..., None], masked_value[..., None], out)
    return out


class ToyScoreModel(nn.Module):
    """Shared plumbing: inputs, baseline, the fixed zero at the current token (lesson 4).

    Subclasses implement ``_residual(x_t, t) -> (B, d, n)``, with ``t = schedule.t_of(sigma_bar)``
    in [0, 1] as the time input (a bounded, schedule-independent clock).
    """

    def __init__(self, rm, schedule, d: int = 1):
        super().__init__()
        self.rm = as_rate_matrix(rm)
        self.schedule = schedule
        self.n = self.rm.n
        if not (isinstance(d, int) and d >= 1):
            raise ValueError(f"d must be a positive integer, got {d!r}")
        self.d = d
        # the range of sigma_bar the schedule covers: inputs are clamped into it for t_of
        self._sb_lo = float(schedule.sigma_bar(0.0))
        self._sb_hi = float(schedule.sigma_bar(1.0))

    @property
    def dtype(self):
        return next(self.parameters()).dtype

    def _inputs(self, x_t, sigma_bar):
        x_t = as_tokens(x_t, self.n, "x_t")
        if x_t.dim() == 1 and self.d == 1:
            x_t = x_t[:, None]
        if x_t.dim() != 2 or x_t.shape[1] != self.d:
            raise ValueError(f"x_t must have shape (B, {self.d}), got {tuple(x_t.shape)}")
        sb = check_sigma_bar(sigma_bar, dtype=torch.float64)
        if sb.dim() > 1 or (sb.dim() == 1 and sb.shape[0] not in (1, x_t.shape[0])):
            raise ValueError(f"sigma_bar must be a scalar or of shape ({x_t.shape[0]},), "
                             f"got shape {tuple(sb.shape)}")
        sb = torch.broadcast_to(sb, x_t.shape[:1])
        t = self.schedule.t_of(sb.clamp(self._sb_lo, self._sb_hi))
        return x_t, sb, t.to(self.dtype)

    def log_score(self, x_t, sigma_bar) -> torch.Tensor:
        """``log s_theta(x_t)``, shape (B, d, n), in the model's dtype; entry x_t itself is 0."""
        x_t, sb, t = self._inputs(x_t, sigma_bar)
        if isinstance(self.rm, Absorbing) and (sb == 0).any():
            raise ValueError("sigma_bar must be > 0 for an absorbing model: at sigma_bar = 0 "
                             "nothing is masked and the ratios out of MASK are infinite")
        out = self._residual(x_t, t)
        if isinstance(self.rm, Absorbing):
            # out of an unmasked token nothing is learned (zero weight): ratios 1
            out = torch.where((x_t == self.rm.mask)[..., None], out, torch.zeros_like(out))
        out = out + baseline_log_score(self.rm, x_t, sb[:, None]).to(out.dtype)
        return out.scatter(-1, x_t[..., None], 0.0)

    def forward(self, x_t, sigma_bar):
        return self.log_score(x_t, sigma_bar)

    def score_fn(self, x_t, sigma_bar) -> torch.Tensor:
        """Ratios ``exp(log_score)``, the agreed score-function signature (B, d, n)."""
        return torch.exp(self.log_score(x_t, sigma_bar))


class TableScore(ToyScoreModel):
    """A free table of log-ratios ``theta[k, i, x, y]`` at ``knots`` times (lesson 4).

    Between the knots ``t_k = k / (knots - 1)`` the log-ratio is linear in t. Position i only
    sees its own token x_i (for d > 1 this is exact only when p0 is a product). Starts at the
    baseline (all-zero table).
    """

    def __init__(self, rm, schedule, knots: int = 16, d: int = 1, dtype=torch.float32):
        super().__init__(rm, schedule, d)
        if not (isinstance(knots, int) and knots >= 2):
            raise ValueError(f"knots must be an integer >= 2, got {knots!r}")
        self.knots = knots
        self.table = nn.Parameter(torch.zeros(knots, d, self.n, self.n, dtype=dtype))

    def _residual(self, x_t, t):
        pos = t * (self.knots - 1)
        k = pos.floor().long().clamp(0, self.knots - 2)
        frac = (pos - k.to(pos.dtype))[:, None, None]
        i = torch.arange(self.d)[None, :]
        lo = self.table[k[:, None], i, x_t]          # (B, d, n)
        hi = self.table[k[:, None] + 1, i, x_t]
        return (1 - frac) * lo + frac * hi


class MLPScore(ToyScoreModel):
    """A time-conditioned MLP: one-hot tokens and Fourier features of t -> (d, n) log-ratios.

    ``hidden`` units, ``layers`` hidden layers with SiLU; the time features are
    ``cos(pi k t)`` and ``sin(pi k t)`` for k = 1..``time_features``. The last layer starts at
    zero, so an untrained model is the baseline. Lesson 4.
    """

    def __init__(self, rm, schedule, d: int = 1, hidden: int = 128, layers: int = 2,
                 time_features: int = 8, dtype=torch.float32):
        super().__init__(rm, schedule, d)
        self.freqs = nn.Parameter(math.pi * torch.arange(1, time_features + 1, dtype=dtype),
                                  requires_grad=False)
        dims = [d * self.n + 2 * time_features] + [hidden] * layers
        mods = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b, dtype=dtype), nn.SiLU()]
        last = nn.Linear(dims[-1], d * self.n, dtype=dtype)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*mods, last)

    def _residual(self, x_t, t):
        onehot = nn.functional.one_hot(x_t, self.n).to(self.dtype).reshape(x_t.shape[0], -1)
        ft = t[:, None] * self.freqs
        h = torch.cat([onehot, torch.cos(ft), torch.sin(ft)], -1)
        return self.net(h).reshape(-1, self.d, self.n)


def bimodal(n: int, absorbing: bool = False, centers=(0.25, 0.72), width: float = 0.08,
            weights=(0.6, 0.4)) -> torch.Tensor:
    """A two-bump distribution on the states of a toy, float64 of shape (n,) (lessons 3, 4).

    A mixture of two discretised Gaussians placed at fractions ``centers`` of the state range.
    With ``absorbing=True`` the last state (MASK) gets probability 0 and the bumps live on
    0..n-2.
    """
    m = n - 1 if absorbing else n
    if m < 2:
        raise ValueError(f"bimodal needs at least 2 real states, got n = {n} (absorbing={absorbing})")
    u = torch.arange(m, dtype=torch.float64) / (m - 1)
    p = sum(w * torch.exp(-0.5 * ((u - c) / width) ** 2) for c, w in zip(centers, weights))
    p = p / p.sum()
    return torch.cat([p, torch.zeros(n - m, dtype=torch.float64)])


def train_toy(rm, schedule, model, p0, steps: int, batch: int, lr: float, generator=None,
              progress: bool = True, loss: str = "dwdse", t_min: float = 1e-5,
              eval_every: int | None = None, num_t: int = 64) -> dict:
    """Fit ``model`` by Adam on Monte Carlo ``loss`` over ``steps`` batches (lesson 4).

    Each step draws ``x0 ~ p0`` (shape (n,), or (n,)*d for a model with d > 1), stratified
    times ``t`` in [t_min, 1], ``x_t ~ p(. | x0)`` with ``rm.sample_transition``, and minimises
    the batch mean of ``sum_i sigma(t) DSE_i`` ("dwdse") or ``sum_i sigma(t) DCSM_i`` ("dcsm",
    the l2 baseline of lesson 3). The learning rate decays as a cosine to lr/10. Training runs
    on one CPU thread (restored afterwards): the toy tensors are far too small for threads to
    pay for their synchronisation, and on a shared 2-core machine they slow it down ~4x.

    Returns a history dict: "loss" (the Monte Carlo loss of every step; its expectation is the
    integral over [t_min, 1] divided by 1 - t_min), "eval_step" and
    "eval_loss" (the exact expected DWDSE of the model, in nats per token, by enumeration over
    x0 and x_t and Gauss-Legendre in t with ``num_t`` nodes; only for d = 1), "floor" (the same
    at the true scores) and "seconds" (training time, evaluation excluded).
    """
    from tqdm.auto import tqdm

    rm = as_rate_matrix(rm)
    if loss not in ("dwdse", "dcsm"):
        raise ValueError(f"loss must be 'dwdse' or 'dcsm', got {loss!r}")
    for name, v in (("steps", steps), ("batch", batch)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if model.n != rm.n:
        raise ValueError(f"the model has n = {model.n} states but rm has n = {rm.n}")
    d = model.d
    p0 = as_float(p0, torch.float64)
    if tuple(p0.shape) != (rm.n,) * d:
        raise ValueError(f"p0 must have shape {(rm.n,) * d} for a model with d = {d}, "
                         f"got {tuple(p0.shape)}")
    check_distribution(p0.reshape(-1), None, "p0")
    if not 0 <= t_min < 1:
        raise ValueError(f"t_min must lie in [0, 1), got {t_min!r}")
    if eval_every is None:
        eval_every = max(1, steps // 10)

    def exact_eval():
        with torch.no_grad():
            return float(expected_dwdse(rm, schedule, model.log_score, p0, num_t=num_t,
                                        t_min=t_min, log=True))

    history = {"loss": [], "eval_step": [], "eval_loss": [], "floor": None, "seconds": 0.0}
    if d == 1:
        history["floor"] = float(dwdse_floor(rm, schedule, p0, num_t=num_t, t_min=t_min))
        history["eval_step"].append(0)
        history["eval_loss"].append(exact_eval())

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.1 + 0.45 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    flat_p0 = p0.reshape(-1)
    strides = torch.tensor([rm.n ** (d - 1 - i) for i in range(d)])
    # lesson 3's l2 baseline goes through the same estimator with DCSM in place of score entropy
    divergence = None if loss == "dwdse" else partial(dcsm, rm)
    bar = tqdm(range(1, steps + 1), disable=not progress, desc=f"train {loss}", leave=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for step in bar:
            idx = torch.multinomial(flat_p0, batch, replacement=True, generator=generator)
            x0 = (idx[:, None] // strides) % rm.n                                   # (B, d)
            t = stratified_times(batch, t_min, generator=generator)
            value = dwdse(rm, model.log_score, x0, schedule.sigma_bar(t), schedule.sigma(t),
                          generator=generator, divergence=divergence).mean()
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            history["loss"].append(value.item())
            if progress and step % 50 == 0:
                bar.set_postfix(loss=f"{value.item():.4f}")
            if d == 1 and (step % eval_every == 0 or step == steps):
                history["seconds"] += time.perf_counter() - start
                history["eval_step"].append(step)
                history["eval_loss"].append(exact_eval())
                start = time.perf_counter()
        history["seconds"] += time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return history


def ratios_at(model, p0, t, x=None):
    """Exact and learned ratios out of one state at time t, two float64 tensors (lesson 4).

    ``x`` defaults to MASK for an absorbing model (the only state with outgoing reverse rates)
    and to the mode of ``p0`` otherwise. Returns ``(exact, learned)`` over y = 0..n-1, with
    ``exact[y] = p_t(y) / p_t(x)`` from ``losses.true_score_table``.
    """
    from .losses import true_score_table
    p0 = check_distribution(p0, model.n, "p0").to(torch.float64)
    if x is None:
        x = model.rm.mask if isinstance(model.rm, Absorbing) else int(p0.argmax())
    x = int(as_tokens(x, model.n, "x"))
    sb = model.schedule.sigma_bar(t)
    if sb.dim() != 0:
        raise ValueError(f"t must be a single time, got shape {tuple(sb.shape)}")
    exact = true_score_table(model.rm, p0, sb)[x]
    with torch.no_grad():
        learned = model.score_fn(torch.tensor([[x]]), sb)[0, 0].to(torch.float64)
    return exact, learned


def plot_ratios(model, p0, times, x=None, ax=None):
    """Draw exact ratios (lines) and learned ones (dots) out of one state at several times.

    The figure of lesson 4 and its slider. Under absorbing noise MASK itself is left out (its
    entry is the fixed ratio 1). Returns ``(exact, learned)`` of shape (len(times), n).
    """
    from .plotting import figure
    if ax is None:
        _, ax = figure()
    absorbing = isinstance(model.rm, Absorbing)
    if x is None:
        p0 = check_distribution(p0, model.n, "p0")
        x = model.rm.mask if absorbing else int(p0.argmax())
    ys = torch.arange(model.n - 1 if absorbing else model.n)
    exact, learned = [], []
    for i, t in enumerate(times):
        e, m = ratios_at(model, p0, t, x)
        ax.plot(ys, e[ys], color=f"C{i}", label=f"exact, t = {float(t):g}")
        ax.plot(ys, m[ys], "o", ms=3, color=f"C{i}")
        exact.append(e)
        learned.append(m)
    name = r"\mathrm{MASK}" if absorbing and x == model.rm.mask else str(x)
    ax.set(yscale="log", xlabel="token y", ylabel=f"ratio $s({name})_y$")
    ax.legend(fontsize=7)
    return torch.stack(exact), torch.stack(learned)


__all__ = ["baseline_log_score", "ToyScoreModel", "TableScore", "MLPScore", "bimodal",
           "train_toy", "ratios_at", "plot_ratios"]
