"""Prompt + summary token sequences as tensors, and the logprobs of the summary tokens under a causal LM.

One implementation for every role that scores summaries — the policy ranks (``actors/policy.py``, inside
the DeepSpeed engine), the frozen reference (``actors/reference.py``), jobs and tests — so that the
PPO ratio and the KL penalty compare numbers computed the same way.

Layout (TRL's GRPO layout): prompts LEFT-padded to P, summaries RIGHT-padded to T, so that every summary
starts at column P::

    [pad pad p0  p1  p2 | s0 s1 pad]      summary_mask [1 1 0]
    [p0  p1  p2  p3  p4 | s0 s1 s2 ]      summary_mask [1 1 1]

The logits that predict s0..s(T−1) sit in columns P−1..P+T−2 — the last T+1 columns but one — so the
model computes logits only there (``logits_to_keep``): prompts (user contexts) are long, summaries are
short and vocabularies large, and [B, P+T, V] logits would dominate memory. Position ids count from each
row's first real token, so a left-padded row sees the positions it would see unpadded (HF Llama would
otherwise shift them), and the logprobs match an unpadded forward and vLLM's, which never pads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from rlhf_cluster.schema import (
    CRITIC_BATCH_SCHEMA,
    POLICY_BATCH_SCHEMA,
    TOKEN_LOGPROBS_SCHEMA,
    TOKEN_VALUES_SCHEMA,
    BatchError,
    check_batch,
)
from rlhf_cluster.tensors import pad_list_column, tensor_to_list_array

TokenLists = pa.Array | pa.ChunkedArray | Sequence[Sequence[int]]


@dataclasses.dataclass
class SummaryBatch:
    """Model inputs [B, P+T] (prompt left-padded, summary right-padded) and the summary tokens [B, T]."""

    input_ids: torch.Tensor  # [B, P+T]
    attention_mask: torch.Tensor  # [B, P+T], 1 = real token
    position_ids: torch.Tensor  # [B, P+T], 0 at each row's first real token
    summary_ids: torch.Tensor  # [B, T]
    summary_mask: torch.Tensor  # [B, T], 1 = real summary token

    def to(self, device: torch.device | str) -> SummaryBatch:
        return SummaryBatch(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword tensors for ``summary_token_logprobs`` (tensors only: a DeepSpeed engine passes them on)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _list_array(ids: TokenLists) -> pa.Array | pa.ChunkedArray:
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        return ids
    return pa.array([list(x) for x in ids], pa.list_(pa.int64()))


def encode_summaries(prompt_ids: TokenLists, summary_ids: TokenLists, pad_id: int = 0) -> SummaryBatch:
    """Token lists (Arrow list columns or Python lists) → a SummaryBatch. Every prompt and every summary
    needs at least one token (the first summary token is predicted from the last prompt token).
    ``pad_id`` only fills padding (masked out); any id in the vocabulary will do."""
    prompt, prompt_mask = pad_list_column(
        _list_array(prompt_ids), pad_id, side="left", dtype=torch.long, name="prompt_token_ids"
    )
    summary, summary_mask = pad_list_column(
        _list_array(summary_ids), pad_id, side="right", dtype=torch.long, name="summary_token_ids"
    )
    if prompt.shape[0] != summary.shape[0]:
        raise ValueError(f"{prompt.shape[0]} prompts but {summary.shape[0]} summaries")
    for name, mask in (("prompt", prompt_mask), ("summary", summary_mask)):
        empty = torch.nonzero(mask.sum(1) == 0).flatten()
        if len(empty):
            raise ValueError(
                f"row {empty[0].item()} has an empty {name} ({len(empty)} such rows); each needs ≥ 1 token"
            )
    attention_mask = torch.cat([prompt_mask, summary_mask], dim=1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return SummaryBatch(torch.cat([prompt, summary], dim=1), attention_mask, position_ids, summary, summary_mask)


def summary_token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    summary_ids: torch.Tensor,
    summary_mask: torch.Tensor,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(s_t | prompt, s_<t) for each summary token, [B, T] float32, 0 on padding (differentiable),
    and, if asked, the entropy of π at each summary position [B, T] (no grad; a training metric).

    Rows with the same prompt (a GRPO group: n summaries of one user context) share one forward of the
    prompt: see ``summary_logits``."""
    logps = summary_logits(model, input_ids, attention_mask, position_ids, summary_ids.shape[1]).float().log_softmax(-1)
    token = logps.gather(-1, summary_ids.unsqueeze(-1)).squeeze(-1)
    real = summary_mask.bool()
    token = torch.where(real, token, torch.zeros_like(token))
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = torch.where(real, -(logps.exp() * logps).sum(-1), torch.zeros_like(token))
    return token, entropy


