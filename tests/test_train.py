"""Training: a step lowers the loss, resume is bit-for-bit, the NaN guard, DDP with gloo (lesson 9)."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ddlab import losses, skip_value_checks
from ddlab.text import data
from ddlab.text.checkpoint import (EMA, build_model, build_process, load_checkpoint,
                                   load_model)
from ddlab.text.config import PRESETS, make_config
from ddlab.text.train import (Objective, TrainingDiverged, dwdse_loss, get_lr, make_optimizer,
                              train, train_step)

TINY = dict(n_layer=1, n_head=2, d_model=32, cond_dim=16, seq_len=32, batch_size=8, lr=3e-3,
            warmup=2, min_lr=-1.0, ema=0.9, threads=1, progress=False, eval_batches=1, log_every=2)


def _cfg(corpus_file, out, **over):
    return make_config("tiny-cpu", {**TINY, "data": corpus_file, "out": str(out), **over})


@pytest.mark.parametrize("objective", ["absorb", "uniform", "ar"])
def test_training_steps_lower_the_loss_on_a_fixed_batch(objective, corpus_file, tmp_path):
    cfg = _cfg(corpus_file, tmp_path, objective=objective)
    torch.manual_seed(0)
    model = build_model(cfg)
    rm, sch = build_process(cfg)
    obj = Objective(rm, sch, model)
    x0 = data.CropSampler(data.load_corpus(corpus_file).train, 32, 16, seed=0).next()

    def loss():                       # same t and same noise every time: a deterministic function
        return obj(x0, torch.Generator().manual_seed(5)).mean() / 32

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = loss().item()
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = loss().item()
    assert after < before - 0.2, (before, after)


def test_dwdse_uniform_zero_model_is_finite_and_positive(corpus_file):
    cfg = _cfg(corpus_file, "unused", objective="uniform")
    rm, sch = build_process(cfg)
    assert rm.n == 27 and math.isclose(float(sch.sigma_bar(1.0)), 20 / 27)
    x0 = torch.randint(0, 27, (4, 32))
    loss = dwdse_loss(rm, sch, build_model(cfg), x0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss).all() and (loss > 0).all()


def test_dwdse_loss_is_the_library_estimator_at_shared_offset_stratified_times(corpus_file):
    """The text loss is ``ddlab.losses.dwdse`` at t_b = t_min + (1 - t_min)(b + U) / B: one
    offset U for the batch, drawn first from the same generator as the noise."""
    cfg = _cfg(corpus_file, "unused")
    torch.manual_seed(0)
    model, (rm, sch) = build_model(cfg), build_process(cfg)
    x0 = torch.randint(0, 27, (5, 32), generator=torch.Generator().manual_seed(1))
    got = dwdse_loss(rm, sch, model, x0, 0.01, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    u = torch.rand((), generator=g)
    t = 0.01 + 0.99 * (torch.arange(5) + u) / 5
    want = losses.dwdse(rm, model.log_score, x0, sch.sigma_bar(t), sch.sigma(t), generator=g)
    assert t.dtype == torch.float32 and torch.equal(got, want)
    g = torch.Generator().manual_seed(2)
    torch.rand((), generator=g)                  # given times: the generator draws only x_t
    assert torch.equal(dwdse_loss(rm, sch, model, x0, 0.5, g, t=t), want)


def test_get_lr_warms_up_linearly_then_stays_constant(corpus_file):
    cfg = _cfg(corpus_file, "unused", lr=1e-3, warmup=4, min_lr=-1.0)   # SEDD's: no decay
    lrs = [get_lr(s, cfg) for s in range(6)]
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3], rel=1e-15)
    assert get_lr(0, _cfg(corpus_file, "unused", lr=1e-3, warmup=0, min_lr=-1.0)) == 1e-3


def test_t_eps_is_a_deprecated_alias_of_t_min():
    with pytest.warns(DeprecationWarning, match="--t_eps is deprecated; use --t_min"):
        cfg = make_config("tiny-cpu", ["--t_eps", "0.02"])
    assert cfg.t_min == 0.02


def test_resume_is_bit_for_bit(corpus_file, tmp_path):
    full = train(_cfg(corpus_file, tmp_path / "full", max_steps=8))
    train(_cfg(corpus_file, tmp_path / "split", max_steps=4))
    first = load_checkpoint(tmp_path / "split")
    assert first["step"] == 4
    resumed = train(_cfg(corpus_file, tmp_path / "split", max_steps=8), resume=True)
    a = [h["loss_bpc"] for h in full["history"]]
    b = [h["loss_bpc"] for h in resumed["history"]]
    assert len(a) == len(b) == 8
    assert a == b                                             # exactly equal, not approximately
    ca, cb = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "split")
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k])
    for s, t in zip(ca["ema"]["shadow"], cb["ema"]["shadow"]):
        assert torch.equal(s, t)
    # a checkpoint of an older ddlab, whose config said t_eps for t_min, still loads and resumes
    old = load_checkpoint(tmp_path / "split")
    old["config"]["t_eps"] = old["config"].pop("t_min")
    torch.save(old, tmp_path / "split" / "ckpt.pt")
    assert load_model(tmp_path / "split")[1].t_min == 1e-3
    assert train(_cfg(corpus_file, tmp_path / "split", max_steps=8), resume=True)["steps"] == 8
    # a checkpoint without the per-rank random states (older ddlab) is refused, clearly
    old = load_checkpoint(tmp_path / "split")
    del old["rng"]
    torch.save(old, tmp_path / "split" / "ckpt.pt")
    with pytest.raises(ValueError, match="older ddlab"):
        train(_cfg(corpus_file, tmp_path / "split", max_steps=9), resume=True)
    # a resumed run refuses a changed model or data configuration (the optimisation knobs may
    # change: tests/test_text_robustness.py)
    with pytest.raises(ValueError, match="different configuration.*seed.*only lr, min_lr, warmup"):
        train(_cfg(corpus_file, tmp_path / "split", max_steps=9, seed=1), resume=True)


def test_nan_guard_stops_and_keeps_last_good_checkpoint(corpus_file, tmp_path, monkeypatch):
    cfg = _cfg(corpus_file, tmp_path, max_steps=10, ckpt_every=2, log_every=1)
    original = Objective.forward
    calls = {"n": 0}

    def poisoned(self, x0, generator=None):
        calls["n"] += 1
        out = original(self, x0, generator)
        return out * float("nan") if calls["n"] == 5 else out

    monkeypatch.setattr(Objective, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match="step 5.*last good checkpoint"):
        train(cfg)
    ck = load_checkpoint(tmp_path)
    assert ck["step"] == 4
    assert all(math.isfinite(h["loss_bpc"]) for h in ck["history"])
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def _ddp_worker(rank, world, init_file, cfg_dict, result_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        result = train(make_config("tiny-cpu", cfg_dict))
        torch.save({k: v.clone() for k, v in result["model"].state_dict().items()},
                   f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_processes_keep_weights_in_sync(corpus_file, tmp_path):
    """Each rank draws its own batches (seeded by rank); only the all-reduced gradient keeps the
    two copies identical, so equal weights after training show DDP at work."""
    cfg = dataclasses.asdict(_cfg(corpus_file, tmp_path / "ddp", max_steps=3))
    cfg.pop("preset")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), cfg, str(tmp_path / "res")),
             nprocs=2, join=True)
    w0 = torch.load(f"{tmp_path / 'res'}.0")
    w1 = torch.load(f"{tmp_path / 'res'}.1")
    torch.manual_seed(0)
    init = build_model(make_config("tiny-cpu", cfg)).state_dict()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert any(not torch.equal(w0[k], init[k]) for k in w0)
    assert load_checkpoint(tmp_path / "ddp")["step"] == 3        # rank 0 wrote the checkpoint
    # a single process on rank 0's batches alone ends elsewhere: the DDP update is an average
    single = train(make_config("tiny-cpu", {**cfg, "out": str(tmp_path / "single")}))
    w_single = single["model"].state_dict()
    assert any(not torch.allclose(w0[k], w_single[k]) for k in w0)


def _host_reads(fn) -> int:
    """How many times ``fn`` copies a tensor value to Python (a device sync on a GPU).

    Every ``.item()``, ``int(t)``, ``bool(t.any())`` goes through aten::_local_scalar_dense."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")


