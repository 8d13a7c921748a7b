"""Rate matrices (generators) of continuous-time Markov chains, dense and structured.

Convention (docs/design.md): ``Q[y, x]`` is the rate of jumping from x to y, off-diagonals are >= 0 and
every column sums to zero. Distributions are column vectors, ``dp/dt = sigma(t) Q p``, and the
transition matrix over a total noise ``sigma_bar`` is ``P = expm(sigma_bar Q)`` with
``P[y, x] = p(x_t = y | x_0 = x)``.

Two worlds use the same objects:

* toy spaces, where ``.Q`` and ``.transition(sigma_bar)`` give the dense n x n matrices
  (lesson 1), and
* batches of token sequences, where the per-token methods below take integer tensors ``x`` of any
  shape ``S`` and return ``S + (n,)`` arrays (lessons 3-5, 7-9 and the text8 model).

The dense :class:`RateMatrix` implements the per-token methods with matrix exponentials; the
structured :class:`Uniform` and :class:`Absorbing` override a handful of primitives with closed
forms that cost O(n) per token and never build an n x n matrix (the dense ``Q`` of a structured
matrix is built once, at construction, for the toy views and for validation; per-token methods
never touch it). The sampler steps (``reverse_rates``, ``euler_probs``, ``tweedie_probs``) are
written once, here, in terms of those primitives, so the fast paths and the dense path share one
definition. ``score_entropy`` is written once here too, on ``conditional_ratios``; both structured
subclasses override it with a closed form, for speed only (a training step spends most of its
loss time there), and the tests hold every override against this dense definition.

Per-token primitives (``S`` is the shape of ``x``):

=========================================  ===============================================
``transition_from(x0, sigma_bar)``          ``P[:, x0]``, the law of x_t given x_0     S+(n,)
``transition_to(x, sigma_bar)``             ``P[x, :]``, p(x_t = x | x_0 = y) over y    S+(n,)
``rates_into(x)``                           ``Q[x, :]``, forward rates y -> x           S+(n,)
``apply_inverse_transition(v, dsigma)``     ``expm(-dsigma Q) v`` for each token's v    S+(n,)
``sample_transition(x0, sigma_bar)``        a draw of x_t given x_0                     S
=========================================  ===============================================
"""

from __future__ import annotations

import numpy as np
import torch

from ._numerics import K as _K
from ._checks import (as_float, as_tokens, broadcast, check_generator, check_n, check_shape,
                      check_sigma_bar, value_checks_enabled)


