"""Summarizer policy: sequence logprobs (padding-free numbers), policy batches, the DeepSpeed policy group and
the frozen reference actor on real local Ray + DeepSpeed on CPU.

Invariants: batched logprobs equal per-sequence forwards (left or right padding); the reference and a
fresh policy give the same logprobs; a GRPO step with positive (negative) advantage raises (lowers) the
summary's logprob; 1 rank vs 2 ranks on the same global batch take the same steps; state_dict_bytes and
save give weights that reproduce the policy's logprobs in a fresh HF model.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlhf_cluster.config import ActorResources, DeepSpeedConfig, OptimConfig, PolicyTrainConfig
from rlhf_cluster.schema import POLICY_BATCH_SCHEMA, ROLLOUT_SCHEMA, TOKEN_LOGPROBS_SCHEMA, BatchError
from rlhf_cluster.sequences import (
    check_policy_batch,
    encode_summaries,
    logprobs_table,
    policy_batch,
    sequence_logprobs,
)

RANK = ActorResources(num_cpus=0.5)  # 1 + 2 policy ranks + the reference fit on the 2-CPU test Ray
LR, MAX_NEW = 1e-3, 8

PROMPTS = [[1, 5, 7, 9, 11, 3], [2, 4], [8, 8, 8, 8]]
SUMMARIES = [[10, 20], [30, 31, 32, 33], [40]]


@pytest.fixture(scope="module")
def tiny_lm() -> LlamaForCausalLM:
    # initializer_range 0.2 (not 0.02): peaked, position-sensitive distributions, so mistakes show.
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
    )
    return LlamaForCausalLM(cfg).eval()


def _per_sequence(model, prompt: list[int], summary: list[int]) -> torch.Tensor:
    """Hand-rolled: one unpadded forward; logits at prompt_len−1 … end−1 predict the summary tokens."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + summary])).logits[0, len(prompt) - 1 : -1]
    return logits.log_softmax(-1).gather(-1, torch.tensor(summary).unsqueeze(-1)).squeeze(-1)


def _right_padded(model, prompts, summaries, pad: int = 0) -> list[torch.Tensor]:
    """Hand-rolled: prompt+summary right-padded as one block, full logits, gather per row."""
    seqs = [p + s for p, s in zip(prompts, summaries)]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    with torch.no_grad():
        logps = model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
    return [
        logps[i, len(p) - 1 : len(p) - 1 + len(s)].gather(-1, torch.tensor(s).unsqueeze(-1)).squeeze(-1)
        for i, (p, s) in enumerate(zip(prompts, summaries))
    ]


# ------------------------------------------------------------------------------ sequences, no Ray