@pytest.mark.parametrize("objective", ["absorb", "uniform"])
def test_training_step_reads_nothing_back_from_the_device(objective, corpus_file):
    """The loss, its backward and the clipping copy no value to the host (no GPU sync per step).

    The optimiser is left out: on a CPU, AdamW reads its step counter with .item(), which is a
    host tensor on a GPU too and costs no sync there."""
    cfg = _cfg(corpus_file, "unused", objective=objective)
    torch.manual_seed(0)
    model = build_model(cfg)
    rm, sch = build_process(cfg)
    obj = Objective(rm, sch, model, cfg.t_min)
    x0 = data.CropSampler(data.load_corpus(corpus_file).train, 32, 8, seed=0).next()

    def step():
        loss = obj(x0, torch.Generator().manual_seed(0)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        return loss

    checked = _host_reads(step)
    assert checked >= 8              # the value checks of sample_transition and score_entropy
    with skip_value_checks():
        assert _host_reads(step) == 0
    # and the checks are back outside the block, with the same result inside and out
    with pytest.raises(ValueError, match="token id 28"):
        rm.sample_transition(torch.full((2, 3), 28), 0.5)
    with skip_value_checks():
        inside = obj(x0, torch.Generator().manual_seed(3))
    assert torch.equal(inside, obj(x0, torch.Generator().manual_seed(3)))


def test_train_step_is_one_optimiser_step(corpus_file):
    """train_step (timed by the GPU benchmark) is exactly what the training loop does per step."""
    cfg = _cfg(corpus_file, "unused", max_steps=3, grad_clip=0.5)
    torch.manual_seed(0)
    model = build_model(cfg)
    rm, sch = build_process(cfg)
    obj = Objective(rm, sch, model, cfg.t_min)
    opt, ema = make_optimizer(model, cfg, "cpu"), EMA(model.parameters(), cfg.ema)
    x0 = torch.randint(0, 27, (8, 32))
    before = [p.detach().clone() for p in model.parameters()]
    loss = train_step(obj, model, opt, ema, x0, torch.Generator().manual_seed(1), 1e-3, cfg, False)
    # the same step by hand
    torch.manual_seed(0)
    ref = build_model(cfg)
    ref_obj = Objective(rm, sch, ref, cfg.t_min)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, betas=(cfg.beta1, cfg.beta2),
                                weight_decay=cfg.weight_decay)
    ref_loss = ref_obj(x0, torch.Generator().manual_seed(1)).mean() / cfg.seq_len
    ref_loss.backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
    ref_opt.step()
    assert loss.dim() == 0 and torch.equal(loss, ref_loss.detach())
    for p, q, b, s in zip(model.parameters(), ref.parameters(), before, ema.shadow):
        assert torch.equal(p, q)
        d = min(cfg.ema, 1 / 10)                     # the EMA's first decay: (1 + 0) / (10 + 0)
        assert torch.allclose(s, d * b + (1 - d) * p, atol=1e-7)
    assert opt.param_groups[0]["lr"] == 1e-3