def summary_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    T: int,
    share_prompts: bool = True,
) -> torch.Tensor:
    """The model's outputs [B, T, C] in the columns that read the T summary tokens' states — P−1 .. P+T−2,
    whose causal-LM logits predict s_0 .. s_(T−1) — differentiable. ``model``: a causal LM (only those
    columns' logits are computed) or a token classifier such as the critic (C = 1).

    When rows repeat a prompt (``share_prompts`` and fewer distinct prompts U than rows B — a GRPO group
    is n summaries of one user context), the prompts run once — U × P tokens instead of B × P — into a KV
    cache, the cache is indexed out to the B rows, and the summaries run on it: the same function of the
    weights (a prompt's rows add their gradients up through the index), far fewer FLOPs when prompts are
    long and summaries short, as in PLUS. Otherwise one forward of the whole [B, P+T] batch."""
    from transformers import DynamicCache

    P = input_ids.shape[1] - T
    lm = {"logits_to_keep": T + 1} if hasattr(model, "lm_head") else {}
    prompt = input_ids[:, :P]
    unique, inverse = torch.unique(prompt, dim=0, return_inverse=True) if share_prompts else (prompt, None)
    if unique.shape[0] == prompt.shape[0]:
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **lm).logits[
            :, -(T + 1) : -1
        ]
    first = torch.empty(unique.shape[0], dtype=torch.long, device=prompt.device)
    first.scatter_(
        0, inverse.flip(0), torch.arange(prompt.shape[0] - 1, -1, -1, device=prompt.device)
    )  # a row per prompt
    cache = DynamicCache(config=model.config)
    head = model(
        input_ids=prompt[first],
        attention_mask=attention_mask[first, :P],
        position_ids=position_ids[first, :P],
        past_key_values=cache,
        use_cache=True,
        **({"logits_to_keep": 1} if lm else {}),
    )
    out = head.logits[:, -1:][inverse]  # [B, 1, C]: reads the last prompt token (predicts s_0)
    if T == 1:
        return out
    cache.reorder_cache(inverse)  # [U, …] → [B, …] per layer (index_select: gradients add up)
    tail = model(
        input_ids=input_ids[:, P:-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=position_ids[:, P:-1],
        past_key_values=cache,
        use_cache=True,
    )
    return torch.cat([out, tail.logits], dim=1)


def summary_token_values(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    summary_ids: torch.Tensor,
    summary_mask: torch.Tensor,
) -> torch.Tensor:
    """V(prompt, s_<t) for each summary token t, [B, T] float32, 0 on padding (differentiable).

    ``model`` is a scalar token classifier (``models.load_value_model``); the value of token t's state
    is read in column P−1+t, the column whose logits predict s_t in ``summary_token_logprobs``; rows
    sharing a prompt share its forward (``summary_logits``).
    """
    values = summary_logits(model, input_ids, attention_mask, position_ids, summary_ids.shape[1])[..., 0].float()
    return torch.where(summary_mask.bool(), values, torch.zeros_like(values))


@torch.no_grad()
def sequence_logprobs(
    model: torch.nn.Module, prompt_ids: TokenLists, summary_ids: TokenLists, pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprobs [B, T_summary] float32, 0 on padding; summary mask [B, T_summary]) on the model's device."""
    device = next(model.parameters()).device
    batch = encode_summaries(prompt_ids, summary_ids, pad_id).to(device)
    logprobs, _ = summary_token_logprobs(model, **batch.model_inputs())
    return logprobs, batch.summary_mask


# ---------------------------------------------------------------------------------- Arrow batches


TOKEN_COLUMNS = ("prompt_token_ids", "summary_token_ids")


def check_token_columns(batch: pa.Table, where: str) -> None:
    """A non-empty table with list<int32> prompt_token_ids and summary_token_ids (ROLLOUT_SCHEMA and
    POLICY_BATCH_SCHEMA both qualify); other columns are ignored."""
    if not isinstance(batch, pa.Table):
        raise BatchError(f"{where}: expected a pyarrow.Table, got {type(batch).__name__}")
    if batch.num_rows == 0:
        raise BatchError(f"{where}: the batch has no rows")
    for name in TOKEN_COLUMNS:
        if name not in batch.schema.names:
            raise BatchError(
                f"{where}: batch has no column {name!r} (columns: {batch.schema.names}); "
                "expected ROLLOUT_SCHEMA or POLICY_BATCH_SCHEMA rows"
            )
        if batch.schema.field(name).type != pa.list_(pa.int32()):
            raise BatchError(f"{where}: column {name!r} is {batch.schema.field(name).type}, expected list<int32>")


def check_policy_batch(batch: pa.Table, where: str) -> None:
    """POLICY_BATCH_SCHEMA, and per row one old logprob and one advantage per summary token, all finite."""
    check_batch(batch, POLICY_BATCH_SCHEMA, where)
    _check_per_token(batch, ("summary_logprobs", "advantages"), where)


def _check_per_token(batch: pa.Table, names: Sequence[str], where: str) -> None:
    lengths = pc.list_value_length(batch.column("summary_token_ids")).to_numpy()
    for name in names:
        column = batch.column(name)
        bad = np.flatnonzero(pc.list_value_length(column).to_numpy() != lengths)
        if len(bad):
            raise BatchError(
                f"{where}: row {bad[0]}: {name} has a different length than summary_token_ids ({len(bad)} such rows)"
            )
        values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
        if not np.isfinite(values).all():
            raise BatchError(f"{where}: {name} holds {int((~np.isfinite(values)).sum())} non-finite values")


def logprobs_table(logprobs: torch.Tensor, mask: torch.Tensor) -> pa.Table:
    """[B, T] logprobs + summary mask → TOKEN_LOGPROBS_SCHEMA rows (padding dropped)."""
    column = tensor_to_list_array(logprobs.float(), mask=mask, value_type=pa.float32())
    return pa.Table.from_arrays([column], schema=TOKEN_LOGPROBS_SCHEMA)


def policy_batch(rollout: pa.Table, advantages: torch.Tensor) -> pa.Table:
    """POLICY_BATCH_SCHEMA rows from ROLLOUT_SCHEMA rows and their advantages: [B] (one per summary,
    repeated on each of its tokens: GRPO, RLOO) or [B, T] (per token, summaries right-padded as in
    SummaryBatch: GAE)."""
    lengths = pc.list_value_length(rollout.column("summary_token_ids")).to_numpy().astype(np.int64)
    adv = advantages.detach().float().cpu()
    if adv.shape[0] != rollout.num_rows or adv.dim() not in (1, 2):
        raise ValueError(f"advantages must be [{rollout.num_rows}] or [{rollout.num_rows}, T], got {tuple(adv.shape)}")
    if adv.dim() == 1:
        values = np.repeat(adv.numpy(), lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        per_token = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32()))
    else:
        per_token = tensor_to_list_array(adv, lengths=lengths, side="right", value_type=pa.float32())
    columns = [rollout.column(n) for n in ("prompt_token_ids", "summary_token_ids", "summary_logprobs")]
    return pa.Table.from_arrays([*columns, per_token, rollout.column("weight_version")], schema=POLICY_BATCH_SCHEMA)


