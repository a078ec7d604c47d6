"""`python -m jobs.make_data --dataset pets|personas --out DIR [--seed N] [--pets.n_context 3 ...]`

Generates a procedural personalized-preference dataset (rlhf_cluster/datasets/) and writes, in DIR:

  <split>.parquet   rows in rlhf_cluster.schema.EXAMPLE_SCHEMA, one file per split
                    (format=plus: <split>.jsonl in the public PLUS release's format, no ground truth)
  ceilings.json     (not with format=plus) per split, per subset (all / contested / agreed): oracle, user_agnostic,
                    bayes_n_context expected accuracies and the row count n
  dataset.json      generator, seed, every option, split sizes and generator facts (markers, survey …)
  README.md         what the data is, how to regenerate it, the ceilings table

Deterministic: the same options and seed give byte-identical files. Stale split files that an earlier
run of either generator left in DIR are removed, so DIR always holds exactly one dataset.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlhf_cluster.builder_config import MakeDataConfig
from rlhf_cluster.cli import parse_config
from rlhf_cluster.datasets import GeneratedDataset, generate
from rlhf_cluster.plus_format import to_plus_rows
from rlhf_cluster.schema import EXAMPLE_SCHEMA

GENERATOR_SPLITS = ("train", "validation", "test_seen_users", "test_unseen_users", "test_unseen_topics", "pets_ood")
METRICS = ("oracle", "user_agnostic", "bayes_n_context")


def reproduce_command(cfg: MakeDataConfig) -> str:
    """The command line that regenerates this dataset: the options that differ from their defaults."""
    opts = getattr(cfg, cfg.dataset)
    defaults = type(opts)().model_dump()
    changed = [f"{cfg.dataset}.{k}={v}" for k, v in opts.model_dump().items() if defaults[k] != v]
    changed += ["format=plus"] if cfg.format == "plus" else []
    # DIR, not cfg.out: the files must not depend on where they were written (byte-identical across dirs)
    return " ".join(["python -m jobs.make_data --dataset", cfg.dataset, "--out DIR --seed", str(cfg.seed), *changed])


def ceilings_table(table: dict) -> list[str]:
    """Fixed-width lines: split, subset, n and the three ceilings."""
    lines = [f"{'split':<20} {'subset':<10} {'n':>6} {'oracle':>8} {'user_agnostic':>14} {'bayes_n_context':>16}"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for split, subsets in table.items():
        for subset, c in subsets.items():
            lines.append(
                f"{split:<20} {subset:<10} {c['n']:>6} {fmt(c['oracle']):>8} "
                f"{fmt(c['user_agnostic']):>14} {fmt(c['bayes_n_context']):>16}"
            )
    return lines


def readme(cfg: MakeDataConfig, data: GeneratedDataset) -> str:
    """A short README for the dataset directory."""
    opts = getattr(cfg, cfg.dataset).model_dump()
    sizes = ", ".join(f"`{s}` {len(r)}" for s, r in data.splits.items())
    return "\n".join(
        [
            f"# `{data.name}` dataset (seed {cfg.seed})",
            "",
            f"Regenerate: `{reproduce_command(cfg)}`",
            "",
            f"Rows per split: {sizes}. "
            + (
                "Written in the public PLUS release's format (`<split>.jsonl`: one row per user and three target "
                "pairs, the context as text, no user_id, no ground truth; rlhf_cluster/plus_format.py). The "
                "ceilings below are of the generator's rows, all pairs counted; the files hold no ceilings.json."
                if cfg.format == "plus"
                else "Rows follow `rlhf_cluster.schema.EXAMPLE_SCHEMA`; `user_description` and `p_chosen` are ground "
                "truth (oracle baselines and analysis only)."
            ),
            "",
            "## Generator",
            "",
            data.description,
            "",
            "## Options",
            "",
            *(f"- `{k}` = `{v}`" for k, v in opts.items()),
            "",
            "## Ceilings (expected accuracy; `ceilings.json`)",
            "",
            "oracle: true user weights known; user_agnostic: best non-personalized model (population majority); "
            "bayes_n_context: posterior over users given the row's context labels. Each is the mean over the split's "
            "rows of the expected accuracy given that row's actual context: only the target label is averaged exactly.",
            "",
            "```",
            *ceilings_table(data.ceilings),
            "```",
            "",
        ]
    )


def write(cfg: MakeDataConfig, data: GeneratedDataset) -> Path:
    """Write every split, ceilings.json (our format only), dataset.json and README.md into cfg.out."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ".jsonl" if cfg.format == "plus" else ".parquet"
    stale = [out / f"{s}{x}" for s in GENERATOR_SPLITS for x in (".parquet", ".jsonl")]
    stale += [out / "ceilings.json"] if cfg.format == "plus" else []
    for path in stale:
        if path.exists() and not (path.stem in data.splits and path.suffix == suffix):
            path.unlink()
            print(f"removed stale file {path}")
    for split, rows in data.splits.items():
        if cfg.format == "plus":
            lines = [json.dumps(r, ensure_ascii=False) for r in to_plus_rows(rows)]
            (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        else:
            pq.write_table(pa.Table.from_pylist(rows, schema=EXAMPLE_SCHEMA), out / f"{split}.parquet")
    if cfg.format != "plus":  # the ceilings are of our rows; PLUS rows carry no ground truth
        (out / "ceilings.json").write_text(json.dumps(data.ceilings, indent=2) + "\n")
    meta = {
        "dataset": data.name,
        "seed": cfg.seed,
        "command": reproduce_command(cfg),
        "options": getattr(cfg, cfg.dataset).model_dump(),
        "splits": {s: len(r) for s, r in data.splits.items()},
        "schema": EXAMPLE_SCHEMA.metadata[b"rlhf_cluster.schema"].decode(),
        "facts": data.facts,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "README.md").write_text(readme(cfg, data))
    return out


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(MakeDataConfig, argv, prog="make_data")
    start = time.perf_counter()
    data = generate(cfg)
    out = write(cfg, data)
    print(f"make_data: {data.name}, seed {cfg.seed} -> {out} ({time.perf_counter() - start:.1f} s)")
    for split, rows in data.splits.items():
        contested = sum(bool(r["contested"]) for r in rows)
        print(f"  {split:<20} {len(rows):>6} rows ({contested} contested)")
    print("ceilings (expected accuracy):")
    print("\n".join("  " + line for line in ceilings_table(data.ceilings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
