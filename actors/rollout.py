"""Rollout role: sample summaries from the summarizer on a vLLM engine (or HF generate).

Speaks Arrow both ways: takes a ``ROLLOUT_REQUEST_SCHEMA`` table (one row per context), returns a
``ROLLOUT_SCHEMA`` table (one row per sampled summary) stamped with the weight version that sampled
it. Created by the driver as ``RolloutActor.options(**actor_options(res)).remote(...)``.
"""

from __future__ import annotations

import time

import pyarrow as pa
import ray

from rlhf_cluster.config import RolloutConfig
from rlhf_cluster.generation import make_engine
from rlhf_cluster.schema import ROLLOUT_REQUEST_SCHEMA, ROLLOUT_SCHEMA


@ray.remote
class RolloutActor:
    def __init__(self, model_path: str, cfg: RolloutConfig, dtype: str = "float32", seed: int = 0):
        t0 = time.perf_counter()
        self.cfg = cfg
        self.engine = make_engine(model_path, cfg, dtype=dtype, seed=seed)
        self.weight_version = 0
        self.startup_s = time.perf_counter() - t0

    def info(self) -> dict:
        return {"backend": self.cfg.backend, "weight_version": self.weight_version, "startup_s": self.startup_s}

    def generate(self, requests: pa.Table) -> pa.Table:
        """Sample ``cfg.n_samples`` summaries per request row."""
        _check_requests(requests)
        cols = requests.to_pydict()
        samples = self.engine.generate(cols["prompt_token_ids"], cols["seed"])
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
