"""Structured per-token transitions against the dense route, and ddlab's expm against scipy's.

    .venv/bin/python benchmarks/bench_transitions.py            # the full run (a few minutes)
    .venv/bin/python benchmarks/bench_transitions.py --quick    # n = 27 only, fewer repeats

Part 1. A text8 batch has 65,536 tokens (e.g. 256 sequences of 256 characters) with one
sigma_bar per sequence. For each token we need the row p(x_t = . | x_0) (``transition_from``) or a
draw of x_t (``sample_transition``). The structured Uniform/Absorbing closed forms do this in O(n)
per token (O(1) for a draw). The dense route builds ``torch.linalg.matrix_exp(sigma_bar Q)`` for
every distinct sigma_bar in the batch and indexes (or samples) the column of each token. To keep
the dense route feasible at n = 1000, the tokens share 64 distinct sigma_bar values (times drawn
uniformly in [0, 1] under LogLinear(1e-3)); a real batch has one value per sequence, 256 here,
which makes the dense route 4x slower again. Both routes run in float32, as in training.

Part 2. ``ddlab.RateMatrix(Q).transition(sigma_bar)`` (torch.linalg.matrix_exp in float64)
against ``scipy.linalg.expm`` for a random n = 64 generator: time per call and max |difference|.

Times are the best of several repeats (wall clock, time.perf_counter); on a shared machine the
best is the least disturbed. Everything runs single-threaded unless --threads says otherwise: on a
shared 2-core machine a multithreaded BLAS/OpenMP stalls whenever another process holds a core,
and the timings then measure the neighbours. Prints a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os

# Before numpy/scipy/torch load their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
import platform
import sys
import time

import numpy as np
import torch
from scipy.linalg import expm

# Run from the repository root or from benchmarks/: import the working tree's ddlab.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ddlab  # noqa: E402

TOKENS = 65_536
DISTINCT = 64


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_time(fn, repeats: int) -> tuple[float, object]:
    """(best wall time in seconds over `repeats` calls, the last result); GPU work is waited for."""
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        out = fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def batch(n: int, gen: torch.Generator, device):
    """x0 (TOKENS,), the DISTINCT sigma_bar values (float32), and each token's value index."""
    x0 = torch.randint(0, n, (TOKENS,), generator=gen)
    t = torch.rand(DISTINCT, generator=gen, dtype=torch.float64)
    values = ddlab.LogLinear(1e-3).sigma_bar(t).to(torch.float32)
    which = torch.randint(0, DISTINCT, (TOKENS,), generator=gen)
    return x0.to(device), values.to(device), which.to(device)


