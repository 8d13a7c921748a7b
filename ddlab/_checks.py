"""Input conversion and validation shared by every public function.

The public boundary accepts torch tensors, numpy arrays and Python numbers. Everything is turned
into a torch tensor here, and everything that would otherwise produce a NaN further down (a
negative sigma_bar, a distribution that does not sum to one, a token id out of range) is refused
here with a ValueError that names the bad value and says what was expected.
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np
import torch

# Tolerance for "sums to one" and "columns sum to zero" checks, relative to the size of the
# entries involved. Loose enough for float32 inputs, tight enough to catch a real mistake.
SUM_ATOL = 1e-6

# Checks that read tensor *values* (token range, finiteness, sign) cost a host synchronisation
# each on a GPU. The training loop validates its data once and then runs its steps inside
# skip_value_checks(); shape and dtype checks are free and always run.
_VALUE_CHECKS = contextvars.ContextVar("ddlab_value_checks", default=True)


@contextlib.contextmanager
def skip_value_checks():
    """Inside this block, skip the input checks that read tensor values (lesson 9).

    Every public function checks that token ids lie in 0..n-1, that sigma_bar is finite and
    non-negative, that scores are finite, and so on. On a GPU each such check copies a flag to the
    host and waits for the device, 14-15 times per training step. ``ddlab.text.train`` checks
    its corpus once, runs its steps in this block, and relies on its NaN guard instead. Shape and
    dtype checks still run. Use it only on inputs you have validated yourself.
    """
    token = _VALUE_CHECKS.set(False)
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def value_checks_enabled() -> bool:
    """False inside :func:`skip_value_checks`."""
    return _VALUE_CHECKS.get()


def as_float(x, dtype=None, name: str = "the input") -> torch.Tensor:
    """Return `x` as a floating tensor.

    Python numbers and numpy arrays become float64 (exact computations default to float64);
    floating tensors keep their dtype unless `dtype` is given; integer tensors become float64.
    Anything that is not numeric raises ValueError naming ``name``.
    """
    if isinstance(x, torch.Tensor):
        t = x
        if t.is_complex():
            raise ValueError(f"{name} must be real, got a tensor of dtype {t.dtype}")
        if dtype is not None:
            return t.to(dtype)
        return t if t.is_floating_point() else t.to(torch.float64)
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric (a tensor, array or number), got "
                         f"{x!r:.80}") from None
    t = torch.as_tensor(arr)
    return t if dtype is None else t.to(dtype)


def as_tokens(x, n: int, name: str = "x") -> torch.Tensor:
    """Return `x` as an int64 tensor of token ids, checking 0 <= x < n."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "iubf":
            raise ValueError(f"{name} must hold integer token ids, got {x!r:.80}")
        if arr.dtype.kind not in "iub":
            if arr.size and not np.all(np.equal(np.mod(arr, 1), 0)):
                raise ValueError(f"{name} must hold integer token ids, got {arr!r}")
        t = torch.as_tensor(arr.astype(np.int64))
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must hold integer token ids, got a tensor of dtype {t.dtype}")
    t = t.long()
    if t.numel() and value_checks_enabled():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= n:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} holds token id {bad}, expected ids in 0..{n - 1} (n = {n})")
    return t


def as_batch(x, n: int, name: str = "x", d: int | None = None) -> torch.Tensor:
    """Return `x` as an int64 (B, d) batch of token sequences (d checked when given)."""
    x = as_tokens(x, n, name)
    if x.dim() != 2 or x.shape[0] < 1 or (d is not None and x.shape[1] != d):
        want = f"(B, {d})" if d is not None else "(B, d)"
        raise ValueError(f"{name} must be a {want} batch of token sequences, got shape {tuple(x.shape)}")
    return x


def check_sigma_bar(sigma_bar, name: str = "sigma_bar", dtype=None) -> torch.Tensor:
    """Return sigma_bar as a floating tensor, checking it is finite and >= 0."""
    s = as_float(sigma_bar, dtype)
    if s.numel() and value_checks_enabled():
        if not torch.isfinite(s).all():
            raise ValueError(f"{name} must be finite, got {_first_bad(s, ~torch.isfinite(s))}")
        if (s < 0).any():
            raise ValueError(f"{name} must be >= 0 (it is a total noise level), "
                             f"got {_first_bad(s, s < 0)}")
    return s


def check_time(t, name: str = "t") -> torch.Tensor:
    """Return t as a floating tensor, checking 0 <= t <= 1."""
    tt = as_float(t)
    if tt.numel() and value_checks_enabled():
        bad = ~((tt >= 0) & (tt <= 1))
        if bad.any():
            raise ValueError(f"{name} must lie in [0, 1], got {_first_bad(tt, bad)}")
    return tt


