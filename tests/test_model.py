"""The diffusion transformer: shapes, parametrisation, causality, analytic initial loss (lesson 9)."""

from __future__ import annotations

import math

import pytest
import torch

from ddlab import Absorbing, LogLinear
from ddlab._numerics import log_expm1
from ddlab.text.model import DiffusionTransformer, ModelConfig
from ddlab.text.train import dwdse_loss

SMALL = dict(seq_len=32, n_layer=2, n_head=2, d_model=32, cond_dim=16)


def _model(objective="absorb", randomize=False, seed=0):
    torch.manual_seed(seed)
    m = DiffusionTransformer(ModelConfig(objective=objective, **SMALL))
    if randomize:                       # leave the zero init so outputs depend on the input
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.2 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("objective,n", [("absorb", 28), ("uniform", 27)])
def test_shapes_and_entry_at_input_is_zero(objective, n):
    m = _model(objective, randomize=True)
    x = torch.randint(0, n, (3, 20))
    ls = m.log_score(x, torch.tensor([0.1, 1.0, 5.0]))
    assert ls.shape == (3, 20, n) and ls.dtype == torch.float32
    assert torch.all(torch.gather(ls, -1, x[..., None]) == 0)
    assert torch.allclose(m.score_fn(x, 0.5), torch.exp(m.log_score(x, 0.5)))
    assert m.log_score(x, 2.0).shape == (3, 20, n)            # a scalar sigma_bar broadcasts


def test_log_expm1_matches_float64():
    x = torch.logspace(-6, 2.5, 200, dtype=torch.float64)
    ref = torch.log(torch.expm1(x))
    got = log_expm1(x.float()).double()
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(log_expm1(torch.tensor([1000.0]))).all()   # e^1000 overflows float32


def test_zero_initialised_absorbing_score_is_uniform_prior():
    """A fresh network outputs exactly 0, so s_y = 1 / (27 (e^sb - 1)) for every clean y: the exact
    ratio p_t(x_i = y) / p_t(x_i = MASK) of data uniform over the 27 characters."""
    m = _model("absorb")
    x = torch.full((2, 8), 27)
    sb = torch.tensor([0.01, 3.0], dtype=torch.float64)
    s = m.score_fn(x, sb.float()).double()
    for b in range(2):                  # both noise levels, not just the first
        expected = math.exp(-sb[b]) / (1 - math.exp(-sb[b])) / 27
        assert torch.allclose(s[b, :, :27], torch.full((8, 27), expected, dtype=torch.float64),
                              rtol=1e-5)
    assert torch.all(s[..., 27] == 1)


def test_zero_initialised_loss_is_analytic_given_the_masks():
    """Per masked token the score entropy of s_y = r / 27 against r = 1 / (e^sb - 1) is
    r - r log(r / 27) + r (log r - 1) = r log 27, so the loss is sigma(t) * #masked * log 27 / expm1(sb)."""
    m, rm, sch = _model("absorb"), Absorbing(28), LogLinear(1e-3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 27, (6, 32), generator=g)
    t = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.99], dtype=torch.float32)
    sb = sch.sigma_bar(t)
    x_t = rm.sample_transition(x0, sb[:, None], generator=g)
    se = rm.score_entropy(m.log_score(x_t, sb), x_t, x0, sb[:, None])
    loss = sch.sigma(t) * se.sum(-1)
    n_masked = (x_t == 27).sum(-1).double()
    by_hand = (sch.sigma(t.double()) * n_masked * math.log(27) / torch.expm1(sb.double()))
    assert torch.allclose(loss.double(), by_hand, rtol=1e-4)


def test_zero_initialised_expected_loss_is_one_minus_eps_log27():
    """Averaged over masks and t ~ U(t_min, 1): sigma(t) e^{-sb} log 27 = (1 - eps) log 27 per token
    for LogLinear(eps) (the t dependence cancels). Monte Carlo with a 4-sigma tolerance."""
    m, rm, sch = _model("absorb"), Absorbing(28), LogLinear(1e-3)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, 27, (256, 32), generator=g)
    per_seq = dwdse_loss(rm, sch, m, x0, t_min=1e-3, generator=g) / 32
    mean, se = per_seq.mean().item(), per_seq.std().item() / math.sqrt(256)
    target = (1 - 1e-3) * math.log(27)
    assert abs(mean - target) < 4 * se and se < 0.05 * target


