"""Generating and infilling text with a trained run; scoring samples with the AR baseline (lessons 9-11).

    python -m ddlab.text.generate runs/tiny --steps 128 --sampler tweedie
    python -m ddlab.text.generate runs/tiny --prefix "the cat" --suffix "the end"
    python -m ddlab.text.generate runs/tiny --pattern "the ____ sat on the ___"
    python -m ddlab.text.generate runs/tiny --sampler confidence --confidence drawn
    python -m ddlab.text.generate runs/tiny --sampler mdlm --remask cap:0.02 --temperature 0.9
    python -m ddlab.text.generate runs/tiny --sampler mdlm --cache --steps 1024

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

from ..mdlm import denoiser_fn_from_score_fn, mdlm_sample
from ..sampling import ALL_METHODS, CONFIDENCES, REMASK_KINDS, check_options
from .._checks import as_int
from ..rate_matrices import sample_categorical
from ..sampling import sample as run_sampler
from ..widgets import frame_summary
from .checkpoint import load_model
from .config import ArgumentParser, ConfigError, at_least, check_device, run_cli
from .data import ALPHABET, MASK_CHAR, decode, encode
from .metrics import ar_score, word_rate


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
             clamp=None, seed: int = 0, t_min: float = 1e-5, **options) -> torch.Tensor:
    """(batch, d) token ids from ``ddlab.sampling.sample`` with the network's score function,
    run from t = 1 down to ``t_min``. ``options`` are the sampler's (lesson 11: temperature,
    top_p, remask, corrector_steps, corrector_size, confidence, cache, gumbel_bits)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    if clamp is not None:
        clamp = (clamp[0].to(device), clamp[1].to(device))
    return run_sampler(rm=rm, schedule=schedule, score_fn=model.score_fn, batch=batch, d=d,
                       steps=steps, method=sampler, clamp=clamp, generator=gen, t_min=t_min,
                       device=device, **options)


