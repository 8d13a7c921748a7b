"""The text world's parametrisations and recipe knobs (issue 13): MDLM's denoiser head against
MDLM's own loss, the time-agnostic network, the AR baseline's plain transformer, the cosine
learning-rate decay, train_or_load, and the sample metrics against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ddlab
from ddlab import losses, mdlm
from ddlab.text import checkpoint, metrics, train
from ddlab.text.config import ConfigError, make_config
from ddlab.text.model import DiffusionTransformer, ModelConfig

SMALL = dict(seq_len=16, n_layer=1, n_head=2, d_model=16, cond_dim=8)


def _randomised(model: DiffusionTransformer, seed: int = 0) -> DiffusionTransformer:
    """The zero-initialised heads make a fresh network trivial: give every weight a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def _noised_batch(rm, schedule, B=6, d=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, 27, (B, d), generator=g)
    t = torch.linspace(0.2, 0.95, B)
    sb = schedule.sigma_bar(t).float()
    x_t = rm.sample_transition(x0, sb[:, None], generator=g)
    return x0, t, sb, x_t


def test_denoiser_head_gives_normalised_ratios_at_masked_positions():
    model = _randomised(DiffusionTransformer(ModelConfig(param="denoiser", **SMALL)))
    rm, schedule = ddlab.Absorbing(28), ddlab.LogLinear(1e-3)
    _, _, sb, x_t = _noised_batch(rm, schedule)
    with torch.no_grad():
        s = model.score_fn(x_t, sb).double()
    masked = x_t == 27
    assert masked.any() and (~masked).any()
    # sum over clean y of s_y = sum_y p(y | x_t) / (e^sb - 1) = 1 / (e^sb - 1), whatever the weights
    total = s[..., :27].sum(-1)
    expect = (1 / torch.expm1(sb.double()))[:, None].expand_as(total)
    torch.testing.assert_close(total[masked], expect[masked], rtol=1e-5, atol=0)
    assert torch.all(s[~masked] == 1.0)          # log-ratio 0: no reverse move out of a clean token
    # the score head is not normalised: the same check fails for it
    score = _randomised(DiffusionTransformer(ModelConfig(param="score", **SMALL)))
    with torch.no_grad():
        s2 = score.score_fn(x_t, sb).double()[..., :27].sum(-1)
    assert not torch.allclose(s2[masked], expect[masked], rtol=1e-2)


def test_denoiser_head_dwdse_is_mdlm_cross_entropy():
    """With the denoiser head the library's one DWDSE equals MDLM's weighted cross-entropy of
    the same network's softmax (lesson 8's identity), on the same x_t."""
    model = _randomised(DiffusionTransformer(ModelConfig(param="denoiser", **SMALL)), seed=3)
    rm, schedule = ddlab.Absorbing(28), ddlab.LogLinear(1e-3)
    x0, t, sb, x_t = _noised_batch(rm, schedule, seed=4)
    with torch.no_grad():
        dwdse = losses.dwdse(rm, model.log_score, x0, sb, schedule.sigma(t).float(), x_t=x_t)
        z = model(x_t, sb).float()
        log_p = torch.nn.functional.pad(torch.log_softmax(z[..., :27], -1), (0, 1),
                                        value=-math.inf)
        ce = mdlm.mdlm_loss(log_p, x_t, x0, mdlm.mdlm_weight(schedule, t).float())
    torch.testing.assert_close(dwdse.double(), ce.double(), rtol=1e-4, atol=1e-4)


def test_fresh_networks_agree_across_heads():
    """A fresh network outputs zero logits: both heads are then the uniform-text score."""
    rm, schedule = ddlab.Absorbing(28), ddlab.LogLinear(1e-3)
    _, _, sb, x_t = _noised_batch(rm, schedule)
    masked = x_t == 27
    # the uniform-text score by hand: s_y = 1 / (27 (e^sigma_bar - 1)) at a masked position
    by_hand = -(math.log(27) + torch.log(torch.expm1(sb.double())))[:, None].expand(x_t.shape)
    for param in ("score", "denoiser"):
        net = DiffusionTransformer(ModelConfig(param=param, **SMALL)).eval()
        with torch.no_grad():
            ls = net.log_score(x_t, sb).double()
        torch.testing.assert_close(ls[masked][:, :27],
                                   by_hand[masked][:, None].expand(-1, 27), rtol=1e-5, atol=1e-5)


