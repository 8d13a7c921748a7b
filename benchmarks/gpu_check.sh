#!/usr/bin/env bash
# The GPU checks of lesson 9's training code, in stages, for one H100 (no network needed).
#
#   python benchmarks/make_doc_corpus.py     # beforehand, where apt has network: .gpu/doc_corpus.txt
#   bash benchmarks/gpu_check.sh             # on the GPU machine (carry .gpu/): about 9-10 minutes
#   STAGES=throughput bash benchmarks/gpu_check.sh   # the MFU target alone: about 3-4 minutes
#   STAGES=lesson9 bash benchmarks/gpu_check.sh      # lesson 9's GPU branch: about 7 minutes
# A 10-minute command limit: run "throughput" and "race gen" as two calls when in doubt.
#
# Stages (environment STAGES, default "throughput race gen"):
#   throughput  tokens/s and model-FLOPs utilisation of the `small` preset (12 x 768, seq 256) in
#               bf16, timing ddlab.text.train.train_step: eager with a host-sync check, then
#               torch.compile'd at batch 256 and 512;
#   race        bits/char after the same wall-clock budget for SEDD absorb, SEDD uniform and the AR
#               baseline, side by side, on the Python-documentation corpus;
#   gen         sample quality vs sampling steps (8-1024, Euler and Tweedie) of the race's SEDD
#               absorb run, scored by its AR run (benchmarks/bench_gen.py);
#   lesson9     lesson 9 top to bottom at "full" scale (benchmarks/run_lesson.py, no Jupyter).
# Numbers on the documentation corpus are for that corpus, NOT text8 numbers.
# Other knobs: BUDGET (seconds per race run, 90), RACE_PRESET (mini), TP_PRESET (small),
# COMPILE (1), PYTHON (python3), OUTDIR (.gpu/runs).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-90}
RACE_PRESET=${RACE_PRESET:-mini}
TP_PRESET=${TP_PRESET:-small}
OUTDIR=${OUTDIR:-.gpu/runs}
CORPUS=.gpu/doc_corpus.txt
STAGES=${STAGES:-throughput race gen}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
want() { case " $STAGES " in *" $1 "*) return 0;; *) return 1;; esac; }

echo "== torch"
$PY -c "import torch; print(torch.__version__, torch.cuda.is_available())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
if [ ! -f "$CORPUS" ]; then
  echo "missing $CORPUS: run 'python benchmarks/make_doc_corpus.py' where apt has network, then carry .gpu/"
  exit 1
fi
CUDA=$($PY -c "import torch; print(int(torch.cuda.is_available()))")
DEVICE=cpu; [ "$CUDA" = 1 ] && DEVICE=cuda

if [ "$CUDA" = 1 ] && want throughput; then
  echo "== throughput of $TP_PRESET (SEDD absorb objective, bf16 autocast, train_step)"
  timeout 90 $PY benchmarks/bench_train.py --gpu --preset "$TP_PRESET" --gpu_steps 20 --sync_check \
    || echo "eager throughput FAILED"
  if [ "${COMPILE:-1}" = 1 ]; then
    for B in 256 512; do
      timeout 120 $PY benchmarks/bench_train.py --gpu --preset "$TP_PRESET" --gpu_batch $B \
        --gpu_steps 30 --warmup_steps 3 --compile || echo "compiled throughput (batch $B) FAILED or timed out"
    done
  fi
fi

if want race; then
echo "== bits/char after ${BUDGET} s of training each ($RACE_PRESET preset, corpus $CORPUS)"
rm -rf "$OUTDIR"
for obj in absorb uniform ar; do
  timeout $((BUDGET + 120)) $PY -m ddlab.text.train --preset "$RACE_PRESET" --objective "$obj" --data "$CORPUS" \
    --time_budget_s "$BUDGET" --max_steps 1000000 --warmup 200 --eval_every 0 --ckpt_every 0 \
    --progress false --device "$DEVICE" --out "$OUTDIR/$obj" 2>&1 | grep -v '^$' | tail -2 \
    || echo "training $obj FAILED"
done
timeout 150 $PY - "$OUTDIR" "$BUDGET" <<'PYEOF'
import json, sys
from pathlib import Path
from ddlab.text.evaluate import evaluate_run
out, budget = Path(sys.argv[1]), sys.argv[2]
rows = []
for obj in ("absorb", "uniform", "ar"):
    try:
        m = json.loads((out / obj / "metrics.json").read_text())
        r = evaluate_run(out / obj, "test", num_t=16, max_chunks=512, batch_size=128)
        rows.append((obj, m["steps"], m["tokens_per_s"], r["bpc"], r["stderr"], r["chars"]))
    except Exception as err:                                   # report, keep the others
        print(f"{obj}: evaluation FAILED: {err}")
print(f"\nbits/char on the test split of the Python-docs corpus (NOT text8) after {budget} s each")
print(f"{'objective':10s} {'steps':>7s} {'tokens/s':>12s} {'bits/char':>10s} {'+-':>7s}  chars")
for obj, steps, tps, bpc, se, chars in rows:
    kind = "exact NLL" if obj == "ar" else "upper bound"
    print(f"{obj:10s} {steps:7d} {tps:12,.0f} {bpc:10.4f} {se:7.4f}  {chars:,} ({kind})")
PYEOF
[ $? = 0 ] || echo "evaluation FAILED or timed out"
fi

if want gen; then
  echo "== sample quality vs steps: SEDD absorb ($RACE_PRESET race run) scored by the AR race run"
  timeout 240 $PY benchmarks/bench_gen.py "$OUTDIR/absorb" "$OUTDIR/ar" --batch 32 --device "$DEVICE" \
    --json "$OUTDIR/gen.json" --figure "$OUTDIR/gen_bpc_vs_steps.png" | grep -v "^$" \
    || echo "generative bits/char FAILED or timed out"
fi

if want lesson9; then
  echo "== lesson 9 at full scale (DDLAB_SCALE=full)"
  DDLAB_SCALE=full timeout 570 $PY benchmarks/run_lesson.py lessons/09_sedd_text8.ipynb \
    --figures "$OUTDIR/lesson9_figures" || echo "lesson 9 FAILED or timed out"
fi