def _ddp_resume_worker(rank, world, init_file, cfg_dict, result_file, resume):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        result = train(make_config("tiny-cpu", cfg_dict), resume=resume)
        if rank == 1:
            torch.save([h["loss_bpc"] for h in result["history"]], result_file)
    finally:
        dist.destroy_process_group()


def _ddp_run(tmp_path, tag, cfg, resume=False):
    out = tmp_path / f"{tag}.hist"
    mp.spawn(_ddp_resume_worker, args=(2, str(tmp_path / f"init-{tag}"), cfg, str(out), resume),
             nprocs=2, join=True)
    return torch.load(out)


def test_ddp_resume_continues_every_rank_bit_for_bit(corpus_file, tmp_path):
    """Under DDP each rank draws its own crops and noise; a resumed run continues all of them.

    Rank 1's own losses after the resumption (not only rank 0's) equal the uninterrupted ones."""
    base = dataclasses.asdict(_cfg(corpus_file, tmp_path / "full", max_steps=4, log_every=1))
    base.pop("preset")
    full = _ddp_run(tmp_path, "full", base)
    split = {**base, "out": str(tmp_path / "split"), "max_steps": 2}
    _ddp_run(tmp_path, "first", split)
    assert len(load_checkpoint(tmp_path / "split")["rng"]) == 2
    resumed = _ddp_run(tmp_path, "resumed", {**split, "max_steps": 4}, resume=True)
    # the history before the resumption is rank 0's (the checkpoint's); rank 1's own steps follow
    assert len(full) == len(resumed) == 4 and resumed[2:] == full[2:]
    ca, cb = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "split")
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    # a single process cannot take over the streams of two
    with pytest.raises(ValueError, match="written by 2 process"):
        train(make_config("tiny-cpu", {**split, "max_steps": 5}), resume=True)