def test_encode_summaries_layout_by_hand():
    enc = encode_summaries([[1, 2, 3], [4]], [[5], [6, 7]], pad_id=0)
    # prompts left-padded to 3, summaries right-padded to 2: every summary starts at column 3.
    assert enc.input_ids.tolist() == [[1, 2, 3, 5, 0], [0, 0, 4, 6, 7]]
    assert enc.attention_mask.tolist() == [[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert enc.position_ids.tolist() == [[0, 1, 2, 3, 3], [0, 0, 0, 1, 2]]  # from each row's first real token
    assert enc.summary_ids.tolist() == [[5, 0], [6, 7]] and enc.summary_mask.tolist() == [[1, 0], [1, 1]]
    with pytest.raises(ValueError, match="row 1 has an empty summary"):
        encode_summaries([[1], [2]], [[3], []])


def test_sequence_logprobs_equal_per_sequence_and_right_padded_forwards(tiny_lm):
    logprobs, mask = sequence_logprobs(tiny_lm, PROMPTS, SUMMARIES)
    assert logprobs.shape == mask.shape == (3, 4) and mask.sum(1).tolist() == [2, 4, 1]
    right = _right_padded(tiny_lm, PROMPTS, SUMMARIES)
    for i, (p, s) in enumerate(zip(PROMPTS, SUMMARIES)):
        got = logprobs[i, : len(s)]
        assert torch.allclose(got, _per_sequence(tiny_lm, p, s), atol=1e-5)
        assert torch.allclose(got, right[i], atol=1e-5)  # left-padded prompts = right-padded block
        assert logprobs[i, len(s) :].eq(0).all()  # padding is 0, not a logprob
    # a row's numbers do not depend on its batch-mates (padding widths change with them)
    alone, _ = sequence_logprobs(tiny_lm, PROMPTS[2:], SUMMARIES[2:])
    assert torch.allclose(alone[0, :1], logprobs[2, :1], atol=1e-5)


def test_sequence_logprobs_are_differentiable(tiny_lm):
    from rlhf_cluster.sequences import summary_token_logprobs

    enc = encode_summaries(PROMPTS, SUMMARIES)
    logprobs, entropy = summary_token_logprobs(tiny_lm, **enc.model_inputs(), with_entropy=True)
    logprobs.sum().backward()
    assert tiny_lm.model.embed_tokens.weight.grad.abs().sum() > 0
    tiny_lm.zero_grad(set_to_none=True)
    assert ((entropy > 0) == enc.summary_mask.bool()).all() and not entropy.requires_grad


def test_shared_prompt_forward_equals_the_full_forward_in_value_and_gradient(tiny_lm):
    from rlhf_cluster.sequences import summary_logits

    # GRPO-shaped: prompts repeated (3 × PROMPTS[1], 2 × PROMPTS[0]), one unique, summaries of mixed length
    prompts = [PROMPTS[1], PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[0], PROMPTS[1]]
    summaries = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14], [15, 16], [17]]
    enc = encode_summaries(prompts, summaries)
    T = enc.summary_ids.shape[1]
    out = {}
    for share in (False, True):
        tiny_lm.zero_grad(set_to_none=True)
        logits = summary_logits(tiny_lm, enc.input_ids, enc.attention_mask, enc.position_ids, T, share_prompts=share)
        logps = logits.float().log_softmax(-1).gather(-1, enc.summary_ids.unsqueeze(-1)).squeeze(-1) * enc.summary_mask
        (logps * torch.arange(1.0, 7.0).unsqueeze(1)).sum().backward()  # rows weighted differently
        out[share] = (logps.detach(), [p.grad.clone() for p in tiny_lm.parameters()])
    tiny_lm.zero_grad(set_to_none=True)
    (full, g_full), (shared, g_shared) = out[False], out[True]
    assert torch.allclose(full, shared, atol=1e-5)
    for i, (p, s) in enumerate(zip(prompts, summaries)):
        assert torch.allclose(shared[i, : len(s)], _per_sequence(tiny_lm, p, s), atol=1e-5)
    for a, b in zip(g_full, g_shared):  # float32 round-off only: within 1e-5 of the largest entry
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    assert any(g.abs().sum() > 0 for g in g_shared)
    # one-token summaries: the prompt forward alone
    one = encode_summaries(prompts[:2], [[5], [6]])
    assert torch.allclose(
        summary_logits(tiny_lm, one.input_ids, one.attention_mask, one.position_ids, 1),
        summary_logits(tiny_lm, one.input_ids, one.attention_mask, one.position_ids, 1, share_prompts=False),
        atol=1e-5,
    )


