"""P[Love] role (RLUF, issue 13): the probability that a user reacts Love to a response, a binary classifier
on (conditioning, prompt, response) trained data-parallel on a DeepSpeed group of Ray actors.

``LoveModelRank`` is one rank: the reward model's architecture (a sequence classifier with a scalar head,
read at the last real token) whose scalar is a logit, trained with class-weighted BCE
(``losses.weighted_bce_loss``) on a ``LOVE_BATCH_SCHEMA`` shard; ``predict`` returns the prior-corrected
logit and P[Love] (``losses.prior_corrected_logits``: calibrated whatever the positive weight).
``LoveModelGroup`` is the driver's handle. Checkpoints are HF sequence-classifier directories, as the
reward model's.
"""

from __future__ import annotations

import time

import pyarrow as pa
import ray
import torch

from actors.reward_model import ScalarHeadRank
from rlhf_cluster.losses import prior_corrected_logits, weighted_bce_loss
from rlhf_cluster.schema import LOVE_BATCH_SCHEMA, LOVE_SCORE_SCHEMA, RESPONSE_SCHEMA, check_batch
from rlhf_cluster.worker_group import DeepSpeedGroupHandle


@ray.remote
class LoveModelRank(ScalarHeadRank):
    def train_step(self, batch: pa.Table) -> dict:
        """One optimizer step of weighted BCE on this rank's shard of the global batch."""
        t0 = time.perf_counter()
        check_batch(batch, LOVE_BATCH_SCHEMA, f"LoveModelRank[{self.rank}].train_step")
        labels = torch.tensor(batch.column("label").to_pylist(), dtype=torch.float32, device=self.device)
        self.engine.train()
        logits = self._sequence_scalars(batch)
        out = self._step(weighted_bce_loss(logits, labels, self.cfg.positive_weight))
        out.update(n_rows=batch.num_rows, n_love=int(labels.sum().item()), seconds=time.perf_counter() - t0)
        return out

    @torch.no_grad()
    def predict(self, batch: pa.Table) -> pa.Table:
        """The calibrated logit and P[Love] of each RESPONSE_SCHEMA row of the shard, in its order."""
        check_batch(batch, RESPONSE_SCHEMA, f"LoveModelRank[{self.rank}].predict")
        self.engine.eval()
        z = prior_corrected_logits(self._sequence_scalars(batch).float(), self.cfg.positive_weight).cpu()
        return pa.Table.from_arrays(
            [
                batch.column("user_id"),
                pa.array(z.numpy(), pa.float32()),
                pa.array(torch.sigmoid(z).numpy(), pa.float32()),
            ],
            schema=LOVE_SCORE_SCHEMA,
        )


class LoveModelGroup(DeepSpeedGroupHandle):
    """The driver's handle on ``ds.num_ranks`` LoveModelRank actors (``train``: a LoveTrainConfig whose
    ``positive_weight`` is a number); the global batch defaults to ``love.batch_size`` rows."""

    rank_cls, role = LoveModelRank, "p-love"

    @staticmethod
    def default_batch_size(train) -> int:
        return train.batch_size

    def train_step(self, batch: pa.Table) -> dict:
        """One optimizer step on the global batch: loss (global mean), grad_norm, lr, n_rows, n_love, seconds."""
        check_batch(batch, LOVE_BATCH_SCHEMA, "LoveModelGroup.train_step")
        return self._train_step(batch, "LoveModelGroup.train_step")

    def predict(self, batch: pa.Table, chunk_rows: int = 256) -> pa.Table:
        """LOVE_SCORE_SCHEMA rows in the input order for RESPONSE_SCHEMA rows; any number ≥ 1, sent in
        chunks of ``chunk_rows`` (split over the ranks) so that no forward holds a whole split."""
        check_batch(batch, RESPONSE_SCHEMA, "LoveModelGroup.predict")
        chunks = (batch.slice(i, chunk_rows) for i in range(0, batch.num_rows, chunk_rows))
        return pa.concat_tables(
            [self.group.map_rows(chunk, lambda rank, shard: rank.predict.remote(shard)) for chunk in chunks]
        )
