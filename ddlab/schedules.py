"""Noise schedules: how fast the forward chain runs as time goes from 0 to 1 (lesson 1).

The forward chain has generator ``sigma(t) Q``; all that matters for the marginals is the total
noise ``sigma_bar(t) = int_0^t sigma(s) ds``, since ``p_t = expm(sigma_bar(t) Q) p_0``.
Each schedule gives ``sigma(t)``, ``sigma_bar(t)`` and the inverse map ``t_of(sigma_bar)``
(used to place the jumps of a Gillespie path on the clock of t).
Inputs may be Python numbers, numpy arrays or tensors; the output is a tensor (float64 unless a
floating tensor came in).

Masking schedules (lesson 10) are the same objects seen from absorbing noise:
``alpha_t = exp(-sigma_bar(t))`` is the probability that a token is still clean, and MD4 (Shi et
al. 2024) lists them by alpha_t: linear (``LogLinear``), ``Polynomial``, ``Cosine`` and geometric
(``Geometric``). ``make_schedule(name, eps)`` builds one by name (``MASKING_SCHEDULES``), each
ending at ``sigma_bar(1) = -log eps``.
"""

from __future__ import annotations

import math

import torch

from ._checks import as_real, check_sigma_bar, check_time


class MaskingSchedule:
    """A masking schedule given by its masked fraction f(t): ``alpha_t = 1 - (1 - eps) f(t)`` (lesson 10).

    ``alpha_t = exp(-sigma_bar(t))`` is the probability that a token is still clean at time t
    under absorbing noise (MDLM's and MD4's notation), so ``sigma_bar(t) = -log(1 - (1 - eps)
    f(t))``. Every subclass has f(0) = 0 and f(1) = 1, hence ``sigma_bar(0) = 0`` and the same
    finite end ``sigma_bar(1) = -log eps`` as LogLinear: the one eps floor (a fraction eps of
    tokens left clean at t = 1) applies to all of them, and the continuous-time ELBO, which
    depends on a schedule only through its endpoints (lesson 10), is the same for all of them.
    A subclass gives ``_f(t)``, its derivative ``_df(t)`` and its inverse ``_f_inv(u, sigma_bar)``,
    and may override ``_alpha`` and ``sigma_bar`` where ``1 - (1 - eps) f`` cancels (Cosine).
    """

    def __init__(self, eps: float = 1e-3):
        self.eps = as_real(eps, f"{type(self).__name__}(eps): eps", 0.0, 1.0)

    def alpha(self, t) -> torch.Tensor:
        """``alpha_t = exp(-sigma_bar(t))``, the probability that a token is still clean."""
        return self._alpha(check_time(t))

    def sigma_bar(self, t) -> torch.Tensor:
        t = check_time(t)
        return -torch.log1p(-(1 - self.eps) * self._f(t))

    def sigma(self, t) -> torch.Tensor:
        t = check_time(t)
        return (1 - self.eps) * self._df(t) / self._alpha(t)

    def _alpha(self, t):
        return 1 - (1 - self.eps) * self._f(t)

    def t_of(self, sigma_bar) -> torch.Tensor:
        """The time t at which sigma_bar(t) equals the given value (inverse of sigma_bar)."""
        sb = self._check_range(sigma_bar)
        # the masked fraction f = (1 - alpha) / (1 - eps); the clamp only absorbs rounding at
        # sigma_bar(1), which _check_range allows to exceed -log eps by a relative 1e-12
        u = (-torch.expm1(-sb) / (1 - self.eps)).clamp(0, 1)
        return self._f_inv(u, sb)

    def _check_range(self, sigma_bar):
        sb = check_sigma_bar(sigma_bar)
        top = -math.log(self.eps)
        if sb.numel() and (sb > top * (1 + 1e-12)).any():
            raise ValueError(f"sigma_bar = {sb.max().item():.6g} exceeds this schedule's "
                             f"sigma_bar(1) = {top:.6g}")
        return sb


