"""Train a (personalized) reward model on a DeepSpeed group of Ray actors.

    python -m jobs.train_rm --config configs/rm_pets.yaml rm.conditioning=oracle seed=1

The conditioning slot decides the baseline: ``bt`` (nothing — plain Bradley–Terry), ``oracle`` (the
true user description: the upper reference), ``context`` (raw context pairs: the in-context
baseline), ``summary`` (summaries written by a fixed summarizer: the untrained-summarizer ablation).
Same backbone, data and step budget for all; the best step is chosen on the validation split only.

Phases (timed): load data → conditioning → start group → train (validate every ``rm.eval_every``
steps, keep the best) → save. Writes ``run_dir/{config.yaml, metrics.jsonl, tb/, best/, last/}``;
evaluate the run on the test splits with ``python -m jobs.evaluate --run run_dir``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from rlhf_cluster.cli import parse_config, prepare_run_dir
from rlhf_cluster.config import TrainRMConfig
from rlhf_cluster.data import read_split
from rlhf_cluster.metrics import MetricsLogger, accuracy_by_subset
from rlhf_cluster.progress import note, progress
from rlhf_cluster.reward_model import conditioning_texts, pair_table, truncation_line, truncation_stats
from rlhf_cluster.sampling import epoch_batches
from rlhf_cluster.timing import phase


def conditioning_for(tables: dict[str, pa.Table], cfg: TrainRMConfig) -> dict[str, list[str | None]]:
    """Conditioning texts per split; summaries are written once (one summarizer actor for all splits) and
    cached in run_dir/summaries/."""
    summaries = dict.fromkeys(tables)
    if cfg.rm.conditioning == "summary":
        from actors.rollout import cached_summaries_for

        paths = {split: (t, Path(cfg.run_dir) / "summaries" / f"{split}.parquet") for split, t in tables.items()}
        summaries = cached_summaries_for(paths, cfg.models, cfg.rollout, cfg.rollout_resources, cfg.ray, cfg.seed)
    rm = cfg.rm
    return {s: conditioning_texts(t, rm.conditioning, summaries[s], rm.max_context_pairs) for s, t in tables.items()}


def validate(group, pairs: pa.Table, contested) -> dict:
    scores = group.score(pairs)
    r_c, r_r = (scores.column(c).to_numpy() for c in ("r_chosen", "r_rejected"))
    return accuracy_by_subset(r_c, r_r, contested)


def count_truncation(cfg: TrainRMConfig, pairs: dict[str, pa.Table]) -> dict:
    """Per split: how many pairs exceed rm.max_length (tokenized here, without a model); prints a line each."""
    from rlhf_cluster.models import load_tokenizer

    rm, tokenizer = cfg.rm, load_tokenizer(cfg.models.reward_model)
    out = {"max_length": rm.max_length, "truncation_side": rm.truncation_side}
    for split, table in pairs.items():
        out[split] = truncation_stats(tokenizer, table, rm.max_length)
        print("  " + truncation_line(out[split], f"{split} pairs", rm.max_length, rm.truncation_side), flush=True)
    return out


def main(argv=None) -> dict:
    cfg = parse_config(TrainRMConfig, argv, prog="jobs.train_rm")
    run_dir = prepare_run_dir(cfg, cfg.run_dir)
    timings: dict[str, float] = {}
    rm = cfg.rm

    with phase("load data", timings):
        train = read_split(cfg.data.dir, cfg.train_split, skip_bad_rows=cfg.data.skip_bad_rows, limit=cfg.data.limit)
        val = read_split(cfg.data.dir, rm.eval_split, skip_bad_rows=cfg.data.skip_bad_rows, limit=rm.eval_limit)
        if train.num_rows < rm.batch_size:
            raise SystemExit(f"train split has {train.num_rows} rows, fewer than rm.batch_size={rm.batch_size}")
        print(f"  train {train.num_rows} rows, {rm.eval_split} {val.num_rows} rows; conditioning={rm.conditioning}")
    with phase("conditioning", timings):
        cond = conditioning_for({cfg.train_split: train, rm.eval_split: val}, cfg)
        train_pairs, val_pairs = pair_table(train, cond[cfg.train_split]), pair_table(val, cond[rm.eval_split])
        val_contested = val.column("contested").to_numpy(zero_copy_only=False)
        if rm.conditioning != "bt":
            print(f"  e.g. conditioning: {train_pairs.column('conditioning')[0].as_py()[:200]!r}")
        truncation = count_truncation(cfg, {"train": train_pairs, "validation": val_pairs})
    with phase("start group", timings):
        from actors.reward_model import RewardModelGroup
        from rlhf_cluster.ray_setup import check_fits, init_ray

        cluster = init_ray(cfg.ray)
        check_fits({f"rm_rank{i}": cfg.rank_resources for i in range(cfg.deepspeed.num_ranks)}, cluster)
        group = RewardModelGroup(
            cfg.models.reward_model, rm, cfg.deepspeed, cfg.rank_resources, cfg.seed, rm.batch_size
        )

    best = {"step": 0, "validation_accuracy": -1.0}
    with MetricsLogger(run_dir) as log, phase("train", timings):
        bar = progress(
            epoch_batches(train.num_rows, rm.batch_size, rm.steps, cfg.seed), total=rm.steps, desc="train", unit="step"
        )
        for step, idx in enumerate(bar, 1):
            m = group.train_step(train_pairs.take(idx))
            log.log(step, m, "train")
            bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.2f}")
            if step % rm.eval_every == 0 or step == rm.steps:
                v = validate(group, val_pairs, val_contested)
                log.log(step, v, "validation")
                contested = "" if v["contested"] is None else f" (contested {v['contested']:.3f})"
                note(f"  step {step}: validation accuracy {v['all']:.3f}{contested}")
                if v["all"] > best["validation_accuracy"]:
                    best = {"step": step, "validation_accuracy": v["all"], "validation": v}
                    group.save(str(run_dir / "best"))
                    (run_dir / "best.json").write_text(json.dumps(best, indent=2))
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                group.save(str(run_dir / "checkpoints" / f"step_{step:06d}"))
    with phase("save", timings):
        group.save(str(run_dir / "last"))
        group.shutdown()
    result = {"best": best, "truncation": truncation, "timings_s": timings}
    (run_dir / "train_summary.json").write_text(json.dumps(result, indent=2))
    print(f"best validation accuracy {best['validation_accuracy']:.3f} at step {best['step']}; run dir {run_dir}")
    print(f"next: python -m jobs.evaluate --run {run_dir}")
    return result


if __name__ == "__main__":
    main()
