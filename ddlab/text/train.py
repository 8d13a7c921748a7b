"""Training SEDD (and the autoregressive baseline) on text8 (lesson 9).

    python -m ddlab.text.train --preset tiny-cpu --out runs/tiny [--key value ...] [--resume]
    torchrun --nproc_per_node 8 -m ddlab.text.train --preset small --out runs/small

(``python -m ddlab.train`` is the same command.) The loss is the DWDSE of lesson 6, computed by
the library's one estimator ``ddlab.losses.dwdse`` from the same per-token score entropy
``rm.score_entropy`` as on the toys (lesson 3): for a clean crop x0,

    t ~ U(t_min, 1) (stratified over the batch),   x_t ~ rm.sample_transition(x0, sigma_bar(t)),
    loss(x0) = sigma(t) * sum_i score_entropy(log_score(x_t, sigma_bar)_i, x_t_i, x0_i, sigma_bar)

whose expectation over t is the DWDSE part of the bound on -log p(x0) (nats); divided by the
number of characters and log 2 it reads as bits per character. ``objective="ar"`` trains the causal
copy of the network with next-character cross-entropy instead.

Machinery: AdamW with :func:`get_lr` (linear warmup, then constant, as SEDD), gradient clipping,
an EMA of the weights (used for evaluation and sampling), bf16 autocast on CUDA, optional
torch.compile, a tqdm bar, periodic evaluation, atomic checkpoints (``ddlab.text.checkpoint``),
``--resume`` that continues bit-for-bit on CPU (every rank's random streams are checkpointed),
a guard that stops on a NaN/inf loss without overwriting the last good checkpoint
(:class:`LossLog`), and DDP under torchrun. Each step is :func:`train_step`, which never
synchronises with a GPU.

Nothing is lost or clobbered: the whole configuration is checked before the first step
(``config.check_config``); a folder that already holds a run is refused unless ``--resume`` or
``--overwrite``; the folder is locked while training (``checkpoint.RunLock``), so a second training
on it stops at once; SIGINT (Ctrl-C, a notebook's interrupt) and SIGTERM write a checkpoint after
the current step and stop (:class:`TrainingInterrupted`: exit status 130 / 143, a KeyboardInterrupt
in a notebook), and that checkpoint resumes bit-for-bit; the checkpoint is written before the final
evaluation. On ``--resume`` the optimisation knobs (``RESUMABLE_CHANGES``) may change, as the NaN
guard's advice asks; the log says which did. Every CLI error is one line ``error: ...``
(``config.run_cli``; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from .._checks import skip_value_checks
from .._numerics import LN2
from ..losses import dwdse, stratified_times
from .checkpoint import (CKPT_NAME, EMA, CheckpointError, build_model, build_process,
                         config_of, load_checkpoint, prepare_run_folder, restore_rng_state, save_checkpoint)
from .config import RENAMED, ConfigError, TrainConfig, check_config, make_config, run_cli
from .data import CropSampler, eval_chunks, load_corpus

# What may change between a run and its resumption. The optimisation knobs are here so that the
# NaN guard's advice (lower --lr, raise --warmup, ... then --resume) can be followed; a resumed
# run with changed knobs is no longer bit-identical to an uninterrupted one, and the log says so.
OPTIMISATION_KNOBS = ("lr", "min_lr", "warmup", "grad_clip", "weight_decay", "beta1", "beta2", "ema",
                      "bf16", "time_budget_s", "max_steps")
RESUMABLE_CHANGES = OPTIMISATION_KNOBS + ("progress", "out", "threads", "eval_every",
                                          "eval_batches", "ckpt_every", "log_every", "device",
                                          "compile", "ddp_timeout_s")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training; a checkpoint of the last finished step was written.

    A KeyboardInterrupt, so that a notebook's interrupt button ends the cell as usual (after the
    save); the CLI exits with ``exit_code`` (128 + the signal number: 130 SIGINT, 143 SIGTERM)."""

    def __init__(self, signum: int, step: int, out):
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name} at step {step}: checkpoint saved in {out}; "
                         f"continue with --resume")
        self.signum, self.step, self.exit_code = signum, step, 128 + signum

    def __str__(self):
        return self.args[0]


