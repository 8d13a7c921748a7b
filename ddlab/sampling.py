"""Sampling from a score function, and the exact law of every sampler (lessons 5, 10 and 11).

Every sampler here takes a *score function* ``score_fn(x_t, sigma_bar) -> (B, d, n)`` returning
the Hamming-1 ratios ``s[b, i, y] = p_t(x with x_i = y) / p_t(x)``, so the exact oracle
``ddlab.exact_score_fn(p0, rm)`` and a trained network are interchangeable.

Time runs backward on the grid ``t_k = 1 - k (1 - eps) / steps`` (k = 0..steps, linear in t), with
total noise ``sigma_bar_k = schedule.sigma_bar(t_k)`` and step ``dsigma_k = sigma_bar_k -
sigma_bar_{k+1}``. On the clock of sigma_bar the reverse chain of one token has rates
``Q[x, y] s_y`` out of x (``rm.reverse_rates``). The methods differ in how they cross an
interval. Lesson 5's three (``METHODS``):

``"euler"``   tau-leaping: every position moves independently with
              ``p(y) = dsigma Q[x, y] s_y`` for y != x and ``p(x) = 1 - dsigma sum_{y != x}
              Q[x, y] s_y`` (the column x of ``I + dsigma Qbar``; ``rm.euler_probs``, which clips
              a negative p(x) to 0 and renormalises), scores taken at t_k.
``"tweedie"`` every position moves independently with the Tweedie step
              ``p(y) ∝ (expm(-dsigma Q) s)_y expm(dsigma Q)[x, y]`` (``rm.tweedie_probs``), scores
              at t_k. For d = 1 and the exact score this is the exact reverse transition.
``"exact"``   the reverse CTMC of the whole sequence, one token jump at a time: on each interval
              the rates are frozen at the midpoint time ``(t_k + t_{k+1}) / 2`` and the chain with
              those rates is simulated exactly (Gillespie: an exponential holding time, one jump,
              the score re-evaluated at the new sequence). What is exact: inside the intervals
              no factorisation error (positions never jump together on stale scores) and no
              time-stepping error for the frozen rates. What is not: the true rates change with t
              inside an interval; the midpoint rule makes that error O(1/steps^2) where the rates
              are smooth, but under absorbing noise the unmasking hazard ~ 1/sigma_bar is
              singular at t = 0 and the midpoint sums converge slowly (lesson 5 measures it); and
              the final denoising step below is factorised, as for every method. The name says
              what is simulated exactly (the frozen-rate chain), not that its law is exact.

Masked (absorbing) samplers of lesson 11 (``MASKED_METHODS``), which read the score at a masked
position as a denoiser, ``p_theta(y | x_t) = s_y / sum_{y' != MASK} s_y'``:

``"mdlm"``       MDLM's ancestral step (:func:`mdlm_step_probs`): a masked token is revealed
                 with probability ``(alpha_s - alpha_t) / (1 - alpha_t)`` as a draw from the
                 denoiser. With ``remask=(kind, eta)`` it is ReMDM's step (Wang et al. 2025): a
                 clean token is re-masked with probability sigma_k and the reveal probability is
                 raised so that each token's marginal ``p(masked at s) = 1 - alpha_s`` is kept
                 (:func:`remask_probability`).
``"confidence"`` MaskGIT's / LLaDA's confidence-ordered unmasking: at step k exactly the number of
                 tokens that brings the masked count to ``round(m0 (1 - alpha_{k+1}) / (1 -
                 alpha_0))`` is revealed, at the masked positions of highest confidence. With
                 ``confidence="max"`` the confidence of a position is ``max_y p_theta(y)`` (chosen
                 before drawing) and the revealed value is then drawn; with ``"drawn"`` every masked
                 position draws a value first and its confidence is the probability of what it
                 drew (LLaDA's low-confidence remasking: the rest are masked again).

Options of every method but "exact" (each is a keyword of :func:`sample` and of
:func:`exact_sampler_distribution`, so the law of every combination is known exactly on a toy):

``temperature``, ``top_p``   applied to where a token goes, not to whether it moves
                 (:func:`temper`): for a masked token that is the temperature or nucleus of the
                 denoiser, as practitioners do; the probability of moving is unchanged.
``corrector_steps``          predictor-corrector (Campbell et al. 2022): after each predictor step
                 but the last, that many tau-leaping steps of the corrector generator
                 ``Q + Qbar`` (forward plus reverse rates, whose stationary law is p_t) at the new
                 time, each of length ``corrector_size * dsigma_k``.
``cache``        (absorbing noise) the network is evaluated only for sequences that changed since
                 its last evaluation; otherwise the last output is reused, its denoiser
                 ``s (e^{sigma_bar} - 1)`` carried to the new time. For a time-agnostic denoiser
                 (the exact one, or a network without time input) the law is unchanged and the
                 number of evaluations drops to at most ``d + 1`` (lesson 10); for a network that
                 reads sigma_bar it is an approximation, and its law differs.
``gumbel_bits``  draw every categorical by Gumbel-max with uniforms on a grid of ``2**bits``
                 values (:func:`gumbel_max_sample`) instead of the library's float64 inverse CDF:
                 24 bits is float32, the low-precision trap of Zheng et al. 2024 (lesson 11).

After the last interval, ``denoise=True`` takes one Tweedie step from ``sigma_bar(t_min)`` all the
way to 0 and draws each still-noisy token from it, with MASK removed (its probability is zero
for the exact score, and dropping it guarantees a clean sample from an imperfect one).

:func:`exact_sampler_distribution` propagates the full law over all n^d sequences through the same
step kernels (the Kronecker product of the per-position step distributions for the factorised
steps, the enumeration of every joint draw for ``confidence="drawn"``, ``expm(dsigma Qbar)`` of
the frozen whole-sequence reverse generator for "exact"), so the law a sampler produces with k
steps is known exactly on a toy, with no Monte Carlo error. With ``cache`` the law lives on pairs
(sequence, time of the cached evaluation). The library's own draws are inverse-CDF in float64
(``sample_categorical`` on float64 probabilities), whatever the dtype of the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._checks import (as_batch, as_float, as_int, as_rate_matrix, as_real, as_tokens,
                      check_clamp, check_schedule, check_shape, check_sigma_bar, check_time,
                      per_sequence_sigma_bar)
from .exact import kl_divergence
from .rate_matrices import Absorbing, sample_categorical
from .sequences import all_sequences, flat_strides

METHODS = ("euler", "tweedie", "exact")            # lesson 5
MASKED_METHODS = ("mdlm", "confidence")            # lesson 11, absorbing noise only
ALL_METHODS = METHODS + MASKED_METHODS
CONFIDENCES = ("max", "drawn")
REMASK_KINDS = ("cap", "rescale")
# exact_sampler_distribution holds an (n^d, n^d) matrix: refuse toys larger than this many states.
MAX_STATES = 4096
# gumbel_max_law enumerates the 2^bits uniforms of the winner: beyond this it is too slow.
MAX_LAW_BITS = 26


# ------------------------------------------------------------------------------ validation
def check_scores(score, x_t, n) -> torch.Tensor:
    """Validate a score function's output and return it as a floating tensor (lesson 5).

    ``score`` must have shape ``(B, d, n)`` for ``x_t`` of shape ``(B, d)``, be finite and be
    non-negative (ratios of probabilities). Otherwise ValueError names the first bad position
    ``(b, i, y)``, its value and the token ``x_t[b, i]`` it was computed at.
    """
    if not isinstance(score, torch.Tensor):
        raise ValueError(f"a score function must return a torch tensor, got {type(score).__name__}")
    expected = tuple(x_t.shape) + (n,)
    if tuple(score.shape) != expected:
        raise ValueError(f"score_fn returned shape {tuple(score.shape)}, expected {expected} "
                         f"(B, d, n) for x_t of shape {tuple(x_t.shape)}")
    if not score.is_floating_point():
        score = score.double()
    bad = ~torch.isfinite(score) | (score < 0)
    if bad.any():
        b, i, y = bad.nonzero()[0].tolist()
        value = score[b, i, y].item()
        what = "finite" if not math.isfinite(value) else "non-negative"
        raise ValueError(f"score_fn returned {value!r} at position (b, i, y) = ({b}, {i}, {y}) "
                         f"(x_t[{b}, {i}] = {int(x_t[b, i])}); ratios must be {what}")
    return score


def _score(score_fn, x, sigma_bar: float, n: int) -> torch.Tensor:
    """Call score_fn at one noise level, validate, and set the entry at the current token to 1.

    The ratio p(x)/p(x) is 1 by definition; Euler ignores that entry but Tweedie mixes it in, so
    it is fixed here rather than trusted to every network.
    """
    sb = torch.full((x.shape[0],), float(sigma_bar), dtype=torch.float64, device=x.device)
    s = check_scores(score_fn(x, sb), x, n)
    return s.scatter(-1, x[..., None], 1.0)


@dataclass(frozen=True)
class _Options:
    temperature: float = 1.0
    top_p: float = 1.0
    remask: tuple | None = None
    corrector_steps: int = 0
    corrector_size: float = 1.0
    confidence: str = "max"
    cache: bool = False
    gumbel_bits: int | None = None

    @property
    def shapes(self) -> bool:
        return self.temperature != 1.0 or self.top_p != 1.0


def _options(rm, method, temperature=1.0, top_p=1.0, remask=None, corrector_steps=0,
             corrector_size=1.0, confidence="max", cache=False, gumbel_bits=None) -> _Options:
    """Validate the lesson-11 options against the method and the process."""
    temperature = as_real(temperature, "temperature", 0.0, None)
    top_p = as_real(top_p, "top_p (the nucleus mass)", 0.0, 1.0, hi_closed=True)
    corrector_steps = as_int(corrector_steps, "corrector_steps", 0)
    corrector_size = as_real(corrector_size, "corrector_size (times the predictor's dsigma)", 0.0)
    if confidence not in CONFIDENCES:
        raise ValueError(f"confidence must be one of {CONFIDENCES}, got {confidence!r}")
    if not isinstance(cache, bool):
        raise ValueError(f"cache must be True or False, got {cache!r}")
    if gumbel_bits is not None:
        gumbel_bits = as_int(gumbel_bits, "gumbel_bits", 1)
        if gumbel_bits > 53:
            raise ValueError(f"gumbel_bits must be at most 53 (a float64 mantissa), got {gumbel_bits}")
    if remask is not None:
        if not (isinstance(remask, (tuple, list)) and len(remask) == 2 and remask[0] in REMASK_KINDS):
            raise ValueError(f"remask must be a pair (kind, eta) with kind in {REMASK_KINDS}, "
                             f"e.g. ('cap', 0.05), got {remask!r}")
        remask = (remask[0], as_real(remask[1], "remask eta", 0.0, 1.0, lo_closed=True,
                                     hi_closed=True))
        if method != "mdlm":
            raise ValueError(f"remask=... is ReMDM's step and needs method='mdlm', got {method!r}")
    opts = _Options(temperature, top_p, remask, corrector_steps, corrector_size, confidence,
                    cache, gumbel_bits)
    if method == "exact" and opts != _Options():
        raise ValueError("the reverse Gillespie sampler ('exact') takes none of temperature, top_p, "
                         "remask, corrector_steps, confidence, cache, gumbel_bits")
    if method == "confidence" and corrector_steps:
        raise ValueError("method='confidence' reveals a fixed number of tokens per step; it takes "
                         "no corrector steps")
    if confidence != "max" and method != "confidence":
        raise ValueError(f"confidence={confidence!r} is an option of method='confidence'")
    if cache and not isinstance(rm, Absorbing):
        raise ValueError("cache=True needs absorbing noise (ddlab.Absorbing): only there does a "
                         "time-agnostic denoiser make the network's output a function of x_t alone")
    return opts


def check_options(rm, method, **options) -> dict:
    """Validate lesson 11's sampler options for a method and a process; return them as a dict.

    The checks :func:`sample` and :func:`exact_sampler_distribution` run first (ValueError naming
    the bad option), for callers such as the text CLI that want to refuse before any work.
    """
    rm = as_rate_matrix(rm)
    if method not in ALL_METHODS:
        raise ValueError(f"method must be one of {ALL_METHODS}, got {method!r}")
    if method in MASKED_METHODS and not isinstance(rm, Absorbing):
        raise ValueError(f"method {method!r} unmasks tokens and needs absorbing noise "
                         f"(ddlab.Absorbing), got {type(rm).__name__}")
    opts = _options(rm, method, **options)
    return {f: getattr(opts, f) for f in opts.__dataclass_fields__}


def _check_common(rm, schedule, d, steps, method, t_min):
    rm = as_rate_matrix(rm)
    as_int(d, "d", 1)
    as_int(steps, "steps", 1)
    if method not in ALL_METHODS:
        raise ValueError(f"method must be one of {ALL_METHODS}, got {method!r}")
    if method in MASKED_METHODS and not isinstance(rm, Absorbing):
        raise ValueError(f"method {method!r} unmasks tokens and needs absorbing noise "
                         f"(ddlab.Absorbing), got {type(rm).__name__}")
    as_real(t_min, "t_min (the last time of the grid)", 0.0, 1.0)
    check_schedule(schedule)
    return rm


def time_grid(schedule, steps: int, t_min: float = 1e-5):
    """``(t, sigma_bar)`` on the grid ``t_k = 1 - k (1 - t_min) / steps``, k = 0..steps, float64."""
    t = torch.linspace(1.0, t_min, steps + 1, dtype=torch.float64)
    check_time(t)
    return t, schedule.sigma_bar(t).to(torch.float64)


def _apply_clamp(x, clamp):
    return x if clamp is None else torch.where(clamp[0], clamp[1], x)


# ------------------------------------------------------------------------------ draws
def _draw(probs, generator, bits=None):
    """One token per row: the library's float64 inverse CDF, or a b-bit Gumbel-max (lesson 11)."""
    if bits is not None:
        return gumbel_max_sample(probs, bits, generator)
    # float64 whatever the network's dtype: a float32 cumulative sum near 1 has steps of 6e-8 and
    # silently drops every smaller probability that comes after a large one
    return sample_categorical(probs if probs.dtype == torch.float64 else probs.double(), generator)


