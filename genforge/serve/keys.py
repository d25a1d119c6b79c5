"""API keys and per-key rate limits for `genforge serve`, shared by every worker process on the host.

uvicorn may run several worker processes; a limit kept in one process's memory would be multiplied by their
number. So keys and token buckets live in one SQLite file in the workspace (`serve/keys.db`), in WAL mode with a
busy timeout, and every read-modify-write runs in a `BEGIN IMMEDIATE` transaction: the processes share one limit.
Not handled: several hosts (SQLite locking is not safe on network filesystems; use one host, or a shared store).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from genforge.errors import ConfigError
from genforge.serve.sqlite import connect, prepare, transaction
from genforge.workspace import home

SCHEMA_VERSION = 1  # PRAGMA user_version of keys.db
MAX_SECRET_CHARS = 200  # anything longer is not one of our secrets; refused before touching the database
LIMIT_KINDS = ("requests_per_minute", "units_per_minute")

_SCHEMA = (
    """CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL UNIQUE,
        models TEXT,
        requests_per_minute INTEGER,
        units_per_minute INTEGER,
        created_at TEXT NOT NULL,
        revoked_at TEXT)""",
    """CREATE TABLE buckets (
        key_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        level REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (key_id, kind))""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)


def default_path() -> Path:
    """The key database of the current workspace."""
    return home() / "serve" / "keys.db"


# ----------------------------------------------------------------------------- the database file

def _prepare(path: Path) -> Path:
    return prepare(path, _SCHEMA, SCHEMA_VERSION, "key database")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sha256(secret: str) -> str:
    # A fast hash is right here: secrets are 256 random bits, so there is nothing to brute-force.
    # Passwords (chosen by people, low entropy) would need a slow KDF such as scrypt or argon2.
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


# ----------------------------------------------------------------------------- keys

@dataclass(frozen=True)
class Key:
    """A key's record; the secret itself is never kept, only its hash (in the database) and its first characters."""

    id: str  # public: shown by `list`, used by `revoke`
    name: str  # the admin's label
    prefix: str  # the secret's first 10 characters, to recognise a key in lists
    models: tuple[str, ...] | None  # served model names this key may use; None = all
    requests_per_minute: int | None  # None = unlimited
    units_per_minute: int | None  # tokens (text), images or rows per minute; None = unlimited
    created_at: str  # ISO 8601 UTC
    revoked_at: str | None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


_COLUMNS = "id, name, prefix, models, requests_per_minute, units_per_minute, created_at, revoked_at"


def _key(row: tuple) -> Key:
    kid, name, prefix, models, rpm, upm, created_at, revoked_at = row
    return Key(kid, name, prefix, None if models is None else tuple(json.loads(models)), rpm, upm, created_at,
               revoked_at)


def _check_limit(field: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ConfigError(f"{field} must be a positive integer or None (unlimited), got {value!r}")


def _check(name: str, models: Sequence[str] | None, rpm: int | None, upm: int | None) -> None:
    """Refuse bad values where they enter, naming the field, the rule and the value."""
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not name.isprintable():
        raise ConfigError(f"name must be 1-64 printable characters, got {name!r}")
    if models is not None:
        if isinstance(models, str) or not models:
            raise ConfigError(f"models must be a non-empty list of model names or None (all models), got {models!r}")
        for m in models:
            if not isinstance(m, str) or not m:
                raise ConfigError(f"models must hold non-empty model names, got {m!r} in {list(models)!r}")
    _check_limit("requests_per_minute", rpm)
    _check_limit("units_per_minute", upm)


class KeyStore:
    """Create, list, revoke and check API keys in the workspace's key database."""

    def __init__(self, path: Path | None = None):
        self.path = _prepare(Path(path) if path is not None else default_path())

    def create(self, name: str, models: Sequence[str] | None = None, requests_per_minute: int | None = None,
               units_per_minute: int | None = None) -> tuple[str, Key]:
        """A new key: (its secret, which is shown once and never stored, and its record)."""
        _check(name, models, requests_per_minute, units_per_minute)
        secret = "gf-" + secrets.token_urlsafe(32)
        with transaction(self.path) as db:
            kid = "key_" + secrets.token_hex(4)
            while db.execute("SELECT 1 FROM keys WHERE id = ?", (kid,)).fetchone():
                kid = "key_" + secrets.token_hex(4)
            key = Key(kid, name, secret[:10], None if models is None else tuple(models), requests_per_minute,
                      units_per_minute, _now_iso(), None)
            db.execute(f"INSERT INTO keys ({_COLUMNS}, secret_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (key.id, key.name, key.prefix, None if key.models is None else json.dumps(key.models),
                        key.requests_per_minute, key.units_per_minute, key.created_at, None, _sha256(secret)))
        return secret, key

    def list(self) -> list[Key]:
        """Every key, revoked ones too, oldest first."""
        with connect(self.path) as db:
            return [_key(r) for r in db.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY rowid")]

    def revoke(self, key_id: str) -> Key:
        """Revoke a key by id; its secret stops working at once, in every worker process."""
        with transaction(self.path) as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                raise ConfigError(f"no API key with id {key_id!r}; `genforge keys list` shows the ids")
            key = _key(row)
            if key.revoked_at is not None:
                raise ConfigError(f"API key {key_id} was already revoked at {key.revoked_at}")
            key = replace(key, revoked_at=_now_iso())
            db.execute("UPDATE keys SET revoked_at = ? WHERE id = ?", (key.revoked_at, key_id))
            db.execute("DELETE FROM buckets WHERE key_id = ?", (key_id,))  # its limits go with it
        return key

    def authenticate(self, secret: str) -> Key | None:
        """The live key a secret belongs to; None for unknown, malformed or revoked secrets."""
        if not secret.startswith("gf-") or len(secret) > MAX_SECRET_CHARS or not secret.isascii():
            return None
        with connect(self.path) as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM keys WHERE secret_sha256 = ? AND revoked_at IS NULL",
                             (_sha256(secret),)).fetchone()
        return None if row is None else _key(row)


