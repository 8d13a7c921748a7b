"""The three commands on tiny checkpoints: train, evaluate, generate (lesson 9)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from ddlab.text import checkpoint, data, evaluate, generate, metrics, train

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
    # 30 steps take the bound only ~0.4 bits/char below log2 27: the estimate needs a standard
    # error well below 0.1 (the whole valid split, 32 times per chunk)
    r = evaluate.evaluate_run(runs["absorb"], "valid", num_t=32, max_chunks=64)
    assert r["stderr"] < 0.05
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


@pytest.mark.parametrize("args", [
    ["--sampler", "confidence", "--confidence", "drawn"],
    ["--sampler", "confidence", "--temperature", "0.7"],
    ["--sampler", "mdlm", "--remask", "cap:0.05", "--cache", "--top_p", "0.9"],
    ["--sampler", "tweedie", "--corrector_steps", "1", "--corrector_size", "0.5"],
    ["--sampler", "mdlm", "--gumbel_bits", "24"],
])
def test_lesson11_sampler_options_generate_and_keep_the_pattern(runs, args):
    pattern = "the ____ sat"
    texts = generate.main([str(runs["absorb"]), "--steps", "6", "--batch", "2", "--pattern",
                           pattern, *args])
    assert len(texts) == 2
    for t in texts:
        assert len(t) == len(pattern) and "_" not in t
        assert all(c == p for c, p in zip(t, pattern) if p != "_")


def test_caching_cost_and_sampler_table(runs):
    """caching_cost: the cached runs call the network at most d + 1 times per sequence, the plain
    ones steps + 1 times; sampler_table: one row per sampler with the four numbers."""
    model, cfg, rm, sch = checkpoint.load_model(runs["absorb"])
    ar, *_ = checkpoint.load_model(runs["ar"])
    rows = generate.caching_cost(rm, sch, model, [4, 32], batch=2, d=8)
    assert [(r["steps"], r["cache"]) for r in rows] == [(4, False), (4, True), (32, False), (32, True)]
    for r in rows:
        if r["cache"]:
            assert r["evaluations"] <= 2 * (8 + 1) and r["network_calls"] <= r["steps"] + 1
        else:
            assert r["evaluations"] == 2 * (r["steps"] + 1) and r["samples"].shape == (2, 8)
    table = generate.sampler_table(rm, sch, model, ar, {"a": ("mdlm", {}), "b": ("confidence", {})},
                                   steps=4, batch=2, d=16, vocab=frozenset({"the", "a"}))
    assert [r["name"] for r in table] == ["a", "b"]
    for r in table:
        assert {"bpc", "se", "entropy", "word_rate", "word_se"} <= set(r)
        assert r["bpc"] == pytest.approx(metrics.ar_score(ar, r["samples"])["bpc"])
        words = [w for t in data.decode(r["samples"]) for w in metrics.sample_words(t)]
        if words:                                  # else NaN: no whole word to score
            assert r["word_rate"] == pytest.approx(sum(w in {"the", "a"} for w in words) / len(words))


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
    assert math.isclose(metrics.generative_bpc(ar, x), math.log2(27), rel_tol=1e-6)
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
    per = metrics.generative_bpc(ar, x, per_sample=True)
    bos = ar.cfg.n_chars
    ref = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for i in range(8):
            inp = torch.cat([torch.full((3, 1), bos), x[:, :i]], 1)
            logp = torch.log_softmax(ar(inp)[:, -1].double(), -1)
            ref -= logp[torch.arange(3), x[:, i]] / math.log(2)
    assert torch.allclose(per, ref / 8, atol=1e-5)
    assert math.isclose(metrics.generative_bpc(ar, x), float(per.mean()), rel_tol=1e-9)
    score = metrics.ar_score(ar, x)                 # mean and standard error of the hand values
    hand = (ref / 8).numpy()
    assert math.isclose(score["bpc"], hand.mean(), rel_tol=1e-5)
    assert math.isclose(score["se"], hand.std(ddof=1) / math.sqrt(3), rel_tol=1e-3)


def test_unigram_entropy_by_hand():
    assert math.isclose(metrics.unigram_entropy(torch.tensor([[0, 0, 1, 1]])), 1.0)
    assert math.isclose(metrics.unigram_entropy(torch.tensor([[0, 1], [2, 3]])), 2.0)
    assert metrics.unigram_entropy(torch.tensor([[5, 5, 5]])) == 0.0
    # 1/2, 1/4, 1/4: 1.5 bits
    assert math.isclose(metrics.unigram_entropy(torch.tensor([[26, 26, 3, 4]])), 1.5)


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


# ------------------------------------------------------------------ one clear line, non-zero exit
TINY_CLI = ["--n_layer", "1", "--n_head", "2", "--d_model", "16", "--cond_dim", "16", "--seq_len",
            "16", "--batch_size", "4", "--threads", "1", "--progress", "false",
            "--eval_batches", "1"]


def run_cli(module, *args, env=None):
    """``python -m module args`` in a subprocess; (exit status, stdout, stderr)."""
    env = {**os.environ, "DDLAB_DEBUG": "", **(env or {})}
    res = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    return res.returncode, res.stdout, res.stderr


# Many CLI cases at the price of one interpreter start: a driver imports torch and ddlab once,
# then forks one child per case, which runs the command's module as __main__ (what `python -m`
# does) with its stdout/stderr in files and exits the way the interpreter would on SystemExit.
# The children are real processes: the exit status is the one a shell would see.
DRIVER = r"""
import json, os, runpy, sys, traceback
import torch, ddlab, ddlab.text.checkpoint, ddlab.text.config, ddlab.text.data
cases = json.load(sys.stdin)
status = {}
for key, case in cases.items():
    pid = os.fork()
    if pid == 0:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(os.path.join(case["dir"], name), os.O_WRONLY | os.O_CREAT), fd)
        os.environ.update(case["env"])
        sys.argv = [case["module"], *case["args"]]
        code = 0
        try:
            runpy.run_module(case["module"], run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            if not isinstance(e.code, int) and e.code is not None:
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    status[key] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(status))
"""


def run_cli_cases(cases: dict, root) -> dict:
    """{key: (module, args[, env])} -> {key: (exit status, stdout, stderr)}, one driver process."""
    import json
    spec = {}
    for key, (module, args, *env) in cases.items():
        folder = root / f"case{len(spec)}"
        folder.mkdir()
        spec[key] = {"module": module, "args": [str(a) for a in args], "dir": str(folder),
                     "env": {"DDLAB_DEBUG": "", **(env[0] if env else {})}}
    res = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(spec), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout.strip().splitlines()[-1])
    return {k: (status[k], open(os.path.join(v["dir"], "stdout")).read(),
                open(os.path.join(v["dir"], "stderr")).read()) for k, v in spec.items()}


def assert_one_error(res, code, *needles):
    """Exit status ``code``; stderr is exactly one line, ``error: ...``, holding every needle."""
    rc, _, err = res
    lines = err.strip().splitlines()
    assert rc == code, (rc, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _bad_checkpoints(root):
    """Run folders whose ckpt.pt is empty, truncated or corrupt, and a foreign torch file."""
    folders = {}
    for kind in ("empty", "corrupt", "foreign"):
        folders[kind] = root / kind
        folders[kind].mkdir()
    (folders["empty"] / "ckpt.pt").write_bytes(b"")
    (folders["corrupt"] / "ckpt.pt").write_bytes(b"PK\x03\x04 not really a checkpoint" * 50)
    torch.save({"weights": torch.zeros(3)}, folders["foreign"] / "ckpt.pt")
    return folders


# train: (arguments, exit status, what the one line must say). All fail before the first step.
TRAIN_CASES = {
    "resume=maybe": (["--resume=maybe"], 2, ["--resume expects true/false", "'maybe'"]),
    "batch_size 0": (["--batch_size", "0"], 2, ["--batch_size must be an integer >= 1, got 0"]),
    "log_every 0": (["--log_every", "0"], 2, ["--log_every must be an integer >= 1, got 0"]),
    "t_min 1.5": (["--t_min", "1.5"], 2, ["--t_min must lie in (0, 1), got 1.5"]),
    "t_eps 1.5": (["--t_eps", "1.5"], 2, ["--t_min must lie in (0, 1), got 1.5"]),  # old name
    "seq_len 0": (["--seq_len", "0"], 2, ["--seq_len must be an integer >= 1, got 0"]),
    "max_steps -5": (["--max_steps", "-5"], 2, ["--max_steps must be an integer >= 0, got -5"]),
    "ema -1": (["--ema", "-1"], 2, ["--ema must lie in [0, 1), got -1"]),
    "seq_len 30000": (["--seq_len", "30000"], 2, ["--seq_len = 30000", "2,000 characters"]),
    "eval_batches 0": (["--eval_batches", "0"], 2, ["--eval_batches must be an integer >= 1"]),
    "n_head 3": (["--n_head", "3"], 2, ["--n_head = 3"]),
    "dropout 1": (["--dropout", "1"], 2, ["--dropout must lie in [0, 1), got 1"]),
    "lr 0": (["--lr", "0"], 2, ["--lr must lie in (0, inf), got 0"]),
    "lrate": (["--lrate", "1"], 2, ["unknown option --lrate", "--lr"]),
    "resume overwrite": (["--resume", "--overwrite"], 1, ["either --resume", "not both"]),
}
# evaluate and sample on the tiny trained run (seq_len 32)
RUN_CASES = {
    "evaluate max_chunks 0": ("ddlab.evaluate", ["--max_chunks", "0"], ["--max_chunks", ">= 1"]),
    "evaluate num_t 0": ("ddlab.evaluate", ["--num_t", "0"], ["--num_t", ">= 1, got 0"]),
    "sample length -5": ("ddlab.sample", ["--length", "-5"], ["--length", ">= 1, got -5"]),
    "sample length 0": ("ddlab.sample", ["--length", "0"], ["--length", ">= 1, got 0"]),
    "sample length 64": ("ddlab.sample", ["--length", "64"], ["length 64 exceeds", "= 32"]),
    "sample prefix !!!": ("ddlab.sample", ["--prefix", "!!!"],
                          ["--prefix", "'!'", "not in the text8 alphabet"]),
    "generate suffix ok?": ("ddlab.text.generate", ["--suffix", "ok?"], ["--suffix", "'?'"]),
    "sample pattern A_": ("ddlab.sample", ["--pattern", "A_"], ["--pattern", "'A'"]),
    "sample steps x": ("ddlab.sample", ["--steps", "x"], ["--steps", "'x'"]),
    "sample sampler": ("ddlab.sample", ["--sampler", "best"], ["--sampler", "'best'"]),
    # lesson 11's sampler options, refused before any sampling with the option named
    "generate remask format": ("ddlab.text.generate", ["--sampler", "mdlm", "--remask", "cap"],
                               ["--remask 'cap'", "KIND:ETA"]),
    "generate remask eta": ("ddlab.text.generate", ["--sampler", "mdlm", "--remask", "cap:2"],
                            ["remask eta", "got 2.0"]),
    "generate remask tweedie": ("ddlab.text.generate", ["--remask", "rescale:0.5"],
                                ["--sampler tweedie", "method='mdlm'"]),
    "generate temperature 0": ("ddlab.text.generate", ["--temperature", "0"],
                               ["temperature", "got 0.0"]),
    "generate top_p 2": ("ddlab.text.generate", ["--top_p", "2"], ["top_p", "got 2.0"]),
    "generate confidence": ("ddlab.text.generate", ["--confidence", "drawn"],
                            ["method='confidence'"]),
    "generate confidence corrector": ("ddlab.text.generate", ["--sampler", "confidence",
                                      "--corrector_steps", "1"], ["no corrector steps"]),
    "generate gumbel_bits 0": ("ddlab.text.generate", ["--gumbel_bits", "0"],
                               ["--gumbel_bits", ">= 1, got 0"]),
}
BAD_CKPT = {"empty": "is empty", "corrupt": "cannot be read", "foreign": "not a ddlab checkpoint"}
COMMANDS = ("ddlab.evaluate", "ddlab.sample", "ddlab.text.evaluate", "ddlab.text.generate",
            "ddlab.train --resume", "ddlab.text.train --resume")


@pytest.fixture(scope="module")
def cli(runs, tmp_path_factory):
    """Every CLI case of this module, run once in forked children of one driver process."""
    from ddlab.text import data
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "small.txt"
    corpus.write_text(data.fallback_text()[:40_000])         # splits of 36,000 / 2,000 / 2,000
    cases = {}
    for key, (args, _, _) in TRAIN_CASES.items():
        cases[key] = ("ddlab.train", [*TINY_CLI, "--data", corpus, "--out", root / key, *args])
    for key, (module, args, _) in RUN_CASES.items():
        cases[key] = (module, [runs["absorb"], *args])
    for kind, folder in _bad_checkpoints(root).items():
        for command in COMMANDS:
            module, *flag = command.split()
            args = ([*TINY_CLI, "--data", corpus, "--out", folder, *flag] if flag else [folder])
            cases[f"{command} {kind}"] = (module, args)
    if not torch.cuda.is_available():
        cases["train cuda"] = ("ddlab.text.train", [*TINY_CLI, "--device", "cuda", "--data",
                                                    corpus, "--out", root / "cuda"])
        cases["evaluate cuda"] = ("ddlab.evaluate", [runs["absorb"], "--device", "cuda"])
        cases["sample cuda"] = ("ddlab.sample", [runs["absorb"], "--device", "cuda:0"])
    cases["debug env"] = ("ddlab.evaluate", [root / "empty"], {"DDLAB_DEBUG": "1"})
    return run_cli_cases(cases, root), root


@pytest.mark.parametrize("key", TRAIN_CASES)
def test_train_cli_refuses_bad_options_with_one_line(cli, key):
    results, root = cli
    _, code, needles = TRAIN_CASES[key]
    assert_one_error(results[key], code, *needles)
    assert not (root / key / "ckpt.pt").exists()            # nothing was trained or saved


@pytest.mark.parametrize("key", RUN_CASES)
def test_evaluate_and_sample_refuse_bad_options_with_one_line(cli, key):
    assert_one_error(cli[0][key], 2, *RUN_CASES[key][2])


@pytest.mark.parametrize("kind", BAD_CKPT)
@pytest.mark.parametrize("command", COMMANDS)
def test_bad_checkpoint_is_one_line_in_every_command(cli, command, kind):
    """An empty, corrupt or foreign ckpt.pt: no raw UnpicklingError / EOFError / KeyError."""
    line = assert_one_error(cli[0][f"{command} {kind}"], 1, BAD_CKPT[kind])
    assert "KeyError" not in line and "EOFError" not in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(cli):
    for key in ("train cuda", "evaluate cuda", "sample cuda"):
        assert_one_error(cli[0][key], 2, "'cuda", "CUDA is not available")


def test_debug_shows_the_traceback(cli):
    rc, _, err = cli[0]["debug env"]                              # DDLAB_DEBUG=1
    assert rc == 1 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error:")
    rc, _, err = run_cli("ddlab.evaluate", cli[1] / "corrupt", "--debug")
    assert rc == 1 and "Traceback" in err and "cannot be read" in err


def test_python_dash_m_entry_points_end_with_one_line(runs, tmp_path):
    """The same cases through ``python -m`` itself, one per command."""
    assert_one_error(run_cli("ddlab.text.train", "--batch_size", "0"), 2, "--batch_size")
    assert_one_error(run_cli("ddlab.sample", runs["absorb"], "--prefix", "!!!"), 2, "'!'")
    (tmp_path / "ckpt.pt").write_bytes(b"")
    assert_one_error(run_cli("ddlab.evaluate", tmp_path), 1, "is empty")


def test_finished_run_is_not_overwritten_by_accident(tmp_path):
    """Without --resume a folder that holds a run is refused and its checkpoint is untouched
    (the resume below finds step 2, not the refused run's 1); --resume=true is --resume;
    --overwrite replaces the run."""
    from ddlab.text import data
    corpus = tmp_path / "small.txt"
    corpus.write_text(data.fallback_text()[:40_000])
    out = tmp_path / "run"
    base = [*TINY_CLI, "--data", corpus, "--out", out]
    res = run_cli_cases({"first": ("ddlab.train", [*base, "--max_steps", "2"]),        # in order
                         "again": ("ddlab.train", [*base, "--max_steps", "1"]),
                         "resume": ("ddlab.train", [*base, "--max_steps", "3", "--resume=true"]),
                         "overwrite": ("ddlab.train", [*base, "--max_steps", "1", "--overwrite"])},
                        tmp_path)
    assert res["first"][0] == 0, res["first"][2]
    assert_one_error(res["again"], 1, "already holds a run", "--resume", "--overwrite")
    rc, stdout, err = res["resume"]
    assert rc == 0 and f"resumed {out} at step 2" in stdout, err
    rc, stdout, err = res["overwrite"]
    assert rc == 0 and "--overwrite: removed the previous run" in stdout, err
    assert checkpoint.load_checkpoint(out)["step"] == 1
