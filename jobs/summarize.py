"""Summarize every user's context with the summarizer on a Ray rollout actor (vLLM by default).

    python -m jobs.summarize --config configs/demo.yaml [key=value ...]

Phases (each timed): load data → tokenize prompts → start Ray + rollout actor → generate (Arrow
batches, progress shown) → write ``run_dir/summaries.parquet`` (ROLLOUT_SCHEMA) and
``run_dir/metrics.json``. This is the rollout half of the PLUS loop, runnable on its own.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from rlhf_cluster.cli import dump_yaml, parse_config
from rlhf_cluster.config import SummarizeConfig
from rlhf_cluster.data import read_split
from rlhf_cluster.models import load_tokenizer
from rlhf_cluster.prompts import chat_token_ids, summarizer_messages
from rlhf_cluster.schema import ROLLOUT_REQUEST_SCHEMA


class PromptTooLong(ValueError):
    pass


@contextmanager
def phase(name: str, timings: dict):
    print(f"[{name}] ...", flush=True)
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 3)
    print(f"[{name}] done in {timings[name]:.1f}s", flush=True)


def build_requests(examples: pa.Table, tokenizer, cfg: SummarizeConfig) -> pa.Table:
    """One rollout request per example: the chat-rendered summarizer prompt as token ids."""
    budget = cfg.rollout.max_model_len - cfg.rollout.max_new_tokens
    ids, too_long = [], []
    for i, row in enumerate(examples.to_pylist()):
        toks = chat_token_ids(tokenizer, summarizer_messages(row, cfg.rollout.max_context_pairs))
        if len(toks) > budget:
            too_long.append((i, row["user_id"], len(toks)))
        ids.append(toks)
    if too_long:
        i, user, n = too_long[0]
        raise PromptTooLong(
            f"{len(too_long)} summarizer prompts exceed rollout.max_model_len - rollout.max_new_tokens = {budget} "
            f"tokens (first: row {i}, user {user}: {n} tokens); raise rollout.max_model_len or lower "
            "rollout.max_context_pairs"
        )
    n = examples.num_rows
    return pa.Table.from_pydict(
        {
            "request_id": list(range(n)),
            "user_id": examples.column("user_id").to_pylist(),
            "prompt_token_ids": ids,
            "seed": [cfg.seed * 1_000_003 + i for i in range(n)],
        },
        schema=ROLLOUT_REQUEST_SCHEMA,
    )


def main(argv=None) -> dict:
    cfg = parse_config(SummarizeConfig, argv, prog="jobs.summarize")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    timings: dict[str, float] = {}

    with phase("load data", timings):
        examples = read_split(cfg.data.dir, cfg.data.split, skip_bad_rows=cfg.data.skip_bad_rows, limit=cfg.data.limit)
        print(f"  {examples.num_rows} examples from {cfg.data.dir}/{cfg.data.split}")
    with phase("tokenize", timings):
        tokenizer = load_tokenizer(cfg.models.summarizer)
        requests = build_requests(examples, tokenizer, cfg)
        lens = [len(x) for x in requests.column("prompt_token_ids").to_pylist()]
        print(f"  prompt tokens: mean {sum(lens) / len(lens):.0f}, max {max(lens)}")
    with phase("start actors", timings):
        import ray

        from actors.rollout import RolloutActor
        from rlhf_cluster.ray_setup import actor_options, check_fits, init_ray

        cluster = init_ray(cfg.ray)
        check_fits({"rollout": cfg.rollout_resources}, cluster)
        actor = RolloutActor.options(**actor_options(cfg.rollout_resources)).remote(
            cfg.models.summarizer, cfg.rollout, cfg.models.dtype, cfg.seed
        )
        info = ray.get(actor.info.remote())
        print(f"  rollout actor up: backend={info['backend']}, engine start {info['startup_s']:.1f}s")
    with phase("generate", timings):
        parts = []
        bs = cfg.rollout.batch_size
        for start in tqdm(range(0, requests.num_rows, bs), desc="generate", unit="batch"):
            parts.append(ray.get(actor.generate.remote(requests.slice(start, bs))))
        summaries = pa.concat_tables(parts)
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
