"""Nothing lost, nothing silent in the text world (lesson 9): run folders that cannot be clobbered,
a lock against concurrent trainings, SIGINT/SIGTERM that save a checkpoint which resumes
bit-for-bit, orphan temporary files removed, the whole configuration checked before the first
step, resumable optimisation knobs, a verified text8 cache and odd data folders that fall back.

Everything runs on tiny configurations and a 40K-character corpus written to tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from ddlab.text import checkpoint, config, data
from ddlab.text import train as train_module
from ddlab.text.checkpoint import CKPT_NAME, LOCK_NAME, load_checkpoint
from ddlab.text.config import ConfigError, check_config, make_config
from ddlab.text.train import TrainingDiverged, TrainingInterrupted, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(n_layer=1, n_head=2, d_model=16, cond_dim=16, seq_len=16, batch_size=4, lr=3e-3,
            warmup=2, min_lr=-1.0, ema=0.9, threads=1, progress=False, eval_batches=1, log_every=2)
TINY_CLI = [a for k, v in TINY.items() for a in (f"--{k}", str(v).lower()
                                                 if isinstance(v, bool) else str(v))]


def _cfg(corpus_file, out, **over):
    return make_config("tiny-cpu", {**TINY, "data": corpus_file, "out": str(out), **over})


def _weights_and_history(run_dir):
    ck = load_checkpoint(run_dir)
    return ck["model"], ck["ema"]["shadow"], [h["loss_bpc"] for h in ck["history"]], ck["step"]


def assert_same_run(a, b):
    """Two run folders hold the same run: equal weights, EMA, loss history, bit for bit."""
    wa, ea, ha, sa = _weights_and_history(a)
    wb, eb, hb, sb = _weights_and_history(b)
    assert sa == sb and ha == hb
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(torch.equal(x, y) for x, y in zip(ea, eb))


def _train_cli(*args, **popen):
    return subprocess.Popen([sys.executable, "-m", "ddlab.text.train", *map(str, args)],
                            cwd=ROOT, env={**os.environ, "DDLAB_DEBUG": ""},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _wait_for(path, proc, timeout=60):
    start = time.monotonic()
    while not os.path.exists(path):
        if proc.poll() is not None:
            pytest.fail(f"the training ended early: {proc.communicate()}")
        if time.monotonic() - start > timeout:
            proc.kill()
            pytest.fail(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)


# ------------------------------------------------------------------ run folders
def test_a_finished_run_is_not_overwritten_by_accident(corpus_file, tmp_path):
    train(_cfg(corpus_file, tmp_path, max_steps=2))
    before = (tmp_path / CKPT_NAME).read_bytes()
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--overwrite"):
        train(_cfg(corpus_file, tmp_path, max_steps=3))
    assert (tmp_path / CKPT_NAME).read_bytes() == before
    assert not (tmp_path / LOCK_NAME).exists()              # the refusal released the lock
    result = train(_cfg(corpus_file, tmp_path, max_steps=1), overwrite=True)
    assert result["steps"] == 1 and load_checkpoint(tmp_path)["step"] == 1


def test_two_concurrent_trainings_on_one_folder_cannot_both_proceed(corpus_file, tmp_path):
    out = tmp_path / "run"
    first = _train_cli(*TINY_CLI, "--data", corpus_file, "--out", out, "--max_steps", 10**6)
    try:
        _wait_for(out / LOCK_NAME, first)
        holder = json.loads((out / LOCK_NAME).read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        with pytest.raises(checkpoint.RunLocked, match=f"in use by another training.*{first.pid}"):
            train(_cfg(corpus_file, out, max_steps=2), resume=True)
        assert first.poll() is None                          # the first one goes on
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 143, err
    assert not (out / LOCK_NAME).exists()
    # the second one can now continue the first one's run
    assert train(_cfg(corpus_file, out, max_steps=load_checkpoint(out)["step"] + 1),
                 resume=True)["steps"] == load_checkpoint(out)["step"]


def test_a_stale_lock_of_a_dead_process_is_broken(corpus_file, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                  "since": 0}))
    assert train(_cfg(corpus_file, tmp_path, max_steps=1))["steps"] == 1
    # a live process's lock (this one's, from another host's view: ours) is respected
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(),
                                                  "host": socket.gethostname(), "since": 0}))
    with pytest.raises(checkpoint.RunLocked, match="delete the lock file"):
        train(_cfg(corpus_file, tmp_path, max_steps=2), resume=True)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": 0}))
    with pytest.raises(checkpoint.RunLocked, match="elsewhere"):
        train(_cfg(corpus_file, tmp_path, max_steps=2), resume=True)


def test_orphan_temporary_files_are_removed_at_the_next_start(corpus_file, tmp_path):
    train(_cfg(corpus_file, tmp_path, max_steps=1))
    orphan = tmp_path / f"{CKPT_NAME}.k9x2_abc.tmp"        # what a killed save_atomic leaves
    orphan.write_bytes(b"\0" * 1000)
    other = tmp_path / "notes.tmp"                           # not ours: kept
    other.write_text("keep")
    lines = []
    train(_cfg(corpus_file, tmp_path, max_steps=2), resume=True, log=lines.append)
    assert not orphan.exists() and other.exists()
    assert any(orphan.name in line for line in lines)


def test_out_that_is_a_file_or_below_a_file_fails_before_training(corpus_file, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        train(_cfg(corpus_file, f, max_steps=1))
    with pytest.raises(OSError, match="cannot create the run folder"):
        train(_cfg(corpus_file, f / "run", max_steps=1))


# ------------------------------------------------------------------ signals
def test_sigint_in_a_notebook_saves_and_resumes_bit_for_bit(corpus_file, tmp_path, monkeypatch):
    """Ctrl-C (a notebook's interrupt) after step 3: a KeyboardInterrupt after the checkpoint of
    step 3; resuming it to step 6 gives the uninterrupted 6-step run exactly."""
    train(_cfg(corpus_file, tmp_path / "full", max_steps=6))
    original, calls = train_module.train_step, {"n": 0}

    def interrupted_step(*args, **kw):
        calls["n"] += 1
        out = original(*args, **kw)
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(train_module, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt, match="SIGINT at step 3.*--resume") as err:
        train(_cfg(corpus_file, tmp_path / "split", max_steps=6))
    assert isinstance(err.value, TrainingInterrupted) and err.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handlers restored
    assert load_checkpoint(tmp_path / "split")["step"] == 3
    assert not (tmp_path / "split" / LOCK_NAME).exists()
    monkeypatch.setattr(train_module, "train_step", original)
    train(_cfg(corpus_file, tmp_path / "split", max_steps=6), resume=True)
    assert_same_run(tmp_path / "full", tmp_path / "split")


def test_sigterm_leaves_a_checkpoint_that_continues_bit_for_bit(corpus_file, tmp_path):
    """``kill -TERM`` of the CLI: exit status 143, one line, a checkpoint of the last step; the
    resumed run equals an uninterrupted run of the same length (weights, EMA, losses)."""
    out = tmp_path / "split"
    proc = _train_cli(*TINY_CLI, "--data", corpus_file, "--out", out, "--max_steps", 10**6,
                      "--ckpt_every", 2)
    _wait_for(out / CKPT_NAME, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted by SIGTERM at step" in lines[0], err
    assert "Traceback" not in err
    k = load_checkpoint(out)["step"]
    assert k >= 2 and f"step {k}:" in lines[0]
    train(_cfg(corpus_file, out, max_steps=k + 3), resume=True)
    train(_cfg(corpus_file, tmp_path / "full", max_steps=k + 3))
    assert_same_run(tmp_path / "full", out)


def test_checkpoint_is_written_before_the_final_evaluation(corpus_file, tmp_path, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("evaluation failed")
    monkeypatch.setattr(train_module, "ema_quick_eval", broken)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        train(_cfg(corpus_file, tmp_path, max_steps=3))
    assert load_checkpoint(tmp_path)["step"] == 3


# ------------------------------------------------------------------ the configuration
BAD = [("n_layer", 0), ("n_head", 0), ("d_model", 0), ("cond_dim", 0), ("seq_len", 0),
       ("batch_size", 0), ("max_steps", -5), ("ema", -1.0), ("ema", 1.0), ("t_min", 0.0),
       ("t_min", 1.5), ("dropout", 1.0), ("dropout", -0.1), ("lr", 0.0), ("lr", float("nan")),
       ("warmup", -1), ("grad_clip", -1.0), ("log_every", 0), ("eval_batches", 0),
       ("noise_eps", 0.0), ("beta2", 1.0), ("weight_decay", -1.0), ("time_budget_s", -1.0),
       ("ddp_timeout_s", 0.0), ("objective", "bert"), ("device", "tpu")]


@pytest.mark.parametrize("key,value", BAD, ids=[f"{k}={v}" for k, v in BAD])
def test_every_bad_field_is_refused_naming_it(key, value):
    with pytest.raises(ConfigError, match=f"--{key}.*{value!r}"[:80].replace("(", r"\(")
                       .replace(")", r"\)").replace("[", r"\[")):
        make_config("tiny-cpu", {key: value})


def test_the_split_length_and_the_head_split_are_checked(corpus_file, tmp_path):
    with pytest.raises(ConfigError, match="n_head = 3"):
        make_config("tiny-cpu", {"n_head": 3})
    cfg = make_config("tiny-cpu", {**TINY, "seq_len": 3000, "data": corpus_file,
                                   "out": str(tmp_path)})
    with pytest.raises(ConfigError, match="--seq_len = 3000.*valid split of 2,000"):
        train(cfg)
    assert not (tmp_path / CKPT_NAME).exists()
    with pytest.raises(ConfigError, match="train split of 100"):
        check_config(make_config("tiny-cpu", {"seq_len": 100}), 100)
    check_config(make_config("tiny-cpu", {"seq_len": 99}), {"train": 100, "valid": 99})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_refused_before_anything_runs(corpus_file, tmp_path):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train(_cfg(corpus_file, tmp_path, device="cuda"))
    with pytest.raises(ConfigError, match="cuda:N"):
        config.check_device("gpu")


# ------------------------------------------------------------------ the NaN guard's advice
def test_nan_advice_can_be_followed_knobs_change_on_resume(corpus_file, tmp_path, monkeypatch):
    """The guard says: lower --lr, ... then --resume. Those knobs may change on resume; the log
    says which did, and the optimiser takes the new values."""
    cfg = _cfg(corpus_file, tmp_path, max_steps=8, ckpt_every=2, log_every=1)
    original, calls = train_module.Objective.forward, {"n": 0}

    def poisoned(self, x0, generator=None):
        calls["n"] += 1
        out = original(self, x0, generator)
        return out * float("nan") if calls["n"] == 5 else out

    monkeypatch.setattr(train_module.Objective, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match="Lower --lr.*--resume") as err:
        train(cfg)
    assert "may change on resume" in str(err.value)
    monkeypatch.setattr(train_module.Objective, "forward", original)
    lines = []
    seen = {}
    real_opt = train_module.make_optimizer

    def spy(*a, **kw):
        seen["opt"] = real_opt(*a, **kw)
        return seen["opt"]
    monkeypatch.setattr(train_module, "make_optimizer", spy)
    result = train(_cfg(corpus_file, tmp_path, max_steps=8, ckpt_every=2, log_every=1,
                        lr=1e-3, warmup=4, beta2=0.99, grad_clip=0.5, ema=0.8),
                   resume=True, log=lines.append)
    assert result["steps"] == 8
    changed = [line for line in lines if line.startswith("resume: changed")]
    assert len(changed) == 1
    for piece in ("lr 0.003 -> 0.001", "warmup 2 -> 4", "beta2 0.999 -> 0.99",
                  "grad_clip 1.0 -> 0.5", "ema 0.9 -> 0.8"):
        assert piece in changed[0], changed
    assert seen["opt"].param_groups[0]["betas"] == (0.9, 0.99)
    assert load_checkpoint(tmp_path)["config"]["lr"] == 1e-3
    # a change of the model or the data is still refused
    with pytest.raises(ValueError, match="different configuration.*d_model"):
        train(_cfg(corpus_file, tmp_path, max_steps=9, d_model=32), resume=True)


# ------------------------------------------------------------------ DDP
def test_ddp_process_group_gets_a_timeout(corpus_file, tmp_path, monkeypatch):
    seen = {}

    def fake_init(backend, **kw):
        seen.update(kw, backend=backend)
        raise RuntimeError("stop here")

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(train_module.dist, "init_process_group", fake_init)
    for extra, seconds in (([], 600), (["--ddp_timeout_s", "5"], 5)):
        with pytest.raises(SystemExit):
            train_module.main([*TINY_CLI, "--data", corpus_file, "--out", str(tmp_path), *extra])
        assert seen["timeout"].total_seconds() == seconds


# ------------------------------------------------------------------ the data cache
def _no_network(url):
    import urllib.error
    raise urllib.error.URLError("no network in tests")


@pytest.fixture
def fresh_fallback_warning(monkeypatch):
    """The FallbackWarning is given once per process: forget an earlier test's."""
    monkeypatch.setattr(data, "_fallback_warned", False)


def test_a_text8_cache_of_zero_bytes_is_rejected(tmp_path, fresh_fallback_warning):
    """10^8 zero bytes have text8's size but not its hash: not used; without the archive and the
    network the offline corpus takes over, with a warning."""
    cache = tmp_path / "cache"
    cache.mkdir()
    with open(cache / "text8.u8", "wb") as f:
        f.truncate(data.TEXT8_CHARS)                         # a sparse file of 10^8 zeros
    with pytest.warns(data.FallbackWarning, match="NOT text8"):
        corpus = data.load_corpus("text8", root=cache, opener=_no_network)
    assert not corpus.is_text8


def test_a_cache_is_rebuilt_from_its_archive_when_its_hash_fails(tmp_path):
    import hashlib
    import io
    import zipfile
    text = ("the quick brown fox jumps over the lazy dog " * 300)[:10_000]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("text8", text)
    served = tmp_path / "text8.zip"
    served.write_bytes(buf.getvalue())
    kw = dict(url=served.as_uri(), size=len(buf.getvalue()),
              md5=hashlib.md5(buf.getvalue()).hexdigest(), chars=10_000)
    cache = tmp_path / "cache"
    path = data.text8_path(cache, **kw)
    good = path.read_bytes()
    assert (cache / "text8.u8.sha256").read_text().split()[0] == hashlib.sha256(good).hexdigest()
    path.write_bytes(b"\0" * 10_000)                          # right size, wrong bytes
    assert data.text8_path(cache, opener=_no_network, **kw).read_bytes() == good
    (cache / "text8.u8.sha256").unlink()                      # an older cache without its hash
    assert data.text8_path(cache, opener=_no_network, **kw).read_bytes() == good
    assert (cache / "text8.u8.sha256").exists()


@pytest.mark.parametrize("kind", ["a file", "below a file", "read-only"])
def test_an_odd_data_folder_falls_back_with_one_clear_reason(kind, tmp_path, monkeypatch,
                                                             capsys, fresh_fallback_warning):
    f = tmp_path / "file"
    f.write_text("x")
    root = {"a file": f, "below a file": f / "sub", "read-only": tmp_path / "ro"}[kind]
    if kind == "read-only":            # the tests may run as root, whom chmod does not stop
        def refused(*a, **kw):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(data.tempfile, "mkstemp", refused)
    monkeypatch.setenv("DDLAB_DATA", str(root))
    with pytest.raises(data.DataError, match="not usable|is a file") as err:
        data.text8_path(opener=_no_network)
    assert "\n" not in str(err.value)
    with pytest.warns(data.FallbackWarning) as record:
        corpus = data.load_corpus("text8", opener=_no_network)
    assert not corpus.is_text8
    assert len(record) == 1 and str(record[0].message).count("DDLAB_DATA") == 1
    assert capsys.readouterr().err == ""


def test_evaluating_a_good_run_with_an_odd_data_folder_does_not_crash(tmp_path, monkeypatch,
                                                                      fresh_fallback_warning):
    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.setenv("DDLAB_DATA", str(f / "below"))
    monkeypatch.setattr(data.urllib.request, "urlopen", _no_network)
    with pytest.warns(data.FallbackWarning):                 # a run "on text8", trained offline
        train(make_config("tiny-cpu", {**TINY, "data": "text8", "max_steps": 1,
                                       "out": str(tmp_path / "run")}))
    from ddlab.text import evaluate
    import warnings
    with warnings.catch_warnings(record=True) as again:    # said once per process, not again
        warnings.simplefilter("always")
        r = evaluate.evaluate_run(tmp_path / "run", "valid", num_t=2, max_chunks=2)
    assert not [w for w in again if issubclass(w.category, data.FallbackWarning)]
    assert np.isfinite(r["bpc"]) and "fallback" in r["corpus"]


def test_weights_of_an_older_network_name_the_remedy(runs, tmp_path):
    """A checkpoint whose weights no longer fit the network (an older ddlab's neighbour tables:
    a different number of rows) is refused with a CheckpointError that says to retrain."""
    run = tmp_path / "old"
    shutil.copytree(runs["absorb"], run)
    ck = torch.load(run / CKPT_NAME, weights_only=False)
    w = ck["model"]["neighbour_embed.weight"]
    ck["model"]["neighbour_embed.weight"] = w[: w.shape[0] // 2].clone()
    torch.save(ck, run / CKPT_NAME)
    with pytest.raises(checkpoint.CheckpointError, match="neighbour_embed.*retrain it"):
        checkpoint.load_model(run)
    checkpoint.load_model(runs["absorb"])                   # the untouched run still loads
