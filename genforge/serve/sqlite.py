"""The SQLite files the service shares between worker processes (keys.db, feedback.db), opened one way.

WAL (readers never block the writer; a setting of the file), a busy timeout instead of an immediate
"database is locked", one connection per operation (connections must not cross threads; opening one
is cheap), `BEGIN IMMEDIATE` for every write (two processes never both read a row and both write
it), and `synchronous=FULL` (every commit fsync'd: what the service answered survives a crash).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from genforge.errors import ConfigError

BUSY_TIMEOUT_S = 10.0  # how long a process waits for another's write lock before "database is locked"


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous=FULL")
        yield db
    finally:
        db.close()


@contextmanager
def transaction(path: Path) -> Iterator[sqlite3.Connection]:
    """A write transaction that takes the lock up front."""
    with connect(path) as db:
        db.execute("BEGIN IMMEDIATE")
        yield db
        db.execute("COMMIT")  # on an exception the connection closes with the transaction rolled back


def prepare(path: Path, schema: Sequence[str], version: int, what: str) -> Path:
    """Create the file owner-only (SQLite gives its -wal and -shm files the same mode), switch it to
    WAL, and create its schema (ending in `PRAGMA user_version = version`) or check its version."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    with connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
    with transaction(path) as db:
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if found == 0:
            for statement in schema:
                db.execute(statement)
        elif found != version:
            raise ConfigError(f"{path} has {what} schema version {found}, this genforge reads version {version}; "
                              "use a matching genforge or another workspace")
    return path
