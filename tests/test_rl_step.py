"""The shared RL step's driver-side pieces on hand-made batches (no actors): request seeds, advantages by
group, minibatch passes, the on-policy check and the step's metrics."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from rlhf_cluster.config import PolicyTrainConfig
from rlhf_cluster.rl_step import (
    Experience,
    advantages_of,
    check_on_policy,
    rollout_requests,
    step_metrics,
    train_minibatches,
)
from rlhf_cluster.schema import ROLLOUT_REQUEST_SCHEMA


def _requests(n: int) -> pa.Table:
    return pa.Table.from_pydict(
        {"request_id": list(range(n)), "user_id": [f"u{i}" for i in range(n)],
         "prompt_token_ids": [[i, i + 1] for i in range(n)], "seed": [0] * n},
        schema=ROLLOUT_REQUEST_SCHEMA,
    )  # fmt: skip


def test_rollout_requests_renumber_rows_and_seed_by_seed_iteration_row():
    out = rollout_requests(_requests(5), np.array([3, 1]), seed=2, iteration=7)
    assert out.schema.equals(ROLLOUT_REQUEST_SCHEMA, check_metadata=False)
    assert out.column("request_id").to_pylist() == [0, 1]  # the iteration's own numbering: GRPO groups
    assert out.column("user_id").to_pylist() == ["u3", "u1"]
    # (seed * 1_000_003 + iteration) * 1_000_003 + row
    base = (2 * 1_000_003 + 7) * 1_000_003
    assert out.column("seed").to_pylist() == [base + 3, base + 1]


def test_grpo_advantages_compare_within_each_request_group():
    rollouts = pa.table({"request_id": pa.array([0, 0, 1, 1], pa.int64())})
    # token rewards: sequence returns 1, 3 (group 0) and 2, 2 (group 1)
    rewards = torch.tensor([[0.0, 1.0], [3.0, 0.0], [2.0, 0.0], [1.0, 1.0]])
    mask = torch.ones(4, 2)
    adv, returns = advantages_of(PolicyTrainConfig(algorithm="grpo"), rollouts, rewards, mask)
    assert returns.tolist() == [1.0, 3.0, 2.0, 2.0]
    # group 0: mean 2, sample std sqrt(2) → ∓1/sqrt(2); group 1: identical returns → 0
    assert torch.allclose(adv, torch.tensor([-(2**-0.5), 2**-0.5, 0.0, 0.0]), atol=1e-5)
    rloo, _ = advantages_of(PolicyTrainConfig(algorithm="rloo"), rollouts, rewards, mask)
    assert rloo.tolist() == [-2.0, 2.0, 0.0, 0.0]  # each minus the mean of the others in its group


class _RecordingGroup:
    """A stand-in for a DeepSpeed group's driver handle: records what train_step received."""

    def __init__(self):
        self.batches = []

    def train_step(self, batch: pa.Table) -> dict:
        self.batches.append(batch.column("i").to_pylist())
        return {"loss": float(len(self.batches)), "n_tokens": 5, "seconds": 1.0, "lr": 0.1}


def test_train_minibatches_cover_the_batch_once_per_epoch_and_average_the_steps():
    group = _RecordingGroup()
    cfg = PolicyTrainConfig(minibatch_size=2, epochs=2)
    out = train_minibatches(cfg, group, pa.table({"i": list(range(4))}), seed=0, prefix="policy")
    assert len(group.batches) == 4 and all(len(b) == 2 for b in group.batches)
    for epoch in (group.batches[:2], group.batches[2:]):
        assert sorted(epoch[0] + epoch[1]) == [0, 1, 2, 3]
    assert out == {"policy_loss": 2.5}  # mean of 1..4; counts, seconds and lr left out
    again = _RecordingGroup()
    train_minibatches(cfg, again, pa.table({"i": list(range(4))}), seed=0, prefix="policy")
    assert again.batches == group.batches  # seeded order


def test_check_on_policy_names_the_versions():
    check_on_policy(pa.table({"weight_version": [3, 3]}), 3, iteration=4)
    with pytest.raises(RuntimeError, match=r"iteration 4: rollouts stamped with weight versions \{2, 3\}, expected 3"):
        check_on_policy(pa.table({"weight_version": [2, 3]}), 3, iteration=4)


def test_step_metrics_by_hand():
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    exp = Experience(
        rollouts=pa.table({"finish_reason": ["stop", "length"]}),
        score=torch.tensor([-20.0, -1.0]),
        mask=mask,
        kl=torch.tensor([[0.1, 0.3], [0.2, 9.0]]),
        rewards=torch.tensor([[0.0, -1.0], [-3.0, 9.0]]),
        advantages=torch.tensor([1.0, -3.0]),
        returns=torch.tensor([-1.0, -3.0]),
    )
    m = step_metrics(PolicyTrainConfig(reward_clip=10.0), exp, sampled_by=4, version=5, t={"sync weights": 0.5})
    assert m["reward"] == pytest.approx((-10.0 - 1.0) / 2)  # the score clipped to ±10
    assert m["kl"] == pytest.approx(0.6 / 3)  # padding (9.0) left out
    assert m["return_mean"] == pytest.approx((-1.0 - 3.0) / 2)
    assert m["advantage_abs"] == pytest.approx(2.0)
    assert m["summary_tokens"] == pytest.approx(1.5) and m["stopped_at_eos"] == pytest.approx(0.5)
    assert (m["rollout_weight_version"], m["weight_version"], m["time_sync_weights"]) == (4.0, 5.0, 0.5)
