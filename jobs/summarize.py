"""Summarize every user's context with the summarizer on a Ray rollout actor (vLLM by default).

    python -m jobs.summarize --config configs/demo.yaml [key=value ...]

Phases (each timed): load data → tokenize prompts → start Ray + rollout actor → generate (Arrow
batches, progress shown) → write ``run_dir/summaries.parquet`` (ROLLOUT_SCHEMA) and
``run_dir/metrics.json``. This is the rollout half of the PLUS loop, runnable on its own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from rlhf_cluster.cli import parse_config, prepare_run_dir
from rlhf_cluster.config import ActorResources, ModelsConfig, RayConfig, RolloutConfig, SummarizeConfig
from rlhf_cluster.data import read_split
from rlhf_cluster.models import load_tokenizer
from rlhf_cluster.prompts import chat_token_ids, summarizer_messages
from rlhf_cluster.schema import ROLLOUT_REQUEST_SCHEMA, SUMMARY_CACHE_SCHEMA
from rlhf_cluster.timing import phase


class PromptTooLong(ValueError):
    pass


def build_requests(examples: pa.Table, tokenizer, rollout: RolloutConfig, seed: int) -> pa.Table:
    """One rollout request per example: the chat-rendered summarizer prompt as token ids."""
    budget = rollout.max_model_len - rollout.max_new_tokens
    ids, too_long = [], []
    for i, row in enumerate(examples.to_pylist()):
        toks = chat_token_ids(tokenizer, summarizer_messages(row, rollout.max_context_pairs))
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
            "seed": [seed * 1_000_003 + i for i in range(n)],
        },
        schema=ROLLOUT_REQUEST_SCHEMA,
    )


def start_rollout_actor(models: ModelsConfig, rollout: RolloutConfig, resources: ActorResources, ray_cfg: RayConfig, seed: int):
    """Join/start Ray and start one rollout actor (engine loaded) on the configured resources."""
    import ray

    from actors.rollout import RolloutActor
    from rlhf_cluster.ray_setup import actor_options, check_fits, init_ray

    check_fits({"rollout": resources}, init_ray(ray_cfg))
    actor = RolloutActor.options(**actor_options(resources)).remote(models.summarizer, rollout, models.dtype, seed)
    info = ray.get(actor.info.remote())
    print(f"  rollout actor up: backend={info['backend']}, engine start {info['startup_s']:.1f}s", flush=True)
    return actor


def generate_all(actor, requests: pa.Table, batch_size: int, progress: bool = True) -> pa.Table:
    """Send the requests in Arrow batches of ``batch_size``; one ROLLOUT_SCHEMA table back."""
    import ray

    starts = range(0, requests.num_rows, batch_size)
    parts = [
        ray.get(actor.generate.remote(requests.slice(s, batch_size)))
        for s in tqdm(starts, desc="generate", unit="batch", disable=not progress)
    ]
    return pa.concat_tables(parts)


def summarize_examples(
    examples: pa.Table, models: ModelsConfig, rollout: RolloutConfig, resources: ActorResources,
    ray_cfg: RayConfig, seed: int,
) -> list[str]:
    """One summary per example row (sample 0), each distinct context summarized once; the actor is freed after."""
    import ray

    tokenizer = load_tokenizer(models.summarizer)
    requests = build_requests(examples, tokenizer, rollout.model_copy(update={"n_samples": 1}), seed)
    prompts = [tuple(p) for p in requests.column("prompt_token_ids").to_pylist()]
    first = {p: i for i, p in reversed(list(enumerate(prompts)))}  # distinct prompt -> its first row
    unique = requests.take(sorted(first.values()))
    print(f"  summarizing {unique.num_rows} distinct contexts for {examples.num_rows} examples", flush=True)
    actor = start_rollout_actor(models, rollout.model_copy(update={"n_samples": 1}), resources, ray_cfg, seed)
    try:
        out = generate_all(actor, unique, rollout.batch_size)
    finally:
        ray.kill(actor)
    by_row = dict(zip(out.column("request_id").to_pylist(), out.column("summary_text").to_pylist()))
    return [by_row[first[p]] for p in prompts]


def cached_summaries(
    examples: pa.Table, path: Path, models: ModelsConfig, rollout: RolloutConfig, resources: ActorResources,
    ray_cfg: RayConfig, seed: int,
) -> list[str]:
    """One summary per row: read from ``path`` when it covers exactly these rows, else written and cached."""
    users = examples.column("user_id").to_pylist()
    if path.is_file():
        cached = {r["row"]: r for r in pq.read_table(path).to_pylist()}
        rows = [cached.get(i) for i in range(len(users))]
        if all(r is not None and r["user_id"] == u for r, u in zip(rows, users)):
            print(f"  summaries: cached {path}")
            return [r["summary"] for r in rows]
        print(f"notice: {path} does not match these rows (stale or partial); summarizing again", file=sys.stderr)
    summaries = summarize_examples(examples, models, rollout, resources, ray_cfg, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {"user_id": users, "row": list(range(len(users))), "summary": summaries}
    pq.write_table(pa.Table.from_pydict(columns, SUMMARY_CACHE_SCHEMA), path)
    print(f"  summaries: wrote {path}")
    return summaries


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
