"""Noise schedules: how fast the forward chain runs as time goes from 0 to 1 (lesson 1).

The forward chain has generator ``sigma(t) Q``; all that matters for the marginals is the total
noise ``sigma_bar(t) = int_0^t sigma(s) ds``, since ``p_t = expm(sigma_bar(t) Q) p_0``.
Each schedule gives ``sigma(t)``, ``sigma_bar(t)`` and the inverse map ``t_of(sigma_bar)``
(used to place the jumps of a Gillespie path on the clock of t).
Inputs may be Python numbers, numpy arrays or tensors; the output is a tensor (float64 unless a
floating tensor came in).
"""

from __future__ import annotations

import math

import torch

from ._checks import as_real, check_sigma_bar, check_time


class LogLinear:
    """``sigma_bar(t) = -log(1 - (1 - eps) t)``, SEDD's and MDLM's schedule (lesson 1).

    Under absorbing noise a token is still clean at time t with probability
    ``exp(-sigma_bar(t)) = 1 - (1 - eps) t``: masking proceeds linearly in t, and at t = 1 a
    fraction eps of tokens is left unmasked (sigma_bar(1) = -log eps, finite).
    """

    def __init__(self, eps: float = 1e-3):
        self.eps = as_real(eps, "LogLinear(eps): eps", 0.0, 1.0)

    def __repr__(self):
        return f"LogLinear(eps={self.eps:g})"

    def sigma_bar(self, t) -> torch.Tensor:
        t = check_time(t)
        return -torch.log1p(-(1 - self.eps) * t)

    def sigma(self, t) -> torch.Tensor:
        t = check_time(t)
        return (1 - self.eps) / (1 - (1 - self.eps) * t)

    def t_of(self, sigma_bar) -> torch.Tensor:
        """The time t at which sigma_bar(t) equals the given value (inverse of sigma_bar)."""
        sb = self._check_range(sigma_bar)
        return -torch.expm1(-sb) / (1 - self.eps)

    def _check_range(self, sigma_bar):
        sb = check_sigma_bar(sigma_bar)
        top = -math.log(self.eps)
        if sb.numel() and (sb > top * (1 + 1e-12)).any():
            raise ValueError(f"sigma_bar = {sb.max().item():.6g} exceeds this schedule's "
                             f"sigma_bar(1) = {top:.6g}")
        return sb


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


__all__ = ["LogLinear", "Geometric"]
