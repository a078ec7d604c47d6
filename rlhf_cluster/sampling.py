"""Seeded row samplers shared by the training jobs: epoch-shuffled batches and same-user held-out pairs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def epoch_batches(n_rows: int, batch_size: int, steps: int, seed: int):
    """Row indices of each step's batch: shuffled epochs, reshuffled every pass (seeded), so a rerun —
    or a resumed run replaying the first k steps — sees the same order."""
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(n_rows), 0
    for _ in range(steps):
        if pos + batch_size > n_rows:
            order, pos = rng.permutation(n_rows), 0
        yield order[pos : pos + batch_size]
        pos += batch_size


def same_user_pair_rows(examples: pa.Table) -> list[np.ndarray]:
    """For each row i, the rows of the same user whose target pair is not one of row i's context pairs:
    the held-out pairs a reward model may train on conditioned on a summary of row i's context.

    Rows of a user that share a context share one array (generated datasets give a user one context).
    Row i itself is a candidate unless its own target pair is in its context."""
    users = examples.column("user_id").to_pylist()
    targets = list(zip(*(examples.column(k).to_pylist() for k in ("prompt", "chosen", "rejected"))))
    contexts = [
        tuple((p["prompt"], p["chosen"], p["rejected"]) for p in ctx) for ctx in examples.column("context").to_pylist()
    ]
    rows_of: dict[str, list[int]] = {}
    for i, user in enumerate(users):
        rows_of.setdefault(user, []).append(i)
    shared: dict[tuple, np.ndarray] = {}
    out = []
    for i, user in enumerate(users):
        key = (user, contexts[i])
        if key not in shared:
            in_context = set(contexts[i])
            shared[key] = np.array([s for s in rows_of[user] if targets[s] not in in_context], dtype=np.int64)
        out.append(shared[key])
    return out


def draw_same_user_rows(candidates: list[np.ndarray], rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """rows[k] → a row drawn from candidates[rows[k]]. Rows repeated in `rows` (one user context's several
    sampled summaries) get distinct draws while the candidates last; a row without candidates keeps itself."""
    rows = np.asarray(rows, dtype=np.int64)
    out = rows.copy()
    for row in np.unique(rows):
        where = np.flatnonzero(rows == row)
        pool = candidates[row]
        if len(pool):
            out[where] = rng.choice(pool, size=len(where), replace=len(pool) < len(where))
    return out
