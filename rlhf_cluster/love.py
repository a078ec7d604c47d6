"""RLUF's P[Love] on the driver side: reading reaction logs, the conditioning of each row, the batches the
P[Love] group takes, and the evaluation a trained P[Love] gets (AUC, log-loss, calibration) next to the
Bayes-optimal figures of generated logs (rlhf_cluster/datasets/reactions.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rlhf_cluster.datasets.reactions import LOVE, NO_REACTION
from rlhf_cluster.metrics import binary_log_loss, calibration, roc_auc
from rlhf_cluster.prompts import render_context
from rlhf_cluster.schema import LOVE_BATCH_SCHEMA, REACTION_SCHEMA, RESPONSE_SCHEMA

REQUIRED = ("user_id", "prompt", "response", "reaction")
# What the best P[Love] of each conditioning can know of a generated user (reactions.json's figures)
BAYES_KNOWLEDGE = {"none": "response_only", "oracle": "type_known", "context": "type_known", "summary": "type_known"}


class ReactionDataError(ValueError):
    """Reaction logs that cannot be read as REACTION_SCHEMA rows (the message names the file and row)."""


def reaction_splits(data_dir: str | Path) -> list[str]:
    d = Path(data_dir)
    if not d.is_dir():
        raise ReactionDataError(f"reaction logs directory {d} does not exist (python -m jobs.make_reactions ...)")
    return sorted(p.stem for p in d.glob("*.parquet"))


def read_reactions(data_dir: str | Path, split: str, limit: int | None = None) -> pa.Table:
    """``<data_dir>/<split>.parquet`` as REACTION_SCHEMA rows (missing optional columns null); a clear
    error for a missing file, a missing or null required field, or a reaction other than love / none."""
    path = Path(data_dir) / f"{split}.parquet"
    if not path.is_file():
        raise ReactionDataError(f"{path}: no such split (splits here: {reaction_splits(data_dir)})")
    table = pq.read_table(path)
    if limit is not None:
        table = table.slice(0, limit)
    if missing := [c for c in REQUIRED if c not in table.column_names]:
        raise ReactionDataError(f"{path}: missing column(s) {missing}; reaction logs need {list(REQUIRED)}")
    for name in REQUIRED:
        if (nulls := table.column(name).null_count) > 0:
            raise ReactionDataError(f"{path}: column {name!r} has {nulls} null value(s)")
    reactions = table.column("reaction").to_pylist()
    if bad := [i for i, r in enumerate(reactions) if r not in (LOVE, NO_REACTION)]:
        raise ReactionDataError(
            f"{path}: row {bad[0]} has reaction {reactions[bad[0]]!r} (and {len(bad) - 1} more rows); "
            f"expected {LOVE!r} or {NO_REACTION!r}"
        )
    columns = {
        f.name: table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in REACTION_SCHEMA
    }
    return pa.table(columns, schema=REACTION_SCHEMA)


def labels(table: pa.Table) -> np.ndarray:
    return np.array([r == LOVE for r in table.column("reaction").to_pylist()], dtype=bool)


def first_row_per_user(table: pa.Table) -> pa.Table:
    """One row per user (their first): what a summarizer summarizes once per user."""
    seen, rows = set(), []
    for i, uid in enumerate(table.column("user_id").to_pylist()):
        if uid not in seen:
            seen.add(uid)
            rows.append(i)
    return table.take(rows)


def conditioning_texts(
    table: pa.Table, mode: str, summaries: Mapping[str, str] | None = None, max_context_pairs: int | None = None
) -> list[str | None]:
    """The conditioning of each row: None (none), the true description (oracle), the rendered context
    (context), or the user's summary (summary: ``summaries`` by user id)."""
    users = table.column("user_id").to_pylist()
    if mode == "none":
        return [None] * len(users)
    if mode == "oracle":
        out = table.column("user_description").to_pylist()
    elif mode == "context":
        out = [render_context(c, None, max_context_pairs) if c else None for c in table.column("context").to_pylist()]
    elif mode == "summary":
        out = [(summaries or {}).get(u) for u in users]
    else:
        raise ValueError(f"unknown conditioning {mode!r}; expected none, oracle, context or summary")
    if missing := [i for i, x in enumerate(out) if not x]:
        field = {"oracle": "user_description", "context": "context", "summary": "a summary"}[mode]
        raise ReactionDataError(
            f"conditioning={mode} needs {field} for every row; row {missing[0]} (user {users[missing[0]]!r}) "
            f"and {len(missing) - 1} more have none"
        )
    return out


def love_batch(table: pa.Table, conditioning: Sequence[str | None], with_labels: bool = True) -> pa.Table:
    """LOVE_BATCH_SCHEMA rows (train) or RESPONSE_SCHEMA rows (predict) of reaction rows."""
    cols = {
        "user_id": table.column("user_id"),
        "conditioning": pa.array(conditioning, pa.string()),
        "prompt": table.column("prompt"),
        "response": table.column("response"),
    }
    if not with_labels:
        return pa.table(cols, schema=RESPONSE_SCHEMA)
    return pa.table({**cols, "label": pa.array(labels(table).astype(np.float32))}, schema=LOVE_BATCH_SCHEMA)


def resolve_positive_weight(setting: float | str, train_labels: np.ndarray) -> float:
    """A number as it is; 'balanced' = non-Love / Love rows of the train split."""
    if setting != "balanced":
        return float(setting)
    n_love = int(train_labels.sum())
    if n_love == 0:
        raise ReactionDataError("positive_weight=balanced: the train split has no Love reaction")
    return (len(train_labels) - n_love) / n_love


def evaluate(p_love: np.ndarray, y: np.ndarray, bayes: Mapping | None = None, knowledge: str | None = None) -> dict:
    """AUC, log-loss, ECE + reliability bins, true and predicted Love rate; the Bayes-optimal AUC and
    log-loss of the same knowledge beside them (generated logs) and the gaps."""
    cal = calibration(p_love, y)
    out = {
        "n": int(len(y)),
        "n_love": int(y.sum()),
        "love_rate": float(y.mean()),
        "predicted_love_rate": float(np.mean(p_love)),
        "auc": roc_auc(p_love, y),
        "log_loss": binary_log_loss(p_love, y),
        "ece": cal["ece"],
        "reliability": cal["bins"],
    }
    if bayes is not None and knowledge is not None:
        best = bayes[knowledge]
        out["bayes"] = {"knowledge": knowledge, "auc": best["auc"], "log_loss": best["log_loss"]}
        out["auc_gap"] = None if out["auc"] is None else best["auc"] - out["auc"]
    return out


def reliability_png(results: Mapping[str, Mapping], path: str | Path, title: str) -> Path:
    """The reliability diagram of each split (observed Love rate against predicted P[Love], per bin)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    top = max([0.05] + [b["predicted"] for r in results.values() for b in r["reliability"]])
    top = max(top, max([0.05] + [b["observed"] for r in results.values() for b in r["reliability"]]))
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for split, r in results.items():
        bins = r["reliability"]
        ax.plot(
            [b["predicted"] for b in bins],
            [b["observed"] for b in bins],
            marker="o",
            label=f"{split} (ECE {r['ece']:.3f})",
        )
    ax.set(xlabel="predicted P[Love]", ylabel="observed Love rate", title=title, xlim=(0, top), ylim=(0, top))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
