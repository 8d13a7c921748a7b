"""What a sample of text is worth: four numbers that measure different things (lessons 9 and 11).

* :func:`generative_bpc`: the AR baseline's bits/char on the samples, the text8-scale analogue of
  SEDD's generative perplexity (perplexity = 2 ** bits/char). Low = plausible to the AR judge, but
  also low for repetitive text.
* :func:`unigram_entropy`: the entropy of the samples' character frequencies. Real text8 has about
  4.1 bits; a sampler that repeats a few characters collapses it, which generative perplexity
  rewards. Read the two side by side.
* :func:`word_rate`: the fraction of the samples' space-separated words found in the training
  corpus's vocabulary (:func:`vocabulary`), with a standard error. Letters drawn independently from
  the corpus's letter frequencies (:func:`unigram_samples`) set its floor: short words occur by
  chance.
* The bound (``ddlab.text.evaluate.bits_per_char``) measures the model on held-out text, not its
  samples.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch

from .._numerics import LN2
from .data import ALPHABET, decode


@torch.no_grad()
def generative_bpc(ar_model, samples: torch.Tensor, per_sample: bool = False):
    """Bits/char that the AR baseline assigns to samples (B, d) (lesson 9).

    A float (the mean over all characters), or with ``per_sample=True`` a float64 tensor (B,) of
    each sample's own bits/char (for a standard error). Low values can also mean repetitive text:
    read them beside :func:`unigram_entropy`.
    """
    device = next(ar_model.parameters()).device
    if int(samples.max()) >= ar_model.cfg.n_chars:
        raise ValueError("samples contain MASK tokens; sample with denoise=True")
    lp = ar_model.ar_log_probs(samples.to(device)).double()
    if per_sample:
        return (-lp.mean(-1) / LN2).cpu()
    return -lp.mean().item() / LN2


def unigram_entropy(samples: torch.Tensor, n: int = len(ALPHABET)) -> float:
    """Entropy in bits of the character frequencies of a batch of samples (B, d) (lesson 9)."""
    counts = torch.bincount(torch.as_tensor(samples).flatten().cpu(), minlength=n).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


def ar_score(ar_model, x: torch.Tensor) -> dict:
    """``{"bpc", "se", "entropy"}`` of sequences x (B, d), samples or real text (lesson 9): the AR
    baseline's mean bits/char, its standard error over the B sequences, and the unigram entropy."""
    per = generative_bpc(ar_model, x, per_sample=True)
    se = float(per.std() / math.sqrt(len(per))) if len(per) > 1 else float("nan")
    return {"bpc": float(per.mean()), "se": se, "entropy": unigram_entropy(x)}


def vocabulary(text_or_ids, min_count: int = 1) -> frozenset:
    """The words (space-separated) of a corpus split that occur at least ``min_count`` times
    (lesson 9). ``text_or_ids`` is a string or an array of token ids (decoded first)."""
    text = text_or_ids if isinstance(text_or_ids, str) else decode(np.asarray(text_or_ids))
    counts = Counter(text.split())
    return frozenset(w for w, c in counts.items() if c >= min_count)


def sample_words(text: str) -> list[str]:
    """The whole words of one sample: split on spaces, without the first and last word, which the
    sample's edges may have cut (a crop of text starts and ends inside words)."""
    return text.split()[1:-1]


def word_rate(samples, vocab) -> tuple[float, float]:
    """Fraction of the samples' words that are in ``vocab``, and its standard error (lesson 9).

    ``samples`` is a list of strings or a (B, d) token tensor. The rate pools all words (total in
    vocabulary / total words); its standard error treats the B samples as independent clusters
    (the ratio estimator's linearisation), since words within one sample are not independent.
    """
    texts = decode(samples) if not isinstance(samples, (list, tuple)) else list(samples)
    if isinstance(texts, str):
        texts = [texts]
    hits = np.array([sum(w in vocab for w in sample_words(t)) for t in texts], dtype=float)
    words = np.array([len(sample_words(t)) for t in texts], dtype=float)
    if words.sum() == 0:
        raise ValueError("the samples hold no whole word (each needs at least three "
                         "space-separated words); sample longer sequences")
    rate = hits.sum() / words.sum()
    B = len(texts)
    if B < 2:
        return float(rate), float("nan")
    resid = hits - rate * words
    se = math.sqrt((resid ** 2).sum() / (B * (B - 1))) / words.mean()
    return float(rate), float(se)


def unigram_samples(train_ids, batch: int, d: int, generator: torch.Generator | None = None
                    ) -> torch.Tensor:
    """(batch, d) characters drawn independently from the letter frequencies of a corpus split:
    the floor of :func:`word_rate` and the reference for :func:`unigram_entropy` (lesson 9)."""
    counts = np.bincount(np.asarray(train_ids), minlength=len(ALPHABET))[:len(ALPHABET)]
    p = torch.as_tensor(counts / counts.sum(), dtype=torch.float64)
    return torch.multinomial(p, batch * d, replacement=True, generator=generator).view(batch, d)


__all__ = ["generative_bpc", "unigram_entropy", "ar_score", "vocabulary", "sample_words",
           "word_rate", "unigram_samples"]
