"""The three commands on tiny checkpoints: train, evaluate, generate (lesson 9)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from ddlab.text import checkpoint, evaluate, generate, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_untrained_model_bound_is_log2_27(runs):
    """A zero-initialised absorbing network is the exact score of i.i.d. uniform characters, whose
    bound is int_0^inf e^{-sb} log 27 dsb = log 27 nats per character (to O(e^{-sb(eps)}))."""
    r = evaluate.main([str(runs["zero"]), "--split", "valid", "--max_chunks", "8", "--num_t", "8"])
    assert r["stderr"] > 0
    assert abs(r["bpc"] - math.log2(27)) < 4 * r["stderr"] + 1e-3
    ar = evaluate.main([str(runs["ar"]), "--split", "test", "--max_chunks", "4"])
    assert ar["stderr"] == 0 and math.isclose(ar["bpc"], math.log2(27), rel_tol=1e-6)


def test_trained_run_beats_uniform(runs):
    r = evaluate.evaluate_run(runs["absorb"], "valid", num_t=8, max_chunks=16)
    assert r["bpc"] + 4 * r["stderr"] < math.log2(27)


def test_evaluate_cli_subprocess(runs):
    res = subprocess.run([sys.executable, "-m", "ddlab.text.evaluate", str(runs["absorb"]),
                          "--split", "test", "--max_chunks", "2", "--num_t", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "test bits/char" in res.stdout and "+-" in res.stdout
    # the old entry point is the same command
    bad = subprocess.run([sys.executable, "-m", "ddlab.evaluate", str(runs["absorb"]) + "_nope"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "no checkpoint" in bad.stderr


@pytest.mark.parametrize("sampler", ["tweedie", "euler"])
def test_pattern_infilling_keeps_clamped_positions(runs, sampler):
    pattern = "the ____ sat on the ___"
    texts = generate.main([str(runs["absorb"]), "--steps", "8", "--sampler", sampler, "--batch",
                         "3", "--pattern", pattern])
    assert len(texts) == 3
    for t in texts:
        assert len(t) == len(pattern) and "_" not in t          # every free position filled
        assert all(c == p for c, p in zip(t, pattern) if p != "_")


def test_prefix_and_suffix_are_kept(runs):
    texts = generate.main([str(runs["absorb"]), "--steps", "4", "--batch", "2", "--prefix",
                         "The Cat", "--suffix", "end", "--length", "20"])
    for t in texts:
        assert t.startswith("the cat") and t.endswith("end") and len(t) == 20


def test_sample_errors(runs):
    with pytest.raises(SystemExit, match="autoregressive"):
        generate.main([str(runs["ar"]), "--steps", "2"])
    with pytest.raises(SystemExit, match="exceeds"):
        generate.main([str(runs["absorb"]), "--length", "64"])
    with pytest.raises(ValueError, match="pattern characters"):
        generate.make_clamp(10, pattern="A__")
    with pytest.raises(SystemExit, match="unknown preset"):
        train.main(["--preset", "gigantic"])


def test_generative_bpc_of_uniform_ar_model_is_log2_27(runs):
    ar, *_ = checkpoint.load_model(runs["ar"])
    x = torch.randint(0, 27, (4, 32))
    assert math.isclose(generate.generative_bpc(ar, x), math.log2(27), rel_tol=1e-6)
    model, cfg, rm, sch = checkpoint.load_model(runs["absorb"])
    curve = generate.generative_bpc_curve(rm, sch, model, ar, [2, 4], batch=2, d=16)
    assert set(curve) == {"euler", "tweedie"}
    assert all(math.isclose(v, math.log2(27), rel_tol=1e-6) for vs in curve.values() for v in vs)


def test_generative_bpc_per_sample_matches_prefix_by_prefix_scoring(runs):
    """Each sample's bits/char equals the sum of next-character surprisals computed one prefix at
    a time (a causality check too), with a non-uniform AR head."""
    ar, *_ = checkpoint.load_model(runs["ar"])
    torch.manual_seed(0)
    with torch.no_grad():
        ar.head.bias.copy_(torch.randn_like(ar.head.bias))
        ar.head.weight.copy_(0.3 * torch.randn_like(ar.head.weight))
    x = torch.randint(0, 27, (3, 8))
    per = generate.generative_bpc(ar, x, per_sample=True)
    bos = ar.cfg.n_chars
    ref = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for i in range(8):
            inp = torch.cat([torch.full((3, 1), bos), x[:, :i]], 1)
            logp = torch.log_softmax(ar(inp)[:, -1].double(), -1)
            ref -= logp[torch.arange(3), x[:, i]] / math.log(2)
    assert torch.allclose(per, ref / 8, atol=1e-5)
    assert math.isclose(generate.generative_bpc(ar, x), float(per.mean()), rel_tol=1e-9)
    score = generate.ar_score(ar, x)                 # mean and standard error of the hand values
    hand = (ref / 8).numpy()
    assert math.isclose(score["bpc"], hand.mean(), rel_tol=1e-5)
    assert math.isclose(score["se"], hand.std(ddof=1) / math.sqrt(3), rel_tol=1e-3)


def test_unigram_entropy_by_hand():
    assert math.isclose(generate.unigram_entropy(torch.tensor([[0, 0, 1, 1]])), 1.0)
    assert math.isclose(generate.unigram_entropy(torch.tensor([[0, 1], [2, 3]])), 2.0)
    assert generate.unigram_entropy(torch.tensor([[5, 5, 5]])) == 0.0
    # 1/2, 1/4, 1/4: 1.5 bits
    assert math.isclose(generate.unigram_entropy(torch.tensor([[26, 26, 3, 4]])), 1.5)


def test_old_entry_points_are_aliases_of_the_text_modules(runs):
    """``python -m ddlab.train | evaluate | sample`` (README, lesson 9) run the ddlab.text ones."""
    import ddlab.evaluate
    import ddlab.sample
    import ddlab.train
    assert ddlab.train.main is train.main and ddlab.train.load_model is checkpoint.load_model
    assert ddlab.evaluate.evaluate_run is evaluate.evaluate_run
    assert ddlab.sample.generate is generate.generate
    for module in ("ddlab.train", "ddlab.text.train"):
        res = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and "--t_min" in res.stdout, res.stderr
    res = subprocess.run([sys.executable, "-m", "ddlab.sample", str(runs["absorb"]), "--steps", "2",
                          "--batch", "1", "--length", "8"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and len(eval(res.stdout.strip())) == 8, res.stderr