class LogLinear(MaskingSchedule):
    """``sigma_bar(t) = -log(1 - (1 - eps) t)``, SEDD's and MDLM's schedule (lesson 1).

    Under absorbing noise a token is still clean at time t with probability
    ``exp(-sigma_bar(t)) = 1 - (1 - eps) t``: masking proceeds linearly in t, and at t = 1 a
    fraction eps of tokens is left unmasked (sigma_bar(1) = -log eps, finite). MD4 calls it the
    linear masking schedule (lesson 10).
    """

    def __repr__(self):
        return f"LogLinear(eps={self.eps:g})"

    def _f(self, t):
        return t

    def _df(self, t):
        return torch.ones_like(t)

    def _f_inv(self, u, sb):
        return u


class Polynomial(MaskingSchedule):
    """``alpha_t = 1 - (1 - eps) t^k``, MD4's polynomial masking schedule (lesson 10).

    k = 1 is LogLinear; k > 1 masks late (few masks for most of [0, 1], then a rush near t = 1),
    k < 1 masks early. ``sigma(t) = (1 - eps) k t^(k-1) / alpha_t`` is infinite at t = 0 for
    k < 1 and 0 there for k > 1.
    """

    def __init__(self, k: float = 2.0, eps: float = 1e-3):
        super().__init__(eps)
        self.k = as_real(k, "Polynomial(k): the exponent k", 0.0)

    def __repr__(self):
        return f"Polynomial(k={self.k:g}, eps={self.eps:g})"

    def _f(self, t):
        return t ** self.k

    def _df(self, t):
        if self.k == 1:
            return torch.ones_like(t)
        return self.k * t ** (self.k - 1)

    def _f_inv(self, u, sb):
        return u ** (1 / self.k)


class Cosine(MaskingSchedule):
    """``alpha_t = 1 - (1 - eps) cos(pi/2 (1 - t))``, MD4's cosine masking schedule (lesson 10).

    The masked fraction ``f(t) = sin(pi t / 2)`` rises fast at first (slope pi/2 at t = 0) and
    flattens at t = 1, where ``sigma(1) = 0``: the last stretch of time adds almost no masks.
    """

    def __repr__(self):
        return f"Cosine(eps={self.eps:g})"

    def _f(self, t):
        return torch.sin(math.pi / 2 * t)

    def _df(self, t):
        # sin(pi/2 (1 - t)) rather than cos(pi/2 t): exactly 0 at t = 1, where float32
        # cos(pi/2) = -4e-8 would make sigma(1) negative
        return math.pi / 2 * torch.sin(math.pi / 2 * (1 - t))

    def _alpha(self, t):
        # near t = 1: eps + (1 - eps)(1 - f) with 1 - f = 2 sin^2(pi (1 - t) / 4), no cancellation
        late = self.eps + (1 - self.eps) * 2 * torch.sin(math.pi / 4 * (1 - t)) ** 2
        return torch.where(t < 0.5, 1 - (1 - self.eps) * self._f(t), late)

    def sigma_bar(self, t) -> torch.Tensor:
        t = check_time(t)
        # log1p near t = 0 (sigma_bar ~ pi t / 2 keeps its relative accuracy), -log alpha near
        # t = 1 (where 1 - (1 - eps) f cancels down to eps)
        return torch.where(t < 0.5, -torch.log1p(-(1 - self.eps) * self._f(t)),
                           -torch.log(self._alpha(t)))

    def _f_inv(self, u, sb):
        # near t = 1, asin(u) loses half the digits (its slope is infinite at u = 1); there
        # 1 - f = 2 sin^2(pi (1 - t) / 4) is inverted from (alpha - eps) / (1 - eps) instead
        one_minus_u = ((torch.exp(-sb) - self.eps) / (1 - self.eps)).clamp(0, 1)
        near_one = 1 - 4 / math.pi * torch.asin(torch.sqrt(one_minus_u / 2))
        return torch.where(u > 0.5, near_one, 2 / math.pi * torch.asin(u))