def values_table(values: torch.Tensor, mask: torch.Tensor) -> pa.Table:
    """[B, T] values + summary mask → TOKEN_VALUES_SCHEMA rows (padding dropped)."""
    column = tensor_to_list_array(values.float(), mask=mask, value_type=pa.float32())
    return pa.Table.from_arrays([column], schema=TOKEN_VALUES_SCHEMA)


def critic_batch(rollout: pa.Table, values: torch.Tensor, returns: torch.Tensor) -> pa.Table:
    """CRITIC_BATCH_SCHEMA rows from ROLLOUT_SCHEMA rows and [B, T] values and returns (right-padded)."""
    lengths = pc.list_value_length(rollout.column("summary_token_ids")).to_numpy().astype(np.int64)
    for name, x in (("values", values), ("returns", returns)):
        if x.dim() != 2 or x.shape[0] != rollout.num_rows or x.shape[1] < int(lengths.max(initial=0)):
            raise ValueError(
                f"{name} must be [{rollout.num_rows}, ≥{int(lengths.max(initial=0))}], got {tuple(x.shape)}"
            )
    columns = [rollout.column("prompt_token_ids"), rollout.column("summary_token_ids")]
    columns += [
        tensor_to_list_array(x.detach().float().cpu(), lengths=lengths, side="right", value_type=pa.float32())
        for x in (values, returns)
    ]
    return pa.Table.from_arrays(columns, schema=CRITIC_BATCH_SCHEMA)


def check_critic_batch(batch: pa.Table, where: str) -> None:
    """CRITIC_BATCH_SCHEMA, and per row one value and one return per summary token, all finite."""
    check_batch(batch, CRITIC_BATCH_SCHEMA, where)
    _check_per_token(batch, ("values", "returns"), where)