class RateMatrix:
    """A general generator ``Q`` of a CTMC on states 0..n-1 (introduced in lesson 1).

    ``Q`` is validated: square, finite, off-diagonals >= 0, and each column summing to zero
    within ``atol * (1 + max|Q|)`` (default ``atol = 1e-8``). It is stored in float64.

    The transition ``expm(sigma_bar Q)`` is computed with ``torch.linalg.matrix_exp`` in float64:
    Q has no special structure here, so there is no closed form, and float64 keeps the
    scaling-and-squaring error small: ~1e-15 for moderate sigma_bar, ~1e-11 at
    sigma_bar * ||Q|| ~ 1e4 (e.g. n = 64 uniform at sigma_bar = 50). A float32 sigma_bar gets the
    float64 result cast to float32.
    Structured subclasses replace this with closed forms.
    """

    def __init__(self, Q, atol: float = 1e-8):
        self._Q = check_generator(Q, atol)
        self.n = self._Q.shape[0]

    # ------------------------------------------------------------------ dense views
    @property
    def Q(self) -> torch.Tensor:
        """The (n, n) generator in float64."""
        return self._Q

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n})"

    def transition(self, sigma_bar) -> torch.Tensor:
        """``expm(sigma_bar Q)``: (n, n) for a scalar sigma_bar, (B, n, n) for shape (B,).

        ``P[y, x] = p(x_t = y | x_0 = x)``; columns sum to one. Lesson 1.
        """
        sb = check_sigma_bar(sigma_bar)
        if sb.dim() > 1:
            raise ValueError(f"sigma_bar must be a scalar or of shape (B,), got shape {tuple(sb.shape)}")
        return self._transition(sb)

    def _transition(self, sb: torch.Tensor) -> torch.Tensor:
        # Always exponentiate in float64, then cast: in float32 the scaling-and-squaring of a
        # large sigma_bar Q (norm ~ 6400 for n = 64, sigma_bar = 50) loses columns' mass by ~4e-3.
        P = torch.linalg.matrix_exp(sb.to(torch.float64)[..., None, None] * self._Q.to(sb.device))
        return P.to(sb.dtype)

    def stationary(self) -> torch.Tensor:
        """The limit distribution pi with Q pi = 0 and sum(pi) = 1 (lesson 1).

        Raises ValueError if the chain has more than one stationary distribution (the limit then
        depends on where it starts).
        """
        # The null space of Q from the SVD; its dimension counts the closed classes.
        U, S, Vh = torch.linalg.svd(self._Q)
        tol = 1e-9 * max(1.0, S.max().item())
        null = (S <= tol).sum().item()
        if null != 1:
            raise ValueError(f"this chain has {null} independent stationary distributions; "
                             f"the limit depends on p0, so use marginal(rm, p0, sigma_bar) with a large sigma_bar")
        v = Vh[-1]
        v = v / v.sum()
        return v.clamp_min(0) / v.clamp_min(0).sum()

    # ------------------------------------------------------------ per-token primitives
    def _per_token_P(self, sb: torch.Tensor) -> torch.Tensor:
        """expm(sb Q) for every entry of sb, computing each distinct value once."""
        flat = sb.reshape(-1)
        uniq, inv = torch.unique(flat, return_inverse=True)
        P = torch.linalg.matrix_exp(uniq.to(torch.float64)[:, None, None] * self._Q.to(uniq.device))
        return P[inv].reshape(*sb.shape, self.n, self.n)

    def transition_from(self, x0, sigma_bar) -> torch.Tensor:
        """``P[:, x0]``: the law of x_t given x_0 = x0, shape S + (n,)."""
        x0, sb = self._tokens_and_noise(x0, sigma_bar, "x0")
        P = self._per_token_P(sb)
        out = torch.take_along_dim(P, x0[..., None, None].expand(*x0.shape, self.n, 1), -1)[..., 0]
        return out.to(sb.dtype)

    def transition_to(self, x, sigma_bar) -> torch.Tensor:
        """``P[x, :]``: p(x_t = x | x_0 = y) as a function of y, shape S + (n,)."""
        x, sb = self._tokens_and_noise(x, sigma_bar)
        P = self._per_token_P(sb)
        out = torch.take_along_dim(P, x[..., None, None].expand(*x.shape, 1, self.n), -2)[..., 0, :]
        return out.to(sb.dtype)

    def rates_into(self, x) -> torch.Tensor:
        """``Q[x, :]``: the forward rate y -> x for every y, shape S + (n,) (float64)."""
        x = as_tokens(x, self.n, "x")
        return self._Q.to(x.device)[x]

    def apply_inverse_transition(self, v, dsigma) -> torch.Tensor:
        """``expm(-dsigma Q) v`` for each token's vector v (shape S + (n,)), as used by Tweedie.

        The inverse transition grows like ``e^{n dsigma}`` (Uniform) or ``e^{dsigma}``
        (Absorbing); where the result overflows float, ValueError says so instead of returning
        inf or NaN.
        """
        v = self._check_vectors(v, "v")
        ds = broadcast(check_sigma_bar(dsigma, "dsigma").to(v.dtype), v.shape[:-1], "dsigma",
                       "the shape of v without its last axis", device=v.device)
        out = self._apply_inverse_transition(v, ds)
        if value_checks_enabled() and not torch.isfinite(out).all():
            worst = ds.max().item() if ds.numel() else float(ds)
            raise ValueError(f"expm(-dsigma Q) v overflows {v.dtype} at dsigma = {worst:.6g}: "
                             f"the inverse transition amplifies by up to e^(n dsigma) "
                             f"(n = {self.n}), beyond what the float type holds")
        return out

    def _apply_inverse_transition(self, v, ds):
        Pinv = self._per_token_P(-ds)   # matrix_exp of -dsigma Q; dsigma was checked >= 0 above
        return (Pinv.to(v.dtype) @ v[..., None])[..., 0]

    def sample_transition(self, x0, sigma_bar, generator=None) -> torch.Tensor:
        """Draw x_t ~ p(x_t | x_0 = x0) for every token, shape S (lesson 1)."""
        probs = self.transition_from(x0, sigma_bar)
        return sample_categorical(probs, generator)

    # --------------------------------------------------- losses and reverse steps
    def score_entropy(self, log_score, x, x0, sigma_bar) -> torch.Tensor:
        """Denoising score entropy per token, shape S (lesson 3).

        ``sum_{y != x} Q[x, y] (s_y - r_y log s_y + K(r_y))`` with ``s = exp(log_score)``,
        ``r_y = p(y | x0) / p(x | x0)`` and ``K(a) = a (log a - 1)``. It is >= 0, and exactly 0
        when s equals the conditional ratio r. ``x`` must be reachable from ``x0`` (p(x | x0) > 0).
        The result has the dtype of ``log_score``. The ratios grow like 1 / sigma_bar at low
        noise; where the loss overflows that dtype (float32 below sigma_bar ~ 1e-38), ValueError
        says so rather than returning inf or NaN (computed in float64 it stays finite).
        """
        args = self._loss_inputs(log_score, x, x0, sigma_bar)
        loss = self._score_entropy(*args)
        if value_checks_enabled() and not torch.isfinite(loss).all():
            sb = args[3]
            raise ValueError(f"the score entropy overflows {loss.dtype} at sigma_bar = "
                             f"{sb[~torch.isfinite(loss)].min().item():.3g}: the conditional "
                             f"ratios ~ 1 / sigma_bar exceed its range; pass log_score in "
                             f"float64 or use a larger sigma_bar")
        return loss

    def _score_entropy(self, log_score, x, x0, sb):
        r = self.conditional_ratios(x, x0, sb).to(log_score.dtype)
        w = self.rates_into(x).to(log_score.dtype)
        w = w.scatter(-1, x[..., None], 0.0)        # the sum runs over y != x
        terms = torch.exp(log_score) - r * log_score + _K(r)
        return (w * torch.where(w > 0, terms, torch.zeros_like(terms))).sum(-1)

    def conditional_ratios(self, x, x0, sigma_bar) -> torch.Tensor:
        """``r_y = p(x_t = y | x0) / p(x_t = x | x0)`` per token, S + (n,), float64 (lesson 3).

        The target of every denoising loss: score entropy, DSE and DCSM. ``x`` must be reachable
        from ``x0`` (p(x | x0) > 0), as a draw of ``sample_transition(x0, sigma_bar)`` is.
        """
        x, sb = self._tokens_and_noise(x, sigma_bar)
        x0 = as_tokens(x0, self.n, "x0")
        if x.shape != x0.shape:
            raise ValueError(f"x has shape {tuple(x.shape)} but x0 has shape {tuple(x0.shape)}")
        p = self.transition_from(x0, sb.to(torch.float64))
        px = torch.gather(p, -1, x[..., None])
        if (px <= 0).any():
            raise ValueError("some x cannot be reached from its x0 (p(x | x0) = 0); x should be a "
                             "sample of rm.sample_transition(x0, sigma_bar)")
        return p / px

    def reverse_rates(self, x, score) -> torch.Tensor:
        """Reverse rates out of x, shape S + (n,) (lesson 2).

        Entry y != x is ``Q[x, y] * score_y``, the rate of jumping x -> y backward in time; entry
        x is minus their sum, so the last axis is the column x of the reverse generator Qbar.
        """
        x = as_tokens(x, self.n, "x")
        score = self._check_vectors(score, "score")
        check_shape(score, tuple(x.shape) + (self.n,), "score")
        rates = self.rates_into(x).to(score.dtype) * score
        # in place on the fresh product: an out-of-place scatter copies all S x n entries again
        rates.scatter_(-1, x[..., None], 0.0)
        return rates.scatter_(-1, x[..., None], -rates.sum(-1, keepdim=True))

    def euler_probs(self, x, score, dsigma) -> torch.Tensor:
        """One Euler (tau-leaping) step's distribution over the next state, S + (n,) (lesson 5).

        ``onehot(x) + dsigma * reverse_rates(x, score)``, with negative entries (a step too large
        for the rates) clipped to zero and the result renormalised.
        """
        rates = self.reverse_rates(x, score)
        ds = _expand_step(dsigma, rates)
        probs = torch.nn.functional.one_hot(as_tokens(x, self.n), self.n).to(rates.dtype) + ds * rates
        return _normalise(probs.clamp_min(0))

    def tweedie_probs(self, x, score, dsigma) -> torch.Tensor:
        """One Tweedie tau-leaping step's distribution over the next state, S + (n,) (lesson 5).

        Proportional to ``(expm(-dsigma Q) s)_y * expm(dsigma Q)[x, y]``: the exact reverse step
        from sigma_bar to sigma_bar - dsigma when s is the true score. Negative entries (from an
        imperfect score) are clipped to zero before renormalising.
        """
        x = as_tokens(x, self.n, "x")
        score = self._check_vectors(score, "score")
        check_shape(score, tuple(x.shape) + (self.n,), "score")
        ds = check_sigma_bar(dsigma, "dsigma")
        ds = broadcast(ds.to(score.dtype), x.shape, "dsigma", device=x.device)
        staggered = self._staggered_score(score, ds)
        probs = staggered * self.transition_to(x, ds).to(score.dtype)
        return _normalise(probs.clamp_min(0))

    def _staggered_score(self, score, ds):
        """``expm(-ds Q) s`` up to a positive factor per token (Tweedie normalises it away)."""
        return self.apply_inverse_transition(score, ds)

    # ------------------------------------------------------------------ helpers
    def _tokens_and_noise(self, x, sigma_bar, name: str = "x", noise: str = "sigma_bar"):
        """Token ids checked against n, and a noise level checked and broadcast to their shape."""
        x = as_tokens(x, self.n, name)
        sb = broadcast(check_sigma_bar(sigma_bar, noise), x.shape, noise, device=x.device)
        return x, sb

    def _check_vectors(self, v, name: str) -> torch.Tensor:
        """Per-token vectors: float, last axis of size n, finite; a ``score`` also >= 0."""
        v = as_float(v)
        if v.dim() == 0 or v.shape[-1] != self.n:
            raise ValueError(f"{name} has shape {tuple(v.shape)}, expected a last axis of size "
                             f"n = {self.n} (one entry per state)")
        if value_checks_enabled():
            if not torch.isfinite(v).all():
                raise ValueError(f"{name} must be finite, got a NaN or infinite entry")
            if name == "score" and (v < 0).any():
                raise ValueError(f"score must be >= 0 (ratios of probabilities), got "
                                 f"{v.min().item():.6g}")
        return v

    def _loss_inputs(self, log_score, x, x0, sigma_bar):
        log_score = as_float(log_score, name="log_score")
        x, sb = self._tokens_and_noise(x, sigma_bar)
        x0 = as_tokens(x0, self.n, "x0")
        if x.shape != x0.shape:
            raise ValueError(f"x has shape {tuple(x.shape)} but x0 has shape {tuple(x0.shape)}; "
                             f"they must match")
        check_shape(log_score, tuple(x.shape) + (self.n,), "log_score")
        if value_checks_enabled() and not torch.isfinite(log_score).all():
            raise ValueError("log_score must be finite (a ratio of 0 or inf has no log); "
                             "got a NaN or infinite entry")
        if value_checks_enabled() and (sb == 0).any():
            raise ValueError("sigma_bar must be > 0 for the score entropy: at sigma_bar = 0 no "
                             "token has moved and the ratios p(y|x0)/p(x|x0) are infinite")
        return log_score, x, x0, sb


