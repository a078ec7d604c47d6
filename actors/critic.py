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

from rlhf_cluster.config import ActorResources, DeepSpeedConfig, PolicyTrainConfig
from rlhf_cluster.distributed import DeepSpeedRank
from rlhf_cluster.losses import value_loss
from rlhf_cluster.models import load_tokenizer, load_value_model
from rlhf_cluster.sequences import (
    SummaryBatch,
    check_critic_batch,
    check_token_columns,
    encode_summaries,
    summary_token_values,
    values_table,
)
from rlhf_cluster.tensors import pad_list_column
from rlhf_cluster.worker_group import DeepSpeedGroupHandle, combine_metrics, split_even


class _SummaryValues(torch.nn.Module):
    """The token classifier with ``summary_token_values`` as its forward (the engine runs the whole forward)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return summary_token_values(self.model, **inputs)


@ray.remote
class CriticRank(DeepSpeedRank):
    def __init__(
        self,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        *,
        model_path: str,
        train: PolicyTrainConfig,
        ds: DeepSpeedConfig,
        seed: int,
        global_batch_size: int,
        dtype: str = "float32",
    ):
        t0 = time.perf_counter()
        self._init_distributed(rank, world_size, master_addr, master_port, ds)
        self.cfg, self.seed, self.global_batch_size, self.dtype = train, seed, global_batch_size, dtype
        self.tokenizer = load_tokenizer(model_path)
        self._build(model_path)
        self.startup_s = time.perf_counter() - t0

    def _build(self, path: str) -> None:
        torch.manual_seed(self.seed + 1)  # the head's init: same on every rank, not the RM head's draw
        self._build_engine(
            _SummaryValues(load_value_model(path, dtype=self.dtype)), self.cfg.critic_optim, self.global_batch_size
        )
        self.engine.eval()  # no dropout: values of the same tokens must not depend on the call

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
        n_global = mask.sum().detach().float().clone()
        if self.world_size > 1:
            torch.distributed.all_reduce(n_global)
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

    def save(self, path: str) -> str:
        """Rank 0 writes the HF token-classifier checkpoint (every rank must call: ZeRO-3 gathers)."""
        return self._save_hf(path, self.engine.module.model, self.tokenizer)

    def load(self, path: str) -> None:
        """Weights of the HF checkpoint at ``path`` in a fresh engine (optimizer state restarts)."""
        self._build(path)


class CriticGroup(DeepSpeedGroupHandle):
    """The driver's handle on ``ds.num_ranks`` CriticRank actors (PPO's critic).

    ``global_batch_size`` (default ``train.minibatch_size``) is the summaries per optimizer step over all ranks.
    """

    def __init__(
        self,
        model_path: str,
        train: PolicyTrainConfig,
        ds: DeepSpeedConfig,
        resources: ActorResources,
        seed: int = 0,
        global_batch_size: int | None = None,
        dtype: str = "float32",
    ):
        self.cfg, self.ds = train, ds
        super().__init__(
            CriticRank,
            ds.num_ranks,
            resources,
            name="critic",
            model_path=str(model_path),
            train=train,
            ds=ds,
            seed=seed,
            global_batch_size=global_batch_size or train.minibatch_size,
            dtype=dtype,
        )

    def train_step(self, batch: pa.Table) -> dict:
        """One optimizer step on the global batch (CRITIC_BATCH_SCHEMA): loss, grad_norm, lr, value_clip_frac,
        explained_variance (rank means), n_sequences, n_tokens (summed), seconds (slowest rank)."""
        check_critic_batch(batch, "CriticGroup.train_step")
        shards = split_even(batch, len(self.ranks), "CriticGroup.train_step")
        return combine_metrics(self.group.gather([w.train_step.remote(s) for w, s in zip(self.ranks, shards)]))

    def values(self, batch: pa.Table) -> pa.Table:
        """TOKEN_VALUES_SCHEMA rows in the input order."""
        check_token_columns(batch, "CriticGroup.values")
        return self.group.map_rows(batch, lambda rank, shard: rank.values.remote(shard))