def _rollout_table(prompts, summaries, logprobs) -> pa.Table:
    n = len(prompts)
    return pa.Table.from_pydict(
        {
            "request_id": [i // 2 for i in range(n)],
            "user_id": [f"u{i // 2}" for i in range(n)],
            "sample_index": [i % 2 for i in range(n)],
            "prompt_token_ids": prompts,
            "summary_token_ids": summaries,
            "summary_logprobs": logprobs,
            "summary_text": ["s"] * n,
            "finish_reason": ["stop"] * n,
            "weight_version": [0] * n,
        },
        schema=ROLLOUT_SCHEMA,
    )


def test_policy_batch_sequence_and_token_advantages():
    rollout = _rollout_table(PROMPTS, SUMMARIES, [[-1.0] * len(s) for s in SUMMARIES])
    seq = policy_batch(rollout, torch.tensor([0.5, -1.0, 2.0]))  # [B]: repeated on every token
    assert seq.schema.equals(POLICY_BATCH_SCHEMA, check_metadata=False)
    assert seq.column("advantages").to_pylist() == [[0.5, 0.5], [-1.0] * 4, [2.0]]
    tok = policy_batch(rollout, torch.tensor([[1.0, 2.0, 9.0, 9.0], [3.0, 4.0, 5.0, 6.0], [7.0, 9.0, 9.0, 9.0]]))
    assert tok.column("advantages").to_pylist() == [[1.0, 2.0], [3.0, 4.0, 5.0, 6.0], [7.0]]  # padding dropped
    check_policy_batch(tok, "here")
    with pytest.raises(ValueError, match=r"advantages must be \[3\] or \[3, T\]"):
        policy_batch(rollout, torch.zeros(2))


def test_policy_batch_errors_name_the_problem():
    good = policy_batch(_rollout_table(PROMPTS, SUMMARIES, [[-1.0] * len(s) for s in SUMMARIES]), torch.zeros(3))
    with pytest.raises(BatchError, match=r"here: batch schema mismatch \(missing \['advantages'\]"):
        check_policy_batch(good.drop_columns(["advantages"]), "here")
    short = good.set_column(
        3, POLICY_BATCH_SCHEMA.field("advantages"), pa.array([[0.0], [0.0] * 4, [0.0]], pa.list_(pa.float32()))
    )
    with pytest.raises(BatchError, match="row 0: advantages has a different length than summary_token_ids"):
        check_policy_batch(short, "here")
    nan = good.set_column(
        2,
        POLICY_BATCH_SCHEMA.field("summary_logprobs"),
        pa.array([[0.0, float("nan")], [0.0] * 4, [0.0]], pa.list_(pa.float32())),
    )
    with pytest.raises(BatchError, match="summary_logprobs holds 1 non-finite values"):
        check_policy_batch(nan, "here")


def test_logprobs_table_drops_padding():
    table = logprobs_table(torch.tensor([[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0]]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert table.schema.equals(TOKEN_LOGPROBS_SCHEMA, check_metadata=False)
    assert table.column("logprobs").to_pylist() == [[-1.0, -2.0], [-3.0]]


# ----------------------------------------------------------------------------- Ray + DeepSpeed


@pytest.fixture(scope="module")
def summarizer(tiny_models) -> str:
    return str(tiny_models / "summarizer")


@pytest.fixture(scope="module")
def rollout(tiny_data, summarizer) -> pa.Table:
    """8 sampled summaries (4 contexts × 2) from the tiny summarizer, with their logprobs as the old policy's."""
    from rlhf_cluster.models import load_causal_lm, load_tokenizer
    from rlhf_cluster.prompts import chat_token_ids, summarizer_messages

    tok, model = load_tokenizer(summarizer), load_causal_lm(summarizer)
    examples = pq.read_table(tiny_data / "train.parquet").slice(0, 4).to_pylist()
    prompts = [chat_token_ids(tok, summarizer_messages(e, max_pairs=1)) for e in examples for _ in range(2)]
    torch.manual_seed(0)
    summaries = []
    for p in prompts:
        out = model.generate(
            input_ids=torch.tensor([p]),
            attention_mask=torch.ones(1, len(p), dtype=torch.long),
            do_sample=True,
            top_k=None,
            max_new_tokens=MAX_NEW,
            pad_token_id=tok.pad_token_id,
        )
        new = out[0, len(p) :].tolist()
        summaries.append(new[: new.index(tok.eos_token_id) + 1] if tok.eos_token_id in new else new)
    logprobs, mask = sequence_logprobs(model, prompts, summaries)
    old = [row[: len(s)].tolist() for row, s in zip(logprobs, summaries)]
    table = _rollout_table(prompts, summaries, old)
    assert len({len(s) for s in summaries}) > 1, "want summaries of different lengths (padding, token counts)"
    return table


def _train_cfg(batch: int) -> PolicyTrainConfig:
    return PolicyTrainConfig(minibatch_size=batch, optim=OptimConfig(lr=LR, warmup_steps=0))


def _group(path: str, ranks: int, batch: int = 4):
    from actors.policy import PolicyGroup

    return PolicyGroup(path, _train_cfg(batch), DeepSpeedConfig(num_ranks=ranks, zero_stage=2), RANK, seed=0)


@pytest.fixture(scope="module")
def policy1(ray_local, summarizer):
    g = _group(summarizer, ranks=1)
    yield g
    g.shutdown()


@pytest.fixture(scope="module")
def policy2(ray_local, summarizer):
    g = _group(summarizer, ranks=2)
    yield g
    g.shutdown()


def _lists(table: pa.Table) -> list[list[float]]:
    return table.column("logprobs").to_pylist()


def _flat(table: pa.Table) -> torch.Tensor:
    return torch.tensor([x for row in _lists(table) for x in row])


def _seq_logprob(table: pa.Table) -> torch.Tensor:
    return torch.tensor([sum(row) for row in _lists(table)])


@pytest.mark.slow
def test_reference_and_fresh_policy_give_identical_logprobs(ray_local, policy1, summarizer, rollout):
    from actors.reference import ReferenceActor

    ref = ReferenceActor.options(num_cpus=0.5).remote(summarizer)
    ref_lp = ray_local.get(ref.logprobs.remote(rollout))
    policy_lp = policy1.logprobs(rollout)
    assert ref_lp.schema.equals(TOKEN_LOGPROBS_SCHEMA, check_metadata=False) and ref_lp.num_rows == rollout.num_rows
    assert [len(r) for r in _lists(ref_lp)] == [len(s) for s in rollout.column("summary_token_ids").to_pylist()]
    assert torch.allclose(_flat(ref_lp), _flat(policy_lp), atol=1e-6)
    old = torch.tensor([x for row in rollout.column("summary_logprobs").to_pylist() for x in row])
    assert torch.allclose(_flat(policy_lp), old, atol=1e-5)  # = the driver-side sequence_logprobs
    with pytest.raises(Exception, match="no column 'summary_token_ids'"):
        ray_local.get(ref.logprobs.remote(rollout.drop_columns(["summary_token_ids"])))
    ray_local.kill(ref)


@pytest.mark.slow
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_grpo_step_moves_the_summary_logprob_with_the_advantage(policy1, summarizer, rollout, sign):
    policy1.load(summarizer)  # initial weights, fresh optimizer
    batch = rollout.take([0, 0, 0, 0])  # one summary: the step follows its gradient alone
    before = _seq_logprob(policy1.logprobs(batch))
    metrics = policy1.train_step(policy_batch(batch, torch.full((4,), sign)))
    # on-policy: ratio 1, nothing clipped, loss = −mean(advantage) = −sign
    assert metrics["loss"] == pytest.approx(-sign, abs=1e-5)
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and metrics["clip_frac"] == 0.0
    assert abs(metrics["approx_kl"]) < 1e-6 and metrics["grad_norm"] > 0 and metrics["entropy"] > 0
    assert metrics["n_sequences"] == 4 and metrics["n_tokens"] == sum(
        len(s) for s in batch.column("summary_token_ids").to_pylist()
    )
    after = _seq_logprob(policy1.logprobs(batch))
    assert sign * (after[0] - before[0]) > 1e-3, (before, after)


@pytest.mark.slow
def test_two_ranks_match_one_rank(policy1, policy2, summarizer, rollout):
    # mixed advantages; the two shards (rows 0-1, 2-3) hold different token counts
    policy1.load(summarizer)
    batches = [policy_batch(rollout.slice(4 * i, 4), torch.tensor([1.0, -0.5, -1.0, 0.5])) for i in range(2)]
    one = [policy1.train_step(b) for b in batches]
    two = [policy2.train_step(b) for b in batches]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["n_tokens"] == a["n_tokens"] and b["n_sequences"] == 4
    checksums = policy2.parameter_checksums()
    assert checksums[0] == checksums[1]  # data-parallel ranks hold bit-identical weights
    assert torch.allclose(_flat(policy2.logprobs(rollout)), _flat(policy1.logprobs(rollout)), atol=1e-4)
    one_row = policy2.logprobs(rollout.slice(5, 1))  # fewer rows than ranks: rank 1 scores a stand-in
    assert torch.allclose(_flat(one_row), torch.tensor(_lists(policy2.logprobs(rollout))[5]), atol=1e-5)


@pytest.mark.slow
def test_state_dict_bytes_and_save_reproduce_the_policy(policy2, summarizer, rollout, tmp_path):
    from rlhf_cluster.models import load_causal_lm

    expected = policy2.logprobs(rollout)
    initial = load_causal_lm(summarizer)
    prompts, summaries = rollout.column("prompt_token_ids"), rollout.column("summary_token_ids")

    state = torch.load(io.BytesIO(policy2.state_dict_bytes()), weights_only=True)
    assert set(state) == set(initial.state_dict())  # HF parameter names, nothing else
    before, mask = sequence_logprobs(initial, prompts, summaries)
    assert not torch.allclose(before[mask.bool()], _flat(expected), atol=1e-3)  # training moved the weights
    initial.load_state_dict(state, strict=True)
    synced, mask = sequence_logprobs(initial, prompts, summaries)
    assert torch.allclose(synced[mask.bool()], _flat(expected), atol=1e-5)

    policy2.save(str(tmp_path / "policy"))
    saved, mask = sequence_logprobs(load_causal_lm(tmp_path / "policy"), prompts, summaries)
    assert torch.allclose(saved[mask.bool()], _flat(expected), atol=1e-5)


@pytest.mark.slow
def test_weights_go_from_rank_0_to_the_rollout_actor_by_reference(ray_local, policy2, summarizer, rollout):
    """The sync jobs run: rank 0's object reference handed to the rollout actor (Ray resolves it there,
    the driver never holds the bytes); the engine then scores the summaries as the policy does."""
    from actors.rollout import RolloutActor
    from rlhf_cluster.config import RolloutConfig

    actor = RolloutActor.options(num_cpus=0.5).remote(summarizer, RolloutConfig(backend="hf", max_model_len=512))
    ref = policy2.state_dict_ref()
    assert isinstance(ref, ray_local.ObjectRef)
    info = ray_local.get(actor.update_weights.remote(ref, 3))
    assert info["weight_version"] == 3 and info["bytes"] > 0
    prompts, summaries = rollout.column("prompt_token_ids").to_pylist(), rollout.column("summary_token_ids").to_pylist()
    engine = ray_local.get(actor.score_tokens.remote(prompts, summaries))
    assert torch.allclose(torch.tensor([x for row in engine for x in row]), _flat(policy2.logprobs(rollout)), atol=1e-5)
    ray_local.kill(actor)


@pytest.mark.slow
def test_bad_batches_are_clear_errors(policy2, rollout):
    good = policy_batch(rollout.slice(0, 4), torch.ones(4))
    with pytest.raises(BatchError, match=r"PolicyGroup.train_step: batch schema mismatch \(missing \['advantages'\]"):
        policy2.train_step(good.drop_columns(["advantages"]))
    with pytest.raises(BatchError, match="3 rows do not split evenly over 2 ranks"):
        policy2.train_step(good.slice(0, 3))
    with pytest.raises(BatchError, match="PolicyGroup.logprobs: the batch has no rows"):
        policy2.logprobs(rollout.slice(0, 0))
    with pytest.raises(BatchError, match="column 'prompt_token_ids' is list<item: int64>"):
        policy2.logprobs(
            pa.table({"prompt_token_ids": [[1, 2]], "summary_token_ids": pa.array([[3]], pa.list_(pa.int32()))})
        )
    assert policy2.logprobs(rollout.slice(0, 2)).num_rows == 2  # the group is still usable
