#!/usr/bin/env bash
# Stage 2 on generated pets (docs/RESULTS.md "Stage 2"): a response policy trained with GRPO against the
# demo's reward models — PLUS (summary), bt (no user information), oracle (the true description) — with
# policy.kl_coef swept on seed 0 (chosen per source on validation true utility), then SEEDS at the chosen
# value, and jobs.compare's table of the best-on-validation policies on the test splits (mean ± 95 % CI).
#   make demo    # runs/demo: data, models, PLUS run, rm-bt and rm-oracle
#   bash bench/stage2.sh [SEEDS="0 1 2"] [KL_SWEEP="0.1 0.5 1.0"]
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-0 1 2}
KL_SWEEP=${2:-0.1 0.5 1.0}
PY=.venv/bin/python
ROOT=runs/stage2k
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
[ -f runs/stage2/models/models.json ] || $PY -m jobs.make_models --data runs/demo/data --out runs/stage2/models \
  --seed 0 response_policy.num_layers=2
run() {  # run NAME key=value ...: one jobs.personalize run unless its eval.json exists
  local name=$1; shift
  [ -f $ROOT/$name/eval.json ] || $PY -m jobs.personalize --config configs/personalize_pets.yaml \
    run_dir=$ROOT/$name iterations=100 checkpoint_every=100 "$@" > $ROOT/$name.log 2>&1
}
mkdir -p $ROOT
declare -A SOURCE=([plus]=runs/demo/plus [bt]=runs/demo/rm-bt [oracle]=runs/demo/rm-oracle)
for src in plus bt oracle; do
  for kl in $KL_SWEEP; do run ${src}_kl${kl}_s0 source=${SOURCE[$src]} policy.kl_coef=$kl seed=0; done
done
$PY - "$SEEDS" "$KL_SWEEP" <<'PY'
import json, subprocess, sys
from pathlib import Path
seeds, sweep = sys.argv[1].split(), sys.argv[2].split()
root = Path("runs/stage2k")
source = {"plus": "runs/demo/plus", "bt": "runs/demo/rm-bt", "oracle": "runs/demo/rm-oracle"}
def val(name):  # the best validation true utility of a run
    return json.loads((root / name / "best.json").read_text())["true_utility"]
chosen_runs = []
for src, path in source.items():
    chosen = max(sweep, key=lambda kl: (val(f"{src}_kl{kl}_s0"), -float(kl)))  # ties: the weaker penalty
    print(f"{src}: validation true utility by kl_coef " + ", ".join(f"{kl}: {val(f'{src}_kl{kl}_s0'):.3f}" for kl in sweep) + f" -> {chosen}")
    for s in seeds:
        name = f"{src}_kl{chosen}_s{s}"
        if not (root / name / "eval.json").is_file():
            subprocess.run(["bash", "-c", f".venv/bin/python -m jobs.personalize --config configs/personalize_pets.yaml run_dir={root / name} iterations=100 checkpoint_every=100 source={path} policy.kl_coef={chosen} seed={s} > {root / name}.log 2>&1"], check=True)
    chosen_runs.extend(str(root / f"{src}_kl{chosen}_s{s}") for s in seeds)
(root / "chosen.txt").write_text("\n".join(chosen_runs) + "\n")
PY
$PY -m jobs.compare --runs "[$(paste -sd, $ROOT/chosen.txt)]" --out $ROOT/compare
