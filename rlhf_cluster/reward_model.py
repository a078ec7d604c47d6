"""The personalized reward model: r(prompt, response | conditioning) from a decoder backbone + scalar head.

Input: ``prompts.reward_messages(conditioning, prompt, response)`` through the tokenizer's chat
template — the conditioning slot holds a summary, the oracle user description, the raw context
(in-context baseline) or nothing (plain Bradley–Terry). The reward is the scalar head's value at the
last real (non-pad) token.

Padding and truncation are explicit: sequences are right-padded (so position ids of real tokens are
the same as unpadded — left padding would shift them in HF Llama), and a sequence longer than
``max_length`` is cut by ``truncation_side``: "keep_conditioning" (default) keeps the conditioning whole
and cuts the prompt's start, then the response's end (``prompts.fitted_reward_ids``; the conditioning is
cut only when it alone does not fit); "left" cuts the start of the input — the conditioning first, the
user's summary is what is lost; "right" cuts the end (the response).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import pyarrow as pa
import torch

from rlhf_cluster.prompts import chat_token_ids, fitted_reward_ids, render_context, reward_messages
from rlhf_cluster.schema import REWARD_PAIR_SCHEMA, check_batch
from rlhf_cluster.tensors import pad_list_column

Conditioning = Literal["bt", "oracle", "context", "summary"]
TruncationSide = Literal["keep_conditioning", "left", "right"]
# What each side's cut reaches first (left and right cut blindly; keep_conditioning names what it cut).
_BLIND_CUT = {"left": ("conditioning",), "right": ("response",)}


# -------------------------------------------------------------------------------- conditioning


def conditioning_texts(
    examples: pa.Table,
    mode: Conditioning,
    summaries: Sequence[str] | None = None,
    max_context_pairs: int | None = None,
) -> list[str | None]:
    """The conditioning text of each example for one of the four modes (None for plain BT)."""
    n = examples.num_rows
    if mode == "bt":
        return [None] * n
    if mode == "oracle":
        desc = examples.column("user_description").to_pylist()
        missing = [i for i, d in enumerate(desc) if not d]
        if missing:
            raise ValueError(
                f"conditioning=oracle needs user_description; row {missing[0]} (and {len(missing) - 1} more) has none"
            )
        return desc
    if mode == "context":
        ctx, msgs = examples.column("context").to_pylist(), examples.column("context_messages").to_pylist()
        return [render_context(c, m, max_context_pairs) for c, m in zip(ctx, msgs)]
    if mode == "summary":
        if summaries is None or len(summaries) != n:
            raise ValueError(
                f"conditioning=summary needs one summary per example ({n}), got "
                f"{None if summaries is None else len(summaries)}"
            )
        return list(summaries)
    raise ValueError(f"unknown conditioning mode {mode!r}; expected bt, oracle, context or summary")


def pair_table(examples: pa.Table, conditioning: Sequence[str | None]) -> pa.Table:
    """Examples + per-row conditioning → a REWARD_PAIR_SCHEMA batch."""
    return pa.Table.from_pydict(
        {
            "user_id": examples.column("user_id"),
            "conditioning": pa.array(list(conditioning), pa.string()),
            "prompt": examples.column("prompt"),
            "chosen": examples.column("chosen"),
            "rejected": examples.column("rejected"),
        },
        schema=REWARD_PAIR_SCHEMA,
    )


# ------------------------------------------------------------------------------------ encoding


@dataclasses.dataclass
class EncodedPairs:
    """Chosen rows then rejected rows, stacked: ids/mask [2B, T]; ``n_truncated`` sequences were cut, in
    ``n_truncated_pairs`` pairs (chosen or rejected cut)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    n_pairs: int
    n_truncated: int
    n_truncated_pairs: int = 0


def encode_texts(
    tokenizer, conditioning: Sequence[str | None], prompts: Sequence[str], responses: Sequence[str]
) -> list[list[int]]:
    return [
        chat_token_ids(tokenizer, reward_messages(c, p, r), add_generation_prompt=False)
        for c, p, r in zip(conditioning, prompts, responses)
    ]


