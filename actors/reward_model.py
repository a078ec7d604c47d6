"""Reward-model role: a (personalized) reward model trained data-parallel on a DeepSpeed group of Ray actors.

``RewardModelRank`` is one rank (a Ray actor): it takes a ``REWARD_PAIR_SCHEMA`` Arrow shard, turns it
into tensors itself (``encode_pairs``) and trains with the Bradley–Terry loss, or scores it into a
``REWARD_SCORE_SCHEMA`` table. ``RewardModelGroup`` is the driver's handle on N such ranks: the job
calls ``group.train_step(batch)``, ``group.score(batch)``, ``group.save(path)``, ``group.load(path)``.

A checkpoint is an HF ``save_pretrained`` directory (sequence classifier with a scalar ``score`` head
+ tokenizer) that ``AutoModelForSequenceClassification.from_pretrained`` loads on its own. On a
multi-node cluster ``path`` must be on storage that rank 0 writes and every rank can read.
"""

from __future__ import annotations

import time

import pyarrow as pa
import ray
import torch

from rlhf_cluster.config import ActorResources, DeepSpeedConfig, RewardTrainConfig
from rlhf_cluster.distributed import DeepSpeedRank
from rlhf_cluster.losses import bradley_terry_loss, pairwise_accuracy
from rlhf_cluster.models import load_reward_model, load_tokenizer
from rlhf_cluster.reward_model import EncodedPairs, encode_pairs, sequence_rewards
from rlhf_cluster.schema import REWARD_PAIR_SCHEMA, REWARD_SCORE_SCHEMA, check_batch
from rlhf_cluster.worker_group import DeepSpeedGroupHandle, combine_metrics, split_even


class _LastTokenReward(torch.nn.Module):
    """The HF classifier with ``sequence_rewards`` as its forward ([B, T] → [B]).

    The engine must run the whole forward (ZeRO-3 gathers parameters in hooks on the top module), and
    the HF forward pools by pad id, which is wrong when pad == eos; this reads the attention mask.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return sequence_rewards(self.model, input_ids, attention_mask)


@ray.remote
class RewardModelRank(DeepSpeedRank):
    def __init__(
        self,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        *,
        model_path: str,
        rm: RewardTrainConfig,
        ds: DeepSpeedConfig,
        seed: int,
        global_batch_size: int,
    ):
        t0 = time.perf_counter()
        self._init_distributed(rank, world_size, master_addr, master_port, ds)
        self.rm, self.seed, self.global_batch_size = rm, seed, global_batch_size
        self.tokenizer = load_tokenizer(model_path, padding_side="right")
        self._build(model_path)
        self.startup_s = time.perf_counter() - t0

    def _build(self, path: str) -> None:
        # The same seed on every rank and at every world size: a fresh score head starts identical.
        torch.manual_seed(self.seed)
        model = load_reward_model(path, pad_token_id=self.tokenizer.pad_token_id)
        self._build_engine(_LastTokenReward(model), self.rm.optim, self.global_batch_size)

    def _encode(self, batch: pa.Table, where: str) -> EncodedPairs:
        check_batch(batch, REWARD_PAIR_SCHEMA, where)
        return encode_pairs(self.tokenizer, batch, self.rm.max_length, self.rm.truncation_side)

    def _rewards(self, enc: EncodedPairs) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.engine(enc.input_ids.to(self.device), enc.attention_mask.to(self.device))
        return r[: enc.n_pairs], r[enc.n_pairs :]

    def train_step(self, batch: pa.Table) -> dict:
        """One optimizer step on this rank's shard of the global batch (all ranks step together)."""
        t0 = time.perf_counter()
        enc = self._encode(batch, f"RewardModelRank[{self.rank}].train_step")
        self.engine.train()
        r_chosen, r_rejected = self._rewards(enc)
        out = self._step(bradley_terry_loss(r_chosen, r_rejected))
        out.update(
            accuracy=pairwise_accuracy(r_chosen.detach(), r_rejected.detach()).item(),
            n_pairs=enc.n_pairs,
            n_truncated=enc.n_truncated,
            seconds=time.perf_counter() - t0,
        )
        return out

    @torch.no_grad()
    def score(self, batch: pa.Table) -> pa.Table:
        """Rewards of chosen and rejected for each row of the shard, in its order (eval mode, no grad)."""
        enc = self._encode(batch, f"RewardModelRank[{self.rank}].score")
        self.engine.eval()
        r_chosen, r_rejected = (r.float().cpu().numpy() for r in self._rewards(enc))
        return pa.Table.from_arrays(
            [batch.column("user_id"), pa.array(r_chosen, pa.float32()), pa.array(r_rejected, pa.float32())],
            schema=REWARD_SCORE_SCHEMA,
        )

    def save(self, path: str) -> str:
        """Rank 0 writes the HF checkpoint (every rank must call: ZeRO-3 gathers); refuses non-finite weights."""
        return self._save_hf(path, self.engine.module.model, self.tokenizer)

    def load(self, path: str) -> None:
        """Weights of the HF checkpoint at ``path`` on this rank, in a fresh engine: the optimizer state
        and LR warmup start over (an HF checkpoint holds neither)."""
        self._build(path)


class RewardModelGroup(DeepSpeedGroupHandle):
    """The driver's handle on ``ds.num_ranks`` RewardModelRank actors training one reward model.

    ``global_batch_size`` (default ``rm.batch_size``) is the pairs per optimizer step over all ranks;
    each rank takes an equal contiguous slice of every batch.
    """

    def __init__(
        self,
        model_path: str,
        rm: RewardTrainConfig,
        ds: DeepSpeedConfig,
        resources: ActorResources,
        seed: int = 0,
        global_batch_size: int | None = None,
    ):
        self.rm, self.ds = rm, ds
        super().__init__(
            RewardModelRank,
            ds.num_ranks,
            resources,
            name="reward-model",
            model_path=str(model_path),
            rm=rm,
            ds=ds,
            seed=seed,
            global_batch_size=global_batch_size or rm.batch_size,
        )

    def train_step(self, batch: pa.Table) -> dict:
        """One optimizer step on the global batch. Returns loss (global mean), accuracy, grad_norm, lr,
        n_pairs, n_truncated (summed over ranks) and seconds (slowest rank)."""
        check_batch(batch, REWARD_PAIR_SCHEMA, "RewardModelGroup.train_step")
        shards = split_even(batch, len(self.ranks), "RewardModelGroup.train_step")
        metrics = self.group.gather([w.train_step.remote(s) for w, s in zip(self.ranks, shards)])
        return combine_metrics(metrics)

    def score(self, batch: pa.Table) -> pa.Table:
        """REWARD_SCORE_SCHEMA rows in the input order; any number of rows ≥ 1."""
        check_batch(batch, REWARD_PAIR_SCHEMA, "RewardModelGroup.score")
        return self.group.map_rows(batch, lambda rank, shard: rank.score.remote(shard))
