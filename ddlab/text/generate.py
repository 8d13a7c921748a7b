"""Generating and infilling text with a trained run; scoring samples with the AR baseline (lesson 9).

    python -m ddlab.text.generate runs/tiny --steps 128 --sampler tweedie
    python -m ddlab.text.generate runs/tiny --prefix "the cat" --suffix "the end"
    python -m ddlab.text.generate runs/tiny --pattern "the ____ sat on the ___"

(``python -m ddlab.sample`` is the same command; the sampling algorithms themselves are
``ddlab.sampling``.)

All of it goes through ``ddlab.sampling.sample`` (lesson 5) with the network's ``score_fn``:
conditioning is ``clamp=(positions, tokens)``, which fixes the given characters at the start and
after every step, so they never change. In a pattern every ``_`` is a position to fill.

Sample quality, as in the SEDD paper's figure of generative perplexity against steps, is measured
here at text8 scale by the autoregressive baseline (``ddlab.text.metrics``: the AR model's bits/char
on the samples beside their unigram entropy and word rate).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..sampling import sample as run_sampler
from .checkpoint import load_model
from .config import ArgumentParser, ConfigError, at_least, check_device, run_cli
from .data import ALPHABET, MASK_CHAR, decode, encode
from .metrics import ar_score


def make_clamp(d: int, *, prefix: str = "", suffix: str = "", pattern: str | None = None):
    """(positions (d,) bool, tokens (d,) int64) from a prefix/suffix or a ``_``-pattern, or None.

    Characters are given in text8 format (a-z and space); ``_`` marks a free position. A pattern
    shorter than d leaves the positions after it free.
    """
    mask = torch.zeros(d, dtype=torch.bool)
    vals = torch.zeros(d, dtype=torch.long)
    if pattern is not None:
        if prefix or suffix:
            raise ValueError("give either a pattern or a prefix/suffix, not both")
        if len(pattern) > d:
            raise ValueError(f"the pattern has {len(pattern)} characters, more than d = {d}")
        bad = sorted(set(pattern) - set(ALPHABET + MASK_CHAR))
        if bad:
            raise ValueError(f"pattern characters must be a-z, space or '_', got {bad}")
        for i, ch in enumerate(pattern):
            if ch != MASK_CHAR:
                mask[i], vals[i] = True, ALPHABET.index(ch)
    else:
        if len(prefix) + len(suffix) > d:
            raise ValueError(f"prefix and suffix have {len(prefix) + len(suffix)} characters, "
                             f"more than d = {d}")
        for text, start in ((prefix, 0), (suffix, d - len(suffix))):
            if text:
                ids = torch.from_numpy(encode(text).astype(np.int64))
                mask[start:start + len(ids)] = True
                vals[start:start + len(ids)] = ids
    return (mask, vals) if mask.any() else None


@torch.no_grad()
def generate(rm, schedule, model, batch: int, d: int, steps: int, sampler: str = "tweedie", *,
             clamp=None, seed: int = 0, t_min: float = 1e-5) -> torch.Tensor:
    """(batch, d) token ids from ``ddlab.sampling.sample`` with the network's score function,
    run from t = 1 down to ``t_min``."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    if clamp is not None:
        clamp = (clamp[0].to(device), clamp[1].to(device))
    return run_sampler(rm=rm, schedule=schedule, score_fn=model.score_fn, batch=batch, d=d,
                       steps=steps, method=sampler, clamp=clamp, generator=gen, t_min=t_min,
                       device=device)


def reverse_frames(rm, schedule, model, d: int, steps: int, sampler: str = "tweedie", *,
                   seed: int = 0, t_min: float = 1e-5) -> torch.Tensor:
    """One sample's reverse chain on text, frame by frame: (steps + 2, d) token ids (lesson 9).

    Frame 0 is the start (all MASK for absorbing noise), frame k the sequence the network scored at
    step k, the last frame the finished sample: exactly the states :func:`generate` passes
    through with the same seed, recorded by wrapping the score function rather than by a second
    sampler. ``ddlab.widgets.unmasking_view`` shows them with a slider.
    """
    seen = []

    def recording_score_fn(x_t, sigma_bar):
        seen.append(x_t[0].clone())
        return model.score_fn(x_t, sigma_bar)

    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    final = run_sampler(rm=rm, schedule=schedule, score_fn=recording_score_fn, batch=1, d=d,
                        steps=steps, method=sampler, generator=gen, t_min=t_min, device=device)
    return torch.stack(seen + [final[0]]).cpu()


def frame_text(frames: torch.Tensor, k: int, width: int = 64) -> dict:
    """Frame ``k`` of :func:`reverse_frames` as the slider of lesson 9 shows it: ``{"text"}``
    (MASK as ``_``, wrapped at ``width`` characters), ``{"masked"}`` (the fraction still masked)
    and ``{"changed"}`` (positions that differ from frame k - 1)."""
    k = int(k)
    if not 0 <= k < len(frames):
        raise ValueError(f"frame k must be in 0..{len(frames) - 1}, got {k}")
    x = frames[k]
    text = decode(x).replace(MASK_CHAR, "_")
    lines = [text[i:i + width] for i in range(0, len(text), width)]
    changed = int((frames[k] != frames[k - 1]).sum()) if k else 0
    return {"text": "\n".join(lines), "masked": float((x == len(ALPHABET)).double().mean()),
            "changed": changed}


