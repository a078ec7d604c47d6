"""The chat messages each model reads. One place, so rollout, training, pre-training and serving agree.

- Summarizer: a user turn that shows the user's context (labelled pairs, past conversation) and asks
  for a short summary of that user's preferences. The model answers as the assistant.
- Reward model: the PLUS public code's conditioning turn ("Here is the summary of my preferences …")
  followed by the prompt as a user turn and the response as the assistant turn. The conditioning slot
  holds a summary, an oracle user description, raw context pairs (in-context baseline) or nothing (BT).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from rlhf_cluster.config import RolloutConfig
from rlhf_cluster.schema import ROLLOUT_REQUEST_SCHEMA

SUMMARY_REQUEST = "Summarize this user's preferences in a few words, so that an assistant can personalize its answers."
REWARD_CONDITIONING = (
    "Here is the summary of my preferences based on previous conversations: {summary} "
    "In the following conversation, keep this in mind to personalize your response."
)


def render_context(
    context: Sequence[Mapping[str, str]] | None,
    context_messages: Sequence[Mapping[str, str]] | None = None,
    max_pairs: int | None = None,
) -> str:
    """The user's history as plain text: labelled pairs first, then past conversation turns."""
    parts: list[str] = []
    pairs = list(context or [])
    if max_pairs is not None:
        pairs = pairs[-max_pairs:] if max_pairs > 0 else []
    for i, pair in enumerate(pairs, 1):
        parts.append(
            f"Pair {i}. Question: {pair['prompt']}\nPreferred: {pair['chosen']}\nNot preferred: {pair['rejected']}"
        )
    for msg in context_messages or []:
        parts.append(f"{msg['role'].capitalize()}: {msg['content']}")
    return "\n\n".join(parts) if parts else "(no history)"


def summarizer_messages(example: Mapping[str, Any], max_pairs: int | None = None) -> list[dict[str, str]]:
    """Chat messages asking the summarizer to summarize one example's user context."""
    history = render_context(example.get("context"), example.get("context_messages"), max_pairs)
    return [{"role": "user", "content": f"My history:\n{history}\n\n{SUMMARY_REQUEST}"}]


def reward_messages(conditioning: str | None, prompt: str, response: str) -> list[dict[str, str]]:
    """Chat messages the reward model scores; ``conditioning=None`` is the plain Bradley–Terry input."""
    user = prompt if not conditioning else REWARD_CONDITIONING.format(summary=conditioning) + "\n\n" + prompt
    return [{"role": "user", "content": user}, {"role": "assistant", "content": response}]


def chat_token_ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of chat messages through the tokenizer's own chat template.

    Renders to text first, then encodes without adding special tokens again (the template has
    them), which behaves the same across transformers versions and tokenizers.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class PromptTooLong(ValueError):
    """A summarizer prompt that leaves no room for the summary in rollout.max_model_len."""


def policy_messages(conditioning: str | None, prompt: str) -> list[dict[str, str]]:
    """What a response policy reads (stage 2): the reward model's user turn — conditioning, then the
    prompt — with the response left for the policy to write."""
    return reward_messages(conditioning, prompt, "")[:1]


def build_requests(examples: pa.Table, tokenizer, rollout: RolloutConfig, seed: int) -> pa.Table:
    """One rollout request per example: the chat-rendered summarizer prompt as token ids."""
    messages = [summarizer_messages(row, rollout.max_context_pairs) for row in examples.to_pylist()]
    hint = "raise rollout.max_model_len or lower rollout.max_context_pairs"
    return _requests(examples, messages, tokenizer, rollout, seed, "summarizer", hint)


def response_requests(
    examples: pa.Table, conditioning: list[str | None], tokenizer, rollout: RolloutConfig, seed: int
) -> pa.Table:
    """One rollout request per example for a response policy: ``policy_messages`` as token ids."""
    messages = [policy_messages(c, p) for c, p in zip(conditioning, examples.column("prompt").to_pylist())]
    hint = "raise rollout.max_model_len or shorten the conditioning (e.g. a lower summary length)"
    return _requests(examples, messages, tokenizer, rollout, seed, "response-policy", hint)


def _requests(examples: pa.Table, messages: list, tokenizer, rollout: RolloutConfig, seed: int, what: str, hint: str):
    budget = rollout.max_model_len - rollout.max_new_tokens
    ids = [chat_token_ids(tokenizer, m) for m in messages]
    users = examples.column("user_id").to_pylist()
    too_long = [(i, users[i], len(t)) for i, t in enumerate(ids) if len(t) > budget]
    if too_long:
        i, user, n = too_long[0]
        raise PromptTooLong(
            f"{len(too_long)} {what} prompts exceed rollout.max_model_len - rollout.max_new_tokens = {budget} "
            f"tokens (first: row {i}, user {user}: {n} tokens); {hint}"
        )
    n = examples.num_rows
    return pa.Table.from_pydict(
        {"request_id": list(range(n)), "user_id": users, "prompt_token_ids": ids,
         "seed": [seed * 1_000_003 + i for i in range(n)]},
        schema=ROLLOUT_REQUEST_SCHEMA,
    )  # fmt: skip
