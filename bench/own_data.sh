#!/usr/bin/env bash
# A user's own data end to end (issue 20): the demo's pets world written as the public PLUS release ships
# data (jobs.make_data format=plus: context as text, three pairs per row, no user_id, no ground truth),
# then read as it is by train_rm (bt, context, summary), plus, evaluate and compare — no edit.
#   bash bench/own_data.sh [SEED=0] [PLUS_ITERATIONS=200]
# Uses the demo's tiny models (make demo builds them: runs/demo/models). Writes under runs/own/.
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-0}
ITERS=${2:-200}
PY=.venv/bin/python
ROOT=runs/own
MODELS=runs/demo/models
export RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false
[ -f $MODELS/models.json ] || { echo "no $MODELS: run make demo first"; exit 1; }
[ -f $ROOT/data/train.jsonl ] || $PY -m jobs.make_data --dataset pets --out $ROOT/data --seed 0 format=plus
runs=()
for cond in bt context summary; do
  run=$ROOT/rm-$cond-s$SEED
  if [ ! -f $run/eval.json ]; then
    $PY -m jobs.train_rm --config configs/demo_rm.yaml data.dir=$ROOT/data rm.conditioning=$cond seed=$SEED \
      models.summarizer=$MODELS/summarizer run_dir=$run 2>$run.stderr.log
    $PY -m jobs.evaluate --run $run 2>>$run.stderr.log
  fi
  runs+=("$run")
done
run=$ROOT/plus-s$SEED
if [ ! -f $run/evaluate/eval.json ]; then
  $PY -m jobs.plus --config configs/demo.yaml data.dir=$ROOT/data seed=$SEED iterations=$ITERS run_dir=$run \
    2>$run.stderr.log
  $PY -m jobs.evaluate --run $run/evaluate 2>>$run.stderr.log
fi
runs+=("$run/evaluate")
list=$(printf '%s, ' "${runs[@]}")
$PY -m jobs.compare --runs "[${list%, }]" --out $ROOT/compare
