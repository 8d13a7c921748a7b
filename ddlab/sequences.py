"""Sequences of d tokens on the product space (n,)*d, computed exactly (lesson 7).

Each token is noised independently with the same Q, so the transition of a whole sequence is the
Kronecker product of d per-token transitions. It is never formed. The marginal ``p_t`` is the
per-token transition applied along every axis of the joint ``p0`` in turn; each application is one
matrix product of shape (n^(d-1), n) x (n, n), so a marginal costs d n^(d+1) flops and two arrays
of n^d floats.

What lives here:

* exact marginals, Hamming-1 ratios and the exact oracle ``exact_score_fn`` (any ``p0``);
* the exact *joint* denoiser ``p_{0|t}(x0 | x_t)`` and the exact reverse kernel
  ``p(x_s | x_t)`` over whole sequences, beside the factorised kernel a sequence model uses
  (the product of per-token Tweedie steps), and the KL that factorisation costs;
* conditioning by Bayes' rule on clamped positions (prompting and infilling);
* toy sequence distributions: a vocabulary of words, a Markov chain, parity-constrained strings.

Memory: everything here holds arrays of n^d float64 values. Before allocating one, the functions
compare what they would need with the memory available (or a ``max_bytes`` argument) and raise a
ValueError saying how much it would take.
"""

from __future__ import annotations

import math
import os

import torch

from ._checks import as_batch, as_float, as_rate_matrix, as_tokens, check_clamp, check_sigma_bar
from .exact import kl_divergence
from .rate_matrices import Absorbing

# ------------------------------------------------------------------------- memory accounting


def memory_needed(n: int, d: int, itemsize: int = 8) -> int:
    """Bytes needed to hold one joint distribution on (n,)*d (float64 by default)."""
    return int(math.prod([int(n)] * int(d))) * itemsize


def available_memory() -> int:
    """Bytes of memory the system reports as available (MemAvailable on Linux).

    Falls back to the free physical pages from ``os.sysconf`` elsewhere, and to 4 GiB when
    neither can be read.
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def check_memory(n: int, d: int, copies: int = 1, max_bytes: int | None = None,
                 what: str = "this computation") -> int:
    """Raise ValueError if ``copies`` arrays of n^d float64 would not fit; else return the bytes.

    ``max_bytes`` defaults to 80% of :func:`available_memory`.
    """
    need = copies * memory_needed(n, d)
    limit = int(0.8 * available_memory()) if max_bytes is None else int(max_bytes)
    if need > limit:
        raise ValueError(
            f"{what} on (n,)*d with n = {n}, d = {d} ({n}^{d} = {_fmt_count(n ** d)} sequences) needs "
            f"{copies} float64 array(s) of {_fmt_bytes(memory_needed(n, d))}, "
            f"{_fmt_bytes(need)} in all, but only {_fmt_bytes(limit)} is allowed "
            f"(max_bytes = {limit}); use a smaller n or d")
    return need


def _fmt_count(c: int) -> str:
    return f"{c:,}" if c < 10 ** 15 else f"about 10^{len(str(c)) - 1}"


def _fmt_bytes(b: int) -> str:
    b = int(b)
    if b >= 1 << 60:                      # beyond any machine: say how many digits it has
        return f"about 10^{len(str(b)) - 1} B"
    value = float(b)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{b} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{b} B"  # pragma: no cover


# ------------------------------------------------------------------------- joints and marginals


def _check_joint(p0, n: int | None = None, name: str = "p0") -> torch.Tensor:
    p0 = as_float(p0, torch.float64)
    if n is None:
        n = p0.shape[0] if p0.dim() else 0
    if p0.dim() < 1 or any(s != n for s in p0.shape):
        raise ValueError(f"{name} must have shape (n,)*d with n = {n}, got shape {tuple(p0.shape)}")
    # before any elementwise check: a broadcast (zero-stride) p0 is tiny in memory, but every
    # check and every computation on it materialises all n^d entries
    check_memory(n, p0.dim(), 2, None, f"a joint {name}")
    if not torch.isfinite(p0).all():
        raise ValueError(f"{name} must be finite, got a NaN or infinite entry")
    if (p0 < 0).any():
        idx = tuple((p0 < 0).nonzero()[0].tolist())
        raise ValueError(f"{name} must be non-negative, got {p0[idx].item():.6g} at {idx}")
    total = p0.sum().item()
    if abs(total - 1) > 1e-6:
        raise ValueError(f"{name} must sum to 1, but sums to {total:.8g}")
    return p0


def _apply_on_every_axis(M: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``(M kron M kron ... kron M) vec(p)`` for p of shape (n,)*d, as a few matrix products.

    Each product contracts the *last* g axes with ``kron(M, ..., M)`` (n^g x n^g) and puts the
    result first: ``new = M_g @ p.reshape(-1, n^g).T``, shape (n^g, n^(d-g)). After the products
    have gone round all d axes they are back in order. Why this shape: with n = 4 one product per
    axis is a (n^(d-1), 4) x (4, 4) matrix product, limited by memory traffic; grouping g axes
    (n^g <= 32) cuts the number of passes over the n^d array by g, and writing into two reused
    buffers avoids allocating (and page-faulting) a fresh n^d array per pass. Measured on a
    loaded 2-core CPU for n = 4, d = 12: ~1 s instead of ~3 s for the one-axis-at-a-time loop.
    """
    n, d = p.shape[0], p.dim()
    g = 1
    while g < d and n ** (g + 1) <= 32:
        g += 1
    out = p.reshape(-1)
    buffers = [torch.empty_like(out), torch.empty_like(out)]
    left, k = d, 0
    while left > 0:
        group = min(g, left)
        Mg = M
        for _ in range(group - 1):
            Mg = torch.kron(Mg, M)
        m = n ** group
        dst = buffers[k % 2]                  # never p itself: the input is left untouched
        torch.mm(Mg, out.view(-1, m).T, out=dst.view(m, -1))
        out, left, k = dst, left - group, k + 1
    return out.reshape(p.shape)


