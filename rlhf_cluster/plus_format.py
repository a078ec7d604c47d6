"""The public PLUS release's row format (Nam et al. 2025) → rows of our example schema.

One PLUS row is one user's context with up to three target triples: ``reward_prompt``/``chosen``/
``rejected`` (the held-out pair that scores the summarizer; ``reward_chosen``/``reward_rejected`` are
aliases), ``train_prompt/_chosen/_rejected`` (the reward model's pair) and ``eval_prompt/_chosen/
_rejected`` (held out for evaluation, optional). ``plus_rows`` turns it into one of our rows per selected
triple; ``rlhf_cluster.data`` reads the files, detects the format and validates the rows. Row problems
raise ``RowProblem`` naming the PLUS field.

Conversion rules:

* Triples: by default reward and train (in that order); the eval triple is held out — ``rlhf_cluster.data``
  offers it as the split ``<file stem>_eval`` (PLUS_EVAL_SUFFIX). A triple equal to an earlier one of the
  same row is emitted once (the PLUS README recommends train_prompt == reward_prompt, which would otherwise
  double-count the pair). A row with no triple at all is a bad row; a row with triples but none of the
  selected roles yields no row and is not an error (it is counted).
* Context: ``context`` as a list of {prompt, chosen, rejected} becomes our ``context``. Otherwise the
  context is text — ``context_messages`` ({role, content} list; a list of conversations is concatenated; a
  string is one user message) or, when that column is absent, ``context`` as a string or message list. In
  text, the release writes each past pair as ``Question: …`` / ``Response A: …`` / ``Response B: …`` /
  ``The user preferred Response A.`` (blocks separated by blank lines) and ends the text with the
  summarizer's instruction ``Start your response with ##Summary``. A user message made only of such
  blocks becomes structured context pairs (``recover_pairs``), and then the summarizer's instructions —
  system messages — are dropped too; in any other message the trailing instruction is stripped. So the
  summarizer prompt and ``context`` conditioning see the user's history, never the release's instruction.
* Prompts given as a message list must hold exactly one user message (its content is taken); a response
  given as a message list contributes its last message.
* ``user_id`` (ints become strings) is kept when present. Without it, the id is derived from the raw
  context (``ctx-`` + 12 hex digits of its SHA-1): one person keeps one id across files and rows (train,
  validation). A row with no history (no context, or only instructions) gets ``<file stem>/<row>``.

``PlusStats`` counts what the conversion did, for the read report.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

PLUS_TRIPLES = {  # role -> (prompt key, chosen keys, rejected keys); the first key present is used
    "reward": ("reward_prompt", ("chosen", "reward_chosen"), ("rejected", "reward_rejected")),
    "train": ("train_prompt", ("train_chosen",), ("train_rejected",)),
    "eval": ("eval_prompt", ("eval_chosen",), ("eval_rejected",)),
}
PLUS_DEFAULT_PAIRS = ("reward", "train")  # eval is held out: read it as the split <stem>_eval
PLUS_EVAL_SUFFIX = "_eval"
PLUS_KEYS = {"user_id", "context", "context_messages", "split", "user_description"} | {
    k for p, c, r in PLUS_TRIPLES.values() for k in (p, *c, *r)
}


# One past pair in the release's context text; responses and prompts may span lines.
_PAIR_BLOCK = re.compile(
    r"Question:[ \t]*(?P<prompt>.+?)\s*\nResponse A:[ \t]*(?P<a>.+?)\s*\nResponse B:[ \t]*(?P<b>.+?)\s*\n"
    r"The user preferred Response (?P<pick>[AB])\.?",
    re.DOTALL,
)
_INSTRUCTION = re.compile(r"\s*Start your response with ##Summary\.?\s*$")


@dataclass
class PlusStats:
    """What the PLUS conversion did over one file (read report)."""

    text_context_rows: int = 0  # rows whose context came as text
    recovered_rows: int = 0  # ... of which the pairs were recovered
    recovered_pairs: int = 0
    instructions_stripped: int = 0  # rows whose summarization instruction was removed
    derived_ids: int = 0  # rows whose user id was derived from the context
    unselected_rows: int = 0  # rows with triples, none of the selected roles

    def describe(self) -> str:
        parts = []
        if self.text_context_rows:
            parts.append(
                f"context pairs recovered from text in {self.recovered_rows} of {self.text_context_rows} rows "
                f"({self.recovered_pairs} pairs)"
            )
        if self.instructions_stripped:
            parts.append(f"summarization instruction stripped from {self.instructions_stripped} rows")
        if self.derived_ids:
            parts.append(f"no user_id: ids derived from the context for {self.derived_ids} rows")
        if self.unselected_rows:
            parts.append(f"{self.unselected_rows} rows have none of the selected pairs")
        return "; ".join(parts)


class RowProblem(Exception):
    """One row's problem: the field (as the file names it) and what is wrong with it."""

    def __init__(self, field_: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field_, reason


def plus_rows(
    rec: dict, pairs: tuple[str, ...], default_user: str, stats: PlusStats | None = None
) -> list[tuple[str, dict, dict]]:
    """(role, our row, our column -> PLUS column) for each selected target triple of one PLUS row."""
    stats = stats if stats is not None else PlusStats()
    pairs_ctx, messages = _plus_context(rec, stats)
    history = pairs_ctx or any(m.get("role") != "system" for m in messages)
    user = rec["user_id"] if rec.get("user_id") is not None else _derived_user(rec, history, default_user, stats)
    base = {
        "user_id": str(user) if isinstance(user, int) and not isinstance(user, bool) else user,
        "context": pairs_ctx,
        "context_messages": messages,
        "split": rec.get("split"),
        "user_description": rec.get("user_description"),
    }
    out, seen = [], set()
    for role in PLUS_TRIPLES:
        pk, cks, rks = PLUS_TRIPLES[role]
        if rec.get(pk) is None:
            continue
        ck = next((k for k in cks if k in rec), cks[0])
        rk = next((k for k in rks if k in rec), rks[0])
        target = (_plus_prompt(rec[pk], pk), _plus_response(rec.get(ck), ck), _plus_response(rec.get(rk), rk))
        if repr(target) in seen:
            continue
        seen.add(repr(target))
        if role in pairs:
            row = {**base, **dict(zip(("prompt", "chosen", "rejected"), target))}
            out.append((role, row, {"prompt": pk, "chosen": ck, "rejected": rk}))
    if not seen:
        wanted = ", ".join(p for p, _, _ in PLUS_TRIPLES.values())
        raise RowProblem(PLUS_TRIPLES[pairs[0]][0], f"no target pair: none of {wanted} is set")
    stats.unselected_rows += not out
    return sorted(out, key=lambda r: pairs.index(r[0]))


def recover_pairs(text: str) -> list[dict] | None:
    """The context pairs of a text made only of the release's ``Question/Response A/Response B/The user
    preferred`` blocks (the trailing summarization instruction aside); None when anything else is in it."""
    body = _INSTRUCTION.sub("", text)
    found, end = [], 0
    for m in _PAIR_BLOCK.finditer(body):
        if body[end : m.start()].strip():
            return None
        a, b = m.group("a").strip(), m.group("b").strip()
        chosen, rejected = (a, b) if m.group("pick") == "A" else (b, a)
        found.append({"prompt": m.group("prompt").strip(), "chosen": chosen, "rejected": rejected})
        end = m.end()
    return found if found and not body[end:].strip() else None


def _derived_user(rec: dict, history: bool, default_user: str, stats: PlusStats) -> str:
    """ctx-<hash of the raw context>; without any user history (instructions only) the row's own id."""
    if not history:
        return default_user
    raw = [rec.get("context"), rec.get("context_messages")]
    stats.derived_ids += 1
    digest = hashlib.sha1(json.dumps(raw, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
    return f"ctx-{digest[:12]}"


def _plus_context(rec: dict, stats: PlusStats) -> tuple[Any, list]:
    """(our context pairs, our context messages) from PLUS ``context`` / ``context_messages``."""
    ctx = rec.get("context")
    if isinstance(ctx, list) and ctx and all(isinstance(c, dict) and "prompt" in c for c in ctx):
        pairs, ctx = ctx, None  # labelled pairs: the one shape that maps to our `context`
    else:
        pairs = []
    key = "context_messages" if rec.get("context_messages") is not None else "context"
    messages = _plus_messages(rec[key] if key == "context_messages" else ctx, key)
    if pairs or not messages:
        return pairs, messages
    return _from_text(messages, stats)


def _from_text(messages: list[dict], stats: PlusStats) -> tuple[list, list]:
    """Context pairs recovered from user messages in the release's pattern; other text kept, instruction
    stripped. Once pairs are recovered, system messages (the summarizer's instructions) are dropped."""
    stats.text_context_rows += 1
    pairs, kept, stripped = [], [], False
    for m in messages:
        content = m.get("content")
        found = recover_pairs(content) if m.get("role") == "user" and isinstance(content, str) else None
        if found is not None:
            pairs += found
            stripped |= bool(_INSTRUCTION.search(content))
            continue
        if isinstance(content, str) and _INSTRUCTION.search(content):
            m, stripped = {**m, "content": _INSTRUCTION.sub("", content)}, True
            if not m["content"].strip():
                continue  # the message was only the instruction
        kept.append(m)
    if pairs:
        kept = [m for m in kept if m.get("role") != "system"]
        stats.recovered_rows, stats.recovered_pairs = stats.recovered_rows + 1, stats.recovered_pairs + len(pairs)
    stats.instructions_stripped += stripped
    return pairs, kept


def _plus_messages(value: Any, key: str) -> list[dict]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and all(isinstance(v, list) for v in value):
        value = [m for conversation in value for m in conversation]  # a list of conversations
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return [{"role": m.get("role"), "content": m.get("content")} for m in value]
    raise RowProblem(
        key,
        f"expected a list of {{role, content}} messages, a list of conversations or a "
        f"string, got {describe_kind(value)} {describe_value(value)}",
    )


def _plus_prompt(value: Any, key: str) -> Any:
    if not isinstance(value, list):
        return value
    users = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "user"]
    if len(users) != 1 or not all(isinstance(m, dict) and m.get("role") in ("user", "system") for m in value):
        raise RowProblem(key, "a prompt given as messages must be one user turn (optionally with system)")
    return users[0]


def _plus_response(value: Any, key: str) -> Any:
    if not isinstance(value, list):
        return value
    if not value or not isinstance(value[-1], dict):
        raise RowProblem(key, "a response given as messages must end with a {role, content} message")
    return value[-1].get("content")


def describe_kind(value: Any) -> str:
    """A JSON value's kind in words ("an object", "a list" …)."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a bool", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def describe_value(value: Any) -> str:
    """The value's repr, cut at 40 characters, in parentheses."""
    text = repr(value)
    return f"({text[:40]}…)" if len(text) > 40 else f"({text})"


# ------------------------------------------------------------------------------------ export


PLUS_SYSTEM = "Summarize the user's preferences from these past conversations."
PLUS_INSTRUCTION = "Start your response with ##Summary"


def context_text(pairs: list[dict]) -> str:
    """A user's context pairs as the release writes them (the preferred response alternates A / B)."""
    blocks = []
    for i, p in enumerate(pairs):
        a, b, pick = (p["chosen"], p["rejected"], "A") if i % 2 == 0 else (p["rejected"], p["chosen"], "B")
        blocks.append(f"Question: {p['prompt']}\nResponse A: {a}\nResponse B: {b}\nThe user preferred Response {pick}.")
    return "\n\n".join([*blocks, PLUS_INSTRUCTION])


def to_plus_rows(rows: list[dict]) -> list[dict]:
    """Our rows (EXAMPLE_SCHEMA dicts) → PLUS release rows, the way the release ships them: one row per
    user and three consecutive target pairs (reward, train, eval; a last group may have fewer), the
    context as text (``context`` and ``context_messages``) with the summarizer's instruction, and no
    ``user_id`` or ground-truth column. Rows of one user must share their context."""
    by_user: dict[str, list[dict]] = {}
    for r in rows:
        by_user.setdefault(r["user_id"], []).append(r)
    out = []
    for user, own in by_user.items():
        if any(r["context"] != own[0]["context"] for r in own):
            raise ValueError(f"user {user}: rows with different contexts cannot share one PLUS context")
        text = context_text(own[0]["context"] or [])
        messages = [{"role": "system", "content": PLUS_SYSTEM}, {"role": "user", "content": text}]
        for k in range(0, len(own), 3):
            rec = {"context": text, "context_messages": messages}
            for role, r in zip(PLUS_TRIPLES, own[k : k + 3]):
                pk, (ck, *_), (rk, *_) = PLUS_TRIPLES[role]
                rec.update({pk: r["prompt"], ck: r["chosen"], rk: r["rejected"]})
            out.append(rec)
    return out
