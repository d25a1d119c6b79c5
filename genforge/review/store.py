"""Review sets, their items and their ratings, in one SQLite file in the workspace (`reviews/reviews.db`).

A review is blind: each item's two sides are stored as the page shows them (`a`, `b`: image, text or table
content), and which source sits at a or b (`source_a`, `source_b`: indices into the review's sources) only beside
them; `Item.content` is all the API ever hands out. The file is opened as keys.db and feedback.db are
(genforge/serve/sqlite.py): WAL, `BEGIN IMMEDIATE` for writes, every commit fsync'd, so the service's worker
processes and the CLI share it. One rating per reviewer (API key) and item: a second replaces the first.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from genforge.serve.sqlite import connect, prepare, transaction
from genforge.workspace import home

SCHEMA_VERSION = 1  # PRAGMA user_version of reviews.db
Mode = Literal["rubric", "pairs"]
CHOICES = ("a", "b", "tie")
SCORES = range(1, 6)
MAX_COMMENT_CHARS = 2000

_SCHEMA = (
    """CREATE TABLE reviews (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        mode TEXT NOT NULL CHECK (mode IN ('rubric', 'pairs')),
        kind TEXT NOT NULL CHECK (kind IN ('image', 'text', 'table')),
        seed INTEGER NOT NULL,
        sources TEXT NOT NULL,
        created_at TEXT NOT NULL)""",
    """CREATE TABLE items (
        review_id TEXT NOT NULL REFERENCES reviews (id),
        id TEXT NOT NULL,
        position INTEGER NOT NULL,
        a TEXT NOT NULL,
        b TEXT,
        source_a INTEGER NOT NULL,
        source_b INTEGER,
        PRIMARY KEY (review_id, id))""",
    """CREATE TABLE ratings (
        review_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        key_id TEXT NOT NULL,
        key_name TEXT NOT NULL,
        choice TEXT CHECK (choice IN ('a', 'b', 'tie')),
        score INTEGER CHECK (score BETWEEN 1 AND 5),
        comment TEXT,
        rated_at TEXT NOT NULL,
        PRIMARY KEY (review_id, item_id, key_id),
        FOREIGN KEY (review_id, item_id) REFERENCES items (review_id, id),
        CHECK ((choice IS NULL) != (score IS NULL)))""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)


def default_path() -> Path:
    return home() / "reviews" / "reviews.db"


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Source:
    """Where one side's content came from: a run's checkpoint, or the real held-out examples of a dataset."""

    label: str  # what a summary names: "<run id> @ <checkpoint>" or "real held-out (<split>)"
    dataset: str  # name@version
    run: str | None = None  # None: real held-out examples
    checkpoint: str | None = None


@dataclass(frozen=True)
class Item:
    id: str
    a: dict[str, Any]  # {"type": "image", "b64_png"} | {"type": "text", "prompt", "text"} | {"type": "table", ...}
    b: dict[str, Any] | None  # None on a rubric review
    source_a: int  # index into Review.sources: server-side only
    source_b: int | None

    def content(self) -> dict[str, Any]:
        """What a reviewer sees: nothing that says which source is where."""
        return {"id": self.id, "a": self.a, "b": self.b}


@dataclass(frozen=True)
class Review:
    id: str
    name: str
    mode: Mode
    kind: str
    seed: int
    sources: tuple[Source, ...]
    created_at: str
    items: int


@dataclass(frozen=True)
class Rating:
    review_id: str
    item_id: str
    key_id: str
    key_name: str
    choice: str | None  # pairs: a, b or tie
    score: int | None  # rubric: 1-5
    comment: str | None
    rated_at: str

    def value(self) -> dict[str, Any]:
        return {"choice": self.choice} if self.choice is not None else {"score": self.score}


_REVIEW = ("SELECT r.id, r.name, r.mode, r.kind, r.seed, r.sources, r.created_at, "
           "(SELECT COUNT(*) FROM items i WHERE i.review_id = r.id) FROM reviews r")
_RATING = "SELECT review_id, item_id, key_id, key_name, choice, score, comment, rated_at FROM ratings"


def _review(row: tuple) -> Review:
    rid, name, mode, kind, seed, sources, created_at, items = row
    return Review(rid, name, mode, kind, seed, tuple(Source(**s) for s in json.loads(sources)), created_at, items)