def dense_build(Q: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(DISTINCT, n, n): one matrix exponential per distinct sigma_bar."""
    return torch.linalg.matrix_exp(values[:, None, None] * Q.to(values.device, values.dtype))


def dense_rows(P: torch.Tensor, which: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """(TOKENS, n): column x0 of the token's matrix, i.e. p(x_t = . | x_0 = x0)."""
    return P[which, :, x0]


def dense_sample(P: torch.Tensor, which, x0, gen) -> torch.Tensor:
    """Inverse-CDF draw from each token's row: the fastest dense sampler we tried
    (torch.multinomial is ~1.5-3x slower here, Gumbel-argmax ~2.5x)."""
    with ddlab.skip_value_checks():         # no input checks: the dense path at its best
        return ddlab.sample_categorical(dense_rows(P, which, x0), gen)


def part1(sizes, repeats: int, build_repeats: int, device):
    print(f"\n### Per-token transitions: {TOKENS:,} tokens, {DISTINCT} distinct sigma_bar values "
          f"(LogLinear, eps = 1e-3), float32\n")
    print("| noise | n | operation | structured (ms) | dense: expm build (ms) | dense: index/sample "
          "(ms) | dense total (ms) | speed-up | max abs diff of rows |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        for rm in (ddlab.Uniform(n), ddlab.Absorbing(n)):
            x0, values, which = batch(n, torch.Generator().manual_seed(n), device)
            gen = torch.Generator(device=device).manual_seed(n)
            sb = values[which]                                  # per-token sigma_bar
            if device.type == "cuda":                          # CUDA/cuSOLVER start-up
                dense_build(rm.Q, values), rm.transition_from(x0, sb)
            # the dense build is shared by both operations: measure it once
            t_build, P = best_time(lambda: dense_build(rm.Q, values), build_repeats)
            t_rows_s, rows_s = best_time(lambda: rm.transition_from(x0, sb), repeats)
            t_rows_d, rows_d = best_time(lambda: dense_rows(P, which, x0), repeats)
            diff = (rows_s - rows_d).abs().max().item()
            del rows_s, rows_d
            t_samp_s, xs = best_time(lambda: rm.sample_transition(x0, sb, generator=gen), repeats)
            t_samp_d, xd = best_time(lambda: dense_sample(P, which, x0, gen), repeats)
            # the two samplers draw from the same law: compare the fraction of tokens that moved
            moved = f"moved: {(xs != x0).double().mean().item():.3f} vs {(xd != x0).double().mean().item():.3f}"
            del P
            name = type(rm).__name__
            for op, ts, td in (("transition_from", t_rows_s, t_rows_d),
                               ("sample_transition", t_samp_s, t_samp_d)):
                total = t_build + td
                extra = f"{diff:.1e}" if op == "transition_from" else moved
                print(f"| {name} | {n} | {op} | {1e3 * ts:.2f} | {1e3 * t_build:.1f} | "
                      f"{1e3 * td:.1f} | {1e3 * total:.1f} | {total / ts:,.0f}x | {extra} |",
                      flush=True)


def part2(repeats: int):
    n = 64
    rng = np.random.default_rng(0)
    off = rng.exponential(1.0, (n, n))
    np.fill_diagonal(off, 0.0)
    Q = off - np.diag(off.sum(0))
    rm = ddlab.RateMatrix(Q)
    print(f"\n### General RateMatrix.transition vs scipy.linalg.expm, random generator, n = {n}, "
          f"float64\n")
    print("| sigma_bar | ddlab (ms) | scipy (ms) | ratio scipy/ddlab | max abs diff |")
    print("|---:|---:|---:|---:|---:|")
    for sb in (0.01, 1.0, 30.0):
        t_d, P_d = best_time(lambda: rm.transition(sb), repeats)
        t_s, P_s = best_time(lambda: expm(sb * Q), repeats)
        diff = np.abs(P_d.numpy() - P_s).max()
        print(f"| {sb:g} | {1e3 * t_d:.3f} | {1e3 * t_s:.3f} | {t_s / t_d:.2f} | {diff:.1e} |",
              flush=True)
    sbs = torch.tensor(np.linspace(0.01, 30, DISTINCT))
    t_d, P_d = best_time(lambda: rm.transition(sbs), max(1, repeats // 4))
    t_s, P_s = best_time(lambda: np.stack([expm(s * Q) for s in sbs.numpy()]), max(1, repeats // 4))
    diff = np.abs(P_d.numpy() - P_s).max()
    print(f"| {DISTINCT} values, batched | {1e3 * t_d:.2f} | {1e3 * t_s:.2f} | {t_s / t_d:.2f} | "
          f"{diff:.1e} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="n = 27 only and fewer repeats")
    ap.add_argument("--device", default="cpu", help="where part 1 runs: cpu (default) or cuda")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1; numpy/scipy stay single-threaded)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print("## Transitions\n")
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.machine()} CPU")
    print(f"Part 1 on {where}; {os.cpu_count()} CPU cores visible, torch {torch.__version__} "
          f"with {torch.get_num_threads()} CPU threads, Python {platform.python_version()}. "
          f"Best of several repeats (wall clock).")
    sizes = (27,) if args.quick else (27, 1000)
    part1(sizes, repeats=5 if args.quick else 10,
          build_repeats=3 if args.quick or device.type == "cuda" else 1,
          device=device)
    part2(repeats=5 if args.quick else 20)


if __name__ == "__main__":
    main()
