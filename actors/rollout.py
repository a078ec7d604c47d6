"""Rollout role: sample summaries from the summarizer on a vLLM engine (or HF generate).

Speaks Arrow both ways: takes a ``ROLLOUT_REQUEST_SCHEMA`` table (one row per context), returns a
``ROLLOUT_SCHEMA`` table (one row per sampled summary) stamped with the weight version that sampled
it. Created by the driver as ``RolloutActor.options(**actor_options(res)).remote(...)``.

Weight versions: the checkpoint the actor starts from is version 0; each ``update_weights(blob, v)``
from the trainer (``rlhf_cluster.vllm_extension.state_dict_to_bytes``) moves it to ``v``. Ray runs an
actor's calls one at a time, so a rollout never sees half-loaded weights; the driver syncs after
each summarizer update and before the next rollout, and passes its version as
``generate(..., min_weight_version=v)`` so a skipped sync fails loudly instead of sampling from stale
weights (``RolloutConfig.max_weight_staleness`` > 0 is the explicit opt-in to lag).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from rlhf_cluster.config import ActorResources, ModelsConfig, RayConfig, RolloutConfig
from rlhf_cluster.generation import make_engine, watch_engine_processes
from rlhf_cluster.models import load_tokenizer
from rlhf_cluster.progress import progress
from rlhf_cluster.prompts import build_requests
from rlhf_cluster.ray_setup import actor_options, check_fits, init_ray
from rlhf_cluster.schema import ROLLOUT_REQUEST_SCHEMA, ROLLOUT_SCHEMA, SUMMARY_CACHE_SCHEMA


@ray.remote
class RolloutActor:
    def __init__(self, model_path: str, cfg: RolloutConfig, dtype: str = "float32", seed: int = 0):
        t0 = time.perf_counter()
        self.cfg = cfg
        self.engine = make_engine(model_path, cfg, dtype=dtype, seed=seed)
        if cfg.backend == "vllm" and not cfg.engine_in_process:
            watch_engine_processes()  # a dead engine process ends this actor: the job then restarts it
        self.weight_version = 0
        self.startup_s = time.perf_counter() - t0

    def info(self) -> dict:
        return {
            "backend": self.cfg.backend,
            "weight_version": self.weight_version,
            "startup_s": self.startup_s,
            "pid": os.getpid(),
        }

    def update_weights(self, blob: bytes, version: int) -> dict:
        """Load the trainer's weights (``state_dict_to_bytes`` blob) as ``version``; returns timings.
        The driver passes policy rank 0's object reference (``PolicyGroup.state_dict_ref``): Ray resolves
        it here, so the bytes come from the object store and never through the driver.

        A lower version than the current one is refused: it would mean an out-of-order or replayed
        sync silently rolling the policy back. The same version again is allowed (a retried sync).
        """
        if not isinstance(version, int) or version < 0:
            raise ValueError(f"RolloutActor.update_weights: version must be an int >= 0, got {version!r}")
        if version < self.weight_version:
            raise ValueError(
                f"RolloutActor.update_weights: refusing weight version {version}, older than the loaded "
                f"version {self.weight_version} (syncs must arrive in order)"
            )
        t0 = time.perf_counter()
        self.engine.update_weights(blob)
        self.weight_version = version
        return {"weight_version": version, "bytes": len(blob), "seconds": time.perf_counter() - t0}

    def weights_checksum(self) -> float:
        """Sum of the engine's parameters (tests: did a sync change anything). Not comparable across
        backends: vLLM fuses/repacks parameters and HF counts tied embeddings once."""
        return self.engine.weights_checksum()

    def score_tokens(self, prompts: list[list[int]], continuations: list[list[int]]) -> list[list[float]]:
        """Teacher-forced logprobs of fixed continuation tokens under the loaded weights, per position:
        ``out[i][t] = log π(continuations[i][t] | prompts[i], continuations[i][:t])``."""
        if len(prompts) != len(continuations):
            raise ValueError(f"score_tokens: {len(prompts)} prompts but {len(continuations)} continuations")
        return self.engine.score(prompts, continuations)

    def generate(self, requests: pa.Table, min_weight_version: int | None = None, greedy: bool = False) -> pa.Table:
        """Sample ``cfg.n_samples`` summaries per request row; ``greedy``: one argmax summary per row
        (validation runs through the same engine: vLLM takes sampling settings per request).

        ``min_weight_version``: the trainer's current version; sampling with weights more than
        ``cfg.max_weight_staleness`` versions behind it raises instead of returning stale rollouts.
        """
        _check_requests(requests)
        if min_weight_version is not None and self.weight_version < min_weight_version - self.cfg.max_weight_staleness:
            raise RuntimeError(
                f"RolloutActor.generate: loaded weight version {self.weight_version} is stale: the trainer "
                f"is at {min_weight_version} and rollout.max_weight_staleness={self.cfg.max_weight_staleness} "
                "(sync with update_weights first)"
            )
        cols = requests.to_pydict()
        samples = self.engine.generate(cols["prompt_token_ids"], cols["seed"], greedy=greedy)
        rows = {name: [] for name in ROLLOUT_SCHEMA.names}
        for i, per_prompt in enumerate(samples):
            for k, s in enumerate(per_prompt):
                rows["request_id"].append(cols["request_id"][i])
                rows["user_id"].append(cols["user_id"][i])
                rows["sample_index"].append(k)
                rows["prompt_token_ids"].append(cols["prompt_token_ids"][i])
                rows["summary_token_ids"].append(s.token_ids)
                rows["summary_logprobs"].append(s.logprobs)
                rows["summary_text"].append(s.text)
                rows["finish_reason"].append(s.finish_reason)
                rows["weight_version"].append(self.weight_version)
        return pa.Table.from_pydict(rows, schema=ROLLOUT_SCHEMA)


def _check_requests(table: pa.Table) -> None:
    if not isinstance(table, pa.Table):
        raise TypeError(f"RolloutActor.generate expects a pyarrow.Table, got {type(table).__name__}")
    if table.num_rows == 0:
        raise ValueError("RolloutActor.generate: the request batch has no rows")
    if not table.schema.equals(ROLLOUT_REQUEST_SCHEMA, check_metadata=False):
        raise ValueError(
            f"RolloutActor.generate: request batch schema mismatch\n got: {table.schema}\n"
            f" expected ROLLOUT_REQUEST_SCHEMA: {ROLLOUT_REQUEST_SCHEMA}"
        )


# ------------------------------------------------------------------- driver side


def start_rollout_actor(
    models: ModelsConfig, rollout: RolloutConfig, resources: ActorResources, ray_cfg: RayConfig, seed: int
):
    """Join/start Ray and start one rollout actor (engine loaded) on the configured resources."""
    check_fits({"rollout": resources}, init_ray(ray_cfg))
    actor = RolloutActor.options(**actor_options(resources)).remote(models.summarizer, rollout, models.dtype, seed)
    info = ray.get(actor.info.remote())
    print(f"  rollout actor up: backend={info['backend']}, engine start {info['startup_s']:.1f}s", flush=True)
    return actor


def generate_all(
    actor, requests: pa.Table, batch_size: int, show_progress: bool = True, greedy: bool = False
) -> pa.Table:
    """Send the requests in Arrow batches of ``batch_size``; one ROLLOUT_SCHEMA table back."""
    starts = range(0, requests.num_rows, batch_size)
    parts = [
        ray.get(actor.generate.remote(requests.slice(s, batch_size), greedy=greedy))
        for s in progress(starts, desc="generate", unit="batch", disable=not show_progress)
    ]
    return pa.concat_tables(parts)


def summarize_examples(
    examples: pa.Table,
    models: ModelsConfig,
    rollout: RolloutConfig,
    resources: ActorResources,
    ray_cfg: RayConfig,
    seed: int,
) -> list[str]:
    """One summary per example row (sample 0), each distinct context summarized once; the actor is freed after."""
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
    examples: pa.Table,
    path: Path,
    models: ModelsConfig,
    rollout: RolloutConfig,
    resources: ActorResources,
    ray_cfg: RayConfig,
    seed: int,
) -> list[str]:
    """One summary per row: read from ``path`` when it covers exactly these rows, else written and cached."""
    return cached_summaries_for({"": (examples, path)}, models, rollout, resources, ray_cfg, seed)[""]


def cached_summaries_for(
    tables: dict[str, tuple[pa.Table, Path]],
    models: ModelsConfig,
    rollout: RolloutConfig,
    resources: ActorResources,
    ray_cfg: RayConfig,
    seed: int,
) -> dict[str, list[str]]:
    """{name: one summary per row} for several (examples, cache path) tables — each read from its cache when
    that covers exactly its rows; the others summarized together by one rollout actor, then cached."""
    out, todo = {}, {}
    for name, (examples, path) in tables.items():
        cached = _read_summary_cache(examples, path)
        if cached is None:
            todo[name] = (examples, path)
        else:
            out[name] = cached
    if todo:
        merged = pa.concat_tables([examples for examples, _ in todo.values()])
        summaries = summarize_examples(merged, models, rollout, resources, ray_cfg, seed)
        start = 0
        for name, (examples, path) in todo.items():
            out[name] = summaries[start : start + examples.num_rows]
            start += examples.num_rows
            path.parent.mkdir(parents=True, exist_ok=True)
            users = examples.column("user_id").to_pylist()
            columns = {"user_id": users, "row": list(range(len(users))), "summary": out[name]}
            pq.write_table(pa.Table.from_pydict(columns, SUMMARY_CACHE_SCHEMA), path)
            print(f"  summaries: wrote {path}")
    return {name: out[name] for name in tables}


def _read_summary_cache(examples: pa.Table, path: Path) -> list[str] | None:
    """The cached summaries of these rows, or None (no cache, or one that is stale or partial: a notice)."""
    if not path.is_file():
        return None
    users = examples.column("user_id").to_pylist()
    cached = {r["row"]: r for r in pq.read_table(path).to_pylist()}
    rows = [cached.get(i) for i in range(len(users))]
    if all(r is not None and r["user_id"] == u for r, u in zip(rows, users)):
        print(f"  summaries: cached {path}")
        return [r["summary"] for r in rows]
    print(f"notice: {path} does not match these rows (stale or partial); summarizing again", file=sys.stderr)
    return None