class ReviewStore:
    def __init__(self, path: Path | None = None):
        self.path = prepare(Path(path) if path is not None else default_path(), _SCHEMA, SCHEMA_VERSION,
                            "review database")

    def create(self, name: str, mode: Mode, kind: str, seed: int, sources: Sequence[Source],
               items: Sequence[Item]) -> Review:
        """Store a prepared review set in one transaction; items are shown in the order given."""
        with transaction(self.path) as db:
            rid = "rev_" + secrets.token_hex(6)
            while db.execute("SELECT 1 FROM reviews WHERE id = ?", (rid,)).fetchone():
                rid = "rev_" + secrets.token_hex(6)
            db.execute("INSERT INTO reviews (id, name, mode, kind, seed, sources, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (rid, name, mode, kind, seed, json.dumps([asdict(s) for s in sources], ensure_ascii=False),
                        _now_iso()))
            db.executemany("INSERT INTO items (review_id, id, position, a, b, source_a, source_b) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(rid, it.id, k, json.dumps(it.a, ensure_ascii=False),
                             None if it.b is None else json.dumps(it.b, ensure_ascii=False), it.source_a, it.source_b)
                            for k, it in enumerate(items)])
        found = self.get(rid)
        assert found is not None
        return found

    def list(self) -> list[Review]:
        """Every review, oldest first."""
        with connect(self.path) as db:
            return [_review(r) for r in db.execute(_REVIEW + " ORDER BY r.created_at, r.id")]

    def get(self, review_id: str) -> Review | None:
        with connect(self.path) as db:
            row = db.execute(_REVIEW + " WHERE r.id = ?", (review_id,)).fetchone()
        return None if row is None else _review(row)

    def items(self, review_id: str) -> list[Item]:
        with connect(self.path) as db:
            rows = db.execute("SELECT id, a, b, source_a, source_b FROM items WHERE review_id = ? ORDER BY position",
                              (review_id,)).fetchall()
        return [Item(iid, json.loads(a), None if b is None else json.loads(b), sa, sb) for iid, a, b, sa, sb in rows]

    def ratings(self, review_id: str, key_id: str | None = None) -> list[Rating]:
        """A review's ratings (only one key's, when given), oldest first."""
        where, args = "review_id = ?", [review_id]
        if key_id is not None:
            where, args = where + " AND key_id = ?", args + [key_id]
        with connect(self.path) as db:
            return [Rating(*r) for r in db.execute(f"{_RATING} WHERE {where} ORDER BY rated_at, item_id", args)]

    def rated_counts(self, key_id: str) -> dict[str, int]:
        """Review id -> how many of its items this key has rated."""
        with connect(self.path) as db:
            return dict(db.execute("SELECT review_id, COUNT(*) FROM ratings WHERE key_id = ? GROUP BY review_id",
                                   (key_id,)).fetchall())

    def rate(self, review_id: str, item_id: str, key_id: str, key_name: str, *, choice: str | None = None,
             score: int | None = None, comment: str | None = None) -> tuple[Rating, bool] | None:
        """Rate an item as one reviewer: a choice on a pairs review, a score on a rubric review. A later rating by the
        same key replaces the earlier one (then the bool is True). None when the review has no such item."""
        with transaction(self.path) as db:
            row = db.execute("SELECT r.mode FROM items i JOIN reviews r ON r.id = i.review_id "
                             "WHERE i.review_id = ? AND i.id = ?", (review_id, item_id)).fetchone()
            if row is None:
                return None
            pairs = row[0] == "pairs"
            if not ((choice in CHOICES and score is None) if pairs else (choice is None and score in SCORES)):
                raise ValueError(f"a {row[0]} review takes {'a choice (a, b, tie)' if pairs else 'a score 1-5'}"
                                 f", got choice={choice!r}, score={score!r}")
            replaced = db.execute("SELECT 1 FROM ratings WHERE review_id = ? AND item_id = ? AND key_id = ?",
                                  (review_id, item_id, key_id)).fetchone()
            rating = Rating(review_id, item_id, key_id, key_name, choice, score, comment, _now_iso())
            db.execute("INSERT OR REPLACE INTO ratings (review_id, item_id, key_id, key_name, choice, score, comment, "
                       "rated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", tuple(asdict(rating).values()))
        return rating, replaced is not None
