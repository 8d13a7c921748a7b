"""Bits per character of a trained run, from the same bound lesson 6 checks exactly (lesson 9).

    python -m ddlab.text.evaluate runs/tiny --split test [--num_t 32] [--max_chunks 256]

(``python -m ddlab.evaluate`` is the same command.)

For a diffusion run the number is ``ddlab.likelihood.nll_bound`` (DWDSE + prior; an upper bound on
the model's negative log-likelihood) per fixed, non-overlapping chunk of the split, divided by the
number of characters and log 2, with its Monte Carlo standard error. For the autoregressive
baseline it is the exact negative log-likelihood (standard error 0). Both use the EMA weights.
"""

from __future__ import annotations

import math

import torch

from .._numerics import LN2
from ..likelihood import nll_bound
from .._checks import as_int
from .checkpoint import load_model
from .config import ArgumentParser, at_least, check_device, run_cli
from .data import eval_chunks, load_corpus


@torch.no_grad()
def bits_per_char(rm, schedule, model, x0: torch.Tensor, *, num_t: int = 32,
                  batch_size: int = 64, seed: int = 0) -> tuple[float, float]:
    """(bits/char, Monte Carlo standard error) of the model on the sequences x0 (N, d) (lesson 9).

    Diffusion: the mean of ``nll_bound(model.score_fn, ...)`` over the sequences; the standard
    errors of the per-sequence estimates are independent, so the error of their mean is
    ``sqrt(sum se_b^2) / N``. This is the Monte Carlo error of the bound for *these* chunks (the
    quantity a paper reports for a fixed test set), not a sampling error over chunks.
    AR (``rm = schedule = None``, as :func:`load_model` returns them for an AR run): the exact
    NLL, error 0.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    total, var = 0.0, 0.0
    for xb in x0.split(batch_size):
        xb = xb.to(device)
        if rm is None:
            total += -model.ar_log_probs(xb).double().sum().item()
            continue
        nll, se = nll_bound(rm=rm, schedule=schedule, score_fn=model.score_fn, x0=xb,
                            num_t=num_t, generator=gen, return_stderr=True)
        total += nll.sum().item()
        var += (se ** 2).sum().item()
    n_chars = x0.numel()
    return total / n_chars / LN2, math.sqrt(var) / n_chars / LN2


def evaluate_run(run_dir, split: str = "test", *, num_t: int = 32, max_chunks=None,
                 batch_size: int = 64, device=None, seed: int = 0) -> dict:
    """Load a run folder and return {"bpc", "stderr", "chunks", "corpus", "objective", ...}."""
    num_t, batch_size = as_int(num_t, "num_t", 1), as_int(batch_size, "batch_size", 1)
    if max_chunks is not None:
        max_chunks = as_int(max_chunks, "max_chunks", 1)
    device = check_device(device or "auto", "device")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, cfg, rm, schedule = load_model(run_dir, device)
    corpus = load_corpus(cfg.data, fallback=cfg.fallback)
    chunks = eval_chunks(corpus.split(split), cfg.seq_len, max_chunks)
    bpc, se = bits_per_char(rm, schedule, model, chunks, num_t=num_t, batch_size=batch_size,
                            seed=seed)
    return {"bpc": bpc, "stderr": se, "chunks": chunks.shape[0], "chars": chunks.numel(),
            "split": split, "corpus": corpus.name, "objective": cfg.objective, "num_t": num_t}


def _main(argv: list[str]) -> dict:
    p = ArgumentParser(prog="python -m ddlab.text.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("run", help="run folder written by ddlab.text.train (holds ckpt.pt)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--num_t", type=at_least(1), default=32, help="stratified times per sequence")
    p.add_argument("--max_chunks", type=at_least(1), default=None,
                   help="evaluate only the first chunks")
    p.add_argument("--batch_size", type=at_least(1), default=64)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    a = p.parse_args(argv)
    check_device(a.device)
    r = evaluate_run(a.run, a.split, num_t=a.num_t, max_chunks=a.max_chunks,
                     batch_size=a.batch_size, device=a.device, seed=a.seed)
    kind = "upper bound (DWDSE)" if r["objective"] != "ar" else "exact NLL (AR)"
    print(f"{a.run}: {r['split']} bits/char {r['bpc']:.4f} +- {r['stderr']:.4f} "
          f"({kind}, {r['chunks']} chunks = {r['chars']:,} chars of {r['corpus']}, "
          f"num_t = {r['num_t']})")
    return r


def main(argv=None) -> dict:
    """``python -m ddlab.text.evaluate``; an error ends as one line ``error: ...`` (exit 2 for a
    bad option, 1 for a missing or corrupt run; ``--debug`` shows the traceback)."""
    return run_cli(_main, argv)


__all__ = ["bits_per_char", "evaluate_run", "main"]


if __name__ == "__main__":
    main()