def check_distribution(p, n: int | None = None, name: str = "p", dim: int = -1) -> torch.Tensor:
    """Return p as a float tensor, checking it is non-negative and sums to one along `dim`."""
    pt = as_float(p)
    if pt.dim() == 0:
        raise ValueError(f"{name} must be a vector of probabilities, got the scalar {float(pt)}")
    if n is not None and pt.shape[dim] != n:
        raise ValueError(f"{name} has {pt.shape[dim]} states along dim {dim}, expected n = {n}")
    if not torch.isfinite(pt).all():
        raise ValueError(f"{name} must be finite, got {_first_bad(pt, ~torch.isfinite(pt))}")
    if (pt < 0).any():
        raise ValueError(f"{name} must be non-negative, got {_first_bad(pt, pt < 0)}")
    total = pt.sum(dim)
    if ((total - 1).abs() > SUM_ATOL * max(1.0, pt.shape[dim] ** 0.5)).any():
        worst = float(total.flatten()[(total - 1).abs().flatten().argmax()])
        raise ValueError(f"{name} must sum to 1 along dim {dim}, but sums to {worst:.8g}")
    return pt


def broadcast(t: torch.Tensor, shape, name: str, against: str = "the token shape",
              device=None) -> torch.Tensor:
    """``torch.broadcast_to`` with a ValueError naming both shapes when they do not broadcast.

    With ``device`` the tensor is moved there first: a Python-number sigma_bar becomes a CPU
    tensor, which must follow the tokens onto the GPU before it is broadcast against them.
    """
    if device is not None:
        t = t.to(device)
    try:
        return torch.broadcast_to(t, tuple(shape))
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to {against} "
                         f"{tuple(shape)}") from None


