"""Stored user summaries: one row per user id in an SQLite file, so they outlive any server process.

The Serve ingress keeps a user's summary here when ``POST /v1/summaries`` names a ``user_id`` or the
user edits it (``PUT /v1/users/{user_id}/summary``); ``/v1/rewards`` with a ``user_id`` reads it back.
Lookups are by exact user id (SQLite's default BINARY collation: case-sensitive) with bound
parameters, so one user's summary is never returned for another id.

Each call opens its own connection: the store is safe to use from several threads and from several
processes on one machine (WAL journal, busy timeout). SQLite over network file systems is not
reliable; on a multi-node cluster keep every ingress replica on the node that holds the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

Source = Literal["summarizer", "user"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS summaries (
    user_id    TEXT PRIMARY KEY NOT NULL,
    summary    TEXT NOT NULL,
    source     TEXT NOT NULL CHECK (source IN ('summarizer', 'user')),
    updated_at REAL NOT NULL
)
"""


@dataclasses.dataclass(frozen=True)
class StoredSummary:
    user_id: str
    summary: str
    source: Source  # "summarizer": written by the model; "user": set or edited by the user
    updated_at: float  # Unix time, seconds


class SummaryStore:
    """User id → summary in the SQLite file at ``path`` (created with its parent directory if missing)."""

    def __init__(self, path: str | Path, timeout_s: float = 10.0):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer (several replicas)
            db.execute(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=self.timeout_s)
        try:
            with db:  # commit on success, roll back on error
                yield db
        finally:
            db.close()

    def get(self, user_id: str) -> StoredSummary | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT user_id, summary, source, updated_at FROM summaries WHERE user_id = ?", (user_id,)
            ).fetchone()
        return StoredSummary(*row) if row else None

    def put(self, user_id: str, summary: str, source: Source) -> StoredSummary:
        """Insert or replace the user's summary; returns what was stored."""
        stored = StoredSummary(user_id, summary, source, time.time())
        with self._connect() as db:
            db.execute(
                "INSERT INTO summaries (user_id, summary, source, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(user_id) DO UPDATE SET summary = excluded.summary, source = excluded.source, "
                "updated_at = excluded.updated_at",
                dataclasses.astuple(stored),
            )
        return stored

    def delete(self, user_id: str) -> bool:
        """Remove the user's summary; False if there was none."""
        with self._connect() as db:
            return db.execute("DELETE FROM summaries WHERE user_id = ?", (user_id,)).rowcount > 0

    def __len__(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM summaries").fetchone()[0]
