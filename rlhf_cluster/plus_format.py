"""The public PLUS release's row format (Nam et al. 2025) → rows of our example schema.

One PLUS row is one user's context with up to three target triples: ``reward_prompt``/``chosen``/
``rejected`` (the held-out pair that scores the summarizer; ``reward_chosen``/``reward_rejected`` are
aliases), ``train_prompt/_chosen/_rejected`` (the reward model's pair) and ``eval_prompt/_chosen/
_rejected`` (held out for evaluation, optional). ``plus_rows`` turns it into one of our rows per available
triple; ``rlhf_cluster.data`` reads the files, detects the format and validates the rows (its docstring
has the full conversion rules). Row problems raise ``RowProblem`` naming the PLUS field.
"""

from __future__ import annotations

from typing import Any

PLUS_TRIPLES = {  # role -> (prompt key, chosen keys, rejected keys); the first key present is used
    "reward": ("reward_prompt", ("chosen", "reward_chosen"), ("rejected", "reward_rejected")),
    "train": ("train_prompt", ("train_chosen",), ("train_rejected",)),
    "eval": ("eval_prompt", ("eval_chosen",), ("eval_rejected",)),
}
PLUS_KEYS = {"user_id", "context", "context_messages", "split", "user_description"} | {
    k for p, c, r in PLUS_TRIPLES.values() for k in (p, *c, *r)
}


class RowProblem(Exception):
    """One row's problem: the field (as the file names it) and what is wrong with it."""

    def __init__(self, field_: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field_, reason


def plus_rows(rec: dict, pairs: tuple[str, ...], default_user: str) -> list[tuple[str, dict, dict]]:
    """(role, our row, our column -> PLUS column) for each available target triple of one PLUS row."""
    user = rec.get("user_id", default_user)
    pairs_ctx, messages = _plus_context(rec)
    base = {
        "user_id": str(user) if isinstance(user, int) and not isinstance(user, bool) else user,
        "context": pairs_ctx,
        "context_messages": messages,
        "split": rec.get("split"),
        "user_description": rec.get("user_description"),
    }
    out, seen = [], set()
    for role in pairs:
        pk, cks, rks = PLUS_TRIPLES[role]
        if rec.get(pk) is None:
            continue
        ck = next((k for k in cks if k in rec), cks[0])
        rk = next((k for k in rks if k in rec), rks[0])
        target = (_plus_prompt(rec[pk], pk), _plus_response(rec.get(ck), ck), _plus_response(rec.get(rk), rk))
        if repr(target) in seen:
            continue
        seen.add(repr(target))
        row = {**base, **dict(zip(("prompt", "chosen", "rejected"), target))}
        out.append((role, row, {"prompt": pk, "chosen": ck, "rejected": rk}))
    if not out:
        wanted = ", ".join(PLUS_TRIPLES[r][0] for r in pairs)
        raise RowProblem(PLUS_TRIPLES[pairs[0]][0], f"no target pair: none of {wanted} is set")
    return out


def _plus_context(rec: dict) -> tuple[Any, list]:
    """(our context pairs, our context messages) from PLUS ``context`` / ``context_messages``."""
    ctx = rec.get("context")
    if isinstance(ctx, list) and ctx and all(isinstance(c, dict) and "prompt" in c for c in ctx):
        pairs, ctx = ctx, None  # labelled pairs: the one shape that maps to our `context`
    else:
        pairs = []
    if rec.get("context_messages") is not None:
        return pairs, _plus_messages(rec["context_messages"], "context_messages")
    return pairs, _plus_messages(ctx, "context")


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
