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

from rlhf_cluster.config import RewardTrainConfig
from rlhf_cluster.distributed import DeepSpeedRank
from rlhf_cluster.losses import bradley_terry_loss, pairwise_accuracy
from rlhf_cluster.models import load_reward_model
from rlhf_cluster.reward_model import EncodedPairs, encode_pairs, encode_sequences, sequence_rewards
from rlhf_cluster.schema import (
    RESPONSE_REWARD_SCHEMA,
    RESPONSE_SCHEMA,
    REWARD_PAIR_SCHEMA,
    REWARD_SCORE_SCHEMA,
    check_batch,
)
from rlhf_cluster.worker_group import DeepSpeedGroupHandle


class LastTokenReward(torch.nn.Module):
    """The HF classifier with ``sequence_rewards`` as its forward ([B, T] → [B]).

    The engine must run the whole forward (ZeRO-3 gathers parameters in hooks on the top module), and
    the HF forward pools by pad id, which is wrong when pad == eos; this reads the attention mask.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return sequence_rewards(self.model, input_ids, attention_mask)


class ScalarHeadRank(DeepSpeedRank):
    """A rank whose model is a sequence classifier read at the last real token ([B, T] → [B]): the reward
    model, and P[Love] (actors/love_model.py) whose scalar is a logit."""

    padding_side = "right"  # real tokens keep their unpadded position ids (rlhf_cluster.reward_model)
    eval_mode = False  # train_step trains in train mode; scoring switches to eval mode

    def _module(self, path: str) -> torch.nn.Module:
        # The same seed on every rank and at every world size: a fresh score head starts identical.
        return LastTokenReward(load_reward_model(path, pad_token_id=self.tokenizer.pad_token_id))

    def _sequence_scalars(self, batch: pa.Table) -> torch.Tensor:
        """The scalar of each (conditioning, prompt, response) row of a RESPONSE_SCHEMA-like table."""
        cols = batch.to_pydict()
        enc = encode_sequences(
            self.tokenizer, cols["conditioning"], cols["prompt"], cols["response"], self.cfg.max_length,
            self.cfg.truncation_side,
        )  # fmt: skip
        return self.engine(enc.input_ids.to(self.device), enc.attention_mask.to(self.device))


@ray.remote
class RewardModelRank(ScalarHeadRank):
    def _encode(self, batch: pa.Table, where: str) -> EncodedPairs:
        check_batch(batch, REWARD_PAIR_SCHEMA, where)
        return encode_pairs(self.tokenizer, batch, self.cfg.max_length, self.cfg.truncation_side)

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
            n_truncated_pairs=enc.n_truncated_pairs,
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

    @torch.no_grad()
    def rewards(self, batch: pa.Table) -> pa.Table:
        """r(prompt, response | conditioning) of each RESPONSE_SCHEMA row of the shard, in its order (eval
        mode, no grad): the reward a response policy is trained on."""
        check_batch(batch, RESPONSE_SCHEMA, f"RewardModelRank[{self.rank}].rewards")
        self.engine.eval()
        r = self._sequence_scalars(batch).float().cpu().numpy()
        return pa.Table.from_arrays([batch.column("user_id"), pa.array(r, pa.float32())], schema=RESPONSE_REWARD_SCHEMA)


class RewardModelGroup(DeepSpeedGroupHandle):
    """The driver's handle on ``ds.num_ranks`` RewardModelRank actors training one reward model
    (``train``: a RewardTrainConfig); the global batch defaults to ``rm.batch_size`` pairs."""

    rank_cls, role = RewardModelRank, "reward-model"

    @staticmethod
    def default_batch_size(train: RewardTrainConfig) -> int:
        return train.batch_size

    def train_step(self, batch: pa.Table) -> dict:
        """One optimizer step on the global batch. Returns loss (global mean), accuracy, grad_norm, lr,
        n_pairs, n_truncated (sequences), n_truncated_pairs (pairs with chosen or rejected cut; counts summed
        over ranks), truncated_share (n_truncated_pairs / n_pairs) and seconds (slowest rank)."""
        check_batch(batch, REWARD_PAIR_SCHEMA, "RewardModelGroup.train_step")
        m = self._train_step(batch, "RewardModelGroup.train_step")
        m["truncated_share"] = m["n_truncated_pairs"] / m["n_pairs"] if m["n_pairs"] else 0.0
        return m

    def score(self, batch: pa.Table) -> pa.Table:
        """REWARD_SCORE_SCHEMA rows in the input order; any number of rows ≥ 1."""
        check_batch(batch, REWARD_PAIR_SCHEMA, "RewardModelGroup.score")
        return self.group.map_rows(batch, lambda rank, shard: rank.score.remote(shard))

    def rewards(self, batch: pa.Table) -> pa.Table:
        """RESPONSE_REWARD_SCHEMA rows in the input order for RESPONSE_SCHEMA rows; any number ≥ 1."""
        check_batch(batch, RESPONSE_SCHEMA, "RewardModelGroup.rewards")
        return self.group.map_rows(batch, lambda rank, shard: rank.rewards.remote(shard))
