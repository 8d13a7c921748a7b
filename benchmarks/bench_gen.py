"""Sample quality against sampling steps: the SEDD paper's generative-perplexity figure, at text8 scale.

    python benchmarks/bench_gen.py SEDD_RUN AR_RUN [--steps 8,16,...,1024] [--samplers euler,tweedie]
           [--batch 16] [--json out.json]
    python benchmarks/bench_gen.py --report a.json [b.json ...] [--figure path.png]

A diffusion run (absorb or uniform, from ``python -m ddlab.text.train``) draws ``--batch``
sequences of its full length (seq_len) with ``ddlab.text.generate.generate`` at each number of
steps, for each sampler, from the same seed; the AR baseline run scores them
(``ddlab.text.metrics.generative_bpc``: bits/char, perplexity = 2 ** bits/char). Beside each
score: its standard error over the samples, and the unigram entropy of the samples
(``ddlab.text.metrics.unigram_entropy``), because a sampler that repeats a few characters also
scores well under an AR model. The reference row scores real test text of the same length.

On a 2-core CPU the samplers can run as two processes (``--samplers euler --json e.json`` and
``--samplers tweedie --json t.json``), then ``--report e.json t.json`` prints one table and draws
the figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddlab.text import data                                               # noqa: E402
from ddlab.text.checkpoint import load_model                              # noqa: E402
from ddlab.text.generate import sample_quality                            # noqa: E402
from ddlab.text.metrics import ar_score                                   # noqa: E402


def measure(args) -> dict:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    sedd, cfg, rm, schedule = load_model(args.sedd, device)
    ar, ar_cfg, *_ = load_model(args.ar, device)
    if rm is None or ar_cfg.objective != "ar":
        raise SystemExit("error: give a diffusion run first, then an 'ar' run")
    d = cfg.seq_len
    corpus = data.load_corpus(cfg.data, fallback=cfg.fallback)
    real = data.eval_chunks(corpus.test, d, max_chunks=args.batch)
    result = {"sedd": str(args.sedd), "ar": str(args.ar), "objective": cfg.objective,
              "corpus": corpus.name, "d": d, "batch": args.batch, "device": device,
              "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__,
              "reference": ar_score(ar, real)}

    def show(row):
        print(f"{row['sampler']:8s} {row['steps']:5d} steps: {row['bpc']:.3f} +- {row['se']:.3f} "
              f"bits/char, unigram entropy {row['entropy']:.2f} bits, {row['seconds']:.1f} s",
              flush=True)

    rows = sample_quality(rm, schedule, sedd, ar, [int(s) for s in args.steps.split(",")],
                          args.samplers.split(","), batch=args.batch, d=d, seed=args.seed,
                          log=show)
    for row in rows:
        row["example"] = data.decode(row.pop("samples")[:1])[0][:80]
    result["rows"] = rows
    return result


def report(results: list[dict], figure: str | None) -> None:
    first = results[0]
    ref = first["reference"]
    print(f"SEDD {first['objective']} ({first['sedd']}) scored by the AR baseline ({first['ar']}); "
          f"{first['batch']} samples of {first['d']} characters each; corpus {first['corpus']}; "
          f"{first['device_name']}, torch {first['torch']}\n")
    print("| sampler | steps | AR bits/char of samples | +- s.e. | generative perplexity | "
          "unigram entropy (bits) | sampling time (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = [r for res in results for r in res["rows"]]
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['bpc']:.3f} | {r['se']:.3f} | "
              f"{2 ** r['bpc']:.2f} | {r['entropy']:.2f} | {r['seconds']:.1f} |")
    print(f"| real test text | | {ref['bpc']:.3f} | {ref['se']:.3f} | {2 ** ref['bpc']:.2f} | "
          f"{ref['entropy']:.2f} | |")
    if figure:
        import matplotlib
        matplotlib.use("Agg")
        from ddlab import plotting
        fig, ax = plotting.figure()
        for sampler in dict.fromkeys(r["sampler"] for r in rows):
            mine = [r for r in rows if r["sampler"] == sampler]
            ax.errorbar([r["steps"] for r in mine], [r["bpc"] for r in mine],
                        yerr=[r["se"] for r in mine], fmt="o-", capsize=3,
                        label=f"SEDD {first['objective']} + {sampler}")
        ax.axhline(ref["bpc"], color="grey", ls=":", label="real test text")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sampling steps")
        ax.set_ylabel("AR bits/char of the samples")
        ax.set_title(f"Sample quality vs steps ({first['corpus']}, {first['device_name']})")
        ax.legend()
        fig.savefig(figure, dpi=120, bbox_inches="tight")
        print(f"\nfigure: {figure}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sedd", nargs="?", help="diffusion run folder")
    p.add_argument("ar", nargs="?", help="AR baseline run folder")
    p.add_argument("--steps", default="8,16,32,64,128,256,512,1024")
    p.add_argument("--samplers", default="euler,tweedie")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="write the measurements here")
    p.add_argument("--report", nargs="+", default=None, help="JSON files to print as one table")
    p.add_argument("--figure", default=None)
    args = p.parse_args(argv)
    if args.report:
        results = [json.loads(Path(f).read_text()) for f in args.report]
    else:
        if not (args.sedd and args.ar):
            p.error("give SEDD_RUN and AR_RUN, or --report FILES")
        results = [measure(args)]
        if args.json:
            Path(args.json).write_text(json.dumps(results[0], indent=1))
    report(results, args.figure)


if __name__ == "__main__":
    main()
