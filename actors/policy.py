"""Summarizer policy role: the summarizer causal LM trained with PPO-clip (GRPO / RLOO advantages) on a
DeepSpeed group of Ray actors.

``PolicyRank`` is one rank (a Ray actor). ``train_step`` takes a ``POLICY_BATCH_SCHEMA`` shard — prompt
and summary tokens, the rollout engine's logprobs of the summary (the "old" policy) and per-token
advantages — recomputes the summary logprobs under the current weights in one forward pass
(``rlhf_cluster.sequences``), and takes one optimizer step on the clipped surrogate loss. ``logprobs``
scores any table with prompt/summary token columns; ``state_dict_bytes`` hands the weights to the rollout
engine. ``PolicyGroup`` is the driver's handle on N ranks, with the same methods.

The KL penalty to the frozen reference is not in this loss: the driver puts it into the rewards
(``losses.token_rewards``) before computing advantages, as PLUS does.
"""

from __future__ import annotations

import time

import pyarrow as pa
import ray
import torch

from rlhf_cluster.config import PolicyTrainConfig
from rlhf_cluster.distributed import DeepSpeedRank
from rlhf_cluster.losses import masked_mean, ppo_policy_loss
from rlhf_cluster.models import load_causal_lm
from rlhf_cluster.sequences import (
    SummaryBatch,
    check_policy_batch,
    check_token_columns,
    encode_summaries,
    logprobs_table,
    summary_token_logprobs,
)
from rlhf_cluster.tensors import pad_list_column
from rlhf_cluster.worker_group import DeepSpeedGroupHandle


class _SummaryLogprobs(torch.nn.Module):
    """The causal LM with ``summary_token_logprobs`` as its forward: the engine must run the whole
    forward (ZeRO-3 gathers parameters in hooks on the top module)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, with_entropy: bool = False, **inputs: torch.Tensor):
        return summary_token_logprobs(self.model, **inputs, with_entropy=with_entropy)


@ray.remote
class PolicyRank(DeepSpeedRank):
    def _module(self, path: str) -> torch.nn.Module:
        # Eval mode throughout (eval_mode): the ratio's denominator comes from a dropout-free sampler,
        # so a dropout-noisy numerator would make ρ ≠ 1 on-policy.
        return _SummaryLogprobs(load_causal_lm(path, dtype=self.dtype))

    def _forward(self, batch: pa.Table, with_entropy: bool) -> tuple[SummaryBatch, torch.Tensor, torch.Tensor | None]:
        enc = encode_summaries(
            batch.column("prompt_token_ids"), batch.column("summary_token_ids"), pad_id=self.tokenizer.pad_token_id
        ).to(self.device)
        logprobs, entropy = self.engine(**enc.model_inputs(), with_entropy=with_entropy)
        return enc, logprobs, entropy

    def train_step(self, batch: pa.Table) -> dict:
        """One optimizer step on this rank's shard of the global batch (all ranks step together).

        The loss is the token mean over the GLOBAL batch: each rank divides its token sum by
        (global tokens / world size), and DeepSpeed averages gradients over ranks, so 1 rank and N
        ranks on the same global batch take the same step whatever the shards' token counts.
        """
        t0 = time.perf_counter()
        check_policy_batch(batch, f"PolicyRank[{self.rank}].train_step")
        enc, logprobs, entropy = self._forward(batch, with_entropy=True)
        old, _ = pad_list_column(batch.column("summary_logprobs"), 0.0, side="right", name="summary_logprobs")
        adv, _ = pad_list_column(batch.column("advantages"), 0.0, side="right", name="advantages")
        mask = enc.summary_mask
        n_global = self._global_sum(mask.sum())
        loss, stats = ppo_policy_loss(
            logprobs,
            old.to(self.device),
            adv.to(self.device),
            mask,
            self.cfg.clip_eps,
            num_tokens=n_global / self.world_size,
        )
        out = self._step(loss)
        out.update({k: v.item() for k, v in stats.items()})
        out.update(
            entropy=masked_mean(entropy, mask).item(),
            n_sequences=batch.num_rows,
            n_tokens=int(mask.sum().item()),
            seconds=time.perf_counter() - t0,
        )
        return out

    @torch.no_grad()
    def logprobs(self, batch: pa.Table) -> pa.Table:
        """TOKEN_LOGPROBS_SCHEMA rows, one per input row, under the current weights (no grad)."""
        check_token_columns(batch, f"PolicyRank[{self.rank}].logprobs")
        enc, logprobs, _ = self._forward(batch, with_entropy=False)
        return logprobs_table(logprobs, enc.summary_mask)


class PolicyGroup(DeepSpeedGroupHandle):
    """The driver's handle on ``ds.num_ranks`` PolicyRank actors training one summarizer; the global batch
    defaults to ``train.minibatch_size`` summaries."""

    rank_cls, role = PolicyRank, "policy"

    @staticmethod
    def default_batch_size(train: PolicyTrainConfig) -> int:
        return train.minibatch_size

    def train_step(self, batch: pa.Table) -> dict:
        """One optimizer step on the global batch (POLICY_BATCH_SCHEMA). Returns loss (global token mean),
        grad_norm, lr, clip_frac, approx_kl, ratio_mean, entropy (means of the ranks' shard means),
        n_sequences, n_tokens (summed) and seconds (slowest rank)."""
        check_policy_batch(batch, "PolicyGroup.train_step")
        return self._train_step(batch, "PolicyGroup.train_step")

    def logprobs(self, batch: pa.Table) -> pa.Table:
        """TOKEN_LOGPROBS_SCHEMA rows in the input order, for any table with prompt/summary token columns."""
        check_token_columns(batch, "PolicyGroup.logprobs")
        return self.group.map_rows(batch, lambda rank, shard: rank.logprobs.remote(shard))
