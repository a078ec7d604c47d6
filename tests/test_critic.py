"""The PPO critic: per-token values read where the policy reads its logits, the critic batch in Arrow, and
the critic group (real Ray + DeepSpeed on CPU) regressing onto returns."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from transformers import LlamaConfig, LlamaForTokenClassification

from rlhf_cluster.config import ActorResources, DeepSpeedConfig, OptimConfig, PolicyTrainConfig
from rlhf_cluster.schema import CRITIC_BATCH_SCHEMA, ROLLOUT_SCHEMA, TOKEN_VALUES_SCHEMA, BatchError
from rlhf_cluster.sequences import (
    check_critic_batch,
    critic_batch,
    encode_summaries,
    summary_token_values,
    values_table,
)

PROMPTS = [[1, 5, 7, 9, 11, 3], [2, 4], [8, 8, 8, 8]]
SUMMARIES = [[10, 20], [30, 31, 32, 33], [40]]


@pytest.fixture(scope="module")
def tiny_critic() -> LlamaForTokenClassification:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=61,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,
        num_labels=1,
    )
    return LlamaForTokenClassification(cfg).eval()


def _rollout(prompts, summaries) -> pa.Table:
    n = len(prompts)
    return pa.Table.from_pydict(
        {
            "request_id": list(range(n)),
            "user_id": [f"u{i}" for i in range(n)],
            "sample_index": [0] * n,
            "prompt_token_ids": prompts,
            "summary_token_ids": summaries,
            "summary_logprobs": [[-1.0] * len(s) for s in summaries],
            "summary_text": ["s"] * n,
            "finish_reason": ["stop"] * n,
            "weight_version": [0] * n,
        },
        schema=ROLLOUT_SCHEMA,
    )


def test_values_are_read_where_the_policy_reads_logits(tiny_critic):
    enc = encode_summaries(PROMPTS, SUMMARIES)
    values = summary_token_values(tiny_critic, **enc.model_inputs())
    assert values.shape == (3, 4)
    for i, (p, s) in enumerate(zip(PROMPTS, SUMMARIES)):
        with torch.no_grad():  # unpadded forward: V of token t's state sits at column len(p) − 1 + t
            want = tiny_critic(torch.tensor([p + s])).logits[0, len(p) - 1 : -1, 0]
        assert torch.allclose(values[i, : len(s)], want, atol=1e-5)
        assert values[i, len(s) :].eq(0).all()
    values.sum().backward()  # differentiable through the backbone
    assert tiny_critic.model.embed_tokens.weight.grad.abs().sum() > 0
    tiny_critic.zero_grad(set_to_none=True)


def test_values_of_rows_sharing_a_prompt_equal_their_unpadded_forwards(tiny_critic):
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[0], PROMPTS[1]]  # GRPO-shaped: the prompt runs once
    summaries = [[10, 20], [30, 31, 32], [40], [41, 42, 43, 44], [50]]
    enc = encode_summaries(prompts, summaries)
    values = summary_token_values(tiny_critic, **enc.model_inputs())
    for i, (p, s) in enumerate(zip(prompts, summaries)):
        with torch.no_grad():
            want = tiny_critic(torch.tensor([p + s])).logits[0, len(p) - 1 : -1, 0]
        assert torch.allclose(values[i, : len(s)], want, atol=1e-5)
        assert values[i, len(s) :].eq(0).all()


def test_critic_batch_and_values_table_drop_padding():
    rollout = _rollout(PROMPTS, SUMMARIES)
    values = torch.tensor([[0.5, 0.25, 9, 9], [1, 2, 3, 4], [5, 9, 9, 9]])
    returns = values + 1
    batch = critic_batch(rollout, values, returns)
    assert batch.schema.equals(CRITIC_BATCH_SCHEMA, check_metadata=False)
    assert batch.column("values").to_pylist() == [[0.5, 0.25], [1, 2, 3, 4], [5]]
    assert batch.column("returns").to_pylist()[2] == [6.0]
    check_critic_batch(batch, "here")
    table = values_table(values, encode_summaries(PROMPTS, SUMMARIES).summary_mask)
    assert table.schema.equals(TOKEN_VALUES_SCHEMA, check_metadata=False) and table.column("values").to_pylist()[2] == [
        5.0
    ]
    with pytest.raises(ValueError, match=r"returns must be \[3, ≥4\]"):
        critic_batch(rollout, values, returns[:, :2])
    returns_field = CRITIC_BATCH_SCHEMA.field("returns")
    bad = batch.set_column(3, returns_field, pa.array([[1.0], [1.0, 2.0, 3.0, 4.0], [5.0]], returns_field.type))
    with pytest.raises(BatchError, match="row 0: returns has a different length"):
        check_critic_batch(bad, "here")
    nan = batch.set_column(
        3, returns_field, pa.array([[1.0, 2.0], [1.0, 2.0, 3.0, 4.0], [float("nan")]], returns_field.type)
    )
    with pytest.raises(BatchError, match="returns holds 1 non-finite values"):
        check_critic_batch(nan, "here")


@pytest.mark.slow
def test_critic_group_regresses_onto_returns(ray_local, tiny_models):
    """2 ranks (ZeRO-2) fit the GAE targets: the value loss falls and V moves toward the returns."""
    from actors.critic import CriticGroup

    rollout = _rollout(PROMPTS + PROMPTS[:1], SUMMARIES + SUMMARIES[:1])
    train = PolicyTrainConfig(minibatch_size=4, critic_optim=OptimConfig(lr=3e-3, warmup_steps=0), value_clip_eps=10.0)
    with CriticGroup(
        str(tiny_models / "summarizer"),
        train,
        DeepSpeedConfig(num_ranks=2, zero_stage=2),
        ActorResources(num_cpus=0.5),
        seed=0,
    ) as critic:

        def values() -> torch.Tensor:
            rows = critic.values(rollout).column("values").to_pylist()
            return torch.tensor([x for row in rows for x in row])

        before = values()
        target = torch.full((rollout.num_rows, 4), -0.7)
        losses = []
        for _ in range(8):
            v = torch.zeros(rollout.num_rows, 4)
            for i, row in enumerate(critic.values(rollout).column("values").to_pylist()):
                v[i, : len(row)] = torch.tensor(row)
            m = critic.train_step(critic_batch(rollout, v, target))
            losses.append(m["loss"])
        after = values()
        assert critic.parameter_checksums()[0] == critic.parameter_checksums()[1]
    assert losses[-1] < 0.2 * losses[0], losses
    assert (after + 0.7).abs().mean() < 0.3 * (before + 0.7).abs().mean()