@dataclasses.dataclass
class EncodedSequences:
    """Right-padded reward inputs ids/mask [N, T]; ``truncated[i]``: sequence i was longer than max_length and
    cut; ``cut[i]``: which fields it lost (conditioning, prompt, response; ``()`` when it fit)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    truncated: list[bool]
    cut: list[tuple[str, ...]] = dataclasses.field(default_factory=list)


def encode_sequences(
    tokenizer,
    conditioning: Sequence[str | None],
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int,
    truncation_side: TruncationSide = "keep_conditioning",
) -> EncodedSequences:
    """Tokenize (conditioning, prompt, response) triples into one right-padded [N, T] tensor."""
    ids = encode_texts(tokenizer, conditioning, prompts, responses)
    truncated = [len(x) > max_length for x in ids]
    if truncation_side == "keep_conditioning":
        cut = [()] * len(ids)
        for i in (i for i, long in enumerate(truncated) if long):
            ids[i], cut[i] = fitted_reward_ids(tokenizer, conditioning[i], prompts[i], responses[i], max_length)
    elif truncation_side in _BLIND_CUT:
        cut = [_BLIND_CUT[truncation_side] if long else () for long in truncated]
    else:
        raise ValueError(f"truncation_side must be keep_conditioning, left or right, got {truncation_side!r}")
    width = min(max(len(x) for x in ids), max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids, mask = pad_list_column(
        pa.array(ids, pa.list_(pa.int32())),
        pad,
        side="right",
        max_len=width,
        truncate_side="left" if truncation_side == "keep_conditioning" else truncation_side,  # all fit already
        name="reward input_ids",
    )
    return EncodedSequences(input_ids, mask, truncated, cut)


def encode_pairs(
    tokenizer, batch: pa.Table, max_length: int, truncation_side: TruncationSide = "keep_conditioning"
) -> EncodedPairs:
    """Tokenize a REWARD_PAIR_SCHEMA batch into one right-padded [2B, T] tensor (chosen, then rejected)."""
    check_batch(batch, REWARD_PAIR_SCHEMA, "encode_pairs")
    cols = batch.to_pydict()
    enc = encode_sequences(
        tokenizer,
        cols["conditioning"] * 2,
        cols["prompt"] * 2,
        cols["chosen"] + cols["rejected"],
        max_length,
        truncation_side,
    )
    n, cut = batch.num_rows, enc.truncated
    pairs_cut = sum(c or r for c, r in zip(cut[:n], cut[n:]))
    return EncodedPairs(enc.input_ids, enc.attention_mask, n, sum(cut), pairs_cut)


# ---------------------------------------------------------------------------------- truncation


def truncation_stats(tokenizer, pairs: pa.Table, max_length: int) -> dict:
    """How many pairs of a REWARD_PAIR_SCHEMA table ``encode_pairs`` would cut, counted without a model.

    A pair (row) is cut when its chosen or its rejected input is longer than ``max_length`` tokens.
    Returns n_rows, n_truncated_rows, share (= n_truncated_rows / n_rows), n_truncated_sequences
    (chosen and rejected counted apart, as ``EncodedPairs.n_truncated``) and max_tokens (the longest input).
    """
    check_batch(pairs, REWARD_PAIR_SCHEMA, "truncation_stats")
    cols, n = pairs.to_pydict(), pairs.num_rows
    ids = encode_texts(tokenizer, cols["conditioning"] * 2, cols["prompt"] * 2, cols["chosen"] + cols["rejected"])
    lengths = [len(x) for x in ids]
    cut = sum(max(c, r) > max_length for c, r in zip(lengths[:n], lengths[n:]))
    return {
        "n_rows": n,
        "n_truncated_rows": cut,
        "share": cut / n if n else 0.0,
        "n_truncated_sequences": sum(x > max_length for x in lengths),
        "max_tokens": max(lengths, default=0),
    }


def truncation_line(stats: dict, what: str, max_length: int, truncation_side: str) -> str:
    """One line for a job's output: e.g. ``37 of 512 train pairs (7.2 %) exceed rm.max_length=512 …``."""
    longest = f" (longest {stats['max_tokens']})" if stats.get("max_tokens") else ""
    if not stats["n_truncated_rows"]:
        return f"truncation: none of {stats['n_rows']} {what} exceed rm.max_length={max_length} tokens{longest}"
    cuts = {
        "left": "their start (the conditioning)",
        "right": "their end (the response, where the reward is read)",
    }.get(truncation_side, "their prompt's start, then their response's end (the conditioning is kept)")
    return (
        f"truncation: {stats['n_truncated_rows']} of {stats['n_rows']} {what} ({100 * stats['share']:.1f} %) "
        f"exceed rm.max_length={max_length} tokens{longest}; truncation_side={truncation_side} cuts {cuts}"
    )


def truncation_totals(max_length: int, truncation_side: str) -> dict:
    """Run totals of reward-model pairs cut to max_length: scored (e.g. the RL reward) and trained (BT steps)."""
    rows = {"n_rows": 0, "n_truncated_rows": 0, "share": 0.0}
    return {
        "max_length": max_length,
        "truncation_side": truncation_side,
        "first_iteration": None,  # the first iteration where any pair was cut
        "scored": {**rows, "max_tokens": 0},
        "trained": dict(rows),
    }


def tally_truncation(totals: dict, it: int, scored: dict, trained: dict) -> str | None:
    """Add one iteration's counts (``truncation_stats``-shaped) to ``totals``; returns a warning line at the
    first iteration where any pair was cut, else None."""
    for kind, stats in (("scored", scored), ("trained", trained)):
        t = totals[kind]
        t["n_rows"] += stats["n_rows"]
        t["n_truncated_rows"] += stats["n_truncated_rows"]
        t["share"] = t["n_truncated_rows"] / t["n_rows"] if t["n_rows"] else 0.0
        if "max_tokens" in t:
            t["max_tokens"] = max(t["max_tokens"], stats["max_tokens"])
    if totals["first_iteration"] is not None or not (scored["n_truncated_rows"] or trained["n_truncated_rows"]):
        return None
    totals["first_iteration"] = it
    kind, stats = ("scored", scored) if scored["n_truncated_rows"] else ("trained", trained)
    line = truncation_line(stats, f"{kind} reward-model pairs", totals["max_length"], totals["truncation_side"])
    return f"iteration {it}: {line} (per iteration: rm_scored_truncated_share, rm_trained_truncated_share in metrics)"


# ------------------------------------------------------------------------------------- forward


def sequence_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar reward at the last real token of each row: [B, T] → [B] (float32).

    Reads the backbone's hidden states and applies the ``score`` head ourselves, so the position is
    taken from the attention mask — not from ``pad_token_id``, which breaks when pad == eos.
    """
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    values = model.score(hidden).squeeze(-1)  # [B, T]
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = (attention_mask * positions).argmax(-1)  # index of the last 1 in each row
    return values.gather(1, last.unsqueeze(1)).squeeze(1).float()


def pair_rewards(model, enc: EncodedPairs) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen [B], r_rejected [B]) in one forward pass over the stacked batch."""
    r = sequence_rewards(model, enc.input_ids, enc.attention_mask)
    return r[: enc.n_pairs], r[enc.n_pairs :]