@torch.no_grad()
def caching_cost(rm, schedule, model, steps_list, *, batch: int = 1, d: int | None = None,
                 seed: int = 0) -> list[dict]:
    """What the caching sampler saves on a text model (lessons 10 and 11).

    For each number of steps, MDLM's ancestral sampler (``ddlab.mdlm.mdlm_sample``) with the
    network's denoiser (its score read as ``s (e^{sigma_bar} - 1)``), once plain and once with
    ``cache=True``, from the same seed. One row each: ``steps``, ``cache``, ``network_calls``,
    ``evaluations`` (sequences given to the network), ``seconds`` (wall time) and ``samples``.
    Exact in law only for a time-agnostic network (``time_input=False``); one that reads
    sigma_bar is reused at an earlier time.
    """
    device = next(model.parameters()).device
    d = d or model.cfg.seq_len
    denoiser = denoiser_fn_from_score_fn(model.score_fn, rm.n)
    rows = []
    for k in steps_list:
        for cache in (False, True):
            gen = torch.Generator(device=device).manual_seed(seed)
            t0 = time.perf_counter()
            x, stats = mdlm_sample(schedule, denoiser, batch, d, rm.n, k, cache=cache,
                                   return_stats=True, generator=gen, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            rows.append({"steps": k, "cache": cache, "network_calls": stats["network_calls"],
                         "evaluations": stats["evaluations"],
                         "seconds": time.perf_counter() - t0, "samples": x})
    return rows


@torch.no_grad()
def sampler_table(rm, schedule, model, ar_model, samplers: dict, *, steps: int, batch: int = 16,
                  d: int | None = None, seed: int = 0, vocab=None, log=None) -> list[dict]:
    """One row per named sampler, every number measured on the same kind of samples (lesson 11).

    ``samplers`` maps a name to ``(method, options)`` for :func:`generate`. Each row holds
    ``name``, the AR judge's ``bpc`` and its standard error ``se`` (generative perplexity is
    ``2 ** bpc``), the samples' unigram ``entropy`` (bits), with ``vocab`` (a set of words,
    ``ddlab.text.metrics.vocabulary`` of the training split) the ``word_rate`` and its
    ``word_se`` (NaN when the samples hold no whole word), and ``seconds``, ``samples``. Every row
    starts from the same seed.
    """
    d = d or model.cfg.seq_len
    rows = []
    for name, (method, options) in samplers.items():
        t0 = time.perf_counter()
        x = generate(rm, schedule, model, batch, d, steps, method, seed=seed, **options)
        row = {"name": name, **ar_score(ar_model, x), "seconds": time.perf_counter() - t0,
               "samples": x}
        if vocab is not None:
            try:
                row["word_rate"], row["word_se"] = word_rate(x, vocab)
            except ValueError:            # no whole word at all (a sampler that never writes a space)
                row["word_rate"] = row["word_se"] = float("nan")
        rows.append(row)
        if log is not None:
            log(row)
    return rows


@torch.no_grad()
def ar_generate(ar_model, batch: int, d: int, *, seed: int = 0) -> torch.Tensor:
    """(batch, d) samples of the autoregressive baseline, one character at a time (lesson 9).

    Each step reruns the causal network on the prefix (no key-value cache: the course's sequences
    are short) and draws the next character from its softmax with ``sample_categorical`` in
    float64, the library's one categorical draw.
    """
    if ar_model.cfg.objective != "ar":
        raise ValueError(f"ar_generate needs an 'ar' model, this one is {ar_model.cfg.objective!r}")
    d = as_int(d, "d", 1)
    if d > ar_model.cfg.seq_len:
        raise ValueError(f"d = {d} exceeds the model's seq_len = {ar_model.cfg.seq_len}")
    device = next(ar_model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.full((as_int(batch, "batch", 1), 1), ar_model.cfg.n_chars, device=device)  # BOS
    for _ in range(d):
        probs = torch.softmax(ar_model(x)[:, -1].double(), -1)
        x = torch.cat([x, sample_categorical(probs, gen)[:, None]], 1)
    return x[:, 1:].cpu()


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
    """Frame ``k`` of :func:`reverse_frames` as text (lesson 9): ``ddlab.widgets.frame_summary``
    over the text8 alphabet without its figure, ``{"text", "masked", "changed"}``."""
    return frame_summary(k, frames, ALPHABET, width)      # the one definition, the slider's too


def sample_quality(rm, schedule, model, ar_model, steps_list, samplers=("euler", "tweedie"), *,
                   batch: int = 16, d: int | None = None, seed: int = 0, vocab=None,
                   log=None) -> list[dict]:
    """One row per (sampler, steps): how the AR baseline scores ``batch`` samples (lesson 9).

    Each row holds ``sampler, steps``, the :func:`ar_score` of the samples (``bpc``, ``se``,
    ``entropy``), with a ``vocab`` also ``word`` (``metrics.word_rate``: rate, standard error),
    ``seconds`` (sampling time) and ``samples``. Every row starts from the same seed.
    ``log(row)`` is called after each row (long sweeps print as they go).
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
            if vocab is not None:
                rows[-1]["word"] = word_rate(x, vocab)
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
    p.add_argument("--sampler", default="tweedie", choices=list(ALL_METHODS))
    p.add_argument("--temperature", type=float, default=1.0,
                   help="on where a token goes (the denoiser of a masked token); default 1")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus mass, in (0, 1]")
    p.add_argument("--remask", default="none",
                   help=f"ReMDM with --sampler mdlm: KIND:ETA, KIND one of {REMASK_KINDS}")
    p.add_argument("--corrector_steps", type=at_least(0), default=0)
    p.add_argument("--corrector_size", type=float, default=1.0,
                   help="corrector step, times the predictor's step in sigma_bar")
    p.add_argument("--confidence", default="max", choices=list(CONFIDENCES),
                   help="with --sampler confidence: max probability, or that of the drawn token")
    p.add_argument("--cache", action="store_true",
                   help="skip the network when nothing changed (absorbing noise)")
    p.add_argument("--gumbel_bits", type=at_least(1), default=None,
                   help="draw by Gumbel-max with this many bits (24 = float32: the trap)")
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
    remask = None
    if a.remask != "none":
        kind, _, eta = a.remask.partition(":")
        try:
            remask = (kind, float(eta))
        except ValueError:
            raise ConfigError(f"--remask {a.remask!r}: expected KIND:ETA such as cap:0.02, KIND "
                              f"one of {REMASK_KINDS}, or none") from None
    options = {"temperature": a.temperature, "top_p": a.top_p, "remask": remask,
               "corrector_steps": a.corrector_steps, "corrector_size": a.corrector_size,
               "confidence": a.confidence, "cache": a.cache, "gumbel_bits": a.gumbel_bits}
    model, cfg, rm, schedule = load_model(a.run, device)
    if rm is None:
        raise ValueError(f"{a.run} is an autoregressive run; only diffusion runs generate "
                         f"text by sampling")
    try:
        check_options(rm, a.sampler, **options)
    except ValueError as err:
        raise ConfigError(f"--sampler {a.sampler}: {err}") from None
    d = len(a.pattern) if a.pattern is not None else (a.length or cfg.seq_len)
    if d > cfg.seq_len:
        raise ConfigError(f"length {d} exceeds the model's seq_len = {cfg.seq_len}; give "
                          f"--length 1..{cfg.seq_len}")
    clamp = make_clamp(d, prefix=prefix, suffix=suffix, pattern=a.pattern)
    x = generate(rm, schedule, model, a.batch, d, a.steps, a.sampler, clamp=clamp, seed=a.seed,
                 **options)
    texts = decode(x)
    for t in texts:
        print(repr(t))
    return texts


def main(argv=None) -> list[str]:
    """``python -m ddlab.text.generate``; an error ends as one line ``error: ...`` (exit 2 for a
    bad option, 1 for a missing or corrupt run; ``--debug`` shows the traceback)."""
    return run_cli(_main, argv)


__all__ = ["make_clamp", "text8_option", "generate", "ar_generate", "reverse_frames", "frame_text", "sample_quality",
           "generative_bpc_curve", "caching_cost", "sampler_table", "main"]


if __name__ == "__main__":
    main()