def product_marginal(rm, p0, sigma_bar, max_bytes: int | None = None) -> torch.Tensor:
    """``p_t`` on (n,)*d for a scalar sigma_bar: the per-token transition on every axis (lesson 7).

    ``p_t[y_1..y_d] = sum_x P[y_1, x_1] ... P[y_d, x_d] p0[x_1..x_d]`` with
    ``P = expm(sigma_bar Q)``. Costs d n^(d+1) flops and two extra arrays of n^d float64
    (ValueError beforehand if they would not fit in ``max_bytes`` / the available memory).
    """
    rm = as_rate_matrix(rm)
    p0 = _check_joint(p0, rm.n)
    sb = check_sigma_bar(sigma_bar)
    if sb.dim() != 0:
        raise ValueError(f"sigma_bar must be a scalar here, got shape {tuple(sb.shape)}")
    check_memory(rm.n, p0.dim(), 2, max_bytes, "product_marginal")
    return _marginal(rm, p0, float(sb))


def _marginal(rm, p0: torch.Tensor, sb: float) -> torch.Tensor:
    """product_marginal without the input checks (p0 already validated)."""
    P = rm.transition(torch.tensor(sb, dtype=torch.float64)).to(torch.float64).contiguous()
    return _apply_on_every_axis(P, p0.contiguous())


def flat_strides(n: int, d: int, device=None) -> torch.Tensor:
    """Row-major strides of the flat index of a sequence on (n,)*d."""
    return torch.tensor([n ** (d - 1 - i) for i in range(d)], dtype=torch.long, device=device)


def _hamming1_parts(flat: torch.Tensor, x: torch.Tensor, n: int, which: torch.Tensor | None = None):
    """Numerators ``pt(x_b with token i set to y)`` (B, d, n) and denominators ``pt(x_b)`` (B,).

    ``flat`` is (V, n^d): V marginals flattened; sequence b reads marginal ``which[b]`` (all 0
    when ``which`` is None).
    """
    d = x.shape[1]
    strides = flat_strides(n, d, x.device)
    base = (x * strides).sum(-1)                                          # (B,)
    y = torch.arange(n, device=x.device)
    idx = base[:, None, None] + (y[None, None, :] - x[:, :, None]) * strides[None, :, None]
    v = torch.zeros_like(base) if which is None else which
    return flat[v[:, None, None], idx], flat[v, base]