# ------------------------------------------------------------------------------- the loss
def dwdse_loss(rm, schedule, model, x0, t_min=1e-3, generator=None, t=None) -> torch.Tensor:
    """One-sample DWDSE of each sequence x0 (B, d), nats, shape (B,) (lesson 9).

    ``ddlab.losses.dwdse`` with the network's log-ratios at times t stratified over the batch
    with one shared offset (``ddlab.losses.stratified_times``), or at the given ``t``:
    ``sigma(t) * sum_i rm.score_entropy(model.log_score(x_t, sigma_bar), x_t, x0, sigma_bar)_i``.
    """
    if t is None:
        t = stratified_times(x0.shape[0], t_min, shared_offset=True, generator=generator,
                             dtype=torch.float32, device=x0.device)
    return dwdse(rm, model.log_score, x0, schedule.sigma_bar(t), schedule.sigma(t),
                 generator=generator)


class Objective(nn.Module):
    """Per-sequence training loss in nats, shape (B,). A module so that DDP can wrap it.

    ``rm = schedule = None`` is the autoregressive baseline (next-character cross-entropy)."""

    def __init__(self, rm, schedule, model, t_min: float = 1e-3):
        super().__init__()
        self.rm, self.schedule, self.model, self.t_min = rm, schedule, model, t_min

    def forward(self, x0: torch.Tensor, generator=None) -> torch.Tensor:
        if self.rm is None:
            return -self.model.ar_log_probs(x0).sum(-1)
        return dwdse_loss(self.rm, self.schedule, self.model, x0, self.t_min, generator)


# ------------------------------------------------------------------------------- one step
def get_lr(step: int, cfg: TrainConfig) -> float:
    """The learning rate of the step after ``step`` steps: linear warmup, then constant (SEDD's
    recipe, for runs of unknown length) or, with ``min_lr >= 0``, a cosine decay from ``lr`` to
    ``min_lr`` at ``max_steps`` (nanoGPT's: a short run gains most from ending at a low rate)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.min_lr < 0 or cfg.max_steps <= cfg.warmup:
        return cfg.lr
    done = min(1.0, (step - cfg.warmup) / (cfg.max_steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * done)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device) -> torch.optim.AdamW:
    """AdamW; on CUDA the fused kernel (one launch for all parameters instead of several)."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             weight_decay=cfg.weight_decay,
                             fused=torch.device(device).type == "cuda")