def _ddp_stop_worker(rank, world, init_file, cfg_dict, result_file, poison_rank):
    """Train under DDP; write how this rank ended ("diverged" or the final step) to a file."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    if rank == poison_rank:                  # a NaN loss on this rank only, at its 3rd step
        original, calls = Objective.forward, {"n": 0}

        def poisoned(self, x0, generator=None):
            calls["n"] += 1
            out = original(self, x0, generator)
            return out * float("nan") if calls["n"] == 3 else out
        Objective.forward = poisoned
    try:
        result = train(make_config("tiny-cpu", cfg_dict))
        outcome = str(result["steps"])
    except TrainingDiverged as err:
        outcome = f"diverged: {err}"
    finally:
        dist.destroy_process_group()
    with open(f"{result_file}.{rank}", "w") as f:
        f.write(outcome)


def _ddp_outcomes(tmp_path, tag, cfg, poison_rank=-1, deadline_s=120):
    """Run two gloo ranks; fail (instead of hanging) if they do not both finish in time."""
    ctx = mp.spawn(_ddp_stop_worker, args=(2, str(tmp_path / f"init-{tag}"), cfg,
                                           str(tmp_path / tag), poison_rank),
                   nprocs=2, join=False)
    start = time.monotonic()
    while not ctx.join(timeout=1):
        if time.monotonic() - start > deadline_s:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"DDP ranks still running after {deadline_s} s: one rank stopped alone "
                        f"and the other waits in an all-reduce")
    return [open(f"{tmp_path / tag}.{r}").read() for r in range(2)]


def test_ddp_ranks_stop_together_on_a_nan_and_on_the_time_budget(corpus_file, tmp_path):
    """A NaN on one rank stops every rank (no rank left waiting in an all-reduce), and a time
    budget ends all ranks at the same step."""
    base = dataclasses.asdict(_cfg(corpus_file, tmp_path / "nan", max_steps=8, log_every=1))
    base.pop("preset")
    nan = _ddp_outcomes(tmp_path, "nan", base, poison_rank=1)
    assert nan[1].startswith("diverged: loss became nan at step 3"), nan
    assert nan[0].startswith("diverged: loss became non-finite on another rank by step 3"), nan
    timed = {**base, "out": str(tmp_path / "timed"), "max_steps": 100_000, "time_budget_s": 1.5,
             "log_every": 3}
    steps = _ddp_outcomes(tmp_path, "timed", timed)
    assert steps[0] == steps[1] and int(steps[0]) % 3 == 0 and int(steps[0]) > 0, steps


def test_config_errors_list_what_is_valid():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny-cpu, mini, small"):
        make_config("huge")
    with pytest.raises(ValueError, match="unknown option --lrate.*--lr"):
        make_config("tiny-cpu", ["--lrate", "1"])
    with pytest.raises(ValueError, match="--max_steps expects a value of type int, got '1.5'"):
        make_config("tiny-cpu", ["--max_steps", "1.5"])
    with pytest.raises(ValueError, match="true/false"):
        make_config("tiny-cpu", ["--bf16=maybe"])
    cfg = make_config("tiny-cpu", ["--lr=1e-3", "--bf16", "false", "--objective", "uniform"])
    assert (cfg.lr, cfg.bf16, cfg.objective) == (1e-3, False, "uniform")
    assert set(PRESETS) == {"tiny-cpu", "mini", "small"}
    small = make_config("small")
    assert (small.n_layer, small.d_model, small.n_head, small.seq_len) == (12, 768, 12, 256)
    n = build_model(make_config("tiny-cpu")).num_params()
    assert 0.4e6 < n < 1.3e6


def test_progress_bar_moves_at_flushes_by_the_steps_flushed(tmp_path):
    from ddlab.text.train import LossLog

    class Bar:
        def __init__(self):
            self.n, self.updates = 0, 0

        def update(self, k):
            self.n, self.updates = self.n + k, self.updates + 1

        def set_postfix(self, **kw):
            pass

    bar, history = Bar(), []
    log = LossLog(history, tmp_path / "ckpt.pt", torch.device("cpu"), step=0, tokens_per_step=8,
                  bar=bar)
    for step in range(1, 26):
        log.append(torch.tensor(1.0))
        if step % 10 == 0 or step == 25:
            log.flush(step)
    assert (bar.n, bar.updates, len(history)) == (25, 3, 25)
    assert [h["step"] for h in history] == list(range(1, 26))
