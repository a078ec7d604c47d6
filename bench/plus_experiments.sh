#!/usr/bin/env bash
# PLUS co-adaptation vs its ablation on a generated dataset (issue: PLUS online co-adaptation): for each
# seed, run jobs.plus (summarizer + RM co-trained) and the frozen-summarizer ablation with the same data,
# models, iterations and seeds, evaluate both on the test splits, and compare them with the reward-model
# baselines of bench/rm_baselines.sh (bt, oracle, ... — run that first for the same DATASET) and the ceilings.
#   bash bench/plus_experiments.sh [DATASET=pets] [SEEDS="0"] [VARIANTS="plus frozen"] [key=value ...]
# Extra key=value arguments go to every jobs.plus run (e.g. iterations=300).
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${1:-pets}
SEEDS=${2:-0}
VARIANTS=${3:-plus frozen}
shift $(( $# < 3 ? $# : 3 ))
PY=.venv/bin/python
ROOT=runs/exp/$DATASET
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
[ -f $ROOT/data/ceilings.json ] || $PY -m jobs.make_data --dataset $DATASET --out $ROOT/data --seed 0 ${DATA_OPTS:-}
[ -f $ROOT/models/models.json ] || $PY -m jobs.make_models --data $ROOT/data --out $ROOT/models --seed 0
runs=()
for seed in $SEEDS; do
  for variant in $VARIANTS; do
    run=$ROOT/$variant-s$seed
    case $variant in
      plus) extra=() ;;
      frozen) extra=(freeze_summarizer=true) ;;
      ppo) extra=(policy.algorithm=ppo critic_resources.num_cpus=0.25 reference_resources.num_cpus=0.25) ;;
      *) echo "unknown variant $variant (plus | frozen | ppo)" >&2; exit 2 ;;
    esac
    if [ ! -f $run/evaluate/eval.json ]; then
      if [ -f $run/checkpoint/state.json ]; then  # an interrupted run continues where it stopped
        $PY -m jobs.plus --resume $run 2>>$run.stderr.log | tee -a $run.stdout.log
      else
        $PY -m jobs.plus --config configs/plus_$DATASET.yaml data.dir=$ROOT/data \
          models.summarizer=$ROOT/models/summarizer models.reward_model=$ROOT/models/reward_model \
          seed=$seed run_dir=$run "${extra[@]}" "$@" 2>$run.stderr.log | tee $run.stdout.log
      fi
      $PY -m jobs.evaluate --run $run/evaluate 2>>$run.stderr.log
    fi
    runs+=("$run/evaluate")
  done
done
for base in $ROOT/rm-*-s*; do if [ -f $base/eval.json ]; then runs+=("$base"); fi; done
list=$(printf '%s, ' "${runs[@]}")
$PY -m jobs.compare --runs "[${list%, }]" --out $ROOT/compare-plus
