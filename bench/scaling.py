"""Scaling: how a PLUS iteration's time grows with users per iteration, context length and summary length.

One rig (bench/rig.py, the demo's config and models), three sweeps from the demo's setting (8 users,
3 context pairs, 24-token summaries), each changing one thing:

- users per iteration: the rollout batch (× n_samples summaries) and every batch after it;
- context length: each user's context pairs repeated (or cut) to k pairs — the summarizer's prompt grows,
  the reward model's inputs do not (it reads the summary);
- summary length: rollout.max_new_tokens (a new rollout engine per value, weights carried over, one
  untimed warm-up call). The demo summarizer is pre-trained and mostly stops at eos before ~24 tokens, so
  the x-axis is the mean length it actually wrote (a cap above that changes little).

Per setting: ``iters`` iterations, median wall time and median phase times. Iterations at one setting
follow jobs.plus's data order; the policy keeps training across settings (as a run would).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from bench.common import median
from bench.rig import run_iterations


def with_context_pairs(examples: pa.Table, k: int) -> pa.Table:
    """Each row's context repeated cyclically (or cut) to exactly ``k`` pairs."""
    field = examples.schema.field("context")
    ctx = [(c * (k // max(len(c), 1) + 1))[:k] for c in examples.column("context").to_pylist()]
    return examples.set_column(examples.schema.get_field_index("context"), field, pa.array(ctx, type=field.type))


def _cell(rig, axis: str, value, iters: int, first_it: int, **kw) -> dict:
    users = kw.pop("users", rig.cfg.users_per_iter)
    res = run_iterations(rig, iters, users, first_it=first_it, **kw)
    phases = sorted(res[0]["phases"])
    cell = {
        "axis": axis,
        "value": value,
        "users": users,
        "iterations": iters,
        "iteration_s": median(r["wall_s"] for r in res),
        "phases_s": {p: median(r["phases"][p] for r in res) for p in phases},
        "summaries": res[0]["summaries"],
        "prompt_tokens_mean": float(np.mean([r["prompt_tokens_mean"] for r in res])),
        "summary_tokens_mean": float(np.mean([r["summary_tokens_mean"] for r in res])),
    }
    print(
        f"[scaling] {axis}={value}: {cell['iteration_s']:.2f} s/iteration ({users} users, prompt "
        f"{cell['prompt_tokens_mean']:.0f} tok, summary {cell['summary_tokens_mean']:.1f} tok)",
        flush=True,
    )
    return cell


def measure(rig, users: list[int], context_pairs: list[int], summary_caps: list[int], iters: int) -> dict:
    from rlhf_cluster.prompts import PromptTooLong, build_requests

    base_pairs = len(rig.train.column("context")[0].as_py())
    base_users, base_cap = rig.cfg.users_per_iter, rig.cfg.rollout.max_new_tokens
    cells, it = [], 1000  # iteration numbers far from the other benchmarks' (fresh seeds, fresh data order)
    run_iterations(rig, 1, base_users, first_it=it)  # warm-up at the base setting
    it += 1
    for u in users:
        cells.append(_cell(rig, "users", u, iters, it, users=u))
        it += iters
    for k in context_pairs:
        ex = with_context_pairs(rig.train, k)
        try:
            req = build_requests(ex, rig.tokenizer, rig.cfg.rollout, rig.cfg.seed)
        except PromptTooLong as err:
            print(f"[scaling] context_pairs={k}: skipped ({err})", flush=True)
            continue
        cells.append(_cell(rig, "context_pairs", k, iters, it, examples=ex, requests=req))
        it += iters
    restarts = {}
    # the current cap first (no restart); each other cap gets a fresh engine, warmed up before it is timed.
    # Scaling is the rig's last part: the engine is left at the last cap.
    for cap in sorted(summary_caps, key=lambda c: c != rig.cfg.rollout.max_new_tokens):
        if cap != rig.cfg.rollout.max_new_tokens:
            restarts[cap] = rig.restart_rollout(max_new_tokens=cap)
            rig.requests = build_requests(rig.train, rig.tokenizer, rig.cfg.rollout, rig.cfg.seed)
            rig.ray.get(rig.rollout.generate.remote(rig.requests.slice(0, base_users)))  # warm-up, weights unchanged
        cells.append(_cell(rig, "max_new_tokens", cap, iters, it))
        it += iters
    return {
        "base": {"users": base_users, "context_pairs": base_pairs, "max_new_tokens": base_cap},
        "cells": cells,
        "rollout_restart_s": restarts,
        "iterations_per_cell": iters,
    }
