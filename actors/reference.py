"""Reference role: a frozen copy of the initial summarizer, for the per-token KL penalty of the policy.

Plain torch on the actor's own resources (a GPU if Ray gave it one, else CPU) — no DeepSpeed: it never
trains, so it needs no optimizer state, no process group and no sharding. Its logprobs come from the same
``rlhf_cluster.sequences`` code as the policy ranks', so KL(π ‖ π_ref) is exactly 0 before the first
update. Created by the driver as ``ReferenceActor.options(**actor_options(res)).remote(path)``.
"""

from __future__ import annotations

import time

import pyarrow as pa
import ray
import torch

from rlhf_cluster.distributed import module_checksum
from rlhf_cluster.models import load_causal_lm, load_tokenizer
from rlhf_cluster.sequences import check_token_columns, encode_summaries, logprobs_table, summary_token_logprobs


@ray.remote
class ReferenceActor:
    def __init__(self, model_path: str, dtype: str = "float32"):
        t0 = time.perf_counter()
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        self.pad_id = load_tokenizer(model_path).pad_token_id
        self.model = load_causal_lm(model_path, dtype=dtype).to(self.device).eval().requires_grad_(False)
        self.startup_s = time.perf_counter() - t0

    def info(self) -> dict:
        return {"device": str(self.device), "startup_s": round(self.startup_s, 2)}

    @torch.no_grad()
    def logprobs(self, batch: pa.Table) -> pa.Table:
        """TOKEN_LOGPROBS_SCHEMA rows, one per input row (ROLLOUT_SCHEMA or POLICY_BATCH_SCHEMA rows)."""
        check_token_columns(batch, "ReferenceActor.logprobs")
        enc = encode_summaries(batch.column("prompt_token_ids"), batch.column("summary_token_ids"), self.pad_id)
        enc = enc.to(self.device)
        logprobs, _ = summary_token_logprobs(self.model, **enc.model_inputs())
        return logprobs_table(logprobs, enc.summary_mask)

    def parameter_checksum(self) -> float:
        """Sum of |w| in float64: stays the initial summarizer's value for the whole run."""
        return module_checksum(self.model)
