"""Arrow schemas: the one written-down shape of every batch that moves through rlhf_cluster.

A *personalized-preference example* is one target pair (prompt, chosen, rejected) of one user,
plus that user's *context*: past labelled pairs and/or past conversations. The summarizer reads the
context; the reward model, conditioned on the summary, must predict the target label.

Fields, grouped by meaning (one row = one example):

  who        user_id            string, required      stable id of the user (same user -> same id)
  context    context            list<pair>, required  past labelled pairs of this user, may be empty
             context_messages   list<message>         past conversation turns, may be empty
  target     prompt             string, required      the held-out prompt
             chosen             string, required      the response this user preferred
             rejected           string, required      the response this user did not prefer
  metadata   split              string, optional      train / validation / test_* (where known)
             topic              string, optional      topic of the prompt
             contested          bool,   optional      do users disagree on this pair?
             user_description   string, optional      ground-truth description (oracle baseline ONLY)
             p_chosen           float64, optional     ground-truth P(user prefers chosen), generators only

  pair    = struct<prompt: string, chosen: string, rejected: string>
  message = struct<role: string, content: string>    role in {system, user, assistant}

The target pair must never appear in its own context (that would leak the label).
"""

from __future__ import annotations

import pyarrow as pa

PAIR_TYPE = pa.struct(
    [
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
    ]
)

MESSAGE_TYPE = pa.struct(
    [
        pa.field("role", pa.string(), nullable=False),
        pa.field("content", pa.string(), nullable=False),
    ]
)

MESSAGE_ROLES = ("system", "user", "assistant")

EXAMPLE_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("context", pa.list_(PAIR_TYPE), nullable=False),
        pa.field("context_messages", pa.list_(MESSAGE_TYPE), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("topic", pa.string()),
        pa.field("contested", pa.bool_()),
        pa.field("user_description", pa.string()),
        pa.field("p_chosen", pa.float64()),
    ],
    metadata={"rlhf_cluster.schema": "example/v1"},
)

REQUIRED_FIELDS = ("user_id", "context", "prompt", "chosen", "rejected")
OPTIONAL_FIELDS = tuple(f.name for f in EXAMPLE_SCHEMA if f.name not in REQUIRED_FIELDS)


def empty_examples() -> pa.Table:
    """A zero-row table with the example schema."""
    return EXAMPLE_SCHEMA.empty_table()


# ------------------------------------------------------------------------------- reaction logs
# One impression per row: a user saw ``response`` to ``prompt`` and reacted ("love") or not ("none"); RLUF's
# P[Love] trains on these. ``context`` (the user's labelled pairs) lets a P[Love] condition on a summary of
# the user. The fields after ``reaction`` are optional; in generated logs (rlhf_cluster/datasets/reactions.py)
# ``user_description``, ``adversarial``, ``harmful`` and ``p_love`` are ground truth: analysis only.
REACTION_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("reaction", pa.string(), nullable=False),  # "love" or "none"
        pa.field("context", pa.list_(PAIR_TYPE)),
        pa.field("summary", pa.string()),
        pa.field("split", pa.string()),
        pa.field("topic", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("user_description", pa.string()),
        pa.field("adversarial", pa.bool_()),
        pa.field("harmful", pa.bool_()),
        pa.field("p_love", pa.float64()),
    ],
    metadata={"rlhf_cluster.schema": "reaction/v1"},
)


# ------------------------------------------------------------------------------- rollout batches
# Driver -> rollout actor: one row per context to summarize. Token ids are the chat-rendered
# summarizer prompt (rlhf_cluster.prompts.summarizer_messages through the tokenizer's template).
ROLLOUT_REQUEST_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.int64(), nullable=False),  # row index in the driver's batch
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("prompt_token_ids", pa.list_(pa.int32()), nullable=False),  # [prompt_len]
        pa.field("seed", pa.int64()),  # per-request sampling seed (reproducible rollouts); null: engine's
    ],
    metadata={"rlhf_cluster.schema": "rollout_request/v1"},
)

# Rollout actor -> driver: one row per sampled summary (n_samples rows per request, sample_index 0..n-1).
# summary_logprobs[t] = log π(summary_token_ids[t] | prompt, summary[:t]) under the rollout weights,
# from the raw model distribution (before temperature / top-p), as the trainer computes it.
ROLLOUT_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.int64(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("prompt_token_ids", pa.list_(pa.int32()), nullable=False),  # [prompt_len]
        pa.field("summary_token_ids", pa.list_(pa.int32()), nullable=False),  # [summary_len]
        pa.field("summary_logprobs", pa.list_(pa.float32()), nullable=False),  # [summary_len]
        pa.field("summary_text", pa.string(), nullable=False),  # decoded, special tokens skipped
        pa.field("finish_reason", pa.string(), nullable=False),  # "stop" (eos) or "length" (cap hit)
        pa.field("weight_version", pa.int64(), nullable=False),  # policy version that sampled it
    ],
    metadata={"rlhf_cluster.schema": "rollout/v1"},
)


# --------------------------------------------------------------------------- reward-model batches
# Driver -> reward-model group (train_step and score): one row per (conditioning, preference pair).
# `conditioning` is the text slot the reward model reads before the prompt: a summary, an oracle user
# description, the raw context (in-context baseline), or null for the plain Bradley–Terry model.
REWARD_PAIR_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("conditioning", pa.string()),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
    ],
    metadata={"rlhf_cluster.schema": "reward_pair/v1"},
)

