"""Run folders: building a run's network and noise process, its checkpoint, the EMA (lesson 9).

A run folder (``--out`` of ``python -m ddlab.text.train``) holds ``ckpt.pt`` (:data:`CKPT_NAME`)
and ``metrics.json``. The checkpoint is one dict: the configuration, the weights, their EMA, the
optimiser state, the step, the loss history and the random state of every rank, so that a run
can be evaluated and sampled (:func:`load_model`) or resumed bit-for-bit (``ddlab.text.train``).
Evaluation and generation read runs through this module, never through the trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from ..rate_matrices import Absorbing, Uniform
from ..schedules import Geometric, LogLinear
from .config import UNIFORM_Q_SCALING, TrainConfig, config_from_dict
from .data import VOCAB_SIZE
from .model import DiffusionTransformer, ModelConfig

CKPT_NAME = "ckpt.pt"


# ------------------------------------------------------------------------------- building
def build_process(cfg: TrainConfig):
    """(rate matrix, schedule) of the run, or (None, None) for the autoregressive baseline."""
    if cfg.objective == "absorb":
        return Absorbing(VOCAB_SIZE + 1), LogLinear(cfg.noise_eps)
    if cfg.objective == "uniform":
        n = VOCAB_SIZE
        return Uniform(n), Geometric(cfg.uniform_sigma_min / n, cfg.uniform_sigma_max / n)
    return None, None


def model_config(cfg: TrainConfig) -> ModelConfig:
    return ModelConfig(n_chars=VOCAB_SIZE, objective=cfg.objective, seq_len=cfg.seq_len,
                       n_layer=cfg.n_layer, n_head=cfg.n_head, d_model=cfg.d_model,
                       cond_dim=cfg.cond_dim, dropout=cfg.dropout)


def build_model(cfg: TrainConfig) -> DiffusionTransformer:
    return DiffusionTransformer(model_config(cfg))


# ------------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of the parameters, in float32.

    The decay ramps up as min(decay, (1 + k) / (10 + k)) so that early averages are not dominated
    by the random initialisation (useful for the minute-long CPU runs).
    """

    def __init__(self, params, decay: float):
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self):
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1 - d)
        self.updates += 1

    @contextlib.contextmanager
    def swapped(self):
        """Temporarily load the EMA weights into the model."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)

    def state_dict(self):
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state):
        self.shadow = [s.clone() for s in state["shadow"]]
        self.updates = state["updates"]


# ------------------------------------------------------------------------------- random state
def rng_state(sampler, noise_gen) -> dict:
    """This rank's random streams: the crop sampler, the noise generator and torch's global RNG."""
    return {"sampler": sampler.state_dict(), "noise_gen": noise_gen.get_state(),
            "torch_rng": torch.get_rng_state()}


def gather_rng_states(sampler, noise_gen) -> list[dict]:
    """Every rank's :func:`rng_state`, in rank order. Under DDP every rank must call it."""
    mine = rng_state(sampler, noise_gen)
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return states


def restore_rng_state(state: dict, sampler, noise_gen) -> None:
    """Continue the streams saved by :func:`rng_state` (each rank restores its own)."""
    sampler.load_state_dict(state["sampler"])
    noise_gen.set_state(state["noise_gen"])
    torch.set_rng_state(state["torch_rng"])


# ------------------------------------------------------------------------------- files
def save_atomic(obj, path) -> None:
    """torch.save to a temporary file beside ``path``, then os.replace: never a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(run_dir, cfg: TrainConfig, model, ema: EMA, opt, step: int, history: list,
                    sampler, noise_gen, corpus_name: str) -> None:
    """Write ``run_dir/ckpt.pt`` atomically. Every rank calls it (each rank's random streams are
    gathered, so that a resumed DDP run continues all of them); only rank 0 writes."""
    rng = gather_rng_states(sampler, noise_gen)
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    save_atomic({"config": dataclasses.asdict(cfg), "model": model.state_dict(),
                 "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                 "rng": rng, "history": history,
                 "corpus": corpus_name, "uniform_q_scaling": UNIFORM_Q_SCALING},
                Path(run_dir) / CKPT_NAME)


def load_checkpoint(run_dir, map_location="cpu") -> dict:
    path = Path(run_dir) / CKPT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first with "
                                f"python -m ddlab.text.train --out {run_dir}")
    return torch.load(path, map_location=map_location, weights_only=False)


def load_model(run_dir, device="cpu", ema: bool = True):
    """(model in eval mode, TrainConfig, rm, schedule) from a run folder; EMA weights by default."""
    ck = load_checkpoint(run_dir)
    cfg = config_from_dict(ck["config"])
    model = build_model(cfg)
    model.load_state_dict(ck["model"])
    if ema:
        with torch.no_grad():
            for p, s in zip(model.parameters(), ck["ema"]["shadow"]):
                p.copy_(s)
    rm, schedule = build_process(cfg)
    return model.to(device).eval(), cfg, rm, schedule


__all__ = ["CKPT_NAME", "build_process", "model_config", "build_model", "EMA", "rng_state",
           "gather_rng_states", "restore_rng_state", "save_atomic", "save_checkpoint",
           "load_checkpoint", "load_model"]