def train_step(runner, model, opt, ema, x0, noise_gen, lr: float, cfg: TrainConfig,
               use_bf16: bool) -> torch.Tensor:
    """One optimiser step on the batch x0; returns its loss (nats/char), a 0-d tensor on the device.

    The step never waits for the GPU: the input value checks are skipped (the corpus was checked
    once by CropSampler) and the loss stays on the device until :class:`LossLog` flushes it, so
    that a NaN is caught a few steps late rather than by a sync per step.
    ``benchmarks/bench_train.py --gpu`` times this very function.
    """
    for g in opt.param_groups:
        g["lr"] = lr
    with skip_value_checks(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
        loss = runner(x0, noise_gen).mean() / cfg.seq_len        # nats per character
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    if ema is not None:
        ema.update()
    return loss.detach()


def next_batch(sampler: CropSampler, device: torch.device) -> torch.Tensor:
    x0 = sampler.next()
    if device.type == "cuda":          # a pinned copy can overlap the GPU's previous step
        x0 = x0.pin_memory()
    return x0.to(device, non_blocking=True)


# ------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def quick_eval(objective: Objective, data, cfg: TrainConfig, device) -> float:
    """Bits/char estimate on the first ``eval_batches`` fixed chunks of a split (fixed noise seed).

    For diffusion this is the one-sample DWDSE (without the tiny prior term); for the AR model it is
    the exact NLL. ``ddlab.text.evaluate`` gives the full bound with its standard error.
    """
    chunks = eval_chunks(data, cfg.seq_len, cfg.eval_batches * cfg.batch_size)
    gen = torch.Generator(device=device).manual_seed(1234)
    total = 0.0
    for x0 in chunks.split(cfg.batch_size):
        total += objective(x0.to(device), gen).double().sum().item()
    return total / chunks.numel() / LN2


def ema_quick_eval(objective: Objective, ema: EMA, data, cfg: TrainConfig, device) -> float:
    """:func:`quick_eval` of the EMA weights in eval mode; the training weights and mode return."""
    model = objective.model
    was_training = model.training
    with ema.swapped():
        model.eval()
        bpc = quick_eval(objective, data, cfg, device)
    model.train(was_training)
    return bpc


# ------------------------------------------------------------------------------- processes
def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on some rank. Under DDP every rank must call it at the same step:
    ranks that stopped on their own would leave the others waiting in the next all-reduce."""
    if not distributed():
        return flag
    t = torch.tensor([float(flag)], device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def select_device(cfg: TrainConfig, rank: int) -> torch.device:
    """The device of this rank (under DDP on CUDA: GPU LOCAL_RANK); sets the CPU thread count."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    device = torch.device(cfg.device if cfg.device != "auto" else
                          "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and distributed():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or cpu_threads())
    return device


def cpu_threads() -> int:
    """The CPU threads a run uses by default (``--threads 0``): every core this process may use,
    shared among the ranks of a CPU DDP run. On a machine shared with other work pass
    ``--threads 1``: a thread that waits for a busy core stalls the whole step."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:                 # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // rank_and_world()[1])


def make_runner(objective: Objective, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """What each step calls: the objective (compiled network if asked), DDP-wrapped under DDP."""
    if cfg.compile:
        objective.model.forward = torch.compile(objective.model.forward)
    if not distributed():
        return objective
    return nn.parallel.DistributedDataParallel(
        objective, device_ids=[device.index] if device.type == "cuda" else None)


def out_of_time(step: int, seconds: float, cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the time budget is spent. Under DDP the ranks agree on it at logging steps only,
    so that the budget costs no extra synchronisation on the other steps."""
    if cfg.time_budget_s <= 0 or (distributed() and step % cfg.log_every):
        return False
    return any_rank(seconds >= cfg.time_budget_s, device)


# ------------------------------------------------------------------------------- logging
class LossLog:
    """The losses of the steps since the last flush, kept on the device; the NaN guard.

    :meth:`flush` copies them to the host in one sync, appends them to ``history`` as
    ``{"step", "loss_bpc"}`` (bits/char) and moves the progress bar by as many steps; if any rank
    saw a NaN or inf it raises :class:`TrainingDiverged` on every rank, before the next checkpoint
    could overwrite the last good one. Under DDP every rank must flush at the same steps.
    """

    def __init__(self, history: list, ckpt_path, device, *, step: int, tokens_per_step: int,
                 bar=None):
        self.history, self.ckpt_path, self.device, self.bar = history, Path(ckpt_path), device, bar
        self.step0, self.tokens_per_step = step, tokens_per_step
        self.pending: list[torch.Tensor] = []
        self.t_start = time.perf_counter()
        # wall-clock seconds of training so far, carried over a resumption (curves against time)
        self.seconds0 = history[-1].get("seconds", 0.0) if history else 0.0

    def seconds(self) -> float:
        return time.perf_counter() - self.t_start

    def tokens_per_s(self, step: int, seconds: float) -> float:
        return (step - self.step0) * self.tokens_per_step / max(seconds, 1e-9)

    def append(self, loss: torch.Tensor) -> None:
        self.pending.append(loss)

    def flush(self, step: int) -> None:
        if not self.pending:
            return
        vals = torch.stack(self.pending).double().cpu() / LN2
        first = step - len(self.pending) + 1
        self.pending.clear()
        finite = torch.isfinite(vals)
        if any_rank(not bool(finite.all()), self.device):
            where = (f"the last good checkpoint {self.ckpt_path} is kept"
                     if self.ckpt_path.is_file() else "no checkpoint had been written yet")
            what = (f"loss became {vals[~finite][0].item()} at step "
                    f"{first + int((~finite).nonzero()[0])}" if not finite.all() else
                    f"loss became non-finite on another rank by step {step}")
            raise TrainingDiverged(f"{what}; stopping ({where}). Lower --lr, raise --warmup, clip "
                                   f"harder (a smaller --grad_clip > 0) or pass --bf16 false, "
                                   f"then rerun with --resume (these may change on resume).")
        now = round(self.seconds0 + self.seconds(), 3)     # each flushed step gets the flush time
        self.history.extend({"step": first + k, "loss_bpc": float(v), "seconds": now}
                            for k, v in enumerate(vals))
        if self.bar is not None:
            # the bar moves at flushes only: in a notebook it is a widget, every update a message
            # to the front end (with the bar, a CPU run in a notebook took 94 ms a step, without
            # it 86: benchmarks/RESULTS.md)
            self.bar.update(len(vals))
            rate = self.tokens_per_s(step, self.seconds())
            self.bar.set_postfix(loss=f"{vals[-1] * LN2:.3f}", bpc=f"{vals[-1]:.3f}",
                                 tok_s=f"{rate:,.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_bar(cfg: TrainConfig, step: int):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=cfg.max_steps, initial=step, desc=f"{cfg.objective} {cfg.preset}")


class StopSignals:
    """While active, SIGINT and SIGTERM only set :attr:`signum`; the training loop then saves a
    checkpoint after the current step and stops. A second signal acts at once (the default
    handlers are back), so a stuck save can still be interrupted; checkpoints are atomic.

    Handlers can only be installed from the main thread; elsewhere this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum, self.previous = None, {}

    def _handler(self, signum, frame):
        self.signum = signum
        for s, h in self.previous.items():    # the next signal is not deferred
            signal.signal(s, h)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.getsignal(s) for s in self.SIGNALS}
            for s in self.SIGNALS:
                signal.signal(s, self._handler)
        return self

    def restore(self) -> None:
        """Put the previous handlers back (idempotent); ``signum`` keeps what was caught."""
        for s, h in self.previous.items():
            signal.signal(s, h)
        self.previous = {}

    def __exit__(self, *exc):
        self.restore()


def stop_requested(signals: StopSignals, step: int, cfg: TrainConfig, device) -> int | None:
    """The signal to stop for, or None. Under DDP the ranks agree at logging steps (a rank that
    stopped alone would leave the others waiting in the next all-reduce)."""
    if not distributed():
        return signals.signum
    if step % cfg.log_every:
        return None
    if any_rank(signals.signum is not None, device):
        return signals.signum or signal.SIGTERM
    return None


# ------------------------------------------------------------------------------- resuming
def check_resumable(ck: dict, cfg: TrainConfig, path, world: int) -> dict:
    """Raise ValueError unless the checkpoint ``ck`` (read from ``path``) can be continued by this
    run: same configuration up to RESUMABLE_CHANGES, same number of ranks. Returns the changed
    optimisation knobs, ``{name: (saved, given)}`` (empty: the continuation is bit-for-bit)."""
    if not isinstance(ck["config"], dict):
        raise CheckpointError(f"{path} is not a ddlab checkpoint (its config is not a dict)")
    saved_all = {RENAMED.get(k, k): v for k, v in ck["config"].items()}
    saved = {k: v for k, v in saved_all.items() if k not in RESUMABLE_CHANGES}
    now = {k: v for k, v in dataclasses.asdict(cfg).items() if k in saved}
    if now != saved:
        diff = {k: (saved[k], now.get(k)) for k in saved if saved[k] != now.get(k)}
        raise ValueError(f"--resume with a different configuration: {diff} (saved, given); "
                         f"only {', '.join(RESUMABLE_CHANGES)} may change on resume")
    if "rng" not in ck:
        raise ValueError(f"--resume: {path} was written by an older ddlab that did not save "
                         f"every rank's random state, so it cannot continue bit-for-bit; start a "
                         f"new run (it still loads for evaluation and sampling)")
    if len(ck["rng"]) != world:
        raise ValueError(f"--resume: the checkpoint was written by {len(ck['rng'])} process(es) "
                         f"and this run has {world}; resume with the same number (each rank "
                         f"continues its own random streams)")
    given = dataclasses.asdict(cfg)
    return {k: (saved_all[k], given[k]) for k in OPTIMISATION_KNOBS
            if k in saved_all and saved_all[k] != given[k] and k not in ("max_steps",
                                                                          "time_budget_s")}


def resume_run(out: Path, cfg: TrainConfig, model, ema: EMA, opt, sampler, noise_gen,
               device, log) -> tuple[int, list]:
    """(step, history) of the checkpoint in ``out``, with the weights, the EMA, the optimiser and
    this rank's random streams restored from it; (0, []) when there is no checkpoint yet."""
    path = out / CKPT_NAME
    if not path.is_file():
        log(f"--resume: no checkpoint in {out} yet, starting from scratch")
        return 0, []
    rank, world = rank_and_world()
    ck = load_checkpoint(out)
    changed = check_resumable(ck, cfg, path, world)
    try:
        model.load_state_dict(ck["model"])
        ema.load_state_dict({"shadow": [s.to(device) for s in ck["ema"]["shadow"]],
                             "updates": ck["ema"]["updates"]})
        opt.load_state_dict(ck["opt"])
        restore_rng_state(ck["rng"][rank], sampler, noise_gen)
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as err:
        raise CheckpointError(f"{path} cannot be resumed: its state does not fit this run "
                              f"({' '.join(str(err).split())[:300]})") from None
    # the optimiser's saved hyperparameters give way to the given ones (lr is set every step;
    # the EMA's decay is cfg.ema from its constructor)
    for g in opt.param_groups:
        g["weight_decay"], g["betas"] = cfg.weight_decay, (cfg.beta1, cfg.beta2)
    log(f"resumed {out} at step {ck['step']}")
    if changed:
        log("resume: changed " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
            + " (the continuation is not bit-identical to the original run)")
    return ck["step"], ck["history"]


# ------------------------------------------------------------------------------- training
def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, log=None) -> dict:
    """Train per ``cfg``; returns {"history", "final_valid_bpc", "steps", "tokens_per_s", ...}.

    ``history`` holds one {"step", "loss_bpc", "seconds"} per step (loss in bits/char; seconds of
    training when the loss was logged, every ``log_every`` steps); ``model`` is the
    trained network (last weights; the EMA weights are in the checkpoint, see
    ``ddlab.text.checkpoint.load_model``). Under DDP (a process group already initialised, e.g.
    by torchrun via :func:`main`) every rank trains on its own batches and only rank 0 writes to
    ``cfg.out``.

    ``cfg.out`` must not hold a run already, unless ``resume`` (continue it) or ``overwrite``
    (replace it); it is locked while training. SIGINT / SIGTERM save a checkpoint after the
    current step and raise :class:`TrainingInterrupted` (a KeyboardInterrupt).
    """
    rank, world = rank_and_world()
    log = log or (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)
    check_config(cfg)                  # before anything is loaded, built or written
    threads = torch.get_num_threads()  # restored at the end: a notebook's other cells keep theirs
    try:
        return _locked_train(cfg, resume, overwrite, log, rank, world)
    finally:
        torch.set_num_threads(threads)


def _locked_train(cfg, resume, overwrite, log, rank, world) -> dict:
    device = select_device(cfg, rank)
    out = Path(cfg.out)
    corpus = load_corpus(cfg.data, fallback=cfg.fallback)
    check_config(cfg, {"train": len(corpus.train), "valid": len(corpus.valid)})

    # From here on a SIGINT / SIGTERM is deferred to the training loop, which saves and stops
    # (so that a signal during set-up cannot leave the lock behind or a half-set-up run).
    with StopSignals() as signals:
        # the run folder: rank 0 locks it and checks it may write there; every rank learns the
        # outcome
        lock, failure = None, None
        if rank == 0:
            try:
                lock = prepare_run_folder(out, resume=resume, overwrite=overwrite, log=log)
            except Exception as err:   # noqa: BLE001  (re-raised below, on every rank)
                failure = err
        if any_rank(failure is not None, device):
            raise failure or RuntimeError(f"rank 0 could not prepare the run folder {out}")
        try:
            return _train(cfg, resume, log, rank, world, device, out, corpus, signals)
        finally:
            if lock is not None:
                lock.release()


def _train(cfg, resume, log, rank, world, device, out, corpus, signals) -> dict:
    # set up: the network, its noise process and loss, the optimiser, the data and noise streams
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    rm, schedule = build_process(cfg)
    objective = Objective(rm, schedule, model, cfg.t_min)
    ema = EMA(model.parameters(), cfg.ema)
    opt = make_optimizer(model, cfg, device)
    sampler = CropSampler(corpus.train, cfg.seq_len, cfg.batch_size, seed=cfg.seed * 1000 + rank)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + 500 + rank)
    step, history = 0, []
    if resume:
        step, history = resume_run(out, cfg, model, ema, opt, sampler, noise_gen, device, log)
    runner = make_runner(objective, cfg, device)
    use_bf16 = cfg.bf16 and device.type == "cuda"
    losses = LossLog(history, out / CKPT_NAME, device, step=step,
                     tokens_per_step=cfg.batch_size * cfg.seq_len * world,
                     bar=progress_bar(cfg, step) if rank == 0 else None)

    def checkpoint():              # every rank calls it (it gathers their random streams)
        save_checkpoint(out, cfg, model, ema, opt, step, history, sampler, noise_gen, corpus.name)

    def interrupted(signum):
        losses.flush(step)
        checkpoint()
        losses.close()
        return TrainingInterrupted(signum, step, out)

    # the loop: a step, then on schedule a flush of the losses, an evaluation, a checkpoint;
    # a SIGINT / SIGTERM (caught since set-up) ends it between two steps with a checkpoint
    model.train()
    while step < cfg.max_steps and not out_of_time(step, losses.seconds(), cfg, device):
        signum = stop_requested(signals, step, cfg, device)
        if signum is not None:
            raise interrupted(signum)
        loss = train_step(runner, model, opt, ema, next_batch(sampler, device), noise_gen,
                          get_lr(step, cfg), cfg, use_bf16)
        step += 1
        losses.append(loss)
        if step % cfg.log_every == 0:
            losses.flush(step)
        if cfg.eval_every and step % cfg.eval_every == 0:
            losses.flush(step)
            bpc = ema_quick_eval(objective, ema, corpus.valid, cfg, device)
            log(f"step {step}: valid bits/char (EMA, quick estimate) {bpc:.4f}")
        if cfg.ckpt_every and step % cfg.ckpt_every == 0:
            losses.flush(step)
            checkpoint()

    # finish: the last losses and the checkpoint (before the evaluation, so that a failure there
    # loses nothing), a final evaluation, metrics.json. A signal from here on acts at once.
    losses.flush(step)
    elapsed = losses.seconds()
    losses.close()
    checkpoint()
    signals.restore()
    if signals.signum is not None:             # caught after the last check in the loop
        raise TrainingInterrupted(signals.signum, step, out)
    valid_bpc = ema_quick_eval(objective, ema, corpus.valid, cfg, device)
    if runner is not objective:    # DDP's wrapper lives in a reference cycle that holds the
        del runner                 # process group: left to a late GC, it outlives the caller's
        gc.collect()               # destroy_process_group and aborts the process at exit
    result = {"steps": step, "history": history, "final_valid_bpc": valid_bpc,
              "train_seconds": elapsed, "tokens_per_s": losses.tokens_per_s(step, elapsed),
              "params": model.num_params(), "corpus": corpus.name, "objective": cfg.objective}
    if rank == 0:
        write_metrics(out, result)
        log(f"{cfg.objective}: {step} steps, valid bits/char {valid_bpc:.4f} on {corpus.name}")
    result["model"] = model.eval()   # the trained (non-EMA) weights; the EMA ones are in the ckpt
    return result


