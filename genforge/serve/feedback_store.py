"""The generation log and the ratings of `genforge serve`, in one SQLite file in the workspace (`serve/feedback.db`).

Every response records what it generated: its generation ids, the served model and version, the request (prompt,
class or conditions, seed, options), the output (the text; a PNG's sha256, never the image; a table's row count)
and the key that asked. So a rating can be checked against the key that made the generation, and an export can
cite which model version made each training example. The file is shared by every worker process, as keys.db is:
WAL (readers never block the writer), a busy timeout, `BEGIN IMMEDIATE` for every write, one connection per
operation, and every commit fsync'd (`synchronous=FULL`): a generation id or a rating the service answered with
survives a crash or a power cut. An fsync costs 1-15 ms here, so each process logs through one writer thread that
commits whatever responses are waiting in one transaction (group commit): under load they share an fsync instead of
queueing for one each.
Not handled: several hosts (see keys.py); pruning the log (it grows with traffic: about a kilobyte per text).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from genforge.serve.sqlite import connect, prepare, transaction
from genforge.workspace import home

SCHEMA_VERSION = 1  # PRAGMA user_version of feedback.db
MAX_GROUP = 256  # responses committed together at most
RATINGS = range(1, 6)
MAX_COMMENT_CHARS = 2000
MAX_CORRECTED_CHARS = 16_000  # a corrected answer: several times the longest completion a server gives by default

_SCHEMA = (
    """CREATE TABLE generations (
        id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('text', 'image', 'table')),
        request TEXT NOT NULL,
        output TEXT NOT NULL,
        created_at TEXT NOT NULL)""",
    """CREATE TABLE ratings (
        generation_id TEXT PRIMARY KEY REFERENCES generations (id),
        rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 5),
        comment TEXT,
        corrected_output TEXT,
        rated_at TEXT NOT NULL)""",
    "CREATE INDEX ratings_by_rating ON ratings (rating)",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)


def default_path() -> Path:
    """The feedback database of the current workspace, beside the key database."""
    return home() / "serve" / "feedback.db"


def _prepare(path: Path) -> Path:
    return prepare(path, _SCHEMA, SCHEMA_VERSION, "feedback database")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Generation:
    """One generated item as the log keeps it."""

    id: str
    request: dict[str, Any]  # prompt / class / conditions, seed, options, as the client asked
    output: dict[str, Any]  # {"text", "finish_reason"} | {"png_sha256"} | {"rows"}


@dataclass(frozen=True)
class Rating:
    generation_id: str
    rating: int
    comment: str | None
    corrected_output: str | None
    rated_at: str  # ISO 8601 UTC


@dataclass(frozen=True)
class Rated:
    """A rated generation: what an export reads."""

    generation: Generation
    model: str
    version: str
    kind: str
    rating: Rating


class FeedbackStore:
    """Log generations, rate them, and read the rated ones back."""

    def __init__(self, path: Path | None = None):
        self.path = _prepare(Path(path) if path is not None else default_path())
        self._waiting: queue.SimpleQueue[tuple[list[tuple], Future]] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._starting = threading.Lock()

    def log(self, key_id: str, model: str, version: str, kind: str, generations: Sequence[Generation]) -> None:
        """Record one response's generations; returns once they are committed (with others waiting then)."""
        now = _now_iso()
        rows = [(g.id, key_id, model, version, kind, json.dumps(g.request, ensure_ascii=False, default=str),
                 json.dumps(g.output, ensure_ascii=False), now) for g in generations]
        with self._starting:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_forever, name="feedback-log", daemon=True)
                self._writer.start()
        done: Future = Future()
        self._waiting.put((rows, done))
        done.result()

    def _write_forever(self) -> None:
        """Commit every response waiting in one transaction; if that fails, each alone, so one bad response (a
        duplicate id) fails only its own request."""
        while True:
            group = [self._waiting.get()]
            while len(group) < MAX_GROUP and not self._waiting.empty():
                group.append(self._waiting.get())
            try:
                self._insert([row for rows, _ in group for row in rows])
            except Exception:  # noqa: BLE001 - retried one by one below, where each error reaches its caller
                for rows, done in group:
                    try:
                        self._insert(rows)
                        done.set_result(None)
                    except Exception as e:  # noqa: BLE001 - raised in the caller's thread by done.result()
                        done.set_exception(e)
            else:
                for _, done in group:
                    done.set_result(None)

    def _insert(self, rows: list[tuple]) -> None:
        with transaction(self.path) as db:
            db.executemany("INSERT INTO generations (id, key_id, model, version, kind, request, output, created_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def rate(self, key_id: str, generation_id: str, rating: int, comment: str | None = None,
             corrected_output: str | None = None) -> tuple[Rating, bool] | None:
        """Rate a generation made with `key_id`; a later rating replaces the earlier one (then the bool is True).

        None when there is no such generation, or another key made it: the caller cannot tell the two apart, so
        ids are not a way to learn about other keys' traffic.
        """
        if rating not in RATINGS:
            raise ValueError(f"rating must be an integer from 1 to 5, got {rating!r}")
        now = _now_iso()
        with transaction(self.path) as db:
            row = db.execute("SELECT key_id FROM generations WHERE id = ?", (generation_id,)).fetchone()
            if row is None or row[0] != key_id:
                return None
            replaced = db.execute("SELECT 1 FROM ratings WHERE generation_id = ?", (generation_id,)).fetchone()
            db.execute("INSERT OR REPLACE INTO ratings (generation_id, rating, comment, corrected_output, rated_at) "
                       "VALUES (?, ?, ?, ?, ?)", (generation_id, rating, comment, corrected_output, now))
        return Rating(generation_id, rating, comment, corrected_output, now), replaced is not None

    def rated(self, min_rating: int, kind: str | None = None, model: str | None = None) -> list[Rated]:
        """Generations rated at least `min_rating`, optionally of one kind and served model, oldest first."""
        where, args = ["r.rating >= ?"], [min_rating]
        for column, value in (("g.kind", kind), ("g.model", model)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        with connect(self.path) as db:
            rows = db.execute(
                "SELECT g.id, g.request, g.output, g.model, g.version, g.kind, r.rating, r.comment, "
                "r.corrected_output, r.rated_at FROM ratings r JOIN generations g ON g.id = r.generation_id "
                f"WHERE {' AND '.join(where)} ORDER BY g.created_at, g.id", args).fetchall()
        return [Rated(Generation(gid, json.loads(req), json.loads(out)), model_, version, kind_,
                      Rating(gid, rating, comment, corrected, rated_at))
                for gid, req, out, model_, version, kind_, rating, comment, corrected, rated_at in rows]
