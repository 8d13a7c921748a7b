"""The benchmark scripts still run (their numbers live in benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script, args, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(BENCH / script), *args])
    runpy.run_path(str(BENCH / script), run_name="__main__")
    return capsys.readouterr().out


def test_gpu_throughput_code_runs_on_cpu(capsys, monkeypatch):
    """The GPU benchmark times ddlab.train.train_step; on a CPU it can at least run its code."""
    out = _run("bench_train.py", ["--gpu", "--device", "cpu", "--preset", "tiny-cpu",
                                  "--gpu_batch", "2", "--gpu_seq", "32", "--gpu_steps", "1",
                                  "--warmup_steps", "1"], capsys, monkeypatch)
    assert "preset tiny-cpu" in out and "batch 2 x seq 32" in out
    loss = float(out.split("last loss ")[1].split()[0])
    assert 2.5 < loss < 4                   # nats/char: (1 - eps) log 27 = 3.29 untrained


def test_unknown_preset_is_refused(monkeypatch, capsys):
    with pytest.raises(ValueError, match="unknown preset"):
        _run("bench_train.py", ["--gpu", "--device", "cpu", "--preset", "huge"], capsys,
             monkeypatch)


def test_generative_bpc_benchmark_runs_and_reports(runs, tmp_path, capsys, monkeypatch):
    js = tmp_path / "t.json"
    _run("bench_gen.py", [str(runs["absorb"]), str(runs["ar"]), "--steps", "2,4", "--batch", "2",
                          "--samplers", "tweedie", "--json", str(js)], capsys, monkeypatch)
    fig = tmp_path / "g.png"
    out = _run("bench_gen.py", ["--report", str(js), "--figure", str(fig)], capsys, monkeypatch)
    assert "| tweedie | 4 |" in out and "| real test text |" in out and fig.stat().st_size > 0
    # the untrained AR baseline gives every character 1/27: log2 27 bits/char, for any samples
    rows = json.loads(js.read_text())["rows"]
    assert [r["steps"] for r in rows] == [2, 4]
    assert all(abs(r["bpc"] - math.log2(27)) < 1e-6 for r in rows)
    assert "| tweedie | 2 | 4.755 |" in out


def test_run_lesson_runs_cells_in_order_and_stops_at_a_failure(tmp_path, capsys, monkeypatch):
    def notebook(*cells):
        nb = {"cells": [{"cell_type": "code", "source": c} for c in cells] +
              [{"cell_type": "markdown", "source": "# text"}], "metadata": {}, "nbformat": 4,
              "nbformat_minor": 5}
        path = tmp_path / "nb.ipynb"
        path.write_text(json.dumps(nb))
        return str(path)

    monkeypatch.chdir(tmp_path)                 # run_lesson changes these three; restore them
    monkeypatch.setenv("DDLAB_FIGURES", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    ok = notebook("x = 20\n%matplotlib inline", "print('value', x + 22)")
    monkeypatch.setattr(sys, "argv", ["run_lesson.py", ok])
    runner = runpy.run_path(str(BENCH / "run_lesson.py"))
    assert runner["main"]([ok]) == 0
    out = capsys.readouterr().out
    assert "value 42" in out and "all cells ran" in out
    bad = notebook("y = 1", "raise RuntimeError('boom')", "print('never')")
    assert runner["main"]([bad]) == 1
    out = capsys.readouterr()
    assert "FAILED in cell 2" in out.out and "never" not in out.out and "boom" in out.err


@pytest.mark.parametrize("objective", ["absorb", "ar"])
def test_cpu_recipe_point_trains_measures_and_records(corpus_file, tmp_path, monkeypatch, objective):
    import importlib.util
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("cpu_recipe", BENCH / "cpu_recipe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--name", "p", "--data", corpus_file, "--max_steps", "3", "--seq_len", "16",
                    "--batch_size", "2", "--n_layer", "1", "--d_model", "16", "--n_head", "2",
                    "--cond_dim", "8", "--eval_chunks", "2", "--samples", "2", "--gen_steps", "2",
                    "--objective", objective, "--threads", "1"])
    assert out["steps"] == 3 and out["threads"] == 1
    assert math.isnan(out["word_rate"]) or 0 <= out["word_rate"] <= 1
    assert 3.0 < out["valid_bpc"] < 6.0          # three steps from log2 27 = 4.75
    assert (tmp_path / "runs" / "cpu_recipe" / "p" / "ckpt.pt").is_file()
    assert len((tmp_path / "runs" / "cpu_recipe.jsonl").read_text().splitlines()) == 1