# What does not change the trained weights: a finished run whose configuration differs from the
# asked one only in these is the asked run (CPU threads change the float summation order only).
NOT_IN_RESULT = ("progress", "out", "threads", "log_every", "ckpt_every", "ddp_timeout_s")


def finished_run(cfg: TrainConfig) -> dict | None:
    """The result of the finished run in ``cfg.out`` if it was trained with ``cfg``, else None.

    Finished: ``metrics.json`` was written (the last act of :func:`train`) after the checkpoint.
    Same configuration: every field but ``NOT_IN_RESULT`` equal. The result is the dict
    :func:`train` returned, with ``model`` the trained (non-EMA) weights read back.
    """
    out = Path(cfg.out)
    if not (out / "metrics.json").is_file() or not (out / CKPT_NAME).is_file():
        return None
    try:
        ck = load_checkpoint(out)
        saved = dataclasses.asdict(config_of(ck))
        metrics = json.loads((out / "metrics.json").read_text())
    except (CheckpointError, ValueError, OSError):
        return None            # unreadable: not the asked run; training again replaces it
    asked = dataclasses.asdict(cfg)
    if any(saved.get(k) != v for k, v in asked.items() if k not in NOT_IN_RESULT):
        return None
    if (out / CKPT_NAME).stat().st_mtime > (out / "metrics.json").stat().st_mtime:
        return None            # checkpointed after its metrics: an interrupted resumption
    if ck.get("corpus") != load_corpus(cfg.data, fallback=cfg.fallback).name:
        return None            # same name, other text (text8 appeared, or another fallback)
    model = build_model(cfg)
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError:       # weights of an older network layout: not this run any more
        return None
    return {**metrics, "history": ck["history"], "model": model.eval()}