def test_zero_initialised_uniform_and_ar():
    x = torch.randint(0, 27, (2, 10))
    assert torch.all(_model("uniform").log_score(x, 0.3) == 0)
    lp = _model("ar").ar_log_probs(x)
    assert torch.allclose(lp, torch.full((2, 10), -math.log(27)))


def test_ar_model_is_causal_and_diffusion_model_is_not():
    x = torch.randint(0, 27, (1, 16))
    y = x.clone()
    y[0, 9] = (x[0, 9] + 1) % 27
    ar = _model("ar", randomize=True)
    a, b = ar.ar_log_probs(x), ar.ar_log_probs(y)
    assert torch.equal(a[:, :9], b[:, :9])                 # p(x_i | x_<i) for i < 9 cannot see x_9
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    dm = _model("absorb", randomize=True)
    a, b = dm.log_score(x, 1.0), dm.log_score(y, 1.0)
    assert not torch.allclose(a[:, :9], b[:, :9])          # bidirectional: earlier positions see it


def test_sigma_conditioning_changes_the_output():
    m = _model("uniform", randomize=True)
    x = torch.randint(0, 27, (1, 8))
    assert not torch.allclose(m.log_score(x, 0.1), m.log_score(x, 2.0))


def test_config_validation():
    with pytest.raises(ValueError, match="objective"):
        ModelConfig(objective="bert")
    with pytest.raises(ValueError, match="heads of even width"):
        ModelConfig(d_model=30, n_head=4)
    m = _model("absorb")
    with pytest.raises(ValueError, match="seq_len"):
        m.log_score(torch.zeros(1, 64, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="ar_log_probs"):
        _model("ar").log_score(torch.zeros(1, 4, dtype=torch.long), 1.0)


def test_complex_rotary_equals_the_rotation_of_real_pairs():
    """apply_rotary (one complex multiply) computes rotate_pairs (what torch.compile runs), on a
    strided view of a qkv product as in the attention, forward and backward."""
    from ddlab.text.model import apply_rotary, rotary_tables, rotate_pairs
    cos, sin = rotary_tables(16, 8)
    cos, sin = cos[:, None], sin[:, None]                        # (L, 1, hd / 2)
    qkv = torch.randn(3, 16, 3, 2, 8, dtype=torch.float64).float().requires_grad_()
    q = qkv.unbind(2)[1]                                         # (B, L, H, hd), not contiguous
    a, b = apply_rotary(q, cos, sin), rotate_pairs(q, cos, sin)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.equal(a[:, 0], q[:, 0])                         # position 0 is not rotated
    pairs = lambda t: t.unflatten(-1, (-1, 2)).norm(dim=-1)      # noqa: E731
    assert torch.allclose(pairs(a), pairs(q), atol=1e-5)         # rotations keep each pair's norm
    g = torch.randn_like(a)
    ga, = torch.autograd.grad(a, qkv, g)
    gb, = torch.autograd.grad(b, qkv, g)
    assert torch.allclose(ga, gb, atol=1e-6)


def test_bf16_autocast_forward_and_backward():
    """Under bf16 autocast (as on CUDA; here on the CPU) the rotation runs in float32 and the
    output follows autocast; the gradient reaches every weight."""
    m = _model("absorb", randomize=True).train()
    x = torch.randint(0, 28, (2, 16))
    ref = m(x, torch.tensor([0.5, 2.0]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = m(x, torch.tensor([0.5, 2.0]))
    assert z.dtype == torch.bfloat16
    assert (z.float() - ref).abs().max() < 0.05 * ref.abs().max()
    z.float().sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_one_modulation_linear_for_all_blocks_starts_at_zero():
    """adaLN-zero with one Linear for every block's (shift, scale, gate) x 2 and the final
    (shift, scale): zero at initialisation, and each block reads its own slice of it."""
    m = _model("absorb")
    n, d = SMALL["n_layer"], SMALL["d_model"]
    assert m.ada.out_features == (6 * n + 2) * d
    assert torch.all(m.ada.weight == 0) and torch.all(m.ada.bias == 0)
    with torch.no_grad():                    # open the attention gate of the last block alone
        m.ada.bias[(6 * (n - 1) + 2) * d:(6 * (n - 1) + 3) * d] = 1.0
        m.head.weight.normal_()
        x = torch.randint(0, 28, (2, 8))
        z = m(x, torch.tensor([0.5, 2.0]))
        # by hand: the other blocks and the last MLP are still the identity, no shift or scale
        cos, sin = m.cos[:8, None], m.sin[:8, None]
        h = m.embed(x)
        h = h + m.blocks[-1].attention(m.blocks[-1].ln1(h), cos, sin)
        assert torch.allclose(z, m.head(m.ln_f(h)), atol=1e-5)
        assert z.abs().max() > 0


# ---------------------------------------------------------------- neighbour embeddings
def _neighbour_model(objective, k=3, pairs=True, seed=0):
    torch.manual_seed(seed)
    return DiffusionTransformer(ModelConfig(objective=objective, neighbours=k, neighbour_pairs=pairs,
                                            **SMALL)).eval()


@pytest.mark.parametrize("objective", ["absorb", "uniform", "ar"])
def test_neighbour_embedding_is_the_sum_of_table_rows_by_hand(objective):
    # an independent loop over positions and offsets, reading the one table by its documented
    # layout: one block of n_in + 1 rows per offset, then one of (n_in + 1)^2 per pair of offsets
    m = _neighbour_model(objective)
    cfg, W = m.cfg, m.neighbour_embed.weight
    out_id, rows = cfg.n_in, cfg.n_in + 1
    x = torch.randint(0, cfg.n_in, (2, 11))

    def tok(b, j):
        return int(x[b, j]) if 0 <= j < x.shape[1] else out_id

    want = torch.zeros(2, 11, cfg.d_model)
    for b in range(2):
        for i in range(11):
            for j, o in enumerate(cfg.offsets):
                want[b, i] += W[j * rows + tok(b, i + o)]
            base = len(cfg.offsets) * rows
            for j, (o, o2) in enumerate(cfg.pair_offsets):
                want[b, i] += W[base + j * rows * rows + tok(b, i + o) * rows + tok(b, i + o2)]
    torch.testing.assert_close(m.embed_neighbours(x), want, rtol=0, atol=1e-6)
    assert cfg.offsets == ((-3, -2, -1) if objective == "ar" else (-3, -2, -1, 1, 2, 3))
    assert cfg.pair_offsets == (((-3, -2), (-2, -1)) if objective == "ar"
                                else ((-3, -2), (-2, -1), (-1, 1), (1, 2), (2, 3)))


def test_neighbour_embedding_sees_k_places_and_the_ar_model_stays_causal():
    x = torch.randint(0, 27, (1, 16))
    y = x.clone()
    y[0, 9] = (x[0, 9] + 1) % 27
    dm = _neighbour_model("absorb")
    diff = (dm.embed_neighbours(x) - dm.embed_neighbours(y)).abs().amax(-1)[0]
    assert (diff[6:13] > 0).sum() == 6 and diff[9] == 0            # positions 9 +- 3, not 9 itself
    assert torch.all(diff[:6] == 0) and torch.all(diff[13:] == 0)
    ar = _neighbour_model("ar")
    with torch.no_grad():
        for p in ar.parameters():
            p.add_(0.2 * torch.randn_like(p))
    bos = torch.full((1, 1), 27)

    def next_token_logits(seq):                  # position i predicts x_i from the input x_<i
        return ar(torch.cat([bos, seq[:, :-1]], 1))

    a, b = next_token_logits(x), next_token_logits(y)
    assert torch.equal(a[:, :10], b[:, :10])     # the predictions of x_0 .. x_9 cannot see x_9
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_neighbour_options_are_validated():
    with pytest.raises(ValueError, match="neighbours >= 2"):
        ModelConfig(neighbours=1, neighbour_pairs=True)
    with pytest.raises(ValueError, match="neighbours must be in"):
        ModelConfig(neighbours=-1)
    assert not hasattr(_model("absorb"), "neighbour_embed")      # off by default: SEDD's network
