"""The diffusion transformer: a score network for sequences of tokens (lesson 9).

A bidirectional transformer reads the noised sequence x_t and the total noise sigma_bar and
returns, for every position i and token y, a log-ratio ``log s[b, i, y]`` estimating
``log p_t(x with x_i = y) / p_t(x)``: exactly the Hamming-1 score of lesson 7, so a network and
``ddlab.exact_score_fn`` are interchangeable in samplers and in ``nll_bound``.

Pieces (as in SEDD's DiT-style network, written from the paper's description):

* tokens -> embeddings; positions enter through rotary embeddings in every attention layer;
  optionally (``neighbours``, ``neighbour_pairs``; ddlab's addition, on in ``tiny-cpu``) each
  position also embeds the tokens around it, see :meth:`DiffusionTransformer.embed_neighbours`;
* sigma_bar -> sinusoidal features -> MLP -> a conditioning vector c;
* each block: ``x += gate_a * Attn(modulate(LN(x), shift_a, scale_a))`` and the same for the MLP
  (exact GELU), with (shift, scale, gate) = Linear(c), initialised to zero ("adaLN-zero": every
  block starts as the identity); one Linear makes the modulation of all blocks at once;
* the output layer is zero-initialised too, so a fresh network outputs exactly zero logits.

Parametrisations of the output z (shape (B, d, n)):

* ``absorb`` (n = 28, MASK = 27): ``log s_y = z_y - log(e^{sigma_bar} - 1) - log(n - 1)`` and
  ``log s_MASK = 0``. The true ratio at a masked position is ``p_0(y | unmasked) / (e^{sigma_bar}-1)``,
  so z is a log-probability up to a constant, and the zero network is the exact score of a uniform
  data distribution. Its loss is then analytic: ``(1 - eps) log(n - 1)`` nats per token for the
  LogLinear schedule (see tests/test_model.py). Only masked positions are used: the reverse
  absorbing chain never moves an unmasked token, whatever the output there.
* ``absorb`` with ``param="denoiser"`` (MDLM's parametrisation): the 27 letter logits go through a
  softmax, ``log p(y | x_t) = log_softmax(z)_y``, and ``log s_y = log p(y | x_t) - log(e^{sigma_bar}
  - 1)`` (``ddlab.mdlm.log_score_from_denoiser``). The network then cannot express an unnormalised
  ratio: it need not learn that the ratios at a masked position sum to ``1 / (e^{sigma_bar} - 1)``.
  Lesson 8 proved the loss equal to MDLM's cross-entropy, so the objective is unchanged; only the
  function class is smaller. The zero network is the same uniform score as above.
* ``uniform`` (n = 27): ``log s_y = z_y`` with ``log s_{x_i} = 0``.
* ``ar``: a causal copy of the same network (the autoregressive baseline) whose z are next-token
  logits over the 27 characters; its input is the sequence shifted right behind a BOS token
  (id 27, the same embedding slot as MASK).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._numerics import log_expm1
from ..mdlm import log_score_from_denoiser

OBJECTIVES = ("absorb", "uniform", "ar")
PARAMS = ("score", "denoiser")   # absorbing only: SEDD's score or MDLM's normalised denoiser


@dataclass
class ModelConfig:
    n_chars: int = 27          # the alphabet; absorb adds MASK, ar adds BOS
    objective: str = "absorb"  # absorb | uniform | ar
    seq_len: int = 256         # longest sequence (rotary tables are built for this length)
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    cond_dim: int = 64         # width of the sigma_bar conditioning vector
    mlp_ratio: int = 4
    dropout: float = 0.0
    adaln: bool = True         # False: plain LayerNorm, no conditioning (a plain transformer)
    param: str = "score"       # absorb: "score" (SEDD) or "denoiser" (MDLM)
    neighbours: int = 0        # k > 0: each position also embeds the tokens up to k places around it
    neighbour_pairs: bool = False   # and every two adjacent ones among them as one pair (k >= 2)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.param not in PARAMS:
            raise ValueError(f"param must be one of {PARAMS}, got {self.param!r}")
        if self.param == "denoiser" and self.objective != "absorb":
            raise ValueError(f"param='denoiser' (MDLM) needs objective='absorb', got "
                             f"{self.objective!r}: only masked positions have a denoiser to learn")
        if not 0 <= self.neighbours < self.seq_len:
            raise ValueError(f"neighbours must be in [0, seq_len = {self.seq_len}), "
                             f"got {self.neighbours!r}")
        if self.neighbour_pairs and self.neighbours < 2:
            raise ValueError(f"neighbour_pairs embeds pairs of adjacent neighbours: it needs "
                             f"neighbours >= 2, got {self.neighbours!r}")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"d_model = {self.d_model} must split into n_head = {self.n_head} "
                             f"heads of even width (rotary embeddings rotate pairs)")

    @property
    def n_in(self) -> int:
        """Input vocabulary: the characters plus MASK (absorb) or BOS (ar)."""
        return self.n_chars + (self.objective != "uniform")

    @property
    def n_out(self) -> int:
        """Output width n: the number of states of the diffusion (or next-token classes for ar)."""
        return self.n_chars + (self.objective == "absorb")

    @property
    def causal(self) -> bool:
        return self.objective == "ar"

    @property
    def offsets(self) -> tuple[int, ...]:
        """Relative positions of the neighbours a position embeds (causal: only those before it)."""
        k = self.neighbours
        return tuple(range(-k, 0)) if self.causal else tuple(o for o in range(-k, k + 1) if o)

    @property
    def pair_offsets(self) -> tuple[tuple[int, int], ...]:
        """The pairs of relative positions embedded as one token pair each: every two offsets next
        to each other in :attr:`offsets`, including the pair (-1, +1) across the position itself
        (k = 3: (-3, -2), (-2, -1), (-1, 1), (1, 2), (2, 3); causal: (-3, -2), (-2, -1))."""
        if not self.neighbour_pairs:
            return ()
        return tuple(zip(self.offsets, self.offsets[1:]))


class SigmaEmbedding(nn.Module):
    """sigma_bar -> sinusoidal features of log-spaced frequencies -> 2-layer MLP -> (B, cond_dim)."""

    def __init__(self, cond_dim: int, n_freq: int = 128):
        super().__init__()
        self.n_freq = n_freq
        self.mlp = nn.Sequential(nn.Linear(n_freq, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma_bar: torch.Tensor) -> torch.Tensor:
        half = self.n_freq // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=sigma_bar.device) / half)
        angles = sigma_bar.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(angles), torch.sin(angles)], -1))


def rotary_tables(seq_len: int, head_dim: int, base: float = 10_000.0):
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.arange(seq_len).float()[:, None] * inv[None]          # (L, head_dim / 2)
    return torch.cos(angles), torch.sin(angles)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs (2i, 2i + 1) of x (B, L, H, hd) by position-dependent
    angles, in real arithmetic; ``cos`` and ``sin`` have shape (L, 1, hd / 2)."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2).type_as(x)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`rotate_pairs`, computed as one complex multiply.

    A pair is a complex number and its rotation the factor ``cos + i sin``: one multiply forward and
    one backward, where the real arithmetic takes six multiplies and adds, a stack and, backward,
    as many again. torch.compile fuses the real arithmetic into one kernel but cannot generate code
    for complex numbers, so a compiled model keeps it. In float32 either way (a no-op there; under
    bf16 autocast x is cast up and the result back).
    """
    if torch.compiler.is_compiling():
        return rotate_pairs(x, cos, sin)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * torch.complex(cos, sin)).flatten(-2).type_as(x)


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, self.n_head, self.causal = cfg.d_model, cfg.n_head, cfg.causal
        # adaLN blocks get their affine parameters from the conditioning instead of the norm
        self.ln1 = nn.LayerNorm(d, elementwise_affine=not cfg.adaln)
        self.ln2 = nn.LayerNorm(d, elementwise_affine=not cfg.adaln)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        # exact GELU: on the CPU about 1.5x as fast as the tanh approximation, forward and backward
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * d, d))
        self.dropout = cfg.dropout

    def attention(self, h, cos, sin):
        B, L, D = h.shape
        # q, k, v are views of the one qkv product, so the backward assembles its gradient with a
        # single stack (permute + select took a zero-filled gradient and a copy for each)
        q, k, v = self.qkv(h).view(B, L, 3, self.n_head, D // self.n_head).unbind(2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)    # (B, H, L, hd)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        # the attention kernels return (B, H, L, hd) laid out as (B, L, H, hd): a free view
        return self.proj(out.transpose(1, 2).reshape(B, L, D))

    def forward(self, x, cos, sin, mod=None):
        """``mod``: (shift, scale, gate) for attention, then for the MLP, each (B, 1, d); or None."""
        if mod is None:
            x = x + self.attention(self.ln1(x), cos, sin)
            return x + self.mlp(self.ln2(x))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod
        x = x + gate_a * self.attention(modulate(self.ln1(x), shift_a, scale_a), cos, sin)
        return x + gate_m * self.mlp(modulate(self.ln2(x), shift_m, scale_m))


class DiffusionTransformer(nn.Module):
    """The score network of lesson 9 (and, with ``objective="ar"``, the causal baseline)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.n_in, cfg.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        if cfg.neighbours:
            # one table per offset (and per pair of offsets), each with a row for every token and
            # one for "outside the sequence"
            m = cfg.n_in + 1
            rows = len(cfg.offsets) * m + len(cfg.pair_offsets) * m * m
            self.neighbour_embed = nn.Embedding(rows, cfg.d_model)
            nn.init.normal_(self.neighbour_embed.weight, std=0.02)
        self.sigma_embed = SigmaEmbedding(cfg.cond_dim) if cfg.adaln else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, elementwise_affine=not cfg.adaln)
        self.head = nn.Linear(cfg.d_model, cfg.n_out)
        nn.init.zeros_(self.head.weight)             # a fresh network outputs exactly 0
        nn.init.zeros_(self.head.bias)
        if cfg.adaln:
            # adaLN-zero: the six modulation vectors of every block and the final layer's (shift,
            # scale) are linear in the same conditioning vector, so one Linear makes them all: one
            # matmul and one weight to update instead of one per block. Zero-initialised, every
            # block starts as the identity.
            self.ada = nn.Linear(cfg.cond_dim, (6 * cfg.n_layer + 2) * cfg.d_model)
            nn.init.zeros_(self.ada.weight)
            nn.init.zeros_(self.ada.bias)
        cos, sin = rotary_tables(cfg.seq_len, cfg.d_model // cfg.n_head)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def num_params(self, embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if embeddings else n - self.embed.weight.numel()

    def forward(self, x: torch.Tensor, sigma_bar: torch.Tensor | None = None) -> torch.Tensor:
        """Raw output z of shape (B, L, n_out) for input tokens x (B, L) at noise sigma_bar (B,)."""
        B, L = x.shape
        if L > self.cfg.seq_len:
            raise ValueError(f"sequence length {L} exceeds the model's seq_len = {self.cfg.seq_len}")
        h = self.embed(x)
        if self.cfg.neighbours:
            h = h + self.embed_neighbours(x)
        cos, sin = self.cos[:L, None].float(), self.sin[:L, None].float()   # (L, 1, hd / 2)
        if not self.cfg.adaln:
            for block in self.blocks:
                h = block(h, cos, sin)
            return self.head(self.ln_f(h))
        if sigma_bar is None:
            sigma_bar = torch.zeros(B, device=x.device)
        c = F.silu(self.sigma_embed(sigma_bar))
        mods = self.ada(c)[:, None].chunk(6 * self.cfg.n_layer + 2, -1)     # each (B, 1, d)
        for i, block in enumerate(self.blocks):
            h = block(h, cos, sin, mods[6 * i: 6 * i + 6])
        shift, scale = mods[-2:]
        h = modulate(self.ln_f(h), shift, scale)
        return self.head(h)

    def embed_neighbours(self, x: torch.Tensor) -> torch.Tensor:
        """``sum_o E_o[x_{i+o}] + sum_(o, o') E_(o, o')[x_{i+o}, x_{i+o'}]`` at every position i.

        The first sum is a convolution over one-hot tokens (offsets ``cfg.offsets``), the second
        embeds adjacent pairs of neighbours jointly (``cfg.pair_offsets``), a feature no sum of
        single embeddings is. Why: a masked position sees nothing of itself, so without these
        everything it learns about its context comes through attention, which must first learn
        where its neighbours are; for 200-500 steps a network without them predicts letters at
        their frequencies. With them the first MLP reads the neighbourhood directly (lesson 9
        measures what that is worth). Tokens outside the sequence get an id of their own, n_in.
        """
        k, m, L = self.cfg.neighbours, self.cfg.n_in + 1, x.shape[1]
        padded = F.pad(x, (k, k), value=m - 1)

        def at(o):                                   # x_{i+o} for every i, shape (B, L)
            return padded[:, k + o: k + o + L]

        idx = [at(o) + j * m for j, o in enumerate(self.cfg.offsets)]
        base = len(self.cfg.offsets) * m
        idx += [base + j * m * m + at(o) * m + at(o2)
                for j, (o, o2) in enumerate(self.cfg.pair_offsets)]
        return self.neighbour_embed(torch.stack(idx, -1)).sum(-2)

    # ---------------------------------------------------------------- score interface
    def log_score(self, x_t: torch.Tensor, sigma_bar) -> torch.Tensor:
        """Log Hamming-1 ratios ``log s[b, i, y]``, shape (B, d, n), float32 (lesson 9).

        ``sigma_bar`` is a scalar or of shape (B,). The entry at y = x_t[b, i] is exactly 0.
        """
        if self.cfg.objective == "ar":
            raise ValueError("an 'ar' model has no score; use ar_log_probs")
        x_t = x_t.long()
        sb = torch.as_tensor(sigma_bar, dtype=torch.float32, device=x_t.device)
        sb = torch.broadcast_to(sb.float(), x_t.shape[:1])
        z = self(x_t, sb).float()
        if self.cfg.param == "denoiser":
            log_p = F.pad(F.log_softmax(z[..., :-1], -1), (0, 1), value=-math.inf)  # no MASK
            return log_score_from_denoiser(log_p, x_t, sb)
        if self.cfg.objective == "absorb":
            # SEDD's absorbing parametrisation: ratios = softmax-like scores / (e^{sigma_bar} - 1)
            z = z - (log_expm1(sb) + math.log(self.cfg.n_out - 1))[:, None, None]
        return z.scatter(-1, x_t[..., None], 0.0)

    def score_fn(self, x_t: torch.Tensor, sigma_bar) -> torch.Tensor:
        """Ratios ``exp(log_score)`` with the agreed score-function signature."""
        return torch.exp(self.log_score(x_t, sigma_bar))

    # ---------------------------------------------------------------- autoregressive
    def ar_log_probs(self, x0: torch.Tensor) -> torch.Tensor:
        """log p(x0[b, i] | x0[b, :i]) for each position, shape (B, d) (ar objective only)."""
        if self.cfg.objective != "ar":
            raise ValueError(f"ar_log_probs needs an 'ar' model, this one is {self.cfg.objective!r}")
        bos = torch.full_like(x0[:, :1], self.cfg.n_chars)
        logits = self(torch.cat([bos, x0[:, :-1]], 1)).float()
        return torch.gather(F.log_softmax(logits, -1), -1, x0[..., None])[..., 0]


__all__ = ["ModelConfig", "DiffusionTransformer", "OBJECTIVES", "PARAMS"]
