"""Training SEDD (and the autoregressive baseline) on text8 (lesson 9).

    python -m ddlab.train --preset tiny-cpu --out runs/tiny [--key value ...] [--resume]
    torchrun --nproc_per_node 8 -m ddlab.train --preset small --out runs/small

The loss is the same denoising score entropy as on the toys (lesson 3), computed by the same
primitive ``rm.score_entropy``, weighted into the DWDSE of lesson 6: for a clean crop x0,

    t ~ U(t_eps, 1) (stratified over the batch),   x_t ~ rm.sample_transition(x0, sigma_bar(t)),
    loss(x0) = sigma(t) * sum_i score_entropy(log_score(x_t, sigma_bar)_i, x_t_i, x0_i, sigma_bar)

whose expectation over t is the DWDSE part of the bound on -log p(x0) (nats); divided by the
number of characters and log 2 it reads as bits per character. ``objective="ar"`` trains the causal
copy of the network with next-character cross-entropy instead.

Machinery: AdamW, linear warmup then a constant rate (as SEDD), gradient clipping, an EMA of the
weights (used for evaluation and sampling), bf16 autocast on CUDA, optional torch.compile, a tqdm
bar, periodic evaluation, atomic checkpoints, ``--resume`` that continues bit-for-bit on CPU (the
RNG states of torch, of the crop sampler and of the noise generator are checkpointed for every
rank), a guard that stops on a NaN/inf loss without overwriting the last good checkpoint, and DDP
under torchrun. Each step is :func:`train_step`, which never synchronises with a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from ._checks import skip_value_checks
from .config import UNIFORM_Q_SCALING, TrainConfig, make_config
from .data import VOCAB_SIZE, CropSampler, eval_chunks, load_corpus
from .model import DiffusionTransformer, ModelConfig
from .rate_matrices import Absorbing, Uniform
from .schedules import Geometric, LogLinear

LN2 = math.log(2.0)
CKPT_NAME = "ckpt.pt"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


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


def sample_times(batch: int, t_eps: float, generator=None, device="cpu") -> torch.Tensor:
    """Stratified times: one uniform offset, then t_b = t_eps + (1 - t_eps)(b + u) / B.

    Each t_b is still U(t_eps, 1) marginally (so the loss stays unbiased), but the batch covers
    [t_eps, 1] evenly, which lowers the variance of the batch loss.
    """
    u = torch.rand((), generator=generator, device=device)
    return t_eps + (1 - t_eps) * (torch.arange(batch, device=device) + u) / batch


class Objective(nn.Module):
    """Per-sequence training loss in nats, shape (B,). A module so that DDP can wrap it."""

    def __init__(self, model: DiffusionTransformer, rm=None, schedule=None, t_eps: float = 1e-3):
        super().__init__()
        self.model, self.rm, self.schedule, self.t_eps = model, rm, schedule, t_eps

    def forward(self, x0: torch.Tensor, generator=None) -> torch.Tensor:
        if self.rm is None:
            return -self.model.ar_log_probs(x0).sum(-1)
        return dwdse_loss(self.model, x0, self.rm, self.schedule, self.t_eps, generator)


def dwdse_loss(model, x0, rm, schedule, t_eps=1e-3, generator=None, t=None) -> torch.Tensor:
    """One-sample DWDSE of each sequence x0 (B, d), nats, shape (B,) (lesson 9).

    ``sigma(t) * sum_i rm.score_entropy(model.log_score(x_t, sigma_bar), x_t, x0, sigma_bar)_i``
    with x_t drawn by ``rm.sample_transition`` at stratified times (or the given ``t``).
    """
    B = x0.shape[0]
    if t is None:
        t = sample_times(B, t_eps, generator, x0.device)
    sb = schedule.sigma_bar(t)
    x_t = rm.sample_transition(x0, sb[:, None], generator=generator)
    log_s = model.log_score(x_t, sb)
    se = rm.score_entropy(log_s, x_t, x0, sb[:, None].to(log_s.dtype))
    return schedule.sigma(t).to(se.dtype) * se.sum(-1)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device) -> torch.optim.AdamW:
    """AdamW; on CUDA the fused kernel (one launch for all parameters instead of several)."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             weight_decay=cfg.weight_decay,
                             fused=torch.device(device).type == "cuda")