def check_shape(t: torch.Tensor, shape, name: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")




def _scalar(v, name: str):
    """A Python number from a Python, numpy or 0-d tensor scalar (bool refused), else None."""
    if isinstance(v, bool) or isinstance(v, np.bool_):
        return None
    if isinstance(v, torch.Tensor):
        if v.dim() != 0 or v.dtype == torch.bool or v.is_complex():
            return None
        return v.item()
    if isinstance(v, (int, float, np.integer, np.floating)):
        return v.item() if isinstance(v, np.generic) else v
    return None


def as_int(v, name: str, least: int | None = None) -> int:
    """An integer argument (Python, numpy or 0-d tensor integer), optionally >= ``least``."""
    x = _scalar(v, name)
    if not isinstance(x, int):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if least is not None and x < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {x}")
    return x


def as_real(v, name: str, lo: float | None = None, hi: float | None = None, *,
            lo_closed: bool = False, hi_closed: bool = False) -> float:
    """A finite real argument (Python, numpy or 0-d tensor number) in the interval given."""
    x = _scalar(v, name)
    if x is None or not np.isfinite(x):
        raise ValueError(f"{name} must be a finite real number, got {v!r}")
    x = float(x)
    below = lo is not None and (x < lo if lo_closed else x <= lo)
    above = hi is not None and (x > hi if hi_closed else x >= hi)
    if below or above:
        left = "-inf" if lo is None else f"{lo:g}"
        right = "inf" if hi is None else f"{hi:g}"
        interval = ("[" if lo_closed else "(") + f"{left}, {right}" + ("]" if hi_closed else ")")
        raise ValueError(f"{name} must lie in {interval}, got {x!r}")
    return x

def check_schedule(schedule, name: str = "schedule"):
    """A noise schedule: an object with ``sigma(t)`` and ``sigma_bar(t)`` (ddlab.LogLinear, ...)."""
    if not all(callable(getattr(schedule, m, None)) for m in ("sigma", "sigma_bar")):
        raise ValueError(f"{name} must be a noise schedule with sigma(t) and sigma_bar(t) methods "
                         f"(e.g. ddlab.LogLinear(1e-3)), got {schedule!r}")
    return schedule


def check_generator(Q, atol: float = 1e-8) -> torch.Tensor:
    """Return Q as a float64 generator, checking it (lesson 1; ``RateMatrix`` calls this).

    Square, finite, off-diagonals >= 0, and each column summing to zero within
    ``atol * (1 + max|Q|)``: ``Q[y, x]`` is the rate x -> y, so the diagonal entry of a column
    is minus the sum of its off-diagonals.
    """
    atol = as_real(atol, "atol", 0.0, None, lo_closed=True)
    given = Q.dtype if isinstance(Q, torch.Tensor) else getattr(np.asarray(Q), "dtype", None)
    Q = as_float(Q, torch.float64, "Q")
    if Q.dim() != 2 or Q.shape[0] != Q.shape[1]:
        raise ValueError(f"Q must be a square (n, n) matrix, got shape {tuple(Q.shape)}")
    n = Q.shape[0]
    if n < 1:
        raise ValueError(f"Q must have at least one state, got n = {n}")
    if not torch.isfinite(Q).all():
        raise ValueError("Q must be finite, got a NaN or infinite entry")
    off = Q - torch.diag(torch.diagonal(Q))
    if (off < 0).any():
        y, x = (off < 0).nonzero()[0].tolist()
        raise ValueError(f"Q[{y}, {x}] = {Q[y, x].item():.6g} is a negative off-diagonal rate; "
                         f"rates between different states must be >= 0")
    col = Q.sum(0)
    # a Q given in float32 carries its rounding: a column of n entries sums to ~n * eps32 |Q|
    try:
        eps_in = torch.finfo(given).eps if isinstance(given, torch.dtype) else np.finfo(given).eps
    except (TypeError, ValueError):
        eps_in = 0.0
    tol = max(atol, 4 * n * eps_in) * (1.0 + Q.abs().max().item())
    if (col.abs() > tol).any():
        x = int(col.abs().argmax())
        raise ValueError(f"column {x} of Q sums to {col[x].item():.6g}, expected 0 "
                         f"(tolerance {tol:.1e}, set by atol = {atol:g}); Q[y, x] is the rate "
                         f"x -> y, so each diagonal entry must be minus the sum of its column's "
                         f"off-diagonals (pass a larger atol= for a Q with rounding error)")
    return Q


def check_n(n, least: int, what: str) -> int:
    """An integer number of states >= ``least`` for the structured rate matrix ``what``."""
    if isinstance(n, bool) or not isinstance(n, int) and not (hasattr(n, "__index__")):
        raise ValueError(f"{what}(n) needs an integer number of states, got {n!r}")
    n = int(n)
    if n < least:
        extra = " (the last state is MASK, so at least one real state and MASK)" if least == 2 else ""
        raise ValueError(f"{what}(n) needs n >= {least}{extra}, got n = {n}")
    return n


def as_rate_matrix(rm):
    """Accept a RateMatrix (or subclass) or anything a RateMatrix can be built from (a dense Q)."""
    from .rate_matrices import RateMatrix   # rate_matrices imports this module
    return rm if isinstance(rm, RateMatrix) else RateMatrix(rm)


def check_p0(p0, n: int, name: str = "p0") -> torch.Tensor:
    """A float64 distribution vector of shape (n,) over the states of one token."""
    p0 = check_distribution(p0, n, name).to(torch.float64)
    if p0.dim() != 1:
        raise ValueError(f"{name} must be a vector of shape ({n},), got shape {tuple(p0.shape)}")
    return p0

def check_clamp(clamp, batch: int, d: int, n: int, device=None):
    """``clamp = (positions, values)`` as (mask (batch, d) bool, values (batch, d) long), or None.

    The one parser of the ``clamp=`` argument (prompting and infilling: lessons 7, 8, 9): both
    parts of shape (d,) or (batch, d), the mask a bool tensor, the values token ids in 0..n-1.
    """
    if clamp is None:
        return None
    if not (isinstance(clamp, (tuple, list)) and len(clamp) == 2):
        raise ValueError("clamp must be a pair (positions_mask, values) of shapes (d,) or (B, d)")
    mask, values = clamp
    mask = torch.as_tensor(mask, device=device)
    if mask.dtype != torch.bool:
        raise ValueError(f"clamp positions_mask must be a bool tensor, got dtype {mask.dtype}")
    values = as_tokens(torch.as_tensor(values), n, "clamp values").to(mask.device)
    out = []
    for name, t in (("positions_mask", mask), ("values", values)):
        if tuple(t.shape) not in ((d,), (batch, d)):
            raise ValueError(f"clamp {name} has shape {tuple(t.shape)}, expected ({d},) or "
                             f"({batch}, {d})")
        out.append(torch.broadcast_to(t, (batch, d)))
    return out[0], out[1]


def per_sequence_sigma_bar(sigma_bar, batch: int, positive: bool = False) -> torch.Tensor:
    """sigma_bar as a (batch, 1) column that broadcasts against (batch, d) tokens.

    Accepts a scalar, shape (batch,) or (1,), or (batch, 1): the one noise level per sequence of
    every batched sequence function (the MDLM conversions, lessons 8-9). ``positive`` refuses 0.
    """
    sb = check_sigma_bar(sigma_bar)
    if sb.dim() == 2 and sb.shape[1] == 1:
        sb = sb[:, 0]
    if sb.dim() > 1 or (sb.dim() == 1 and sb.shape[0] not in (1, batch)):
        raise ValueError(f"sigma_bar must be a scalar or of shape ({batch},), got shape "
                         f"{tuple(sb.shape)}")
    if positive and value_checks_enabled() and (sb == 0).any():
        raise ValueError("sigma_bar must be > 0: at sigma_bar = 0 no token is masked and the "
                         "ratio r = 1 / (e^sigma_bar - 1) is infinite")
    return torch.broadcast_to(sb.reshape(-1, 1) if sb.dim() else sb, (batch, 1))


def _first_bad(t: torch.Tensor, mask: torch.Tensor) -> str:
    idx = mask.nonzero()[0].tolist() if mask.dim() else []
    val = t[tuple(idx)].item() if idx else t.item()
    where = f" at index {tuple(idx)}" if idx else ""
    return f"{val!r}{where}"