class Uniform(RateMatrix):
    """Uniform noise, ``Q = 1 - n I``: every state jumps to every other at rate 1 (lesson 1).

    ``expm(sigma_bar Q) = e^{-n sigma_bar} I + (1 - e^{-n sigma_bar}) / n``, so x_t keeps x_0 with
    probability e^{-n sigma_bar} and is otherwise redrawn uniformly. SEDD's code uses ``Q / n``,
    which is the same process with sigma_bar scaled by 1/n.
    """

    def __init__(self, n: int):
        n = check_n(n, 1, "Uniform")
        super().__init__(torch.ones(n, n, dtype=torch.float64)
                         - n * torch.eye(n, dtype=torch.float64))

    def _coefs(self, sb):
        """(a, b) with P[y, x] = a + b [y == x], computed without cancellation."""
        b = torch.exp(-self.n * sb)
        a = -torch.expm1(-self.n * sb) / self.n
        return a, b

    def _transition(self, sb):
        a, b = self._coefs(sb)
        eye = torch.eye(self.n, dtype=sb.dtype, device=sb.device)
        return a[..., None, None] + b[..., None, None] * eye

    def stationary(self):
        return torch.full((self.n,), 1.0 / self.n, dtype=torch.float64)

    def transition_from(self, x0, sigma_bar):
        x0, sb = self._tokens_and_noise(x0, sigma_bar, "x0")
        a, b = self._coefs(sb)
        out = a[..., None].expand(*x0.shape, self.n).clone()
        # in place: the out-of-place scatter_add copies the S x n output, ~40x slower at n = 27
        return out.scatter_add_(-1, x0[..., None], b[..., None])

    def transition_to(self, x, sigma_bar):
        x = as_tokens(x, self.n, "x")                 # validated here, to name it "x"
        return self.transition_from(x, sigma_bar)      # P is symmetric

    def rates_into(self, x):
        x = as_tokens(x, self.n, "x")
        out = torch.ones(*x.shape, self.n, dtype=torch.float64, device=x.device)
        return out.scatter_(-1, x[..., None], 1.0 - self.n)

    def _apply_inverse_transition(self, v, ds):
        # expm(-d Q) = e^{n d} I + (1 - e^{n d}) / n  (the same closed form at negative time)
        nd = self.n * ds
        return torch.exp(nd)[..., None] * v - (torch.expm1(nd) / self.n)[..., None] * v.sum(-1, keepdim=True)

    def _staggered_score(self, score, ds):
        # e^{-n ds} expm(-ds Q) s = s - (1 - e^{-n ds}) / n * sum(s): no e^{n ds} that overflows
        # (it would turn a long step into inf - inf = NaN).
        return score - (-torch.expm1(-self.n * ds) / self.n)[..., None] * score.sum(-1, keepdim=True)

    def sample_transition(self, x0, sigma_bar, generator=None):
        x0, sb = self._tokens_and_noise(x0, sigma_bar, "x0")
        move = -torch.expm1(-self.n * sb)             # probability of a fresh uniform draw
        u = torch.rand(x0.shape, generator=generator, dtype=torch.float64, device=x0.device)
        fresh = torch.randint(0, self.n, x0.shape, generator=generator, device=x0.device)
        return torch.where(u < move.to(torch.float64), fresh, x0)

    def _score_entropy(self, log_score, x, x0, sb):
        n = self.n
        sb = sb.to(log_score.dtype)
        # r for the clean token when x != x0: p(x0|x0)/p(x|x0) = 1 + n / (e^{n sb} - 1); other y: 1.
        # When x == x0 every y != x has r = 1 / that same number.
        r_clean = 1.0 + n / torch.expm1(n * sb)
        moved = x != x0
        s = torch.exp(log_score)
        ls_x = torch.gather(log_score, -1, x[..., None])[..., 0]
        s_sum = s.sum(-1) - torch.exp(ls_x)
        ls_sum = log_score.sum(-1) - ls_x
        ls_x0 = torch.gather(log_score, -1, x0[..., None])[..., 0]
        # x != x0: sum_y s_y - sum_{y != x} log s_y - (r_clean - 1) log s_x0 + K(r_clean) - (n - 2)
        loss_moved = s_sum - ls_sum - (r_clean - 1) * ls_x0 + _K(r_clean) - (n - 2)
        # x == x0: sum_y s_y - r sum_y log s_y + (n - 1) K(r) with r = 1 / r_clean
        r = 1.0 / r_clean
        loss_kept = s_sum - r * ls_sum + (n - 1) * _K(r)
        return torch.where(moved, loss_moved, loss_kept)