def _ratios(num, den, x, sb, off_support: str) -> torch.Tensor:
    """num / den, with the off-support convention (or an error) where den = 0."""
    good = den > 0
    if bool(good.all()):
        return num / den[:, None, None]
    if off_support == "raise":
        b = int((~good).nonzero()[0])
        raise ValueError(f"sequence {x[b].tolist()} has probability 0 under p_t; "
                         f"its ratios are undefined (for an absorbing chain, exact_score_fn("
                         f"..., off_support='conditional') gives a finite convention there)")
    out = torch.empty_like(num)
    out[good] = num[good] / den[good][:, None, None]
    for value in torch.unique(sb[~good]).tolist():
        rows = (~good) & (sb == value)
        out[rows] = _off_support_absorbing(num[rows], x[rows], value)
    return out


_BATCHED_BYTES = 64 << 20


def _marginals_batched(rm, p0: torch.Tensor, sbs: torch.Tensor) -> torch.Tensor:
    """p_t for V noise levels at once, shape (V, n^d): one batched product per axis."""
    n, d = p0.shape[0], p0.dim()
    P = rm.transition(sbs.to(torch.float64)).to(torch.float64)            # (V, n, n)
    cur = p0.reshape(1, -1, n).expand(len(sbs), -1, -1)
    for _ in range(d):
        # contract the last axis, put the result first (as in _apply_on_every_axis)
        cur = torch.matmul(P, cur.transpose(1, 2)).reshape(len(sbs), -1, n)
    return cur.reshape(len(sbs), -1)


def hamming1_ratios(pt: torch.Tensor, x) -> torch.Tensor:
    """``s[b, i, y] = pt(x_b with token i set to y) / pt(x_b)``, shape (B, d, n) (lesson 7).

    ``x`` has shape (B, d); every x_b must have pt(x_b) > 0 (a ratio at a zero-probability
    sequence is undefined and raises ValueError naming the sequence). Entry y = x_b[i] is 1.
    """
    d, n = pt.dim(), pt.shape[0]
    x = as_tokens(x, n, "x").to(pt.device)
    if x.dim() != 2 or x.shape[1] != d:
        raise ValueError(f"x must have shape (B, {d}), got {tuple(x.shape)}")
    num, den = _hamming1_parts(pt.reshape(1, -1), x, n)
    return _ratios(num, den, x, torch.zeros(x.shape[0], dtype=torch.float64), "raise")


def _off_support_absorbing(num: torch.Tensor, x: torch.Tensor, sb: float) -> torch.Tensor:
    """Ratios at sequences with p_t(x) = 0 for the absorbing chain (see exact_score_fn)."""
    n = num.shape[-1]
    M = n - 1
    clean = num[..., :M]
    total = clean.sum(-1, keepdim=True)
    cond = torch.where(total > 0, clean / torch.where(total > 0, total, torch.ones_like(total)),
                       torch.full_like(clean, 1.0 / M))
    if sb <= 0 and (x == M).any():
        raise ValueError("a masked token at sigma_bar = 0 has no ratios (r = 1/(e^0 - 1) = inf)")
    s = torch.ones_like(num)
    if sb > 0:
        s[..., :M] = cond / math.expm1(sb)
    return torch.where((x == M)[..., None], s, torch.ones_like(s))


