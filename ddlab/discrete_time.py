"""D3PM's discrete-time view of masked diffusion, computed exactly on a toy (lesson 10).

D3PM (Austin et al. 2021) runs the absorbing chain in T steps: at times ``t_k = k / T`` a token
is still clean with probability ``alpha_k = exp(-sigma_bar(t_k))``, and between steps k - 1 and
k a clean token is masked with probability ``1 - alpha_k / alpha_{k-1}``. Its variational bound
on ``-log p_theta(x0)`` is a sum of per-step KL divergences,

    L_T(x0) = sum_{k=1}^T E_{x_k ~ q(. | x0)} KL( q(x_{k-1} | x_k, x0) || p_theta(x_{k-1} | x_k) )

(plus the prior term ``KL(q(x_T | x0) || p(x_T))``, which for an all-MASK base is infinite when
``alpha_T = eps > 0`` and which MDLM's continuous bound omits as well; it is left out here too).
Both distributions in the KL factorise over positions. At a masked position of x_k the
posterior keeps MASK with probability ``(1 - alpha_{k-1}) / (1 - alpha_k)`` and otherwise
reveals x0_i; the model does the same with x0_i drawn from its denoiser (MDLM's ancestral step,
``ddlab.mdlm.mdlm_step_probs``). The MASK branches agree, so each KL is
``(alpha_{k-1} - alpha_k) / (1 - alpha_k) * (-log p_theta(x0_i | x_k))``: L_T is a Riemann sum
of MDLM's integral ``int CE(alpha) / (1 - alpha) d alpha``, and tends to it as T grows
(``ddlab.mdlm.exact_mdlm_bound`` with ``t_min = 0``).
"""

from __future__ import annotations

import torch

from ._checks import as_batch, as_int, check_schedule
from ._numerics import kl_rows
from .mdlm import masking_patterns, mdlm_step_probs


def step_alphas(schedule, T: int) -> torch.Tensor:
    """``alpha_k = exp(-sigma_bar(k / T))`` for k = 0..T, float64 (T + 1,) (lesson 10)."""
    check_schedule(schedule)
    T = as_int(T, "T (the number of discrete steps)", 1)
    t = torch.linspace(0.0, 1.0, T + 1, dtype=torch.float64)
    return torch.exp(-schedule.sigma_bar(t).to(torch.float64))


def discrete_bound(schedule, denoiser_fn, x0, n: int, T: int) -> torch.Tensor:
    """D3PM's T-step bound ``L_T(x0)`` without its prior term, exactly, nats (B,) (lesson 10).

    Every expectation is a sum over the 2^d masking patterns of x0 at each step (no Monte
    Carlo), and each KL is computed from the two step distributions themselves, the posterior
    ``q(x_{k-1} | x_k, x0)`` (MDLM's step with the one-hot x0 as denoiser) and the model's
    ``p_theta(x_{k-1} | x_k)`` (its step with ``denoiser_fn(x_k, sigma_bar_k)``), not from the
    closed form of the module docstring, which the lesson derives and the tests check.
    ``x0`` is (B, d) without MASK; the absorbing chain has n states, MASK = n - 1. A schedule
    with ``sigma_bar(0) > 0`` (Geometric) starts the chain at ``alpha_0 < 1``. One denoiser
    call on T * B * 2^d sequences.
    """
    n = as_int(n, "n", 2)
    x0 = as_batch(x0, n, "x0")
    if (x0 == n - 1).any():
        raise ValueError("x0 holds the MASK token; clean data never contains MASK")
    alpha = step_alphas(schedule, T)
    sb = -torch.log(alpha)
    B, d = x0.shape
    masks = masking_patterns(d)                                             # (P, d)
    P, T = masks.shape[0], alpha.shape[0] - 1
    k_masked = masks.sum(-1).to(torch.float64)
    # q(x_k | x0): each token masked with probability 1 - alpha_k (alpha_k < 1 for k >= 1)
    one_minus = -torch.expm1(-sb[1:])
    if (one_minus <= 0).any():
        raise ValueError("the schedule leaves sigma_bar(t_k) = 0 at a step k >= 1: that step "
                         "masks nothing and its posterior is undefined")
    prob = torch.exp(k_masked * torch.log(one_minus)[:, None] - (d - k_masked) * sb[1:, None])
    x_k = torch.where(masks[None], n - 1, x0[:, None, :])                   # (B, P, d)
    rows_x = x_k[None].expand(T, B, P, d).reshape(-1, d)
    rows_x0 = x0[None, :, None].expand(T, B, P, d).reshape(-1, d)
    sb_k = sb[1:, None, None].expand(T, B, P).reshape(-1)
    sb_prev = sb[:-1, None, None].expand(T, B, P).reshape(-1)
    probs = torch.as_tensor(denoiser_fn(rows_x, sb_k)).to(torch.float64)
    model = mdlm_step_probs(probs, rows_x, sb_k, sb_prev)
    onehot = torch.nn.functional.one_hot(rows_x0, n).to(torch.float64)
    posterior = mdlm_step_probs(onehot, rows_x, sb_k, sb_prev)
    kl = kl_rows(posterior, model).sum(-1).reshape(T, B, P)
    if not torch.isfinite(kl).all():
        raise ValueError("the denoiser gives probability 0 to a true token at a masked "
                         "position: the D3PM bound is infinite")
    return (prob[:, None, :] * kl).sum((0, 2))


__all__ = ["step_alphas", "discrete_bound"]