class Absorbing(RateMatrix):
    """Absorbing ("masking") noise: every state jumps to MASK = n - 1 at rate 1 (lesson 1).

    ``Q[x, x] = -1`` and ``Q[n-1, x] = 1`` for x < n - 1; MASK never leaves. A token survives to
    sigma_bar with probability e^{-sigma_bar} and is masked otherwise.
    """

    def __init__(self, n: int):
        n = check_n(n, 2, "Absorbing")
        Q = -torch.eye(n, dtype=torch.float64)
        Q[n - 1, :] += 1.0
        super().__init__(Q)
        self.mask = n - 1

    def _transition(self, sb):
        keep = torch.exp(-sb)
        out = keep[..., None, None] * torch.eye(self.n, dtype=sb.dtype, device=sb.device)
        out[..., self.mask, :] = (-torch.expm1(-sb))[..., None]
        out[..., self.mask, self.mask] = 1.0
        return out

    def stationary(self):
        pi = torch.zeros(self.n, dtype=torch.float64)
        pi[self.mask] = 1.0
        return pi

    def transition_from(self, x0, sigma_bar):
        x0, sb = self._tokens_and_noise(x0, sigma_bar, "x0")
        is_mask = x0 == self.mask
        keep = torch.where(is_mask, torch.ones_like(sb), torch.exp(-sb))
        # 1 - e^{-sb} via expm1: at sigma_bar ~ 1e-8, 1 - exp(.) loses half the digits
        masked = torch.where(is_mask, torch.zeros_like(sb), -torch.expm1(-sb))
        out = torch.zeros(*x0.shape, self.n, dtype=sb.dtype, device=x0.device)
        out.scatter_(-1, x0[..., None], keep[..., None])      # in place: no S x n copies
        out[..., self.mask] += masked
        return out

    def transition_to(self, x, sigma_bar):
        x, sb = self._tokens_and_noise(x, sigma_bar)
        is_mask = (x == self.mask)[..., None]
        masked_row = (-torch.expm1(-sb))[..., None].expand(*x.shape, self.n).clone()
        masked_row[..., self.mask] = 1.0
        clean_row = torch.zeros(*x.shape, self.n, dtype=sb.dtype, device=x.device).scatter_(
            -1, x[..., None], torch.exp(-sb)[..., None])
        return torch.where(is_mask, masked_row, clean_row)

    def rates_into(self, x):
        x = as_tokens(x, self.n, "x")
        mask_row = torch.ones(self.n, dtype=torch.float64, device=x.device)
        mask_row[self.mask] = 0.0
        clean = torch.zeros(*x.shape, self.n, dtype=torch.float64, device=x.device).scatter_(
            -1, x[..., None], -1.0)
        return torch.where((x == self.mask)[..., None], mask_row, clean)

    def _apply_inverse_transition(self, v, ds):
        # expm(-d Q): clean entries scale by e^{d}; MASK gets v_M + (1 - e^{d}) sum_{y<M} v_y
        clean_sum = v[..., : self.mask].sum(-1)
        out = torch.exp(ds)[..., None] * v
        out[..., self.mask] = v[..., self.mask] - torch.expm1(ds) * clean_sum
        return out

    def _staggered_score(self, score, ds):
        # e^{-ds} expm(-ds Q) s: clean entries unchanged, MASK gets e^{-ds} s_M - (1 - e^{-ds}) sum
        out = score.clone()
        clean_sum = score[..., : self.mask].sum(-1)
        out[..., self.mask] = torch.exp(-ds) * score[..., self.mask] + torch.expm1(-ds) * clean_sum
        return out

    def sample_transition(self, x0, sigma_bar, generator=None):
        x0, sb = self._tokens_and_noise(x0, sigma_bar, "x0")
        u = torch.rand(x0.shape, generator=generator, dtype=torch.float64, device=x0.device)
        masked = u < (-torch.expm1(-sb)).to(torch.float64)
        return torch.where(masked, torch.full_like(x0, self.mask), x0)

    def _score_entropy(self, log_score, x, x0, sb):
        M = self.mask
        if value_checks_enabled() and ((x != M) & (x != x0)).any():
            raise ValueError("some x_t cannot be reached from its x0: an absorbing chain only keeps "
                             "a token or masks it; x_t should be a sample of sample_transition")
        sb = sb.to(log_score.dtype)
        # At a masked position r_y = 0 except r_{x0} = e^{-sb} / (1 - e^{-sb}) = 1 / expm1(sb);
        # at an unmasked position the chain has no reverse moves and the loss is zero.
        r = 1.0 / torch.expm1(sb)
        s_sum = torch.exp(log_score[..., :M]).sum(-1)
        x0c = x0.clamp_max(M - 1)
        ls_x0 = torch.gather(log_score, -1, x0c[..., None])[..., 0]
        clean_x0 = x0 != M
        loss = s_sum + torch.where(clean_x0, -r * ls_x0 + _K(r), torch.zeros_like(r))
        return torch.where(x == M, loss, torch.zeros_like(loss))


