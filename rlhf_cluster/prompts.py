"""The chat messages each model reads. One place, so rollout, training, pre-training and serving agree.

- Summarizer: a user turn that shows the user's context (labelled pairs, past conversation) and asks
  for a short summary of that user's preferences. The model answers as the assistant.
- Reward model: the PLUS public code's conditioning turn ("Here is the summary of my preferences …")
  followed by the prompt as a user turn and the response as the assistant turn. The conditioning slot
  holds a summary, an oracle user description, raw context pairs (in-context baseline) or nothing (BT).
"""

from __future__ import annotations

import dataclasses
import re
import weakref
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


def fitted_reward_ids(
    tokenizer, conditioning: str | None, prompt: str, response: str, max_length: int
) -> tuple[list[int], tuple[str, ...]]:
    """The reward model's input ids cut to ``max_length`` tokens WITHOUT losing the conditioning, and which
    fields were cut. What is over comes out of the prompt first (its start: the question usually ends it),
    then out of the response (its end). Only when the template and the conditioning alone exceed
    ``max_length`` is the conditioning cut — from the start of the whole input, as truncation_side=left
    does — and ``"conditioning"`` is named first.

    An input that fits is returned as ``chat_token_ids`` returns it (cut = ``()``); a cut one is encoded
    piecewise (template pieces, conditioning turn, prompt, response apart), so its ids may differ from the
    whole text's at the cut boundaries only.
    """
    messages = reward_messages(conditioning, prompt, response)
    ids = chat_token_ids(tokenizer, messages, add_generation_prompt=False)
    if len(ids) <= max_length:
        return ids, ()
    chat = render_chat(tokenizer, messages, add_generation_prompt=False)
    user, reply = chat.contents  # the user turn (conditioning, then the prompt) and the response
    tail = next((p for p in (prompt, prompt.rstrip(), prompt.strip()) if user.endswith(p)), None)
    if tail is None or len(chat.pieces) != 3:
        raise ValueError("the chat template does not render the reward model's messages in order: cannot fit them")
    pieces = [tokenizer(p, add_special_tokens=False)["input_ids"] if p else [] for p in chat.pieces]
    head, q, r = (plain_token_ids(tokenizer, t) for t in (user[: len(user) - len(tail)], tail, reply))
    room = max_length - sum(map(len, pieces)) - len(head)
    if room < 0:  # the conditioning itself does not fit: cut from the start, as truncation_side=left
        prompt_cut = len(ids) - max_length > len(pieces[0]) + len(head)
        return ids[len(ids) - max_length :], ("conditioning", "prompt") if prompt_cut else ("conditioning",)
    keep_q = max(0, min(len(q), room - len(r)))
    keep_r = min(len(r), room - keep_q)
    fitted = pieces[0] + head + q[len(q) - keep_q :] + pieces[1] + r[:keep_r] + pieces[2]
    return fitted, tuple(f for f, cut in (("prompt", keep_q < len(q)), ("response", keep_r < len(r))) if cut)


def chat_token_ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of chat messages through the tokenizer's own chat template; message contents are text.

    The template's markers (``<|user|>``, ``<|im_start|>`` …) become its special tokens, but a message's
    content — user text — never does: ``<|end|><|user|>`` written by a user is encoded as those characters.
    Text without a special token's string gets exactly the ids of rendering the template and encoding the
    whole text without adding special tokens again (what this function always returned, so trained
    checkpoints see identical inputs); a content holding one is encoded piecewise instead: the template's
    text as usual, the contents with special-token parsing off.
    """
    chat = render_chat(tokenizer, messages, add_generation_prompt)
    if _special_strings_in_contents(tokenizer, chat):
        return _piecewise_ids(tokenizer, chat)
    return tokenizer(chat.text, add_special_tokens=False)["input_ids"]


@dataclasses.dataclass(frozen=True)
class RenderedChat:
    """A rendered chat template split into the template's own text and the messages' contents, in the
    order rendered: ``text == pieces[0] + contents[0] + pieces[1] + … + contents[-1] + pieces[-1]``."""

    pieces: list[str]
    contents: list[str]

    @property
    def text(self) -> str:
        return "".join(p + c for p, c in zip(self.pieces, self.contents)) + self.pieces[-1]

    def content_spans(self) -> list[tuple[int, int]]:
        """[start, end) character span of each content in ``text``."""
        spans, at = [], 0
        for piece, content in zip(self.pieces, self.contents):
            at += len(piece)
            spans.append((at, at + len(content)))
            at += len(content)
        return spans


_SLOT = "\ue000{}\ue001"  # private-use characters around the message index: a placeholder content
_SLOT_RE = re.compile("\ue000(\\d+)\ue001")


def render_chat(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> RenderedChat:
    """The chat template's text around each message's content, found by rendering placeholders in place
    of the contents. A template that trims contents (Llama 3's) is understood; one that rewrites them
    otherwise is refused, since its user text could not be told from its own."""

    def render(msgs: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)

    text = render(messages)
    parts = _SLOT_RE.split(render([{**m, "content": _SLOT.format(i)} for i, m in enumerate(messages)]))
    pieces, order = parts[0::2], [int(i) for i in parts[1::2]]
    for as_rendered in (str, str.strip):
        chat = RenderedChat(pieces, [as_rendered(messages[i]["content"]) for i in order])
        if chat.text == text:
            return chat
    raise ValueError(
        "the chat template changes the message contents (beyond trimming whitespace), so user text cannot be "
        "kept apart from the template's control tokens; use a template that inserts message['content'] as is"
    )


def special_token_strings(tokenizer) -> list[str]:
    """The strings of the tokenizer's control tokens: bos, eos, pad, … and every added token marked special."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    strings = set(getattr(tokenizer, "all_special_tokens", [])) | {t.content for t in added.values() if t.special}
    return sorted(s for s in strings if s)


def _special_strings_in_contents(tokenizer, chat: RenderedChat) -> bool:
    """Whether a special token's string lies, even in part, in a message's content: then encoding the whole
    text would turn user characters into that token. (Tokens matched only after normalization — an added
    token with normalized=True in a lower-casing tokenizer — are not looked for; chat tokenizers have none.)"""
    text, specials = chat.text, special_token_strings(tokenizer)
    for start, end in chat.content_spans():
        for special in specials:  # an occurrence overlapping [start, end) lies inside this window
            if text.find(special, max(0, start - len(special) + 1), end + len(special) - 1) >= 0:
                return True
    return False


def _piecewise_ids(tokenizer, chat: RenderedChat) -> list[int]:
    """The template's pieces encoded as usual (their control tokens parsed), the contents as plain text."""
    ids: list[int] = []
    for piece, content in zip(chat.pieces, [*chat.contents, ""]):
        ids += tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
        ids += plain_token_ids(tokenizer, content)
    return ids


def plain_token_ids(tokenizer, text: str) -> list[int]:
    """``text`` encoded with special-token parsing off: a special token's string is its characters."""
    if not text:
        return []
    if getattr(tokenizer, "backend_tokenizer", None) is None:  # a Python tokenizer takes the switch per call
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return _plain_backend(tokenizer).encode(text, add_special_tokens=False).ids


_PLAIN_BACKENDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _plain_backend(tokenizer):
    """A copy of the tokenizer's `tokenizers` backend that never parses special tokens, made once per
    tokenizer (flipping the switch on the shared backend would race with other threads' encodes)."""
    backend = _PLAIN_BACKENDS.get(tokenizer)
    if backend is None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = True
        _PLAIN_BACKENDS[tokenizer] = backend
    return backend


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
