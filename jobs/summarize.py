"""Summarize every user's context with the summarizer on a Ray rollout actor (vLLM by default).

    python -m jobs.summarize --config configs/demo.yaml [key=value ...]

Phases (each timed): load data → tokenize prompts → start Ray + rollout actor → generate (Arrow
batches, progress shown) → write ``run_dir/summaries.parquet`` (ROLLOUT_SCHEMA) and
``run_dir/metrics.json``. This is the rollout half of the PLUS loop, runnable on its own.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from actors.rollout import generate_all, start_rollout_actor
from rlhf_cluster.cli import parse_config, prepare_run_dir
from rlhf_cluster.config import SummarizeConfig
from rlhf_cluster.data import read_split
from rlhf_cluster.models import load_tokenizer
from rlhf_cluster.prompts import build_requests
from rlhf_cluster.timing import phase


def main(argv=None) -> dict:
    cfg = parse_config(SummarizeConfig, argv, prog="jobs.summarize")
    run_dir = prepare_run_dir(cfg, cfg.run_dir)
    timings: dict[str, float] = {}

    with phase("load data", timings):
        examples = read_split(cfg.data.dir, cfg.data.split, skip_bad_rows=cfg.data.skip_bad_rows, limit=cfg.data.limit)
        print(f"  {examples.num_rows} examples from {cfg.data.dir}/{cfg.data.split}")
    with phase("tokenize", timings):
        tokenizer = load_tokenizer(cfg.models.summarizer)
        requests = build_requests(examples, tokenizer, cfg.rollout, cfg.seed)
        lens = [len(x) for x in requests.column("prompt_token_ids").to_pylist()]
        print(f"  prompt tokens: mean {sum(lens) / len(lens):.0f}, max {max(lens)}")
    with phase("start actors", timings):
        actor = start_rollout_actor(cfg.models, cfg.rollout, cfg.rollout_resources, cfg.ray, cfg.seed)
    with phase("generate", timings):
        summaries = generate_all(actor, requests, cfg.rollout.batch_size)
    with phase("write", timings):
        pq.write_table(summaries, run_dir / "summaries.parquet")
    metrics = _metrics(summaries, timings)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _show(examples, summaries, cfg.show)
    print(
        f"summaries: {metrics['summaries']} in {timings['generate']:.1f}s "
        f"({metrics['summaries_per_s']:.1f}/s, {metrics['tokens_per_s']:.0f} tok/s); wrote {run_dir}/summaries.parquet"
    )
    return metrics


def _metrics(summaries: pa.Table, timings: dict) -> dict:
    n_tokens = sum(len(t) for t in summaries.column("summary_token_ids").to_pylist())
    gen_s = max(timings["generate"], 1e-9)
    reasons = summaries.column("finish_reason").to_pylist()
    return {
        "summaries": summaries.num_rows,
        "summary_tokens": n_tokens,
        "summaries_per_s": summaries.num_rows / gen_s,
        "tokens_per_s": n_tokens / gen_s,
        "stopped_at_eos": reasons.count("stop") / max(len(reasons), 1),
        "timings_s": timings,
    }


def _show(examples: pa.Table, summaries: pa.Table, k: int) -> None:
    first = summaries.filter(pc.equal(summaries["sample_index"], 0)).to_pylist()
    rows = list({r["user_id"]: r for r in reversed(first)}.values())[::-1][:k]  # one per user
    for r in rows:
        truth = examples.column("user_description")[r["request_id"]].as_py()
        print(f"- user {r['user_id']}: {r['summary_text']!r}" + (f"\n    (truth: {truth})" if truth else ""))


if __name__ == "__main__":
    main()