def sample_quality(rm, schedule, model, ar_model, steps_list, samplers=("euler", "tweedie"), *,
                   batch: int = 16, d: int | None = None, seed: int = 0, log=None) -> list[dict]:
    """One row per (sampler, steps): how the AR baseline scores ``batch`` samples (lesson 9).

    Each row holds ``sampler, steps``, the :func:`ar_score` of the samples (``bpc``, ``se``,
    ``entropy``), ``seconds`` (sampling time) and ``samples``. Every row starts from the same
    seed. ``log(row)`` is called after each row (long sweeps print as they go).
    """
    d = d or model.cfg.seq_len
    rows = []
    for sampler in samplers:
        for k in steps_list:
            t0 = time.perf_counter()
            x = generate(rm, schedule, model, batch, d, k, sampler, seed=seed)
            seconds = time.perf_counter() - t0
            rows.append({"sampler": sampler, "steps": k, **ar_score(ar_model, x),
                         "seconds": seconds, "samples": x})
            if log is not None:
                log(rows[-1])
    return rows


def generative_bpc_curve(rm, schedule, model, ar_model, steps_list, samplers=("euler", "tweedie"),
                         *, batch: int = 16, d: int | None = None, seed: int = 0) -> dict:
    """{sampler: [generative bits/char at each number of steps]} (lesson 9; the paper's figure
    uses 8 to 1024 steps, a CPU lesson fewer). :func:`sample_quality` gives the full rows."""
    rows = sample_quality(rm, schedule, model, ar_model, steps_list, samplers, batch=batch, d=d,
                          seed=seed)
    return {s: [r["bpc"] for r in rows if r["sampler"] == s] for s in samplers}


def text8_option(text: str, name: str) -> str:
    """A --prefix / --suffix in the text8 alphabet: lower-cased, and refused (naming them) if it
    holds characters text8 has not, instead of silently dropping them."""
    text = text.lower()
    bad = sorted(set(text) - set(ALPHABET))
    if bad:
        raise ConfigError(f"--{name} {text!r}: the characters {''.join(bad)!r} are not in the "
                          f"text8 alphabet (a-z and space; upper case is lowered)")
    return text


def _main(argv: list[str]) -> list[str]:
    p = ArgumentParser(prog="python -m ddlab.text.generate", description=__doc__.split("\n")[0])
    p.add_argument("run", help="run folder written by ddlab.text.train")
    p.add_argument("--steps", type=at_least(1), default=128)
    p.add_argument("--sampler", default="tweedie", choices=["tweedie", "euler", "exact"])
    p.add_argument("--batch", type=at_least(1), default=4)
    p.add_argument("--length", type=at_least(1), default=None,
                   help="characters, 1..seq_len (default: seq_len)")
    p.add_argument("--prefix", default="")
    p.add_argument("--suffix", default="")
    p.add_argument("--pattern", default=None, help="e.g. 'the ____ sat on the ___'")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    a = p.parse_args(argv)
    device = check_device(a.device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    prefix, suffix = text8_option(a.prefix, "prefix"), text8_option(a.suffix, "suffix")
    bad = sorted(set(a.pattern or "") - set(ALPHABET + MASK_CHAR))
    if bad:
        raise ConfigError(f"--pattern {a.pattern!r}: the characters {''.join(bad)!r} are not in "
                          f"the text8 alphabet (a-z, space, and '_' for a position to fill)")
    if a.pattern is not None and a.length is not None and a.length != len(a.pattern):
        raise ConfigError(f"--length {a.length} and a --pattern of {len(a.pattern)} characters "
                          f"disagree; the pattern sets the length")
    model, cfg, rm, schedule = load_model(a.run, device)
    if rm is None:
        raise ValueError(f"{a.run} is an autoregressive run; only diffusion runs generate "
                         f"text by sampling")
    d = len(a.pattern) if a.pattern is not None else (a.length or cfg.seq_len)
    if d > cfg.seq_len:
        raise ConfigError(f"length {d} exceeds the model's seq_len = {cfg.seq_len}; give "
                          f"--length 1..{cfg.seq_len}")
    clamp = make_clamp(d, prefix=prefix, suffix=suffix, pattern=a.pattern)
    x = generate(rm, schedule, model, a.batch, d, a.steps, a.sampler, clamp=clamp, seed=a.seed)
    texts = decode(x)
    for t in texts:
        print(repr(t))
    return texts


def main(argv=None) -> list[str]:
    """``python -m ddlab.text.generate``; an error ends as one line ``error: ...`` (exit 2 for a
    bad option, 1 for a missing or corrupt run; ``--debug`` shows the traceback)."""
    return run_cli(_main, argv)


__all__ = ["make_clamp", "text8_option", "generate", "reverse_frames", "frame_text", "sample_quality",
           "generative_bpc_curve", "main"]


if __name__ == "__main__":
    main()