def train_or_load(cfg: TrainConfig, *, log=None) -> dict:
    """The run of ``cfg``: read back from ``cfg.out`` if it finished there with the same
    configuration (:func:`finished_run`), else trained afresh, replacing what ``cfg.out`` held.

    How a lesson reuses a model an earlier lesson trained (lessons 10 and 11 reuse lesson 9's runs)
    and how re-running a notebook skips training it already did. The log says which happened.
    """
    log = log or (lambda *a: print(*a, flush=True))
    done = finished_run(cfg)
    if done is not None:
        log(f"{cfg.objective}: loaded the finished run in {cfg.out} ({done['steps']} steps, "
            f"valid bits/char {done['final_valid_bpc']:.4f}); delete it to train again")
        return done
    return train(cfg, overwrite=True, log=log)


def write_metrics(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({k: v for k, v in result.items()
                                                  if k != "history"}, indent=1))


_BOOL_WORDS = ("1", "true", "yes", "on", "0", "false", "no", "off")


def _flag(argv: list[str], i: int, name: str) -> tuple[bool, int] | None:
    """``--name``, ``--name=VALUE`` or ``--name VALUE`` (VALUE true/false) at argv[i]:
    (value, index of the next argument), or None if argv[i] is not this flag."""
    a = argv[i]
    if a == f"--{name}":
        if i + 1 < len(argv) and argv[i + 1].lower() in _BOOL_WORDS:
            return argv[i + 1].lower() in _BOOL_WORDS[:4], i + 2
        return True, i + 1
    if a.startswith(f"--{name}="):
        raw = a.split("=", 1)[1].lower()
        if raw not in _BOOL_WORDS:
            raise ConfigError(f"--{name} expects true/false, got {a.split('=', 1)[1]!r}")
        return raw in _BOOL_WORDS[:4], i + 1
    return None