def test_time_agnostic_network_ignores_sigma_bar():
    model = _randomised(DiffusionTransformer(ModelConfig(adaln=False, param="denoiser", **SMALL)))
    assert model.sigma_embed is None
    x = torch.randint(0, 28, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z1, z2 = model(x, torch.full((3,), 0.1)), model(x, torch.full((3,), 5.0))
    assert torch.equal(z1, z2)
    conditioned = _randomised(DiffusionTransformer(ModelConfig(param="denoiser", **SMALL)))
    with torch.no_grad():
        assert not torch.allclose(conditioned(x, torch.full((3,), 0.1)),
                                  conditioned(x, torch.full((3,), 5.0)))


def test_config_wires_param_and_time_input():
    cfg = make_config("tiny-cpu", ["--param", "denoiser", "--time_input", "false"])
    model = checkpoint.build_model(cfg)
    assert model.cfg.param == "denoiser" and model.sigma_embed is None
    ar = checkpoint.build_model(make_config("tiny-cpu", {"objective": "ar"}))
    assert ar.sigma_embed is None and not any("ada" in k for k in ar.state_dict())
    with pytest.raises(ConfigError, match="--param denoiser"):
        make_config("tiny-cpu", {"param": "denoiser", "objective": "uniform"})
    with pytest.raises(ConfigError, match="--param must be"):
        make_config("tiny-cpu", {"param": "softmax"})
    with pytest.raises(ValueError, match="param must be one of"):
        ModelConfig(param="softmax")


@settings(max_examples=40, deadline=None)
@given(warmup=st.integers(0, 50), extra=st.integers(1, 500), lr=st.floats(1e-4, 1e-2),
       ratio=st.floats(0.0, 1.0))
def test_get_lr_warms_up_then_decays_to_min_lr(warmup, extra, lr, ratio):
    cfg = make_config("tiny-cpu", {"warmup": warmup, "max_steps": warmup + extra, "lr": lr,
                                   "min_lr": lr * ratio})
    rates = [train.get_lr(s, cfg) for s in range(cfg.max_steps + 1)]
    for s in range(warmup):
        assert math.isclose(rates[s], lr * (s + 1) / warmup, rel_tol=1e-12)
    assert math.isclose(rates[warmup], lr, rel_tol=1e-12)
    assert math.isclose(rates[-1], lr * ratio, rel_tol=1e-9, abs_tol=1e-15)
    after = rates[warmup:]
    assert all(a >= b - 1e-15 for a, b in zip(after, after[1:]))
    half = warmup + extra / 2
    if float(half).is_integer():          # cosine: halfway down at half the decay
        assert math.isclose(rates[int(half)], (lr + lr * ratio) / 2, rel_tol=1e-9)


def test_get_lr_constant_without_min_lr():
    cfg = make_config("tiny-cpu", {"warmup": 10, "max_steps": 100, "lr": 1e-3, "min_lr": -1.0})
    assert [train.get_lr(s, cfg) for s in (10, 50, 99)] == [1e-3] * 3
    with pytest.raises(ConfigError, match="min_lr"):
        make_config("tiny-cpu", {"lr": 1e-3, "min_lr": 2e-3})


def _tiny_run(corpus_file, out, **kw):
    return make_config("tiny-cpu", {"data": corpus_file, "out": str(out), "max_steps": 3,
                                    "seq_len": 16, "batch_size": 2, "n_layer": 1, "d_model": 16,
                                    "n_head": 2, "cond_dim": 8, "progress": False,
                                    "eval_batches": 1, **kw})


def test_train_or_load_reuses_only_the_same_finished_run(corpus_file, tmp_path, monkeypatch):
    cfg = _tiny_run(corpus_file, tmp_path / "run")
    first = train.train_or_load(cfg, log=lambda *a: None)
    calls = []
    real_train = train.train
    monkeypatch.setattr(train, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    again = train.train_or_load(_tiny_run(corpus_file, tmp_path / "run", progress=True,
                                          log_every=1), log=lambda *a: None)
    assert calls == []                               # loaded: the knobs differ only in logging
    assert again["steps"] == first["steps"] and again["history"] == first["history"]
    for a, b in zip(first["model"].state_dict().values(), again["model"].state_dict().values()):
        assert torch.equal(a, b)
    train.train_or_load(_tiny_run(corpus_file, tmp_path / "run", lr=5e-4), log=lambda *a: None)
    assert calls == [1]                              # another lr: another run, trained again
    (tmp_path / "run" / "metrics.json").unlink()     # unfinished: trained again
    train.train_or_load(_tiny_run(corpus_file, tmp_path / "run", lr=5e-4), log=lambda *a: None)
    assert calls == [1, 1]


def test_word_rate_by_hand():
    vocab = metrics.vocabulary("the cat sat on the mat the end")
    assert vocab == frozenset({"the", "cat", "sat", "on", "mat", "end"})
    assert metrics.vocabulary("a a b", min_count=2) == frozenset({"a"})
    # edge words are dropped: sample 1 keeps "cat zzq on" (2 of 3), sample 2 "mat qq" (1 of 2)
    rate, se = metrics.word_rate(["xx cat zzq on yy", "end mat qq the"], vocab)
    assert math.isclose(rate, 3 / 5)
    # ratio estimator: residuals a_i - R m_i = 2 - 1.8, 1 - 1.2; se = sqrt(sum r^2 / (B(B-1))) / mean m
    assert math.isclose(se, math.sqrt((0.2 ** 2 + 0.2 ** 2) / 2) / 2.5)
    with pytest.raises(ValueError, match="no whole word"):
        metrics.word_rate(["ab cd"], vocab)


def test_unigram_samples_follow_the_letter_frequencies():
    ids = torch.tensor([0] * 700 + [1] * 200 + [26] * 100).numpy()
    x = metrics.unigram_samples(ids, 100, 200, torch.Generator().manual_seed(0))
    freq = torch.bincount(x.flatten(), minlength=27).double() / x.numel()
    # 20,000 draws: standard errors below 0.0033; 5 of them is a failure
    for k, p in ((0, 0.7), (1, 0.2), (26, 0.1)):
        assert abs(freq[k].item() - p) < 0.0165
    assert freq.sum().item() == pytest.approx(1.0) and freq[[0, 1, 26]].sum().item() == 1.0
    assert math.isclose(metrics.unigram_entropy(torch.tensor([[0, 0, 1, 1]])), 1.0)


def test_reverse_frames_are_the_states_generate_passes_through():
    from ddlab.text import generate
    model = _randomised(DiffusionTransformer(ModelConfig(param="denoiser", **SMALL)), seed=5)
    rm, schedule = ddlab.Absorbing(28), ddlab.LogLinear(1e-3)
    frames = generate.reverse_frames(rm, schedule, model, 16, 8, seed=3)
    assert frames.shape == (8 + 2, 16)              # start, one per scored step (8 + the final
    assert torch.all(frames[0] == 27)               # denoising step), and the finished sample
    with torch.no_grad():
        x = generate.generate(rm, schedule, model, 1, 16, 8, seed=3)
    assert torch.equal(frames[-1], x[0])
    masked = (frames == 27).sum(1)
    assert torch.all(masked[1:] <= masked[:-1])     # absorbing reverse chain: masks only go
    first = generate.frame_text(frames, 0)
    assert first["masked"] == 1.0 and first["text"] == "_" * 16 and first["changed"] == 0
    last = generate.frame_text(frames, len(frames) - 1, width=5)
    assert last["masked"] == 0.0 and last["text"].split("\n")[0] == data_decode(x[0])[:5]
    assert generate.frame_text(frames, 4)["changed"] == int((frames[4] != frames[3]).sum())
    with pytest.raises(ValueError, match="frame k must be in 0..9"):
        generate.frame_text(frames, 10)


def data_decode(x):
    from ddlab.text import data
    return data.decode(x)


def test_ar_generate_draws_from_the_model():
    """A fresh AR network has zero logits: its samples are uniform over the 27 characters."""
    from ddlab.text import generate
    ar = DiffusionTransformer(ModelConfig(objective="ar", adaln=False, **SMALL)).eval()
    x = generate.ar_generate(ar, 200, 16, seed=0)
    assert x.shape == (200, 16) and x.max() < 27
    freq = torch.bincount(x.flatten(), minlength=27).double() / x.numel()
    assert (freq - 1 / 27).abs().max() < 0.015      # 3,200 draws: se 0.0036 per character
    assert torch.equal(x, generate.ar_generate(ar, 200, 16, seed=0))
    # a trained-looking model: make "a" (id 0) certain after anything; every sample is then "aaa.."
    with torch.no_grad():
        ar.head.bias[0] = 50.0
    assert torch.all(generate.ar_generate(ar, 4, 8, seed=1) == 0)
    with pytest.raises(ValueError, match="needs an 'ar' model"):
        generate.ar_generate(DiffusionTransformer(ModelConfig(**SMALL)), 2, 8)
    with pytest.raises(ValueError, match="exceeds the model's seq_len"):
        generate.ar_generate(ar, 2, 17)


def test_train_or_load_retrains_over_weights_of_another_layout(corpus_file, tmp_path):
    cfg = _tiny_run(corpus_file, tmp_path / "run")
    train.train_or_load(cfg, log=lambda *a: None)
    ck = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    ck["model"] = {"renamed." + k: v for k, v in ck["model"].items()}    # an older layout
    torch.save(ck, tmp_path / "run" / "ckpt.pt")
    (tmp_path / "run" / "metrics.json").touch()                         # still "finished"
    assert train.finished_run(cfg) is None
    assert train.train_or_load(cfg, log=lambda *a: None)["steps"] == 3