def exact_score_fn(p0, rm, schedule=None, max_bytes: int | None = None, *,
                   off_support: str = "raise"):
    """An oracle score function for a joint ``p0`` of shape (n,)*d (lesson 7).

    Returns ``score_fn(x_t, sigma_bar) -> (B, d, n)`` with the exact Hamming-1 ratios
    ``p_t(x with x_i = y) / p_t(x)`` in float64, the same signature as a network's score function,
    so exact oracles and networks are interchangeable in samplers and in ``nll_bound``.
    ``x_t`` is (B, d) (or (B,) when d = 1); ``sigma_bar`` is a scalar, (B,) or (B, 1). The marginal
    is computed once per distinct sigma_bar and cached (the cache holds at most ~256 MiB of
    marginals, and always the latest one); a batch with many distinct sigma_bar on a small space
    (a loss batch, one t per sequence) gets all its marginals from one batched product per axis.
    ``schedule`` is kept as ``score_fn.schedule``.
    A sequence with p_t(x_t) = 0 has no ratios. With ``off_support="raise"`` (default) it raises
    ValueError. A sampler that updates positions independently can land there (lesson 7: two
    masks revealed in one step as letters from two different words), so for an ``Absorbing``
    chain ``off_support="conditional"`` gives the convention MDLM's denoiser follows: at a
    masked position, ``s_y = q(y) / (e^{sigma_bar} - 1)`` with ``q(y)`` proportional to
    ``p_t(x with x_i = y)`` (uniform over clean tokens if all are 0), the same form as the exact
    ratios on the support; at clean positions 1 (their reverse rates are 0 anyway).
    """
    rm = as_rate_matrix(rm)
    if off_support not in ("raise", "conditional"):
        raise ValueError(f"off_support must be 'raise' or 'conditional', got {off_support!r}")
    if off_support == "conditional" and not isinstance(rm, Absorbing):
        raise ValueError("off_support='conditional' is defined for Absorbing chains only; "
                         f"got {type(rm).__name__}")
    p0 = _check_joint(p0, rm.n)
    d = p0.dim()
    check_memory(rm.n, d, 3, max_bytes, "exact_score_fn")
    cache: dict[float, torch.Tensor] = {}
    keep = max(1, (256 << 20) // memory_needed(rm.n, d))

    def score_fn(x_t, sigma_bar):
        x_t = as_tokens(x_t, rm.n, "x_t")
        if x_t.dim() == 1 and d == 1:
            x_t = x_t[:, None]
        if x_t.dim() != 2 or x_t.shape[1] != d:
            raise ValueError(f"x_t must have shape (B, {d}), got {tuple(x_t.shape)}")
        B = x_t.shape[0]
        sb = check_sigma_bar(sigma_bar, dtype=torch.float64).cpu()
        if sb.dim() == 2 and sb.shape[1] == 1:
            sb = sb[:, 0]
        if sb.dim() > 1 or (sb.dim() == 1 and sb.shape[0] not in (1, B)):
            raise ValueError(f"sigma_bar must be a scalar or of shape ({B},) to match x_t, "
                             f"got shape {tuple(sb.shape)}")
        sb = torch.broadcast_to(sb, (B,))
        xc = x_t.cpu()
        uniq, which = torch.unique(sb, return_inverse=True)
        if len(uniq) > 1 and len(uniq) * memory_needed(rm.n, d) <= _BATCHED_BYTES:
            # many noise levels on a small space (a loss batch with one t per sequence): all
            # marginals at once, one batched matrix product per axis, no per-value Python loop
            flat = _marginals_batched(rm, p0, uniq)                       # (V, n^d)
            num, den = _hamming1_parts(flat, xc, rm.n, which)
            return _ratios(num, den, xc, uniq[which], off_support).to(x_t.device)
        out = torch.empty(B, d, rm.n, dtype=torch.float64)
        for k, value in enumerate(uniq.tolist()):
            if value not in cache:
                if len(cache) >= keep:
                    cache.clear()
                cache[value] = _marginal(rm, p0, value)   # p0 and memory checked above
            rows = which == k
            num, den = _hamming1_parts(cache[value].reshape(1, -1), xc[rows], rm.n)
            out[rows] = _ratios(num, den, xc[rows], torch.full((int(rows.sum()),), value,
                                dtype=torch.float64), off_support)
        return out.to(x_t.device)

    score_fn.p0 = p0
    score_fn.rm = rm
    score_fn.schedule = schedule
    score_fn.d = d
    score_fn.off_support = off_support
    return score_fn


# ------------------------------------------------------------------ whole-sequence posteriors


def _check_batch(x_t, n: int, d: int, name: str = "x_t") -> torch.Tensor:
    x_t = as_tokens(x_t, n, name)
    return as_batch(x_t[None] if x_t.dim() == 1 else x_t, n, name, d).cpu()


def _weight_by_rows(p: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``out[b, x] = p[x] * prod_i rows[b, i, x_i]``: shape (B,) + (n,)*d."""
    B, d, n = rows.shape
    out = p.unsqueeze(0).expand(B, *p.shape).clone()
    for i in range(d):
        shape = [B] + [1] * d
        shape[1 + i] = n
        out.mul_(rows[:, i].reshape(shape))
    return out


def joint_posterior(rm, p0, sigma_bar, x_t, max_bytes: int | None = None) -> torch.Tensor:
    """The exact denoiser over whole sequences, ``p_{0|t}(x0 | x_t)`` (lesson 7).

    ``p_{0|t}(x0 | x_t) = p0(x0) prod_i P[x_t,i, x0_i] / p_t(x_t)``, ``P = expm(sigma_bar Q)``.
    ``x_t`` is (B, d) or (d,); returns (B,) + (n,)*d, each slice summing to one. A sequence
    with p_t(x_t) = 0 raises ValueError. Compare with the per-token posteriors a sequence model
    gives (the marginals of this joint: :func:`token_posteriors`).
    """
    rm = as_rate_matrix(rm)
    p0 = _check_joint(p0, rm.n)
    n, d = rm.n, p0.dim()
    x_t = _check_batch(x_t, n, d)
    sb = check_sigma_bar(sigma_bar, dtype=torch.float64)
    if sb.dim() != 0:
        raise ValueError(f"sigma_bar must be a scalar here, got shape {tuple(sb.shape)}")
    check_memory(n, d, x_t.shape[0] + 1, max_bytes, "joint_posterior")
    rows = rm.transition_to(x_t, sb).to(torch.float64)                 # P[x_t,i, :]
    joint = _weight_by_rows(p0, rows)
    return _normalise_batch(joint, x_t, "p_t")


def token_posteriors(post: torch.Tensor) -> torch.Tensor:
    """Per-position marginals of a batch of joints (B,) + (n,)*d: shape (B, d, n) (lesson 7)."""
    post = as_float(post)
    d = post.dim() - 1
    axes = list(range(1, d + 1))
    return torch.stack([post.sum(dim=[a for a in axes if a != 1 + i]) if d > 1 else post
                        for i in range(d)], dim=1)


def product_of_marginals(probs: torch.Tensor) -> torch.Tensor:
    """The factorised joint ``q(x) = prod_i probs[b, i, x_i]`` of shape (B,) + (n,)*d (lesson 7).

    This is the distribution of one parallel step of a sequence model: every position drawn
    independently from its own per-token distribution.
    """
    probs = as_float(probs)
    if probs.dim() != 3:
        raise ValueError(f"probs must have shape (B, d, n), got {tuple(probs.shape)}")
    B, d, n = probs.shape
    return _weight_by_rows(torch.ones((n,) * d, dtype=probs.dtype), probs)


def exact_reverse_kernel(rm, p0, sigma_bar, dsigma, x_t, max_bytes: int | None = None):
    """The exact reverse step over whole sequences, ``p(x_s | x_t)`` (lesson 7).

    With ``sigma_bar_s = sigma_bar - dsigma`` and ``P_d = expm(dsigma Q)``:
    ``p(x_s | x_t) = p_s(x_s) prod_i P_d[x_t,i, x_s,i] / p_t(x_t)`` (Bayes' rule, the forward
    step from s to t acting on each token independently). Returns (B,) + (n,)*d.
    ``0 <= dsigma <= sigma_bar``; dsigma = sigma_bar gives :func:`joint_posterior`.
    """
    rm = as_rate_matrix(rm)
    p0 = _check_joint(p0, rm.n)
    n, d = rm.n, p0.dim()
    x_t = _check_batch(x_t, n, d)
    sb, ds = _check_step(sigma_bar, dsigma)
    check_memory(n, d, x_t.shape[0] + 2, max_bytes, "exact_reverse_kernel")
    ps = product_marginal(rm, p0, sb - ds, max_bytes=max_bytes)
    rows = rm.transition_to(x_t, torch.tensor(ds, dtype=torch.float64)).to(torch.float64)
    return _normalise_batch(_weight_by_rows(ps, rows), x_t, "p_t")


def factorised_reverse_kernel(rm, score_fn, sigma_bar, dsigma, x_t) -> torch.Tensor:
    """The reverse step a sequence model takes: independent per-token Tweedie steps (lesson 7).

    ``q(x_s | x_t) = prod_i tweedie_probs(x_t,i, s_i, dsigma)[x_s,i]`` with the Hamming-1 ratios
    ``s = score_fn(x_t, sigma_bar)``. With the exact score each factor is exactly the marginal of
    :func:`exact_reverse_kernel` at that position; the only error is the missing correlation
    between positions. Returns (B,) + (n,)*d.
    """
    rm = as_rate_matrix(rm)
    sb, ds = _check_step(sigma_bar, dsigma)
    x_t = as_tokens(x_t, rm.n, "x_t")
    if x_t.dim() == 1:
        x_t = x_t[None]
    score = as_float(score_fn(x_t, torch.full((x_t.shape[0],), sb, dtype=torch.float64)),
                     torch.float64)
    probs = rm.tweedie_probs(x_t, score, torch.tensor(ds, dtype=torch.float64))
    return product_of_marginals(probs)


def factorisation_kl(rm, p0, sigma_bar, dsigma, x_t=None) -> torch.Tensor:
    """``KL(p(x_s | x_t) || prod_i q_i(x_s,i | x_t))`` for the exact score (lesson 7).

    The exact reverse kernel against the product of per-token Tweedie steps built from the exact
    Hamming-1 ratios. With ``x_t`` (B, d) it returns (B,) values; with ``x_t=None`` the average
    over x_t ~ p_t (all n^d sequences, weighted by p_t; for small toys). The KL vanishes like
    dsigma^2 as the step shrinks (two positions rarely change in one short step).
    """
    rm = as_rate_matrix(rm)
    p0 = _check_joint(p0, rm.n)
    n, d = rm.n, p0.dim()
    sb, ds = _check_step(sigma_bar, dsigma)
    weights = None
    if x_t is None:
        pt = product_marginal(rm, p0, sb)
        flat = pt.reshape(-1)
        keep = (flat > 0).nonzero()[:, 0]
        x_t = all_sequences(n, d)[keep]
        weights = flat[keep]
    x_t = _check_batch(x_t, n, d)
    exact = exact_reverse_kernel(rm, p0, sb, ds, x_t)
    approx = factorised_reverse_kernel(rm, exact_score_fn(p0, rm), sb, ds, x_t)
    kl = kl_divergence(exact, approx, d)
    return kl if weights is None else (weights * kl).sum() / weights.sum()


def _check_step(sigma_bar, dsigma):
    sb = check_sigma_bar(sigma_bar, dtype=torch.float64)
    ds = check_sigma_bar(dsigma, "dsigma", dtype=torch.float64)
    if sb.dim() or ds.dim():
        raise ValueError("sigma_bar and dsigma must be scalars here, got shapes "
                         f"{tuple(sb.shape)} and {tuple(ds.shape)}")
    sb, ds = float(sb), float(ds)
    if ds > sb * (1 + 1e-12):
        raise ValueError(f"dsigma = {ds:.6g} exceeds sigma_bar = {sb:.6g}: the step would go "
                         f"below sigma_bar = 0")
    return sb, min(ds, sb)


def _normalise_batch(joint: torch.Tensor, x_t: torch.Tensor, what: str) -> torch.Tensor:
    B = joint.shape[0]
    total = joint.reshape(B, -1).sum(-1)
    if (total <= 0).any():
        b = int((total <= 0).nonzero()[0])
        raise ValueError(f"sequence {x_t[b].tolist()} (batch index {b}) has probability 0 under "
                         f"{what}; its posterior is undefined")
    return joint / total.reshape((B,) + (1,) * (joint.dim() - 1))


# ------------------------------------------------------------------ conditioning (infilling)


def condition(p0, clamp) -> torch.Tensor:
    """The exact conditional ``p0(x | x_C = c)`` by Bayes' rule, shape (n,)*d (lesson 7).

    ``clamp = (positions, values)``: a bool mask of shape (d,) and tokens of shape (d,) (only the
    entries at clamped positions are read), the same pair ``ddlab.sampling.sample(clamp=...)``
    takes. Sequences that disagree with the clamp get probability 0, the rest are renormalised.
    Raises ValueError when the clamp has probability 0 under p0.
    """
    p0 = _check_joint(p0)
    n, d = p0.shape[0], p0.dim()
    positions, values = check_clamp(clamp, 1, d, n, torch.device("cpu"))
    positions, values = positions[0], values[0]
    out = p0.clone()
    for i in range(d):
        if positions[i]:
            keep = torch.zeros(n, dtype=out.dtype)
            keep[values[i]] = 1.0
            shape = [1] * d
            shape[i] = n
            out = out * keep.reshape(shape)
    total = out.sum()
    if total <= 0:
        shown = {i: int(values[i]) for i in range(d) if positions[i]}
        raise ValueError(f"the clamp {shown} (position: token) has probability 0 under p0; "
                         f"there is nothing to condition on")
    return out / total


def marginalise(p, keep) -> torch.Tensor:
    """Sum a joint of shape (n,)*d over every axis not in ``keep`` (a list of positions)."""
    p = as_float(p)
    keep = sorted(int(k) for k in keep)
    if any(k < 0 or k >= p.dim() for k in keep):
        raise ValueError(f"keep holds positions {keep}, expected positions in 0..{p.dim() - 1}")
    drop = [a for a in range(p.dim()) if a not in keep]
    return p.sum(dim=drop) if drop else p


# ------------------------------------------------------------------ enumeration and toys


def all_sequences(n: int, d: int, max_bytes: int | None = None) -> torch.Tensor:
    """Every sequence of (n,)*d as rows of an int64 tensor (n^d, d), in the order of ``reshape``."""
    check_memory(n, d, d, max_bytes, "all_sequences")
    grids = torch.meshgrid(*[torch.arange(n)] * d, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def add_mask_state(p0) -> torch.Tensor:
    """Embed a joint on (m,)*d into (m+1,)*d with probability 0 on the new last state, MASK.

    The data of an absorbing process never contains MASK; this pads a toy for ``Absorbing(m+1)``.
    """
    p0 = _check_joint(p0)
    return torch.nn.functional.pad(p0, [0, 1] * p0.dim())


def words_toy(words, alphabet: str | None = None, weights=None, mask: bool = False):
    """A "vocabulary" toy: p0 spread over a few equal-length words (lesson 7).

    ``words`` is a list of strings of one length d over ``alphabet`` (default: their letters,
    sorted). Returns ``(p0, alphabet)`` with p0 of shape (n,)*d, n = len(alphabet) (+1 with
    ``mask=True``, the MASK state last, shown as "_" by :func:`to_strings`). ``weights`` (one per
    word, positive) default to uniform.
    """
    words = list(words)
    if not words or any(not isinstance(w, str) for w in words):
        raise ValueError(f"words must be a non-empty list of strings, got {words!r}")
    d = len(words[0])
    if d == 0 or any(len(w) != d for w in words):
        raise ValueError(f"all words must have the same length >= 1, got lengths "
                         f"{sorted({len(w) for w in words})}")
    alphabet = "".join(sorted(set("".join(words)))) if alphabet is None else alphabet
    if len(set(alphabet)) != len(alphabet):
        raise ValueError(f"alphabet {alphabet!r} repeats a letter")
    missing = set("".join(words)) - set(alphabet)
    if missing:
        raise ValueError(f"letters {sorted(missing)} of the words are not in alphabet {alphabet!r}")
    w = torch.ones(len(words), dtype=torch.float64) if weights is None else as_float(weights, torch.float64)
    if w.shape != (len(words),) or not (w > 0).all() or not torch.isfinite(w).all():
        raise ValueError(f"weights must be {len(words)} positive finite numbers, got {weights!r}")
    n = len(alphabet)
    check_memory(n + mask, d, 1, None, "words_toy")
    p0 = torch.zeros((n + int(mask),) * d, dtype=torch.float64)
    for word, wt in zip(words, w):
        p0[tuple(alphabet.index(c) for c in word)] += wt
    return p0 / p0.sum(), alphabet


def markov_toy(T, p_init, d: int, mask: bool = False) -> torch.Tensor:
    """A Markov-chain toy: ``p0(x) = p_init[x_1] prod_i T[x_{i+1}, x_i]`` on (n,)*d (lesson 7).

    ``T[y, x] = p(next = y | current = x)``: columns sum to one, the same column convention as Q.
    With ``mask=True`` a MASK state of probability 0 is appended (for ``Absorbing(n + 1)``).
    """
    T = as_float(T, torch.float64)
    if T.dim() != 2 or T.shape[0] != T.shape[1]:
        raise ValueError(f"T must be a square (n, n) matrix, got shape {tuple(T.shape)}")
    n = T.shape[0]
    if (T < 0).any() or ((T.sum(0) - 1).abs() > 1e-9).any():
        raise ValueError(f"T must have non-negative entries and columns summing to 1 "
                         f"(T[y, x] = p(next = y | x)); column sums are {T.sum(0).tolist()}")
    p = _check_joint(p_init, n, "p_init")
    if p.dim() != 1:
        raise ValueError(f"p_init must have shape ({n},), got {tuple(p.shape)}")
    if not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    check_memory(n + mask, d, 2, None, "markov_toy")
    for _ in range(d - 1):
        p = p[..., :, None] * T.T          # new[..., x, y] = p[..., x] T[y, x]
    return add_mask_state(p) if mask else p.contiguous()


def parity_toy(d: int, n: int = 2, mask: bool = False) -> torch.Tensor:
    """Uniform over strings in {0..n-1}^d whose digits sum to 0 mod n (lesson 7).

    Every position is exactly uniform on its own, yet the last token is fixed by the others: the
    extreme case for a model that denoises positions independently.
    """
    if not isinstance(d, int) or d < 1 or not isinstance(n, int) or n < 2:
        raise ValueError(f"parity_toy needs integers d >= 1 and n >= 2, got d = {d!r}, n = {n!r}")
    check_memory(n + mask, d, 2, None, "parity_toy")
    total = all_sequences(n, d).sum(-1)
    p0 = (total % n == 0).to(torch.float64).reshape((n,) * d)
    p0 = p0 / p0.sum()
    return add_mask_state(p0) if mask else p0


def to_strings(x, alphabet: str, mask_char: str = "_") -> list[str]:
    """Token rows (B, d) as strings over ``alphabet``; id len(alphabet) (MASK) prints as "_"."""
    x = as_tokens(x, len(alphabet) + 1, "x")
    if x.dim() == 1:
        x = x[None]
    table = alphabet + mask_char
    return ["".join(table[int(t)] for t in row) for row in x]


__all__ = [
    "memory_needed", "available_memory", "check_memory",
    "product_marginal", "hamming1_ratios", "exact_score_fn",
    "joint_posterior", "token_posteriors", "product_of_marginals", "exact_reverse_kernel",
    "factorised_reverse_kernel", "kl_divergence", "factorisation_kl",
    "condition", "marginalise", "all_sequences", "add_mask_state",
    "words_toy", "markov_toy", "parity_toy", "to_strings",
]


def path_factorisation_kl(rm, schedule, p0, steps: int, t_min: float = 1e-5) -> dict:
    """The sum of per-step factorisation KLs along a k-step sampler's grid (lesson 7).

    On the grid of ``ddlab.sampling.sample``, ``t_k = 1 - k (1 - t_min) / steps`` (the same as
    ``sampling.time_grid``), each step from ``sigma_bar_k`` to ``sigma_bar_{k+1}`` costs
    ``E_{x_t ~ p_t} factorisation_kl`` (:func:`factorisation_kl` averaged over x_t), and the final
    denoising step from ``sigma_bar(t_min)`` to 0 costs the same with ``dsigma = sigma_bar``.
    Their sum is the KL between the path of the exact reverse chain and that of the factorised
    sampler with exact Hamming-1 ratios, both started from the exact ``p_1`` (the start-law
    mismatch is not included); by data processing it bounds the KL between their end laws.
    Returns ``dict(steps=sum over the k steps, final=the final denoising step, total=both)``
    as floats. Small toys only (every step enumerates all n^d sequences).
    """
    rm = as_rate_matrix(rm)
    p0 = _check_joint(p0, rm.n)
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    t = torch.linspace(1.0, float(t_min), steps + 1, dtype=torch.float64)
    sb = schedule.sigma_bar(t).to(torch.float64)
    total_steps = 0.0
    for k in range(steps):
        total_steps += float(factorisation_kl(rm, p0, float(sb[k]), float(sb[k] - sb[k + 1])))
    last = float(sb[-1])
    final = float(factorisation_kl(rm, p0, last, last)) if last > 0 else 0.0
    return {"steps": total_steps, "final": final, "total": total_steps + final}


__all__ += ["path_factorisation_kl"]
