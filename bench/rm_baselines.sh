#!/usr/bin/env bash
# Reward-model baselines table (issue: personalized reward model): for each dataset, train
# bt / oracle / context / summary reward models with the same backbone, data and step budget on a
# 2-rank ZeRO-2 DeepSpeed group, evaluate on the test splits, compare side by side with the ceilings.
#   bash bench/rm_baselines.sh [DATASET=pets] [SEEDS="0"] [CONDITIONINGS="bt oracle context summary"]
# Generator options for a fresh dataset go in $DATA_OPTS; the reported personas table used
#   DATA_OPTS="personas.examples_per_user=32" bash bench/rm_baselines.sh personas 0 "oracle bt"
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${1:-pets}
SEEDS=${2:-0}
CONDS=${3:-bt oracle context summary}
PY=.venv/bin/python
ROOT=runs/exp/$DATASET
export RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false
[ -f $ROOT/data/ceilings.json ] || $PY -m jobs.make_data --dataset $DATASET --out $ROOT/data --seed 0 ${DATA_OPTS:-}
[ -f $ROOT/models/models.json ] || $PY -m jobs.make_models --data $ROOT/data --out $ROOT/models --seed 0
runs=()
for seed in $SEEDS; do
  for cond in $CONDS; do
    run=$ROOT/rm-$cond-s$seed
    if [ ! -f $run/eval.json ]; then
      $PY -m jobs.train_rm --config configs/rm_$DATASET.yaml rm.conditioning=$cond seed=$seed run_dir=$run 2>$run.stderr.log
      $PY -m jobs.evaluate --run $run 2>>$run.stderr.log
    fi
    runs+=("$run")
  done
done
list=$(printf '%s, ' "${runs[@]}")
$PY -m jobs.compare --runs "[${list%, }]" --out $ROOT/compare