# Reward-model group -> driver (score): the input rows' order, one row each.
REWARD_SCORE_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("r_chosen", pa.float32(), nullable=False),
        pa.field("r_rejected", pa.float32(), nullable=False),
    ],
    metadata={"rlhf_cluster.schema": "reward_score/v1"},
)


# Driver -> reward-model group (rewards): one response to score per row, conditioned like a reward pair.
RESPONSE_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("conditioning", pa.string()),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
    ],
    metadata={"rlhf_cluster.schema": "response/v1"},
)

# Reward-model group -> driver (rewards): r(prompt, response | conditioning), the input rows' order.
RESPONSE_REWARD_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("reward", pa.float32(), nullable=False),
    ],
    metadata={"rlhf_cluster.schema": "response_reward/v1"},
)

# Driver -> P[Love] group (jobs.train_love): RESPONSE_SCHEMA rows with their reaction as a 0/1 label.
LOVE_BATCH_SCHEMA = pa.schema(
    [*RESPONSE_SCHEMA, pa.field("label", pa.float32(), nullable=False)],
    metadata={"rlhf_cluster.schema": "love_batch/v1"},
)

# P[Love] group -> driver: the prior-corrected logit and probability of Love, the input rows' order.
LOVE_SCORE_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("logit", pa.float32(), nullable=False),
        pa.field("p_love", pa.float32(), nullable=False),
    ],
    metadata={"rlhf_cluster.schema": "love_score/v1"},
)

# Cached summaries of a fixed summarizer (run_dir/summaries/<split>.parquet): one row per example row.
SUMMARY_CACHE_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string()),
        pa.field("row", pa.int64()),  # row index of the example in its split
        pa.field("summary", pa.string()),
    ],
    metadata={"rlhf_cluster.schema": "summary_cache/v1"},
)


# ------------------------------------------------------------------------------- policy batches
# Driver -> policy group (train_step): one row per sampled summary, i.e. ROLLOUT_SCHEMA's token columns
# plus its advantages. Advantages are PER TOKEN (one per summary token), so GRPO/RLOO (a sequence
# advantage repeated on every token) and PPO with GAE (a different value per token) use one schema;
# rlhf_cluster.sequences.policy_batch builds it from a rollout table and a [B] or [B, T] tensor.
# summary_logprobs are the "old" logprobs of the PPO ratio: the rollout engine's, under the weights
# that sampled the summary (weight_version).
POLICY_BATCH_SCHEMA = pa.schema(
    [
        pa.field("prompt_token_ids", pa.list_(pa.int32()), nullable=False),  # [prompt_len]
        pa.field("summary_token_ids", pa.list_(pa.int32()), nullable=False),  # [summary_len]
        pa.field("summary_logprobs", pa.list_(pa.float32()), nullable=False),  # [summary_len], old policy
        pa.field("advantages", pa.list_(pa.float32()), nullable=False),  # [summary_len]
        pa.field("weight_version", pa.int64(), nullable=False),  # policy version that sampled it
    ],
    metadata={"rlhf_cluster.schema": "policy_batch/v1"},
)

# Policy group / reference actor -> driver (logprobs): the input rows' order, one row each.
# logprobs[t] = log π(summary_token_ids[t] | prompt, summary[:t]) under the actor's current weights.
TOKEN_LOGPROBS_SCHEMA = pa.schema(
    [pa.field("logprobs", pa.list_(pa.float32()), nullable=False)],  # [summary_len]
    metadata={"rlhf_cluster.schema": "token_logprobs/v1"},
)


# ------------------------------------------------------------------------------- critic batches
# Driver -> critic group (train_step, PPO only): one row per sampled summary, the critic's values before
# this update (the clip centre of the value loss) and the GAE returns (its targets), per summary token.
CRITIC_BATCH_SCHEMA = pa.schema(
    [
        pa.field("prompt_token_ids", pa.list_(pa.int32()), nullable=False),  # [prompt_len]
        pa.field("summary_token_ids", pa.list_(pa.int32()), nullable=False),  # [summary_len]
        pa.field("values", pa.list_(pa.float32()), nullable=False),  # [summary_len], critic before the update
        pa.field("returns", pa.list_(pa.float32()), nullable=False),  # [summary_len], GAE targets A + V
    ],
    metadata={"rlhf_cluster.schema": "critic_batch/v1"},
)

# Critic group -> driver (values): the input rows' order, one row each. values[t] = V(prompt, summary[:t]),
# the expected return from summary token t on, read where the policy reads the logits predicting token t.
TOKEN_VALUES_SCHEMA = pa.schema(
    [pa.field("values", pa.list_(pa.float32()), nullable=False)],  # [summary_len]
    metadata={"rlhf_cluster.schema": "token_values/v1"},
)


# ------------------------------------------------------------------------------------ checking


class BatchError(ValueError):
    """A batch that does not have the documented schema, or has no rows."""


def check_batch(table: pa.Table, schema: pa.Schema, where: str) -> None:
    """Raise BatchError naming ``where`` unless ``table`` is a non-empty table with ``schema``."""
    if not isinstance(table, pa.Table):
        raise BatchError(f"{where}: expected a pyarrow.Table, got {type(table).__name__}")
    if table.num_rows == 0:
        raise BatchError(f"{where}: the batch has no rows")
    if not table.schema.equals(schema, check_metadata=False):
        missing = [n for n in schema.names if n not in table.schema.names]
        extra = [n for n in table.schema.names if n not in schema.names]
        raise BatchError(
            f"{where}: batch schema mismatch (missing {missing}, unexpected {extra})\n got: {table.schema}\n"
            f" expected: {schema}"
        )