def _main(argv: list[str]) -> dict:
    preset, flags, rest = "tiny-cpu", {"resume": False, "overwrite": False}, []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--preset" and i + 1 < len(argv):
            preset, i = argv[i + 1], i + 2
            continue
        if a.startswith("--preset="):
            preset, i = a.split("=", 1)[1], i + 1
            continue
        if a in ("-h", "--help"):
            print(__doc__)
            print("options: --preset NAME --resume --overwrite --debug " + " ".join(
                f"--{f.name}" for f in dataclasses.fields(TrainConfig) if f.name != "preset"))
            return {}
        for name in flags:
            hit = _flag(argv, i, name)
            if hit is not None:
                flags[name], i = hit
                break
        else:
            rest.append(a)
            i += 1
    cfg = make_config(preset, rest)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        # a stalled rank fails the others after ddp_timeout_s instead of gloo's 30 minutes
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.ddp_timeout_s))
    try:
        return train(cfg, **flags)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv=None) -> dict:
    """``python -m ddlab.text.train``: errors end as one line ``error: ...`` (exit 2 for a bad
    option, 1 for a failure; ``--debug`` shows the traceback), an interrupt as 130 / 143."""
    return run_cli(_main, argv)


__all__ = ["TrainingDiverged", "TrainingInterrupted", "StopSignals", "OPTIMISATION_KNOBS",
           "RESUMABLE_CHANGES", "dwdse_loss", "Objective", "get_lr", "make_optimizer",
           "train_step", "next_batch", "quick_eval", "ema_quick_eval", "any_rank", "LossLog",
           "check_resumable", "resume_run", "train", "finished_run", "train_or_load",
           "NOT_IN_RESULT", "main"]


if __name__ == "__main__":
    main()
