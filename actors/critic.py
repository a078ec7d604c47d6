"""Critic role (PPO only): a value model V(prompt, summary prefix) trained by regression on GAE returns,
on a DeepSpeed group of Ray actors.

``CriticRank`` is one rank (a Ray actor); ``CriticGroup`` is the driver's handle on N of them. The value
model is the summarizer's backbone with a fresh scalar per-token head (``models.load_value_model``), as in
InstructGPT-style PPO where the critic starts from a pretrained LM. ``values`` takes ROLLOUT_SCHEMA (or any
table with prompt/summary token columns) and returns TOKEN_VALUES_SCHEMA; ``train_step`` takes a
CRITIC_BATCH_SCHEMA shard (old values + returns) and takes one step on the clipped value loss.
"""

from __future__ import annotations

import time

import pyarrow as pa
import ray
import torch

from rlhf_cluster.config import PolicyTrainConfig
from rlhf_cluster.distributed import DeepSpeedRank
from rlhf_cluster.losses import value_loss
from rlhf_cluster.models import load_value_model
from rlhf_cluster.sequences import (
    SummaryBatch,
    check_critic_batch,
    check_token_columns,
    encode_summaries,
    summary_token_values,
    values_table,
)
from rlhf_cluster.tensors import pad_list_column
from rlhf_cluster.worker_group import DeepSpeedGroupHandle


class _SummaryValues(torch.nn.Module):
    """The token classifier with ``summary_token_values`` as its forward (the engine runs the whole forward)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return summary_token_values(self.model, **inputs)


@ray.remote
class CriticRank(DeepSpeedRank):
    init_seed_offset = 1  # the head's init: same on every rank, not the RM head's draw

    def _module(self, path: str) -> torch.nn.Module:
        return _SummaryValues(load_value_model(path, dtype=self.dtype))

    def _optim(self):
        return self.cfg.critic_optim

    def _forward(self, batch: pa.Table) -> tuple[SummaryBatch, torch.Tensor]:
        enc = encode_summaries(
            batch.column("prompt_token_ids"), batch.column("summary_token_ids"), pad_id=self.tokenizer.pad_token_id
        ).to(self.device)
        return enc, self.engine(**enc.model_inputs())

    def train_step(self, batch: pa.Table) -> dict:
        """One step on the clipped value loss, the token mean over the GLOBAL batch (as the policy's)."""
        t0 = time.perf_counter()
        check_critic_batch(batch, f"CriticRank[{self.rank}].train_step")
        enc, values = self._forward(batch)
        old, _ = pad_list_column(batch.column("values"), 0.0, side="right", name="values")
        ret, _ = pad_list_column(batch.column("returns"), 0.0, side="right", name="returns")
        mask = enc.summary_mask
        n_global = self._global_sum(mask.sum())
        loss, stats = value_loss(
            values,
            old.to(self.device),
            ret.to(self.device),
            mask,
            self.cfg.value_clip_eps,
            num_tokens=n_global / self.world_size,
        )
        out = self._step(loss)
        real = mask.bool()
        with torch.no_grad():
            explained = 1 - (ret.to(self.device) - values)[real].var() / ret.to(self.device)[real].var().clamp_min(1e-8)
        out.update(
            value_clip_frac=stats["clip_frac"].item(),
            explained_variance=explained.item(),
            n_sequences=batch.num_rows,
            n_tokens=int(mask.sum().item()),
            seconds=time.perf_counter() - t0,
        )
        return out

    @torch.no_grad()
    def values(self, batch: pa.Table) -> pa.Table:
        """TOKEN_VALUES_SCHEMA rows, one per input row, under the current weights."""
        check_token_columns(batch, f"CriticRank[{self.rank}].values")
        enc, values = self._forward(batch)
        return values_table(values, enc.summary_mask)


class CriticGroup(DeepSpeedGroupHandle):
    """The driver's handle on ``ds.num_ranks`` CriticRank actors (PPO's critic); the global batch defaults
    to ``train.minibatch_size`` summaries."""

    rank_cls, role = CriticRank, "critic"

    @staticmethod
    def default_batch_size(train: PolicyTrainConfig) -> int:
        return train.minibatch_size

    def train_step(self, batch: pa.Table) -> dict:
        """One optimizer step on the global batch (CRITIC_BATCH_SCHEMA): loss, grad_norm, lr, value_clip_frac,
        explained_variance (rank means), n_sequences, n_tokens (summed), seconds (slowest rank)."""
        check_critic_batch(batch, "CriticGroup.train_step")
        return self._train_step(batch, "CriticGroup.train_step")

    def values(self, batch: pa.Table) -> pa.Table:
        """TOKEN_VALUES_SCHEMA rows in the input order."""
        check_token_columns(batch, "CriticGroup.values")
        return self.group.map_rows(batch, lambda rank, shard: rank.values.remote(shard))
