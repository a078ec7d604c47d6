"""`python -m jobs.make_reactions --data DATA_DIR --out DIR [--seed N] [reactions.base_rate=0.05 ...]`

Reaction logs for RLUF's P[Love] (issue 13), with ground truth: the users of a generated pets dataset
(DATA_DIR, from `jobs.make_data --dataset pets`) each see ``reactions.impressions_per_user`` answers per
split and react Love with P = σ(slope · u_love + b) (rlhf_cluster/datasets/reactions.py). Writes, in DIR:

  <split>.parquet   rows in rlhf_cluster.schema.REACTION_SCHEMA (train, validation, test_seen_users,
                    test_unseen_users: the dataset's own users per split)
  reactions.json    the options, b, and per split: Love rate and the Bayes-optimal AUC / log-loss of a
                    P[Love] that knows the user (type + adversarial), the type only, or the response only
  README.md         what the logs are, how to regenerate them, the Bayes table

Deterministic: the same data, options and seed give byte-identical files.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from rlhf_cluster.builder_config import MakeReactionsConfig, ReactionOptions
from rlhf_cluster.cli import parse_config
from rlhf_cluster.data import DataError, read_split
from rlhf_cluster.datasets import reactions
from rlhf_cluster.datasets.truth import world_truth

SPLITS = ("train", "validation", "test_seen_users", "test_unseen_users")  # pets_ood: another world
KNOWN = ("user_known", "type_known", "response_only")


def make(cfg: MakeReactionsConfig) -> tuple[dict, dict]:
    """The reaction tables per split and the figures (reactions.json's content)."""
    world_truth(cfg.data)  # a pets dataset with ground truth, or NoGroundTruth naming what is missing
    opts: ReactionOptions = cfg.reactions
    bias = reactions.world_bias(opts)
    tables, figures = {}, {}
    for stream, split in enumerate(SPLITS):
        users = reactions.split_users(read_split(cfg.data, split))
        tables[split] = reactions.impressions(users, split, opts, bias, cfg.seed, stream)
        classes = [(u["type"], reactions.is_adversarial(u["id"], opts.adversarial_share, cfg.seed)) for u in users]
        loves = tables[split]["reaction"].to_pylist().count(reactions.LOVE)
        figures[split] = {
            "users": len(users),
            "adversarial_users": sum(a for _, a in classes),
            "impressions": tables[split].num_rows,
            "loves": loves,
            **reactions.bayes_figures(classes, opts, bias),
        }
    meta = {"data": str(cfg.data), "seed": cfg.seed, "options": opts.model_dump(), "bias": bias, "splits": figures}
    return tables, meta


def bayes_table(meta: dict) -> list[str]:
    lines = [f"{'split':<18} {'impr.':>6} {'loves':>6} {'rate':>6}  " + "  ".join(f"{k:>22}" for k in KNOWN)]
    lines.append(f"{'':<18} {'':>6} {'':>6} {'':>6}  " + "  ".join(f"{'AUC   log-loss':>22}" for _ in KNOWN))
    for split, f in meta["splits"].items():
        cells = "  ".join(f"{f[k]['auc']:>13.3f} {f[k]['log_loss']:>8.4f}" for k in KNOWN)
        lines.append(f"{split:<18} {f['impressions']:>6} {f['loves']:>6} {f['love_rate']:>6.3f}  {cells}")
    return lines


def readme(cfg: MakeReactionsConfig, meta: dict) -> str:
    opts = cfg.reactions
    changed = [f"reactions.{k}={v}" for k, v in opts.model_dump().items() if ReactionOptions().model_dump()[k] != v]
    return "\n".join(
        [
            f"# Reaction logs (seed {cfg.seed})",
            "",
            f"Regenerate: `python -m jobs.make_reactions --data DATA --out DIR --seed {cfg.seed} {' '.join(changed)}`"
            f" (DATA: `{cfg.data}`)",
            "",
            "Rows follow `rlhf_cluster.schema.REACTION_SCHEMA`; `user_description`, `adversarial`, `harmful` and "
            "`p_love` are ground truth (analysis only).",
            "",
            "## Generator",
            "",
            (reactions.__doc__ or "").strip(),
            "",
            f"Options: {', '.join(f'`{k}` = `{v}`' for k, v in opts.model_dump().items())}; b = {meta['bias']:.4f}.",
            "",
            "## Bayes-optimal P[Love] (expected over each split's users and the logging policy; `reactions.json`)",
            "",
            "```",
            *bayes_table(meta),
            "```",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(MakeReactionsConfig, argv, prog="make_reactions")
    start = time.perf_counter()
    try:
        tables, meta = make(cfg)
    except (ValueError, DataError) as err:  # NoGroundTruth, a split that is not a pets split
        print(f"make_reactions: {err}", file=sys.stderr)
        return 2
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, table in tables.items():
        pq.write_table(table, out / f"{split}.parquet")
    (out / "reactions.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "README.md").write_text(readme(cfg, meta))
    print(f"make_reactions: {cfg.data} -> {out} ({time.perf_counter() - start:.1f} s; b = {meta['bias']:.4f})")
    print("\n".join("  " + line for line in bayes_table(meta)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
