"""Stored user summaries: one row per user id in an SQLite file, so they outlive any server process.

The Serve ingress keeps a user's summary here when ``POST /v1/summaries`` names a ``user_id`` or the
user edits it (``PUT /v1/users/{user_id}/summary``); ``/v1/rewards`` with a ``user_id`` reads it back.
Lookups are by exact user id (SQLite's default BINARY collation: case-sensitive) with bound
parameters, so one user's summary is never returned for another id.

Each call opens its own connection: the store is safe to use from several threads and from several
processes on one machine (WAL journal, busy timeout). SQLite over network file systems is not
reliable; on a multi-node cluster keep every ingress replica on the node that holds the file.

The file holds what users told the system about themselves: it is created owner-only (0600) whatever
the umask, and SQLite gives its -wal and -shm files the same mode. A store file that other users may
access (made by an older version, or copied in) loses its group and other permissions when opened, with
a warning naming the old mode; one the process may not chmod (another user's) fails the open rather
than stay readable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

Source = Literal["summarizer", "user"]
PRIVATE_MODE = 0o600  # owner read/write only

logger = logging.getLogger(__name__)

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
        _create_private(self.path)
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


def _create_private(path: Path) -> None:
    """Create the store file with mode 0600 before SQLite opens it (SQLite would make it 0644 and copy that
    mode to the -wal and -shm files); tighten an existing store file or -wal/-shm file others can read."""
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, PRIVATE_MODE))  # an existing file keeps its mode
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        _tighten(file)


def _tighten(file: Path) -> None:
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:  # group or others have some access
        os.chmod(file, mode & 0o700)
        logger.warning("summary store file %s had mode %04o, open to other users; now %04o", file, mode, mode & 0o700)