# ---------------------------------------------------------------------- utilities
def _normalise(probs: torch.Tensor) -> torch.Tensor:
    total = probs.sum(-1, keepdim=True)
    bad = ~(torch.isfinite(total) & (total > 0))
    if bad.any():
        where = tuple(bad[..., 0].nonzero()[0].tolist()) if bad.dim() > 1 else ()
        raise ValueError(f"a step produced an all-zero or non-finite distribution over next states "
                         f"(at token index {where}); check the score (it may be zero or negative "
                         f"everywhere), or take smaller steps: with a long step the information "
                         f"in the score can fall below float precision")
    return probs / total


def _expand_step(dsigma, like: torch.Tensor) -> torch.Tensor:
    ds = check_sigma_bar(dsigma, "dsigma").to(like.dtype)
    return broadcast(ds, like.shape[:-1], "dsigma", device=like.device)[..., None]


def sample_categorical(probs, generator=None) -> torch.Tensor:
    """Draw one state per row of ``probs`` (shape S + (n,), rows non-negative). Lesson 1.

    Rows need not be normalised, but must be finite, non-negative and have a positive sum (a row
    of zeros is no distribution, and no state is drawn from it). The draw is by inverse CDF in the
    dtype of ``probs``; inside ``skip_value_checks()`` the value checks are skipped.
    """
    if not isinstance(probs, torch.Tensor) and np.ndim(probs) == 0:
        raise ValueError(f"probs must be an array of probabilities with a last axis over the "
                         f"states, got the scalar {probs!r}")
    probs = as_float(probs)
    if probs.dim() == 0:
        raise ValueError("probs must have a last axis over the states, got a 0-d tensor")
    if value_checks_enabled():
        if (probs < 0).any() or not torch.isfinite(probs).all():
            raise ValueError("probs must be finite and non-negative")
        if (probs.sum(-1) <= 0).any():
            raise ValueError("probs has a row that sums to 0: no state can be drawn from it")
    u = torch.rand(probs.shape[:-1] + (1,), generator=generator, dtype=probs.dtype,
                   device=probs.device)
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, u * cdf[..., -1:], right=True)[..., 0]
    return idx.clamp_max(probs.shape[-1] - 1)


__all__ = ["RateMatrix", "Uniform", "Absorbing", "sample_categorical"]
