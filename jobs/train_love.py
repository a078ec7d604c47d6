"""Train RLUF's P[Love] — the probability that a user reacts Love to a response — on reaction logs.

    python -m jobs.train_love data=runs/demo/reactions models.reward_model=runs/demo/models/reward_model \\
        [love.conditioning=none|oracle|context|summary] [love.positive_weight=balanced] [seed=1]

A binary classifier on (conditioning, prompt, response) with the reward model's architecture, trained with
class-weighted BCE on a DeepSpeed group of Ray actors (actors/love_model.py); predictions are prior-corrected,
so they are probabilities whatever the weight. ``love.conditioning=summary`` conditions on one summary per
user written by ``models.summarizer`` from the user's context: a personalized P[Love].

Phases (timed): load data → conditioning → start group → train (validate every ``love.eval_every`` steps on
the validation split, keep the best log-loss) → evaluate (the best model on every split: AUC, log-loss,
ECE and reliability bins, the true and predicted Love rate, next to the Bayes-optimal AUC / log-loss of
reactions.json for what this conditioning can know) → save. Writes ``run_dir/{config.yaml, metrics.jsonl,
best/, last/, eval.json, reliability.png, train_summary.json}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from rlhf_cluster import love
from rlhf_cluster.cli import parse_config, prepare_run_dir
from rlhf_cluster.love_config import TrainLoveConfig
from rlhf_cluster.metrics import MetricsLogger
from rlhf_cluster.progress import note, progress
from rlhf_cluster.sampling import epoch_batches
from rlhf_cluster.timing import phase


def load(cfg: TrainLoveConfig) -> dict[str, pa.Table]:
    """The train, validation and test splits (train first)."""
    splits = love.reaction_splits(cfg.data)
    tests = cfg.test_splits if cfg.test_splits is not None else [s for s in splits if s != cfg.train_split]
    names = list(dict.fromkeys([cfg.train_split, cfg.love.eval_split, *tests]))
    tables = {s: love.read_reactions(cfg.data, s) for s in names}
    if tables[cfg.train_split].num_rows < cfg.love.batch_size:
        raise SystemExit(f"train split has {tables[cfg.train_split].num_rows} rows, fewer than love.batch_size")
    for split, t in tables.items():
        y = love.labels(t)
        print(f"  {split}: {t.num_rows} impressions, {int(y.sum())} Love ({y.mean():.3f})", flush=True)
    return tables


def conditioning(cfg: TrainLoveConfig, tables: dict[str, pa.Table]) -> dict[str, list[str | None]]:
    """Each split's conditioning texts; summaries are written once per user (one rollout actor for all
    splits) and cached in run_dir/summaries/."""
    summaries = None
    if cfg.love.conditioning == "summary":
        from actors.rollout import cached_summaries_for

        users = {s: love.first_row_per_user(t) for s, t in tables.items()}
        paths = {s: (u, Path(cfg.run_dir) / "summaries" / f"{s}.parquet") for s, u in users.items()}
        written = cached_summaries_for(paths, cfg.models, cfg.rollout, cfg.rollout_resources, cfg.ray, cfg.seed)
        summaries = {}
        for s, u in users.items():
            summaries.update(zip(u.column("user_id").to_pylist(), written[s]))
    m = cfg.love
    return {s: love.conditioning_texts(t, m.conditioning, summaries, m.max_context_pairs) for s, t in tables.items()}


def predict(group, table: pa.Table, cond: list[str | None]) -> np.ndarray:
    return group.predict(love.love_batch(table, cond, with_labels=False)).column("p_love").to_numpy()


def train(cfg: TrainLoveConfig, group, batches: dict[str, pa.Table], run_dir: Path, val_y: np.ndarray) -> dict:
    """The training loop; validation log-loss picks the best step (saved to run_dir/best)."""
    m, train_rows = cfg.love, batches[cfg.train_split]
    val = batches[m.eval_split].drop_columns(["label"])
    best = {"step": 0, "validation_log_loss": float("inf")}
    with MetricsLogger(run_dir) as log:
        batches_idx = epoch_batches(train_rows.num_rows, m.batch_size, m.steps, cfg.seed)
        bar = progress(batches_idx, "train", unit="step", total=m.steps)
        for step, idx in enumerate(bar, 1):
            out = group.train_step(train_rows.take(idx))
            log.log(step, out, "train")
            bar.set_postfix(loss=f"{out['loss']:.4f}")
            if step % m.eval_every == 0 or step == m.steps:
                v = love.evaluate(group.predict(val).column("p_love").to_numpy(), val_y)
                log.log(step, {k: v[k] for k in ("auc", "log_loss", "ece", "predicted_love_rate")}, "validation")
                note(f"  step {step}: validation log-loss {v['log_loss']:.4f} AUC {v['auc']:.3f} ECE {v['ece']:.3f}")
                if v["log_loss"] < best["validation_log_loss"]:
                    best = {"step": step, "validation_log_loss": v["log_loss"], "validation_auc": v["auc"]}
                    group.save(str(run_dir / "best"))
    return best


def main(argv=None) -> dict:
    cfg = parse_config(TrainLoveConfig, argv, prog="jobs.train_love")
    run_dir = prepare_run_dir(cfg, cfg.run_dir)
    timings: dict[str, float] = {}
    with phase("load data", timings):
        tables = load(cfg)
        weight = love.resolve_positive_weight(cfg.love.positive_weight, love.labels(tables[cfg.train_split]))
        bayes_path = Path(cfg.data) / "reactions.json"
        bayes = json.loads(bayes_path.read_text())["splits"] if bayes_path.is_file() else {}
    with phase("conditioning", timings):
        cond = conditioning(cfg, tables)
        batches = {s: love.love_batch(t, cond[s]) for s, t in tables.items()}
        if cfg.love.conditioning != "none":
            print(f"  e.g. conditioning: {cond[cfg.train_split][0][:200]!r}", flush=True)
    with phase("start group", timings):
        from actors.love_model import LoveModelGroup
        from rlhf_cluster.ray_setup import check_fits, init_ray

        check_fits({f"love_rank{i}": cfg.rank_resources for i in range(cfg.deepspeed.num_ranks)}, init_ray(cfg.ray))
        train_cfg = cfg.love.model_copy(update={"positive_weight": weight})
        group = LoveModelGroup(cfg.models.reward_model, train_cfg, cfg.deepspeed, cfg.rank_resources, cfg.seed)
        print(f"  positive weight {weight:.3f} (love.positive_weight={cfg.love.positive_weight})", flush=True)
    with phase("train", timings):
        best = train(cfg, group, batches, run_dir, love.labels(tables[cfg.love.eval_split]))
        group.save(str(run_dir / "last"))
    with phase("evaluate", timings):
        group.load(str(run_dir / "best"))
        knowledge = love.BAYES_KNOWLEDGE[cfg.love.conditioning]
        results = {
            s: love.evaluate(predict(group, t, cond[s]), love.labels(t), bayes.get(s), knowledge)
            for s, t in tables.items()
        }
        group.shutdown()
        (run_dir / "eval.json").write_text(json.dumps({"best": best, "splits": results}, indent=2))
        love.reliability_png(results, run_dir / "reliability.png", f"P[Love], conditioning={cfg.love.conditioning}")
    for s, r in results.items():
        beside = f"  (Bayes {r['bayes']['auc']:.3f} / {r['bayes']['log_loss']:.4f})" if "bayes" in r else ""
        print(
            f"  {s:<18} AUC {r['auc']:.3f} log-loss {r['log_loss']:.4f}{beside} ECE {r['ece']:.3f} "
            f"Love rate {r['love_rate']:.3f} predicted {r['predicted_love_rate']:.3f}",
            flush=True,
        )
    result = {"best": best, "positive_weight": weight, "timings_s": timings}
    (run_dir / "train_summary.json").write_text(json.dumps(result, indent=2))
    print(f"best validation log-loss {best['validation_log_loss']:.4f} at step {best['step']}; run dir {run_dir}")
    return result


if __name__ == "__main__":
    main()
