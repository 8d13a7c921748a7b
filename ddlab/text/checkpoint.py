"""Run folders: building a run's network and noise process, its checkpoint, the EMA (lesson 9).

A run folder (``--out`` of ``python -m ddlab.text.train``) holds ``ckpt.pt`` (:data:`CKPT_NAME`)
and ``metrics.json``, and while a training runs in it, ``train.lock`` (:class:`RunLock`). The
checkpoint is one dict: the configuration, the weights, their EMA, the optimiser state, the step,
the loss history and the random state of every rank, so that a run can be evaluated and sampled
(:func:`load_model`) or resumed bit-for-bit (``ddlab.text.train``). Evaluation and generation
read runs through this module, never through the trainer. A missing, empty, corrupt or foreign
checkpoint raises :class:`CheckpointError` (a ValueError) that says which.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..rate_matrices import Absorbing, Uniform
from ..schedules import Geometric, LogLinear
from .config import UNIFORM_Q_SCALING, TrainConfig, config_from_dict
from .data import VOCAB_SIZE
from .model import DiffusionTransformer, ModelConfig

CKPT_NAME = "ckpt.pt"
LOCK_NAME = "train.lock"
# what a checkpoint must hold to be read at all (older ones lack "rng" and still load)
CKPT_KEYS = ("config", "model", "ema", "step")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, truncated or not a ddlab checkpoint."""