# ----------------------------------------------------------------------------- rate limits

@dataclass(frozen=True)
class Decision:
    """acquire's answer: the service turns a refusal into 429 with Retry-After, naming the limit."""

    allowed: bool
    limit: str | None  # which limit refused: "requests_per_minute" or "units_per_minute"
    retry_after: float  # seconds until the request would be allowed (0 when allowed)


def _check_count(field: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{field} must be a non-negative integer, got {value!r}")


class RateLimiter:
    """Token buckets per key and limit kind: capacity = the per-minute limit, refilled continuously at limit/60 per
    second, so a key may burst up to a minute's worth and then goes at its steady rate.

    The buckets live in the key database, so all worker processes sharing the file share one limit.
    """

    def __init__(self, path: Path | None = None, clock: Callable[[], float] = time.time):
        self.path = _prepare(Path(path) if path is not None else default_path())
        self.clock = clock  # wall-clock seconds: monotonic clocks are not comparable across processes

    def acquire(self, key: Key, units: int = 0) -> Decision:
        """Take 1 request and `units` units from the key's buckets: both or neither.

        When refused, `limit` names the limit and `retry_after` the seconds until both buckets hold enough. A request
        that asks for more units than the whole per-minute capacity can never pass: it is refused with limit
        "units_per_minute" and retry_after 60.0, and the service should answer it with a 4xx naming the limit
        rather than tell the client to retry. A key without limits is always allowed and writes nothing.
        """
        _check_count("units", units)
        wanted = {kind: n for kind, n in zip(LIMIT_KINDS, (1, units)) if getattr(key, kind) is not None}
        if not wanted:
            return Decision(True, None, 0.0)
        if key.units_per_minute is not None and units > key.units_per_minute:
            return Decision(False, "units_per_minute", 60.0)
        now = self.clock()
        with transaction(self.path) as db:
            levels = {kind: self._level(db, key, kind, now) for kind in wanted}
            waits = {kind: (n - levels[kind]) * 60.0 / getattr(key, kind)
                     for kind, n in wanted.items() if levels[kind] < n}
            if waits:
                kind = max(waits, key=waits.get)
                return Decision(False, kind, waits[kind])
            for kind, n in wanted.items():
                self._store(db, key, kind, levels[kind] - n, now)
        return Decision(True, None, 0.0)

    def settle(self, key: Key, reserved: int, used: int) -> None:
        """Give back the units reserved but not used (never above capacity); if more were used, take the extra.

        The service reserves the most a request can use (prompt tokens + max_tokens) before it runs, and settles
        once it knows what was really used.
        """
        _check_count("reserved", reserved)
        _check_count("used", used)
        if key.units_per_minute is None or reserved == used:
            return
        now = self.clock()
        with transaction(self.path) as db:
            level = self._level(db, key, "units_per_minute", now)
            self._store(db, key, "units_per_minute", min(key.units_per_minute, level + reserved - used), now)

    @staticmethod
    def _level(db: sqlite3.Connection, key: Key, kind: str, now: float) -> float:
        """The bucket's level now: the stored level plus the refill since, capped at capacity (a new bucket is full)."""
        capacity = getattr(key, kind)
        row = db.execute("SELECT level, updated_at FROM buckets WHERE key_id = ? AND kind = ?",
                         (key.id, kind)).fetchone()
        if row is None:
            return float(capacity)
        level, updated_at = row
        return min(float(capacity), level + max(0.0, now - updated_at) * capacity / 60.0)

    @staticmethod
    def _store(db: sqlite3.Connection, key: Key, kind: str, level: float, now: float) -> None:
        db.execute("INSERT OR REPLACE INTO buckets (key_id, kind, level, updated_at) VALUES (?, ?, ?, ?)",
                   (key.id, kind, level, now))
