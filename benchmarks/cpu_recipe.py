"""One point of the CPU-recipe sweep behind the `tiny-cpu` preset (lesson 9, issue 13).

    python benchmarks/cpu_recipe.py --name denoiser_lr2e-3 --param denoiser --lr 2e-3 [--key value ...]

Trains ``tiny-cpu`` with the given overrides (any ``TrainConfig`` field) on the corpus lesson 9 uses
(text8 if present, else the offline corpus; ``--data PATH`` for another), then measures what the
lesson reports: the bound on held-out chunks (``evaluate.bits_per_char``; exact NLL for the AR
baseline), and the word rate of 128-step Tweedie samples (AR: ancestral samples) against the
training vocabulary, with standard errors. Prints one JSON line and appends it to
``--results`` (default ``runs/cpu_recipe.jsonl``). Runs go to ``runs/cpu_recipe/<name>``.

On a machine shared with other work, compare runs at equal *steps* (``--max_steps``) and time the
step separately on a quiet machine: wall-clock budgets measured under contention mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddlab.text import checkpoint, data, evaluate, generate, metrics, train   # noqa: E402
from ddlab.text.config import make_config                                     # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--eval_chunks", type=int, default=64)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--gen_steps", type=int, default=128)
    ap.add_argument("--results", default="runs/cpu_recipe.jsonl")
    args, overrides = ap.parse_known_args(argv)
    cfg = make_config("tiny-cpu", ["--out", f"runs/cpu_recipe/{args.name}", "--progress",
                                   "false"] + overrides)
    t0 = time.time()
    res = train.train(cfg, overwrite=True, log=lambda *a: None)
    wall = time.time() - t0
    corpus = data.load_corpus(cfg.data, fallback=cfg.fallback)
    model, _, rm, schedule = checkpoint.load_model(cfg.out)
    chunks = data.eval_chunks(corpus.valid, cfg.seq_len, max_chunks=args.eval_chunks)
    with torch.no_grad():
        if rm is None:
            bpc, se = evaluate.bits_per_char(None, None, model, chunks)
            x = generate.ar_generate(model, args.samples, cfg.seq_len, seed=0)
        else:
            bpc, se = evaluate.bits_per_char(rm, schedule, model, chunks, num_t=8)
            x = generate.generate(rm, schedule, model, args.samples, cfg.seq_len, args.gen_steps,
                                  "tweedie", seed=0)
    try:
        rate, rate_se = metrics.word_rate(x, metrics.vocabulary(corpus.train))
    except ValueError:             # samples without a whole word (a barely trained model)
        rate, rate_se = float("nan"), float("nan")
    last = res["history"][-50:]
    out = {"name": args.name, "overrides": overrides, "corpus": corpus.name,
           "steps": res["steps"], "train_s": round(res["train_seconds"], 1),
           "wall_s": round(wall, 1), "threads": cfg.threads or train.cpu_threads(),
           "ms_per_step": round(1000 * res["train_seconds"] / max(res["steps"], 1), 1),
           "last_50_loss_bpc": round(sum(h["loss_bpc"] for h in last) / len(last), 3),
           "valid_bpc": round(bpc, 3), "valid_se": round(se, 3),
           "word_rate": round(rate, 3), "word_rate_se": round(rate_se, 3),
           "sample": data.decode(x[0])[:120]}
    print(json.dumps(out))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(out) + "\n")
    return out


if __name__ == "__main__":
    main()