class Geometric:
    """``sigma_bar(t) = sigma_min^(1-t) sigma_max^t``, SEDD's schedule for uniform noise (lesson 1).

    Note sigma_bar(0) = sigma_min > 0: the chain starts very slightly noised, which keeps the
    ratios p_t(y)/p_t(x) finite at t = 0.
    """

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0):
        sigma_min = as_real(sigma_min, "Geometric: sigma_min", 0.0)
        sigma_max = as_real(sigma_max, "Geometric: sigma_max", 0.0)
        if not sigma_min < sigma_max:
            raise ValueError(f"Geometric needs 0 < sigma_min < sigma_max < inf, got "
                             f"sigma_min = {sigma_min!r}, sigma_max = {sigma_max!r}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def __repr__(self):
        return f"Geometric(sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g})"

    def alpha(self, t) -> torch.Tensor:
        """``alpha_t = exp(-sigma_bar(t))``: MD4's geometric masking schedule (lesson 10)."""
        return torch.exp(-self.sigma_bar(t))

    def sigma_bar(self, t) -> torch.Tensor:
        t = check_time(t)
        return self.sigma_min ** (1 - t) * self.sigma_max ** t

    def sigma(self, t) -> torch.Tensor:
        return self.sigma_bar(t) * math.log(self.sigma_max / self.sigma_min)

    def t_of(self, sigma_bar) -> torch.Tensor:
        """The time t at which sigma_bar(t) equals the given value (inverse of sigma_bar)."""
        sb = check_sigma_bar(sigma_bar)
        if sb.numel() and ((sb < self.sigma_min * (1 - 1e-12)) | (sb > self.sigma_max * (1 + 1e-12))).any():
            raise ValueError(f"sigma_bar must lie in [{self.sigma_min:g}, {self.sigma_max:g}] for "
                             f"this schedule, got values from {sb.min().item():.6g} to {sb.max().item():.6g}")
        return torch.log(sb / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


MASKING_SCHEDULES = ("linear", "cosine", "polynomial", "geometric")


def make_schedule(name: str, eps: float = 1e-3, **params):
    """A masking schedule by name, all ending at ``sigma_bar(1) = -log eps`` (lesson 10).

    ``name`` is one of ``MASKING_SCHEDULES`` (``"loglinear"`` is accepted for ``"linear"``):

    * ``"linear"``: ``LogLinear(eps)``, ``alpha_t = 1 - (1 - eps) t``;
    * ``"cosine"``: ``Cosine(eps)``, ``alpha_t = 1 - (1 - eps) cos(pi/2 (1 - t))``;
    * ``"polynomial"``: ``Polynomial(k, eps)``, ``alpha_t = 1 - (1 - eps) t^k`` (``k=2`` by default);
    * ``"geometric"``: ``Geometric(sigma_min, -log eps)``, ``alpha_t = exp(-sigma_min^(1-t)
      sigma_max^t)`` (``sigma_min=1e-4`` by default); unlike the others it starts at
      ``sigma_bar(0) = sigma_min > 0``, so its bound from t = 0 misses the sliver [0, sigma_min].

    The one switch a text configuration needs to select a schedule by name. Unknown names or
    parameters raise ValueError listing the valid ones.
    """
    key = "linear" if name == "loglinear" else name
    allowed = {"linear": (), "cosine": (), "polynomial": ("k",), "geometric": ("sigma_min",)}
    if key not in allowed:
        raise ValueError(f"unknown masking schedule {name!r}; valid names: "
                         f"{', '.join(MASKING_SCHEDULES)}")
    extra = sorted(set(params) - set(allowed[key]))
    if extra:
        valid = ", ".join(allowed[key]) or "none"
        raise ValueError(f"schedule {key!r} takes no parameter {extra[0]!r} (its parameters: {valid})")
    eps = as_real(eps, f"make_schedule({key!r}): eps", 0.0, 1.0)
    if key == "linear":
        return LogLinear(eps)
    if key == "cosine":
        return Cosine(eps)
    if key == "polynomial":
        return Polynomial(params.get("k", 2.0), eps)
    return Geometric(params.get("sigma_min", 1e-4), -math.log(eps))


__all__ = ["MaskingSchedule", "LogLinear", "Polynomial", "Cosine", "Geometric",
           "MASKING_SCHEDULES", "make_schedule"]