class RunLocked(RuntimeError):
    """Another training holds the run folder."""


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
                       cond_dim=cfg.cond_dim, dropout=cfg.dropout, param=cfg.param,
                       neighbours=cfg.neighbours, neighbour_pairs=cfg.neighbour_pairs,
                       # the AR baseline has no noise level to condition on: a plain transformer
                       adaln=cfg.time_input and cfg.objective != "ar")


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
    """The checkpoint dict of a run folder; :class:`CheckpointError` (a ValueError) if there is
    none or it is empty, truncated, corrupt or not a ddlab checkpoint."""
    path = Path(run_dir) / CKPT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first with "
                                f"python -m ddlab.text.train --out {run_dir}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a ddlab checkpoint; retrain, or "
                              f"restore the file")
    try:
        # weights_only: a checkpoint is tensors, numbers, strings and containers; a foreign
        # pickle is refused instead of run
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:           # noqa: BLE001  (UnpicklingError, EOFError, zip errors ...)
        why = " ".join(str(err).split())
        why = why[:160] + " ..." if len(why) > 160 else why
        raise CheckpointError(f"{path} cannot be read as a ddlab checkpoint (truncated, corrupt "
                              f"or foreign: {type(err).__name__}: {why}); retrain, or restore "
                              f"the file") from None
    missing = [k for k in CKPT_KEYS if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise CheckpointError(f"{path} is not a ddlab checkpoint (it lacks {', '.join(missing)}; "
                              f"ddlab.text.train writes them)")
    return ck


def config_of(ck: dict, path="the checkpoint") -> TrainConfig:
    """The TrainConfig saved in a checkpoint dict, or CheckpointError if it is not one."""
    try:
        return config_from_dict(ck["config"])
    except (TypeError, AttributeError) as err:
        raise CheckpointError(f"{path} holds a configuration this ddlab does not know "
                              f"({err})") from None


def load_model(run_dir, device="cpu", ema: bool = True):
    """(model in eval mode, TrainConfig, rm, schedule) from a run folder; EMA weights by default."""
    ck = load_checkpoint(run_dir)
    path = Path(run_dir) / CKPT_NAME
    cfg = config_of(ck, path)
    try:
        model = build_model(cfg)
        model.load_state_dict(ck["model"])
        if ema:
            shadow = ck["ema"]["shadow"]
            if len(shadow) != len(list(model.parameters())):
                raise RuntimeError(f"{len(shadow)} EMA tensors for "
                                   f"{len(list(model.parameters()))} parameters")
            with torch.no_grad():
                for p, s in zip(model.parameters(), shadow):
                    p.copy_(s)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        # the usual cause: a run saved by an older ddlab whose network has changed since (lesson
        # 9's neighbour pairs did), so the message says what to do, not only what broke
        raise CheckpointError(f"{path}: the weights do not fit the network this ddlab builds "
                              f"for the saved configuration ({' '.join(str(err).split())[:300]}); "
                              f"a run saved by an older ddlab whose network has changed since "
                              f"cannot be loaded: retrain it") from None
    rm, schedule = build_process(cfg)
    return model.to(device).eval(), cfg, rm, schedule


# ------------------------------------------------------------------------------- run folders
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:            # alive, another user's
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder while a training writes to it (lesson 9).

    ``train.lock`` is created with O_CREAT | O_EXCL (atomic on local file systems: one creator
    wins) and holds ``{"pid", "host", "since"}``. A lock left by a process that died (kill -9, a
    crash) is stale: when its host is this host and its pid is not alive it is broken and taken;
    a lock of another host cannot be checked, and the message says how to remove it by hand.
    """

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if not holder:             # being written just now, or a crash in between:
                    age = time.time() - self.path.stat().st_mtime if self.path.exists() else 0
                    if age < 10:           # give its writer a moment
                        time.sleep(0.2)
                        continue
                elif holder.get("host") != me["host"] or _pid_alive(int(holder.get("pid", -1))):
                    raise RunLocked(
                        f"{self.path.parent} is in use by another training (pid "
                        f"{holder.get('pid')} on {holder.get('host')}, lock {self.path}); wait "
                        f"for it to finish, or delete the lock file if that process is gone")
                with contextlib.suppress(FileNotFoundError):   # stale: its process is dead
                    self.path.unlink()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunLocked(f"could not take the lock {self.path}; another training keeps "
                        f"creating it")

    def release(self) -> None:
        if self.held and self._holder().get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def remove_orphans(run_dir) -> list[Path]:
    """Delete ``ckpt.pt.*.tmp`` files left by writes that were killed (call it with the lock
    held: then no live writer owns them). Returns what was removed."""
    removed = []
    for tmp in Path(run_dir).glob(CKPT_NAME + ".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def prepare_run_folder(run_dir, *, resume: bool, overwrite: bool, log=print) -> RunLock:
    """Create ``run_dir``, lock it, and check that this training may write there (lesson 9).

    A folder that already holds a run (a checkpoint or metrics.json) is refused unless ``resume``
    (continue it) or ``overwrite`` (discard it: its checkpoint and metrics are deleted now, so
    that a later --resume cannot mix the two runs). Orphan temporary files are removed. Returns
    the held :class:`RunLock`; the caller releases it.
    """
    out = Path(run_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the run folder --out {str(out)!r}: "
                      f"{err.strerror or err}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OSError(f"the run folder --out {str(out)!r} is not writable; choose another --out")
    lock = RunLock(out).acquire()
    try:
        if resume and overwrite:
            raise ValueError("give either --resume (continue the run) or --overwrite (replace "
                             "it), not both")
        for tmp in remove_orphans(out):
            log(f"removed {tmp.name}, left by an interrupted checkpoint write")
        existing = [p for p in (out / CKPT_NAME, out / "metrics.json") if p.exists()]
        if existing and not resume:
            if not overwrite:
                raise ValueError(f"--out {str(out)!r} already holds a run "
                                 f"({', '.join(p.name for p in existing)}); pass --resume to "
                                 f"continue it, --overwrite to replace it, or another --out")
            for p in existing:
                p.unlink()
            log(f"--overwrite: removed the previous run in {out}")
    except BaseException:
        lock.release()
        raise
    return lock


__all__ = ["CKPT_NAME", "build_process", "model_config", "build_model", "EMA", "rng_state",
           "gather_rng_states", "restore_rng_state", "save_atomic", "save_checkpoint",
           "load_checkpoint", "load_model", "config_of", "CheckpointError", "RunLock",
           "RunLocked", "remove_orphans", "prepare_run_folder", "LOCK_NAME"]