def _check_rows(probs, name="probs") -> torch.Tensor:
    probs = as_float(probs, torch.float64, name)
    if probs.dim() == 0:
        raise ValueError(f"{name} must have a last axis over the states, got a 0-d tensor")
    if not torch.isfinite(probs).all() or (probs < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    if (probs.sum(-1) <= 0).any():
        raise ValueError(f"{name} has a row that sums to 0: no state can be drawn from it")
    return probs


def gumbel_max_sample(probs, bits: int = 24, generator=None) -> torch.Tensor:
    """Gumbel-max draws with uniforms on a grid of ``2**bits`` values (lesson 11).

    ``argmax_y log p_y + G_y`` with ``G_y = -log(-log u_y)`` and ``u_y = k_y / 2^bits``, ``k_y``
    uniform on ``0 .. 2^bits - 1`` (u = 0 gives G = -inf), computed in float64; ties go to the lower
    index. This is how float32 Gumbel noise behaves: a float32 ``torch.rand`` is a multiple of
    ``2^-24`` below 1, so ``bits=24`` is float32 (11 is float16, 8 bfloat16, 53 float64). The
    largest Gumbel is ``-log(-log(1 - 2^-bits))`` (16.64 for float32), which caps how far a token
    can beat one ``e^{16.6}`` times more likely: the trap of Zheng et al. 2024. The library's own
    samplers never draw this way; :func:`gumbel_max_law` is the exact law of this draw.
    """
    probs = _check_rows(probs)
    bits = as_int(bits, "bits", 1)
    if bits > 53:
        raise ValueError(f"bits must be at most 53 (a float64 mantissa), got {bits}")
    M = 2 ** bits
    k = torch.randint(0, M, probs.shape, generator=generator, device=probs.device)
    g = -torch.log(-torch.log(k.double() / M))
    score = torch.where(probs > 0, torch.log(probs) + g, torch.full_like(probs, -math.inf))
    idx = score.argmax(-1)
    # every possible token drew u = 0 (probability 2^-bits per token): the first possible one
    none = torch.isinf(score.max(-1).values)
    if none.any():
        idx = torch.where(none, (probs > 0).to(torch.int8).argmax(-1), idx)
    return idx


def _gumbel_scores(log_p, k, M):
    """The sampler's own float64 score ``log p + G(k)``, G = -log(-log(k / M)) (-inf at k = 0)."""
    return log_p - torch.log(-torch.log(k / M))


def _losers(x, s_y, log_pz, M: int, strict: bool):
    """How many of a token z's 2^bits values k' lose to a winner of score ``s_y``: ``ceil(x)``
    (at least 1: k' = 0 always loses), where ``x = M (k/M)^(p_z/p_y)`` is the race's threshold;
    where x is within rounding of an integer the boundary values are decided by the sampler's own
    float comparison (strict for a token before the winner, which loses a tie)."""
    c = torch.ceil(x).clamp(1, M)
    near = (x >= 0.5) & ((x - torch.round(x)).abs() <= 1e-12 * x)
    if near.any():
        idx = near.nonzero(as_tuple=True)
        w = c[idx][:, None] + torch.arange(-2, 2, dtype=torch.float64)
        valid = (w >= 0) & (w <= M - 1)
        s_z = _gumbel_scores(torch.broadcast_to(log_pz, x.shape)[idx][:, None], w.clamp(0, M - 1), M)
        sy = s_y[idx][:, None]
        loses = (s_z < sy) if strict else (s_z <= sy)
        c = c.clone()
        c[idx] = (c[idx] - 2).clamp_min(0) + (loses & valid).sum(-1)
    return c


def _gumbel_law_row(p, bits: int, chunk: int = 1 << 20) -> torch.Tensor:
    """The exact law of :func:`gumbel_max_sample` for one row p (n,) of float64."""
    n = p.shape[0]
    M = 2 ** bits
    pos = (p > 0).nonzero()[:, 0]
    out = torch.zeros(n, dtype=torch.float64)
    if pos.numel() == 1:
        out[pos] = 1.0
        return out
    vals, inverse = torch.unique(p[pos], return_inverse=True)
    G = vals.shape[0]
    log_vals = torch.log(vals)
    counts = torch.bincount(inverse, minlength=G)
    members = [pos[inverse == g] for g in range(G)]
    # before[g][j, h]: how many tokens of group h come before member j of group g (index order
    # decides exact ties: the sampler's argmax takes the first maximum)
    before = [torch.stack([(members[h][None, :] < members[g][:, None]).sum(1) for h in range(G)], 1)
              .to(torch.float64) for g in range(G)]
    small = [len(m) <= 16 for m in members]
    total = torch.zeros(G, dtype=torch.float64)
    per_member = [torch.zeros(len(m), dtype=torch.float64) for m in members]
    for start in range(1, M, chunk):
        k = torch.arange(start, min(M, start + chunk), dtype=torch.float64)
        log_a, log_b = torch.log(k / M), torch.log((k + 1) / M)
        for g in range(G):
            s_y = _gumbel_scores(log_vals[g], k, M)                  # the winner's score (k >= 1)
            log_lt = torch.zeros(G, k.shape[0], dtype=torch.float64)
            log_le = torch.zeros_like(log_lt)
            for h in range(G):
                if h == g:
                    continue
                # the exponential race: z of group h loses iff u_z < u_y^(p_h / p_y), for about
                # ceil(M (k/M)^(p_h/p_y)) values of k' (k' = 0, G = -inf, always loses) ...
                x = M * torch.exp(log_a * (vals[h] / vals[g]))
                c_lt = _losers(x, s_y, log_vals[h], M, strict=True)
                c_le = _losers(x, s_y, log_vals[h], M, strict=False)
                log_lt[h], log_le[h] = torch.log(c_lt / M), torch.log(c_le / M)
            m = int(counts[g])
            if small[g]:
                # member j: tokens of other groups before it must score strictly less, those
                # after it at most as much; equal tokens: k' < k before it, k' <= k after it
                bj = before[g]                                         # (m, G)
                log_A = bj @ log_lt + (counts.to(torch.float64)[None, :] - bj) @ log_le
                jj = torch.arange(m, dtype=torch.float64)[:, None]
                w = torch.exp(log_A + jj * log_a + (m - 1 - jj) * log_b) / M
                per_member[g] += w.sum(1)
            else:
                log_A = counts.to(torch.float64) @ log_lt
                # the sum over the m members of (k/M)^j ((k+1)/M)^(m-1-j), times 1/M, is
                # ((k+1)/M)^m - (k/M)^m, computed without cancellation
                group = torch.exp(log_A) * (-torch.expm1(m * (log_a - log_b))) * torch.exp(m * log_b)
                total[g] += group.sum()
    for g in range(G):
        idx = members[g]
        out[idx] = per_member[g] if small[g] else total[g] / len(idx)
    # all possible tokens drew k = 0: the first possible one wins
    out[pos[0]] += float(M) ** (-pos.numel())
    return out


def _gumbel_law_distinct(P, bits: int, chunk: int = 1 << 22) -> torch.Tensor:
    """:func:`_gumbel_law_row` for many rows at once, each with distinct positive entries (no two
    tokens of equal probability, so every token is its own group), (R, n) float64."""
    R, n = P.shape
    M = 2 ** bits
    logP = torch.log(P)
    out = torch.zeros(R, n, dtype=torch.float64)
    step = max(1, chunk // R)
    for start in range(1, M, step):
        k = torch.arange(start, min(M, start + step), dtype=torch.float64)
        log_a = torch.log(k / M)
        for y in range(n):
            s_y = _gumbel_scores(logP[:, y, None], k[None, :], M)          # (R, C)
            log_A = torch.zeros(R, k.shape[0], dtype=torch.float64)
            for z in range(n):
                if z == y:
                    continue
                r = (P[:, z] / P[:, y]).nan_to_num(0.0, posinf=0.0)[:, None]
                c = _losers(M * torch.exp(log_a[None, :] * r), s_y, logP[:, z, None], M, strict=z < y)
                log_A = log_A + torch.where(P[:, z, None] > 0, torch.log(c / M),
                                            torch.zeros_like(c))
            out[:, y] += torch.where(P[:, y] > 0, torch.exp(log_A).sum(1) / M,
                                     torch.zeros(R, dtype=torch.float64))
    # all possible tokens drew k = 0: the first possible one wins
    positive = P > 0
    first = positive.to(torch.int8).argmax(1)
    out[torch.arange(R), first] += float(M) ** (-positive.sum(1).double())
    return out


def gumbel_max_law(probs, bits: int = 24) -> torch.Tensor:
    """The exact law of :func:`gumbel_max_sample` for each row of ``probs`` (lesson 11).

    For every token y, ``P(y) = (1/M) sum_{k=1}^{M-1} prod_{z != y} P(z loses | k_y = k)`` with
    ``M = 2^bits``: the winner's uniform is enumerated (all ``2^bits`` values), and a token z of
    probability p_z loses to it for exactly ``ceil(M (k/M)^(p_z/p_y))`` of its own values (the
    exponential race ``-log u_z / p_z > -log u_y / p_y`` on the grid). Tokens of equal probability
    are grouped and compared by index as :func:`gumbel_max_sample` does; a group of more than 16
    equal probabilities shares its (exact) total equally, which moves each member's value by a
    relative ``m 2^-bits`` at most. The cost is ``groups^2 * 2^bits`` per row, so ``bits`` is at
    most ``MAX_LAW_BITS``; ``bits = None`` returns the normalised rows (the exact draw). Float64,
    the shape of ``probs``.
    """
    probs = _check_rows(probs)
    if bits is None:
        return probs / probs.sum(-1, keepdim=True)
    bits = as_int(bits, "bits", 1)
    if bits > MAX_LAW_BITS:
        raise ValueError(f"bits = {bits}: the exact law enumerates 2^bits uniforms per token "
                         f"pair; at most {MAX_LAW_BITS} (beyond that its deviation from p is "
                         f"below 2^-{MAX_LAW_BITS} per token pair anyway)")
    flat = probs.reshape(-1, probs.shape[-1]).cpu()
    unique, inverse = torch.unique(flat, dim=0, return_inverse=True)
    laws = torch.empty_like(unique)
    # rows whose positive entries are all different go through the batched path
    srt = torch.sort(unique, dim=1).values
    distinct = ~((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] > 0)).any(1)
    distinct &= (unique > 0).sum(1) > 1
    if distinct.any():
        laws[distinct] = _gumbel_law_distinct(unique[distinct], bits)
    for i in (~distinct).nonzero()[:, 0].tolist():
        laws[i] = _gumbel_law_row(unique[i], bits)
    return laws[inverse].reshape(probs.shape).to(probs.device)


# ------------------------------------------------------------------------------ shaping
def temper(probs, x, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature and nucleus (top-p) on where each token moves, not on whether (lesson 11).

    ``probs`` (S + (n,)) are per-position step distributions at tokens ``x`` (S). The probability
    of staying, ``probs[x]``, is kept; the distribution of the destination, ``q_y ∝ probs[y]``
    for y != x, becomes ``q_y^(1/T)`` (normalised), then only the smallest set of most likely
    destinations holding ``top_p`` of it is kept (ties by index), normalised. For a masked token
    the destinations are the denoiser's clean tokens, so this is the temperature and nucleus of
    the denoiser; rows that cannot move are unchanged. The dtype of ``probs``.
    """
    probs = as_float(probs)
    temperature = as_real(temperature, "temperature", 0.0, None)
    top_p = as_real(top_p, "top_p", 0.0, 1.0, hi_closed=True)
    x = as_tokens(x, probs.shape[-1], "x")
    if tuple(probs.shape[:-1]) != tuple(x.shape):
        raise ValueError(f"probs has shape {tuple(probs.shape)}, expected {tuple(x.shape)} + (n,)")
    at = x[..., None]
    stay = probs.gather(-1, at)
    move = probs.scatter(-1, at, 0.0)
    total = move.sum(-1, keepdim=True)
    q = move / torch.where(total > 0, total, torch.ones_like(total))
    if temperature != 1.0:
        top = q.max(-1, keepdim=True).values
        q = (q / torch.where(top > 0, top, torch.ones_like(top))) ** (1.0 / temperature)
        q = q / q.sum(-1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)
    if top_p < 1.0:
        sorted_q, order = torch.sort(q, dim=-1, descending=True, stable=True)
        before = sorted_q.cumsum(-1) - sorted_q
        keep = torch.zeros_like(q, dtype=torch.bool).scatter(-1, order, before < top_p)
        q = torch.where(keep, q, torch.zeros_like(q))
        q = q / q.sum(-1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)
    out = q * total
    out = out.scatter(-1, at, stay)
    return torch.where(total > 0, out, probs)


def mdlm_step_probs(probs, x_t, sigma_bar_t, sigma_bar_s, remask=0.0) -> torch.Tensor:
    """MDLM's ancestral step ``p(x_s | x_t)`` per token, shape (B, d, n) (lessons 8 and 11).

    With ``alpha = exp(-sigma_bar)`` and ``sigma_bar_s <= sigma_bar_t``: a masked token becomes
    clean y with probability ``(alpha_s - alpha_t) / (1 - alpha_t) * probs[y]`` and stays masked
    with probability ``(1 - alpha_s) / (1 - alpha_t)``; an unmasked token stays. Written with the
    alphas directly, independently of the rate-matrix code, so that lesson 8 can hold it against
    ``Absorbing.tweedie_probs``.

    ``remask`` (sigma, a scalar or one per sequence) is ReMDM's step (Wang et al. 2025, lesson 11):
    an unmasked token is masked again with probability sigma, and a masked one is revealed with
    probability ``(alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t)``, so that every token is still
    masked at s with probability ``1 - alpha_s`` as under the forward process. It must lie in
    ``[0, min(1, (1 - alpha_s) / alpha_t)]`` (``ddlab.sampling.remask_probability``); 0 is MDLM.
    """
    probs = as_float(probs, name="probs")
    if probs.dim() != 3:
        raise ValueError(f"probs must have shape (B, d, n), got {tuple(probs.shape)}")
    n = probs.shape[-1]
    x_t = as_batch(x_t, n, "x_t")
    check_shape(probs, tuple(x_t.shape) + (n,), "probs")
    if not torch.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("probs must be finite and non-negative")
    # on the tokens' device: a Python-number sigma_bar is a CPU tensor
    sbt = per_sequence_sigma_bar(sigma_bar_t, x_t.shape[0], positive=True).to(probs.device,
                                                                               probs.dtype)
    sbs = check_sigma_bar(sigma_bar_s, "sigma_bar_s").to(probs.device, probs.dtype)
    sbs = torch.broadcast_to(sbs.reshape(-1, 1) if sbs.dim() else sbs, sbt.shape)
    if (sbs > sbt * (1 + 1e-12)).any():
        raise ValueError("sigma_bar_s must be <= sigma_bar_t: the reverse step goes towards less "
                         "noise")
    a_t, a_s = torch.exp(-sbt), torch.exp(-sbs)
    onehot = torch.nn.functional.one_hot(x_t, n).to(probs.dtype)
    clean = probs[..., : n - 1] / probs[..., : n - 1].sum(-1, keepdim=True).clamp_min(1e-300)
    if isinstance(remask, (int, float)) and remask == 0:
        reveal = (a_s - a_t) / (1 - a_t)                      # (B, 1)
        stay = (1 - a_s) / (1 - a_t)
        step = torch.cat([reveal[..., None] * clean, stay[..., None].expand(*x_t.shape, 1)], -1)
        return torch.where((x_t == n - 1)[..., None], step, onehot)
    sigma = torch.broadcast_to(as_float(remask, probs.dtype, "remask").to(probs.device)
                               .reshape(-1, 1), sbt.shape)
    bound = torch.clamp((1 - a_s) / a_t, max=1.0)
    if (sigma < 0).any() or (sigma > bound * (1 + 1e-9)).any():
        raise ValueError(f"remask must lie in [0, min(1, (1 - alpha_s) / alpha_t)] = [0, "
                         f"{bound.min().item():.4g}] for this step, got {sigma.max().item():.4g}")
    reveal = ((a_s - (1 - sigma) * a_t) / (1 - a_t)).clamp_min(0)
    stay = ((1 - a_s - sigma * a_t) / (1 - a_t)).clamp_min(0)
    step = torch.cat([reveal[..., None] * clean, stay[..., None].expand(*x_t.shape, 1)], -1)
    kept = (1 - sigma)[..., None] * onehot
    kept[..., n - 1] = sigma.expand(x_t.shape)
    return torch.where((x_t == n - 1)[..., None], step, kept)


def remask_probability(kind: str, eta: float, sigma_bar_t, sigma_bar_s) -> torch.Tensor:
    """ReMDM's remasking probability sigma_t of a clean token in the step t -> s (lesson 11).

    Valid values lie in ``[0, min(1, (1 - alpha_s) / alpha_t)]`` (beyond, the reveal probability
    of a masked token would be negative), with ``alpha = e^{-sigma_bar}``. Wang et al.'s two
    schedules: ``"cap"``: ``min(eta, (1 - alpha_s) / alpha_t)``; ``"rescale"``: ``eta`` times the
    upper bound. Float64, broadcast over the two noise levels.
    """
    if kind not in REMASK_KINDS:
        raise ValueError(f"kind must be one of {REMASK_KINDS}, got {kind!r}")
    eta = as_real(eta, "eta", 0.0, 1.0, lo_closed=True, hi_closed=True)
    sbt = as_float(sigma_bar_t, torch.float64, "sigma_bar_t")
    sbs = as_float(sigma_bar_s, torch.float64, "sigma_bar_s")
    bound = (-torch.expm1(-sbs) * torch.exp(sbt)).clamp(max=1.0)
    return torch.clamp(bound, max=eta) if kind == "cap" else eta * bound


# ------------------------------------------------------------------------------ the cache
class EvaluationCache:
    """A model function that is only called for rows whose input changed (lessons 10 and 11).

    ``cache(x, sigma_bar)`` with x (B, d) and sigma_bar (B,) returns ``(out, sigma_bar_used)``:
    ``fn(x, sigma_bar)`` for the rows whose x differs from the last call's, and the last output
    (with the sigma_bar it was computed at) for the others. With ``enabled=False`` every call
    evaluates every row. ``calls`` counts the calls of ``fn`` and ``evaluations`` the rows it was
    given. Exact when ``fn`` does not depend on sigma_bar (a time-agnostic denoiser).
    """

    def __init__(self, fn, enabled: bool = True):
        self.fn, self.enabled = fn, bool(enabled)
        self.calls = self.evaluations = 0
        self._x = self._out = self._sb = None

    def __call__(self, x, sigma_bar):
        reuse = self.enabled and self._x is not None and self._x.shape == x.shape
        changed = (x != self._x).any(-1) if reuse else None
        if changed is not None and not changed.all():
            out, sb = self._out, self._sb
            if changed.any():
                out, sb = out.clone(), sb.clone()
                out[changed] = self._eval(x[changed], sigma_bar[changed]).to(out.dtype)
                sb[changed] = sigma_bar[changed].to(sb.dtype)
        else:
            out, sb = self._eval(x, sigma_bar), sigma_bar
        if self.enabled:
            self._x, self._out, self._sb = x.clone(), out, sb
        return out, sb

    def _eval(self, x, sigma_bar):
        self.calls += 1
        self.evaluations += x.shape[0]
        return self.fn(x, sigma_bar)

    def stats(self) -> dict:
        return {"network_calls": self.calls, "evaluations": self.evaluations}


def _carry_score(s, sb_from, sb_to):
    """A cached absorbing score moved from sigma_bar_from to sigma_bar_to: the denoiser
    ``s (e^{sigma_bar} - 1)`` is what is reused, so ``s * expm1(from) / expm1(to)``, per row."""
    factor = (torch.expm1(sb_from) / torch.expm1(sb_to)).to(s.dtype)
    return s * factor[:, None, None]


class _Scorer:
    """The score at grid point j for a batch of sequences, through the evaluation cache."""

    def __init__(self, score_fn, rm, cache: bool):
        self.n, self.cached = rm.n, cache
        self.cache = EvaluationCache(lambda x, sb: check_scores(score_fn(x, sb), x, rm.n), cache)

    def __call__(self, x, sigma_bar: float):
        sb = torch.full((x.shape[0],), float(sigma_bar), dtype=torch.float64, device=x.device)
        s, used = self.cache(x, sb)
        if self.cached and (used != sb).any():
            s = _carry_score(s, used, sb)
        return s.scatter(-1, x[..., None], 1.0)


# ------------------------------------------------------------------------------ one step
def _factor_step(rm, x, s, dsigma, method):
    """Per-position distribution of the next tokens, (B, d, n), for Euler or Tweedie, given the
    score s at x."""
    # a tensor on the tokens' device: a Python float would become a CPU tensor inside rm
    ds = torch.tensor(float(dsigma), dtype=torch.float64, device=x.device)
    if method == "euler":
        return rm.euler_probs(x, s, ds)
    return rm.tweedie_probs(x, s, ds)


def _denoise_step(rm, x, s, sb_last):
    """The final Tweedie step from sigma_bar(t_min) to 0 given the score s, MASK removed."""
    probs = _factor_step(rm, x, s, sb_last, "tweedie")
    if isinstance(rm, Absorbing):
        probs = probs.clone()
        probs[..., rm.mask] = 0.0
        total = probs.sum(-1, keepdim=True)
        if (total <= 0).any():
            b, i = (total[..., 0] <= 0).nonzero()[0].tolist()
            raise ValueError(f"the final denoising step gives no clean token at position "
                             f"(b, i) = ({b}, {i}): the score puts zero weight on every token")
        probs = probs / total
    return probs


def denoise_probs(rm, score_fn, x, sb_last):
    """The final Tweedie step from sigma_bar(t_min) to 0, MASK removed, (B, d, n)."""
    return _denoise_step(rm, x, _score(score_fn, x, sb_last, rm.n), sb_last)


def _denoiser(s, x, mask):
    """The denoiser a score implies at masked positions: clean ratios normalised, (B, d, n)."""
    clean = s.clone()
    clean[..., mask] = 0.0
    total = clean.sum(-1, keepdim=True)
    bad = (total[..., 0] <= 0) & (x == mask)
    if bad.any():
        b, i = bad.nonzero()[0].tolist()
        raise ValueError(f"the score gives no clean token any weight at the masked position "
                         f"(b, i) = ({b}, {i})")
    return clean / torch.where(total > 0, total, torch.ones_like(total))


class _Run:
    """One sampler's settings and time grid, shared by sample() and its exact law."""

    def __init__(self, rm, schedule, method, steps, t_min, opts):
        self.rm, self.method, self.steps, self.opts = rm, method, steps, opts
        self.m0 = None              # masked tokens at the start, set by the caller (confidence)
        self.t, self.sb = time_grid(schedule, steps, t_min)
        if method == "exact":
            self.sb_mid = schedule.sigma_bar((self.t[:-1] + self.t[1:]) / 2).to(torch.float64)
        if method == "confidence":
            alpha = torch.exp(-self.sb)
            self.masked_fraction = (1 - alpha) / (1 - alpha[0])      # after step k: index k + 1

    def dsigma(self, k):
        return (self.sb[k] - self.sb[k + 1]).item()

    def shape(self, probs, x):
        return temper(probs, x, self.opts.temperature, self.opts.top_p) if self.opts.shapes else probs

    def predictor_probs(self, x, s, k):
        """Per-position step distributions of a factorised predictor step k (shaped)."""
        rm, method = self.rm, self.method
        if method in ("euler", "tweedie"):
            return self.shape(_factor_step(rm, x, s, self.dsigma(k), method), x)
        if method == "mdlm":
            sigma = 0.0
            if self.opts.remask is not None:
                sigma = remask_probability(*self.opts.remask, self.sb[k], self.sb[k + 1]).item()
            step = mdlm_step_probs(s, x, self.sb[k].item(), self.sb[k + 1].item(), remask=sigma)
            return self.shape(step, x)
        # confidence="max": the positions are chosen from the denoiser before anything is drawn
        p = self.shape(_denoiser(s, x, rm.mask), torch.full_like(x, rm.mask))
        keep = self.reveal_set(p.max(-1).values, x, k)
        return torch.where(keep[..., None], p, torch.nn.functional.one_hot(x, rm.n).to(p.dtype))

    def reveal_count(self, x, k, m0):
        """How many tokens step k reveals in each sequence (B,)."""
        m0 = torch.as_tensor(m0, device=x.device)
        target = torch.floor(m0 * self.masked_fraction[k + 1].item() + 0.5).long()
        return ((x == self.rm.mask).sum(-1) - target).clamp_min(0)

    def reveal_set(self, confidence, x, k):
        """The masked positions of highest confidence, as many as step k reveals (ties: lower
        position first), (B, d) bool: the one selection rule of the sampler and its exact law."""
        masked = x == self.rm.mask
        key = torch.where(masked, confidence.to(torch.float64), torch.full_like(confidence, -math.inf,
                                                                                 dtype=torch.float64))
        order = torch.argsort(-key, dim=-1, stable=True)
        rank = torch.empty_like(order).scatter_(-1, order, torch.arange(x.shape[-1], device=x.device)
                                                .expand_as(order).contiguous())
        return masked & (rank < self.reveal_count(x, k, self.m0)[:, None])

    def corrector_probs(self, x, s, k):
        """One tau-leaping step of the corrector ``Q + Qbar`` at sigma_bar_{k+1} (Campbell et al.)."""
        rm = self.rm
        ds = self.opts.corrector_size * self.dsigma(k)
        forward = rm.Q.to(device=x.device, dtype=s.dtype).T[x]          # entry y: Q[y, x]
        column = forward + rm.reverse_rates(x, s)
        probs = (torch.nn.functional.one_hot(x, rm.n).to(s.dtype) + ds * column).clamp_min(0)
        return probs / probs.sum(-1, keepdim=True)

    def denoise(self, x, s):
        return self.shape(_denoise_step(self.rm, x, s, self.sb[-1].item()), x)


def _jump_rates(score_fn, rm, x, sb_mid, frozen=None):
    """Off-diagonal reverse rates of every single-token jump, (B, d, n), >= 0.

    ``frozen`` (B, d) bool marks clamped positions, which never jump.
    """
    s = _score(score_fn, x, sb_mid, rm.n)
    rates = rm.reverse_rates(x, s).scatter(-1, x[..., None], 0.0).clamp_min(0)
    if frozen is not None:
        rates = rates.masked_fill(frozen[..., None], 0.0)
    return rates


def _exact_interval(score_fn, rm, x, sb_mid, dsigma, clamp, generator):
    """Gillespie simulation over one interval of length dsigma with rates frozen at sb_mid."""
    B, d = x.shape
    n = rm.n
    x = x.clone()
    remaining = torch.full((B,), float(dsigma), dtype=torch.float64, device=x.device)
    active = torch.arange(B, device=x.device)
    while active.numel():
        xa = x[active]
        rates = _jump_rates(score_fn, rm, xa, sb_mid, None if clamp is None else clamp[0][active])
        total = rates.sum((1, 2)).to(torch.float64)
        u = torch.rand(active.shape, generator=generator, dtype=torch.float64, device=x.device)
        hold = -torch.log1p(-u) / total                 # Exp(total); inf when nothing can jump
        jumps = hold < remaining[active]
        if not jumps.any():
            break
        active = active[jumps]
        remaining[active] -= hold[jumps]
        flat = rates[jumps].reshape(active.numel(), d * n)
        pick = _draw(flat / flat.sum(-1, keepdim=True), generator)
        x[active, pick // n] = pick % n
    return x


def _drawn_confidence_step(run, x, s, k, generator):
    """confidence="drawn": every masked position draws, the most confident draws are kept."""
    mask = run.rm.mask
    p = run.shape(_denoiser(s, x, mask), torch.full_like(x, mask))
    z = _draw(p, generator, run.opts.gumbel_bits)
    keep = run.reveal_set(p.gather(-1, z[..., None])[..., 0], x, k)
    return torch.where(keep, z, x)


# ------------------------------------------------------------------------------ samplers
def sample(rm, schedule, score_fn, batch, d, steps, method="tweedie", *, x_T=None, clamp=None,
           denoise=True, t_min=1e-5, generator=None, progress=False, device=None,
           temperature=1.0, top_p=1.0, remask=None, corrector_steps=0, corrector_size=1.0,
           confidence="max", cache=False, gumbel_bits=None, return_stats=False):
    """Draw ``batch`` sequences of ``d`` tokens by running the reverse process (lessons 5, 11).

    ``method`` is one of ``ALL_METHODS`` (see the module docstring); ``steps`` intervals on
    the grid ``t_k = 1 - k (1 - t_min) / steps``. The chain starts at ``x_T`` (B, d), by default a
    draw from the base law: all-MASK for :class:`Absorbing`, the stationary law otherwise.
    ``clamp = (positions_mask, values)``, each of shape (d,) or (B, d), fixes tokens at the start
    and after every step (conditioning, infilling); under "exact" clamped positions never jump.
    ``denoise`` takes the final Tweedie step from ``sigma_bar(t_min)`` to 0. ``device`` (default:
    that of ``x_T``, else of ``generator``, else CPU) is where the tokens live. The options
    ``temperature``, ``top_p``, ``remask``, ``corrector_steps``, ``corrector_size``,
    ``confidence``, ``cache`` and ``gumbel_bits`` are described in the module docstring (lesson
    11). Returns (batch, d) int64, and with ``return_stats`` also ``{"network_calls",
    "evaluations", "steps"}``: calls of ``score_fn``, sequences it was given, and steps taken.
    """
    rm = _check_common(rm, schedule, d, steps, method, t_min)
    opts = _options(rm, method, temperature, top_p, remask, corrector_steps, corrector_size,
                    confidence, cache, gumbel_bits)
    as_int(batch, "batch", 1)
    if device is None:
        device = x_T.device if isinstance(x_T, torch.Tensor) else (
            generator.device if generator is not None else torch.device("cpu"))
    device = torch.device(device)
    clamp = check_clamp(clamp, batch, d, rm.n, device)
    if x_T is None:
        base = rm.stationary().to(torch.float64).to(device)
        x = sample_categorical(base.expand(batch, d, rm.n), generator)
    else:
        x = as_tokens(x_T, rm.n, "x_T").to(device)
        if tuple(x.shape) != (batch, d):
            raise ValueError(f"x_T has shape {tuple(x.shape)}, expected ({batch}, {d})")
    x = _apply_clamp(x, clamp)
    run = _Run(rm, schedule, method, steps, t_min, opts)
    scorer = _Scorer(score_fn, rm, opts.cache)
    counted = lambda x, sb: scorer.cache._eval(x, sb)          # noqa: E731  (Gillespie's calls)
    run.m0 = (x == rm.mask).sum(-1) if method == "confidence" else None
    bits = opts.gumbel_bits
    taken = 0
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc=f"sample {method}", leave=False)
    for k in iterator:
        if method == "exact":
            x = _exact_interval(counted, rm, x, run.sb_mid[k].item(), run.dsigma(k), clamp,
                                generator)
        elif method == "confidence" and opts.confidence == "drawn":
            x = _drawn_confidence_step(run, x, scorer(x, run.sb[k].item()), k, generator)
        else:
            x = _draw(run.predictor_probs(x, scorer(x, run.sb[k].item()), k), generator, bits)
        x = _apply_clamp(x, clamp)
        taken += 1
        if k < steps - 1:
            for _ in range(opts.corrector_steps):
                s = scorer(x, run.sb[k + 1].item())
                x = _apply_clamp(_draw(run.corrector_probs(x, s, k), generator, bits), clamp)
                taken += 1
    if denoise:
        x = _draw(run.denoise(x, scorer(x, run.sb[-1].item())), generator, bits)
        x = _apply_clamp(x, clamp)
        taken += 1
    if return_stats:
        return x, {**scorer.cache.stats(), "steps": taken}
    return x


def _kernel(probs, states):
    """K[a, b] = prod_i probs[a, i, states[b, i]]: the factorised step from each row's sequence."""
    K = torch.ones(probs.shape[0], states.shape[0], dtype=probs.dtype)
    for i in range(states.shape[1]):
        K = K * probs[:, i, states[:, i]]
    return K


def _reverse_generator(score_fn, rm, states, support, sb_mid, frozen):
    """The whole-sequence reverse generator Qbar (N, N) with rates at sb_mid, on the states
    reachable from ``support`` (other columns are zero: those sequences carry no mass)."""
    N, d = states.shape
    n = rm.n
    strides = flat_strides(n, d)
    Qbar = torch.zeros(N, N, dtype=torch.float64)
    done = torch.zeros(N, dtype=torch.bool)
    frontier = support.nonzero()[:, 0]
    y = torch.arange(n)
    while frontier.numel():
        done[frontier] = True
        xs = states[frontier]
        fr = None if frozen is None else frozen.expand(frontier.numel(), d)
        rates = _jump_rates(score_fn, rm, xs, sb_mid, fr).to(torch.float64)        # (F, d, n)
        target = frontier[:, None, None] + (y[None, None, :] - xs[:, :, None]) * strides[None, :, None]
        src = frontier[:, None, None].expand_as(target)
        Qbar.index_put_((target.reshape(-1), src.reshape(-1)), rates.reshape(-1), accumulate=True)
        Qbar[frontier, frontier] -= rates.sum((1, 2))
        reached = torch.zeros(N, dtype=torch.bool)
        reached[target[rates > 0]] = True
        frontier = (reached & ~done).nonzero()[:, 0]
    return Qbar


def _drawn_confidence_kernel(run, xs, s, k, states, frozen):
    """The exact kernel (S, N) of one confidence="drawn" step: every joint draw enumerated."""
    rm, n = run.rm, run.rm.n
    mask = rm.mask
    S, d = xs.shape
    p = run.shape(_denoiser(s, xs, mask), torch.full_like(xs, mask)).to(torch.float64)
    law = gumbel_max_law(p, run.opts.gumbel_bits) if run.opts.gumbel_bits else p
    draws = all_sequences(n - 1, d)                                   # every clean completion
    C = draws.shape[0]
    masked = xs == mask
    if frozen is not None:
        masked = masked & ~frozen[None]
    # probability of each completion: the draw at masked positions, the token itself elsewhere
    w = torch.ones(S, C, dtype=torch.float64)
    conf = torch.empty(S, C, d, dtype=torch.float64)
    for i in range(d):
        pi = law[:, i, draws[:, i]]                                   # (S, C)
        same = (draws[None, :, i] == xs[:, i, None]).to(torch.float64)
        w = w * torch.where(masked[:, i, None], pi, same)
        conf[:, :, i] = p[:, i, draws[:, i]]
    xs_rep = xs[:, None, :].expand(S, C, d).reshape(S * C, d)
    keep = run.reveal_set(conf.reshape(S * C, d), xs_rep, k).reshape(S, C, d)
    ys = torch.where(keep, draws[None].expand(S, C, d), xs[:, None, :])
    target = (ys * flat_strides(n, d)).sum(-1)                        # (S, C)
    K = torch.zeros(S, states.shape[0], dtype=torch.float64)
    return K.scatter_add_(1, target, w)


def exact_sampler_distribution(rm, schedule, score_fn, d, steps, method, *, clamp=None,
                               denoise=True, t_min=1e-5, **options) -> torch.Tensor:
    """The exact law, shape (n,)*d, of what ``sample`` produces with these settings (lessons 5, 11).

    No Monte Carlo: the law over all n^d sequences starts at the base law (clamped) and is pushed
    through each step's kernel: the product over positions of the per-position step
    distributions for the factorised steps (every method but two), the sum over every joint draw
    for ``confidence="drawn"``, ``expm(dsigma Qbar)`` of the whole-sequence reverse generator
    (rates frozen at the interval's midpoint) for "exact", then the denoising step. ``options``
    are :func:`sample`'s (temperature, top_p, remask, corrector_steps, corrector_size,
    confidence, cache, gumbel_bits): with ``cache`` the law is carried on pairs (sequence, grid
    time of its cached score); with ``gumbel_bits`` each per-position distribution is replaced by
    the law of its b-bit Gumbel-max draw (:func:`gumbel_max_law`). ``clamp = (positions_mask (d,),
    values (d,))``. The score function is only called at sequences the law can reach, so an
    oracle for a p0 with zeros is fine as long as the sampler stays on its support. Small n^d
    only (at most MAX_STATES sequences).
    """
    rm = _check_common(rm, schedule, d, steps, method, t_min)
    opts = _options(rm, method, **options)
    n = rm.n
    N = n ** d
    if N > MAX_STATES:
        raise ValueError(f"n^d = {n}^{d} = {N} sequences is too many for an exact law "
                         f"(at most {MAX_STATES}); use sample() and Monte Carlo instead")
    states = all_sequences(n, d)
    if clamp is not None:
        c = check_clamp(clamp, 1, d, n, torch.device("cpu"))
        frozen, cvalues = c[0][0], c[1][0]
        if not (tuple(torch.as_tensor(clamp[0]).shape) == (d,)):
            raise ValueError(f"exact_sampler_distribution takes a clamp of shape ({d},)")
    else:
        frozen = cvalues = None

    def pin(probs):
        """Clamped positions go to their value with probability one."""
        if frozen is None:
            return probs
        onehot = torch.nn.functional.one_hot(cvalues, n).to(probs.dtype)
        return torch.where(frozen[None, :, None], onehot[None], probs)

    # initial law: product of the per-token base law, clamped positions pinned
    base = pin(rm.stationary().to(torch.float64).expand(1, d, n))
    law = _kernel(base, states)[0]
    run = _Run(rm, schedule, method, steps, t_min, opts)
    if method == "exact":
        for k in range(steps):
            Qbar = _reverse_generator(score_fn, rm, states, law > 0, run.sb_mid[k].item(),
                                      None if frozen is None else frozen[None])
            law = torch.linalg.matrix_exp(run.dsigma(k) * Qbar) @ law
            law = law.clamp_min(0)
            law = law / law.sum()
        if denoise:
            law = _exact_denoise(rm, score_fn, states, law, run, pin)
        return law.reshape((n,) * d)

    run.m0 = d - (0 if frozen is None else int(frozen.sum()))
    bits = opts.gumbel_bits
    FRESH = -1              # tag of sequences whose next score is a fresh evaluation

    def push(laws, j, kernel_of):
        """One step whose scores are read at grid point j; kernel_of(xs, s) -> (S, N)."""
        out = {}
        for tag, lw in laws.items():
            support = lw > 0
            if not support.any():
                continue
            idx = support.nonzero()[:, 0]
            xs = states[idx]
            at = j if tag == FRESH else tag
            s = _score(score_fn, xs, run.sb[at].item(), n)
            if at != j:                               # a cached score, carried to grid point j
                s = _carry_score(s, run.sb[at].expand(len(idx)), run.sb[j].expand(len(idx)))
                s = s.scatter(-1, xs[..., None], 1.0)
            K = kernel_of(xs, s)
            moved = lw[support].to(torch.float64) @ K
            if not opts.cache:
                out[FRESH] = out.get(FRESH, 0) + moved
                continue
            stay = torch.zeros(N, dtype=torch.float64)
            stay[idx] = lw[idx] * K[torch.arange(len(idx)), idx]
            out[at] = out.get(at, 0) + stay
            out[FRESH] = out.get(FRESH, 0) + (moved - stay).clamp_min(0)
        total = sum(v.sum() for v in out.values())
        return {tag: v / total for tag, v in out.items()}

    def factorised(probs_of):
        def kernel_of(xs, s):
            probs = pin(probs_of(xs, s)).to(torch.float64)
            if bits is not None:
                probs = gumbel_max_law(probs, bits)
            return _kernel(probs, states)
        return kernel_of

    laws = {FRESH: law}
    for k in range(steps):
        if method == "confidence" and opts.confidence == "drawn":
            laws = push(laws, k, lambda xs, s: _drawn_confidence_kernel(run, xs, s, k, states,
                                                                        frozen))
        else:
            laws = push(laws, k, factorised(lambda xs, s: run.predictor_probs(xs, s, k)))
        if k < steps - 1:
            for _ in range(opts.corrector_steps):
                laws = push(laws, k + 1, factorised(lambda xs, s: run.corrector_probs(xs, s, k)))
    if denoise:
        laws = push(laws, steps, factorised(run.denoise))
    if len(laws) == 1:                                # already normalised by push
        return next(iter(laws.values())).reshape((n,) * d)
    law = sum(laws.values())
    return (law / law.sum()).reshape((n,) * d)


def _exact_denoise(rm, score_fn, states, law, run, pin):
    support = law > 0
    probs = pin(denoise_probs(rm, score_fn, states[support], run.sb[-1].item()))
    law = law[support] @ _kernel(probs.to(torch.float64), states)
    return law / law.sum()


def kl_vs_steps(rm, schedule, score_fn, d, p_data, steps, methods=("euler", "tweedie"),
                **kwargs) -> dict:
    """``{method: [KL(p_data || law of the sampler with k steps) for k in steps]}``, exactly.

    The curves of lessons 5, 8 and 11: each law comes from :func:`exact_sampler_distribution` (no
    Monte Carlo); ``kwargs`` (clamp, denoise, t_min and the lesson-11 options) are passed on to it.
    """
    with torch.no_grad():
        return {m: [float(kl_divergence(p_data, exact_sampler_distribution(
            rm, schedule, score_fn, d, k, m, **kwargs))) for k in steps] for m in methods}


def entropy(p) -> torch.Tensor:
    """Shannon entropy ``-sum p log p`` in nats of a law over all its axes (lesson 11), float64."""
    p = as_float(p, torch.float64, "p")
    if (p < 0).any() or not torch.isfinite(p).all():
        raise ValueError("p must be finite and non-negative")
    return -torch.xlogy(p, p).sum() + 0.0        # + 0.0: a point mass has entropy 0, not -0


def law_scores(q, p0, judge) -> dict:
    """The four ways lesson 11 scores a sampler's exact law q (all over the same axes as p0).

    ``kl``: ``KL(p0 || q)`` in nats, what a sampler should drive to 0; ``judge``: the judge's
    cross-entropy ``E_q[-log judge]`` in nats per sequence, the toy's generative perplexity
    (``exp``), which is ``entropy + KL(q || judge)`` and so rewards a low entropy; ``entropy``:
    ``H(q)``; ``support``: ``q(p0 > 0)``, the mass on real data (the toy's word rate). Floats.
    """
    q, p0, judge = (as_float(v, torch.float64, name) for v, name in ((q, "q"), (p0, "p0"),
                                                                   (judge, "judge")))
    if not (q.shape == p0.shape == judge.shape):
        raise ValueError(f"q, p0 and judge must have one shape, got {tuple(q.shape)}, "
                         f"{tuple(p0.shape)}, {tuple(judge.shape)}")
    if ((q > 0) & (judge <= 0)).any():
        raise ValueError("the judge gives probability 0 to a sequence the sampler produces: its "
                         "cross-entropy is infinite (smooth the judge)")
    cross = -torch.xlogy(q, judge.clamp_min(torch.finfo(torch.float64).tiny)).sum()
    return {"kl": float(kl_divergence(p0, q)), "judge": float(cross),
            "entropy": float(entropy(q)), "support": float(q[p0 > 0].sum())}


def expected_evaluations(schedule, d: int, steps: int, t_min: float = 1e-5) -> float:
    """Expected network evaluations of one sequence under the cached MDLM sampler (lesson 10).

    ``mdlm.mdlm_sample(..., cache=True)`` (and ``sample(..., cache=True)`` with a normalised
    denoiser) evaluates the network at transition 0 and at every transition after one that
    revealed a token; the last of the ``steps + 1`` transitions goes to sigma_bar = 0. Each of the
    d tokens, masked at t = 1, is revealed in transition j with probability
    ``q_j = (alpha_{j+1} - alpha_j) / (1 - alpha_0)``, independently of the others and of the
    denoiser, so ``E = 1 + sum_{j=0}^{steps-1} (1 - (1 - q_j)^d)``: at most ``min(steps, d) + 1``.
    """
    d, steps = as_int(d, "d", 1), as_int(steps, "steps", 1)
    _, sb = time_grid(check_schedule(schedule), steps, as_real(t_min, "t_min", 0.0, 1.0))
    alpha = torch.exp(-sb)
    q = (alpha[1:] - alpha[:-1]) / (1 - alpha[0])
    return float(1 + (-torch.expm1(d * torch.log1p(-q))).sum())


__all__ = ["METHODS", "MASKED_METHODS", "ALL_METHODS", "CONFIDENCES", "REMASK_KINDS",
           "check_scores", "check_options", "sample", "exact_sampler_distribution", "time_grid", "kl_vs_steps",
           "temper", "mdlm_step_probs", "remask_probability", "gumbel_max_sample", "gumbel_max_law",
           "EvaluationCache", "entropy", "law_scores", "expected_evaluations", "denoise_probs"]