def train_step(runner, model, opt, ema, x0, noise_gen, lr: float, cfg: TrainConfig,
               use_bf16: bool) -> torch.Tensor:
    """One optimiser step on the batch x0; returns its loss (nats/char), a 0-d tensor on the device.

    The step never waits for the GPU: the input value checks are skipped (the corpus was checked
    once by CropSampler) and the loss stays on the device until the caller flushes it, so that
    a NaN is caught a few steps late by the training loop's guard rather than by a sync per step.
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


# ------------------------------------------------------------------------------- checkpoints
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


def load_checkpoint(run_dir, map_location="cpu") -> dict:
    path = Path(run_dir) / CKPT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first with "
                                f"python -m ddlab.train --out {run_dir}")
    return torch.load(path, map_location=map_location, weights_only=False)


def load_model(run_dir, device="cpu", ema: bool = True):
    """(model in eval mode, TrainConfig, rm, schedule) from a run folder; EMA weights by default."""
    ck = load_checkpoint(run_dir)
    cfg = TrainConfig(**ck["config"])
    model = build_model(cfg)
    model.load_state_dict(ck["model"])
    if ema:
        with torch.no_grad():
            for p, s in zip(model.parameters(), ck["ema"]["shadow"]):
                p.copy_(s)
    rm, schedule = build_process(cfg)
    return model.to(device).eval(), cfg, rm, schedule


# ------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def quick_eval(objective: Objective, data, cfg: TrainConfig, device) -> float:
    """Bits/char estimate on the first ``eval_batches`` fixed chunks of a split (fixed noise seed).

    For diffusion this is the one-sample DWDSE (without the tiny prior term); for the AR model it is
    the exact NLL. ``ddlab.evaluate`` gives the full bound with its standard error.
    """
    chunks = eval_chunks(data, cfg.seq_len, cfg.eval_batches * cfg.batch_size)
    gen = torch.Generator(device=device).manual_seed(1234)
    total = 0.0
    for x0 in chunks.split(cfg.batch_size):
        total += objective(x0.to(device), gen).double().sum().item()
    return total / chunks.numel() / LN2


# ------------------------------------------------------------------------------- training
def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    return torch.device(cfg.device)


def train(cfg: TrainConfig, *, resume: bool = False, log=None) -> dict:
    """Train per ``cfg``; returns {"history", "final_valid_bpc", "steps", "tokens_per_s", ...}.

    ``history`` holds one {"step", "loss_bpc"} per step (loss in bits/char); ``model`` is the
    trained network (last weights; the EMA weights are in the checkpoint, see :func:`load_model`). Under DDP (a process
    group already initialised, e.g. by torchrun via :func:`main`) every rank trains on its own
    batches and only rank 0 writes to ``cfg.out``.
    """
    ddp = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    log = log or (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)
    device = _device(cfg)
    if device.type == "cuda" and ddp:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    if cfg.threads > 0 and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    rm, schedule = build_process(cfg)
    objective = Objective(model, rm, schedule, cfg.t_eps)
    ema = EMA(model.parameters(), cfg.ema)
    opt = make_optimizer(model, cfg, device)
    corpus = load_corpus(cfg.data, fallback=cfg.fallback)
    sampler = CropSampler(corpus.train, cfg.seq_len, cfg.batch_size, seed=cfg.seed * 1000 + rank)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + 500 + rank)
    step, history = 0, []

    if resume and (out / CKPT_NAME).is_file():
        ck = load_checkpoint(out)
        # what may change between a run and its resumption: length, logging, runtime knobs
        free = ("max_steps", "time_budget_s", "progress", "out", "threads", "eval_every",
                "eval_batches", "ckpt_every", "log_every", "device", "compile")
        saved = {k: v for k, v in ck["config"].items() if k not in free}
        now = {k: v for k, v in dataclasses.asdict(cfg).items() if k in saved}
        if now != saved:
            diff = {k: (saved[k], now[k]) for k in saved if saved[k] != now[k]}
            raise ValueError(f"--resume with a different configuration: {diff} (saved, given)")
        if "rng" not in ck:
            raise ValueError(f"--resume: {out / CKPT_NAME} was written by an older ddlab that did "
                             f"not save every rank's random state, so it cannot continue "
                             f"bit-for-bit; start a new run (it still loads for evaluation and "
                             f"sampling)")
        if len(ck["rng"]) != world:
            raise ValueError(f"--resume: the checkpoint was written by {len(ck['rng'])} "
                             f"process(es) and this run has {world}; resume with the same number "
                             f"(each rank continues its own random streams)")
        model.load_state_dict(ck["model"])
        ema.load_state_dict({"shadow": [s.to(device) for s in ck["ema"]["shadow"]],
                             "updates": ck["ema"]["updates"]})
        opt.load_state_dict(ck["opt"])
        mine = ck["rng"][rank]
        sampler.load_state_dict(mine["sampler"])
        noise_gen.set_state(mine["noise_gen"])
        torch.set_rng_state(mine["torch_rng"])
        step, history = ck["step"], ck["history"]
        log(f"resumed {out} at step {step}")
    elif resume:
        log(f"--resume: no checkpoint in {out} yet, starting from scratch")

    runner = objective
    if cfg.compile:
        model.forward = torch.compile(model.forward)
    if ddp:
        runner = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    use_bf16 = cfg.bf16 and device.type == "cuda"

    def checkpoint():
        # Every rank has its own crop and noise streams; rank 0 saves all of them, so that a
        # resumed DDP run continues each rank's streams exactly (called by every rank).
        mine = {"sampler": sampler.state_dict(), "noise_gen": noise_gen.get_state(),
                "torch_rng": torch.get_rng_state()}
        rng = [mine]
        if ddp:
            rng = [None] * world
            dist.all_gather_object(rng, mine)
        if rank != 0:
            return
        save_atomic({"config": dataclasses.asdict(cfg), "model": model.state_dict(),
                     "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                     "rng": rng, "history": history,
                     "corpus": corpus.name, "uniform_q_scaling": UNIFORM_Q_SCALING},
                    out / CKPT_NAME)

    bar = None
    if cfg.progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.max_steps, initial=step, desc=f"{cfg.objective} {cfg.preset}")
    pending: list[torch.Tensor] = []     # losses not yet copied to the host (one sync per flush)
    tokens = cfg.batch_size * cfg.seq_len * world
    t_start, step0, valid_bpc = time.perf_counter(), step, None

    def any_rank(flag: bool) -> bool:
        """Whether ``flag`` holds on some rank. Under DDP every rank must call it at the same step:
        ranks that stopped on their own would leave the others waiting in the next all-reduce."""
        if not ddp:
            return flag
        t = torch.tensor([float(flag)], device=device if device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def flush():
        if not pending:
            return
        vals = torch.stack(pending).double().cpu() / LN2
        first = step - len(pending) + 1
        pending.clear()
        finite = torch.isfinite(vals)
        if any_rank(not bool(finite.all())):
            where = (f"the last good checkpoint {out / CKPT_NAME} is kept"
                     if (out / CKPT_NAME).is_file() else "no checkpoint had been written yet")
            what = (f"loss became {vals[~finite][0].item()} at step "
                    f"{first + int((~finite).nonzero()[0])}" if not finite.all() else
                    f"loss became non-finite on another rank by step {step}")
            raise TrainingDiverged(f"{what}; stopping ({where}). Lower --lr, raise --warmup or "
                                   f"--grad_clip, or disable --bf16, then --resume.")
        history.extend({"step": first + k, "loss_bpc": float(v)} for k, v in enumerate(vals))
        if bar is not None:
            rate = (step - step0) * tokens / max(time.perf_counter() - t_start, 1e-9)
            bar.set_postfix(loss=f"{vals[-1] * LN2:.3f}", bpc=f"{vals[-1]:.3f}",
                            tok_s=f"{rate:,.0f}")

    model.train()
    while step < cfg.max_steps:
        # Under DDP the ranks agree on when the time is up, at logging steps only (no extra sync).
        if cfg.time_budget_s > 0 and (not ddp or step % cfg.log_every == 0):
            if any_rank(time.perf_counter() - t_start >= cfg.time_budget_s):
                break
        x0 = sampler.next()
        if device.type == "cuda":          # a pinned copy can overlap the GPU's previous step
            x0 = x0.pin_memory()
        x0 = x0.to(device, non_blocking=True)
        lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))
        loss = train_step(runner, model, opt, ema, x0, noise_gen, lr, cfg, use_bf16)
        step += 1
        pending.append(loss)
        if bar is not None:
            bar.update(1)
        if step % cfg.log_every == 0:
            flush()
        if cfg.eval_every and step % cfg.eval_every == 0:
            flush()
            with ema.swapped():
                model.eval()
                valid_bpc = quick_eval(objective, corpus.valid, cfg, device)
                model.train()
            log(f"step {step}: valid bits/char (EMA, quick estimate) {valid_bpc:.4f}")
        if cfg.ckpt_every and step % cfg.ckpt_every == 0:
            flush()
            checkpoint()
    flush()
    elapsed = time.perf_counter() - t_start
    if bar is not None:
        bar.close()
    with ema.swapped():
        model.eval()
        valid_bpc = quick_eval(objective, corpus.valid, cfg, device)
    checkpoint()
    result = {"steps": step, "history": history, "final_valid_bpc": valid_bpc,
              "train_seconds": elapsed,
              "tokens_per_s": (step - step0) * tokens / max(elapsed, 1e-9),
              "params": model.num_params(), "corpus": corpus.name, "objective": cfg.objective}
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({k: v for k, v in result.items()
                                                      if k != "history"}, indent=1))
        log(f"{cfg.objective}: {step} steps, valid bits/char {valid_bpc:.4f} on {corpus.name}")
    result["model"] = model          # the trained (non-EMA) weights; the EMA ones are in the ckpt
    return result


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    preset, resume, rest = "tiny-cpu", False, []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--preset" and i + 1 < len(argv):
            preset, i = argv[i + 1], i + 2
            continue
        if a.startswith("--preset="):
            preset = a.split("=", 1)[1]
        elif a == "--resume":
            resume = True
        elif a in ("-h", "--help"):
            print(__doc__)
            print("options: --preset NAME --resume " + " ".join(
                f"--{f.name}" for f in dataclasses.fields(TrainConfig) if f.name != "preset"))
            return {}
        else:
            rest.append(a)
        i += 1
    try:
        cfg = make_config(preset, rest)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        dist.init_process_group(backend)
    try:
        return train(cfg, resume=resume)
    except TrainingDiverged as err:
        raise SystemExit(f"error: {err}") from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
